# Sigil. `make demo` runs the main job; `make test` installs what the tests
# need (as root), runs the checks and every test tier.
GO        ?= go
VERSION   ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
PKG       := github.com/sigil-iot/sigil
LDFLAGS   := -s -w -X $(PKG)/device/agent.Version=$(VERSION) -X main.Version=$(VERSION)
ARM64_MAX := 7340032  # 7 MiB: the sigild budget on arm64
# sigild is built without inlining outside the runtime and crypto: Go 1.27's
# encoding/json (now on json/v2, which log/slog pulls in) and ML-DSA cost
# about 450 KB, and inlining elsewhere buys the daemon little for about
# 590 KB of code (its cost on the device's own benchmarks is in
# docs/BENCHMARKS.md). Keep in step with sim/bench (sigildGCFlags).
SIGILD_GCFLAGS := -gcflags=all=-l -gcflags=runtime/...= -gcflags=crypto/...= -gcflags=internal/...=
# sigild is built with Go's classic encoding/json: log/slog's default handler
# links encoding/json whether or not sigild uses JSON, and Go 1.27's is built
# on encoding/json/v2 (320 KiB more on arm64; docs/BENCHMARKS.md, "Third
# pass"). cmd/sigild's TestReleaseJSON runs the device's JSON tests with it and
# fails once Go drops the switch. Keep in step with sim/bench (sigildGOEXPERIMENT).
SIGILD_GOEXPERIMENT := nojsonv2
STATICCHECK_VERSION := v0.8.2
# make vuln: the vulnerability database is built from this golang.org/x/vulndb
# module version (served by the module proxy) and read by this govulncheck.
VULNDB_VERSION      := v0.0.0-20261105234957-e22db6528018
GOVULNCHECK_VERSION := v1.9.0
# The real cosign the signing tests run (scripts/cosign.sh builds it once into
# the user's cache directory; keep in step with signtest.CosignVersion).
COSIGN_VERSION      := v2.6.5

# Go 1.27.3 (go.mod requires it): the go command fetches it from the module
# proxy on first use, so a machine with an older Go needs nothing else.
export GOTOOLCHAIN := go1.27.3

.PHONY: all build cross cross-sigil package test test-unit test-swtpm test-e2e test-browser test-deps lint vuln demo demo-deps bench fuzz clean

all: build

build:
	GOEXPERIMENT=$(SIGILD_GOEXPERIMENT) $(GO) build -trimpath $(SIGILD_GCFLAGS) -ldflags '$(LDFLAGS)' -o bin/sigild ./cmd/sigild
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/sigil ./cmd/sigil
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/sigil-sim ./cmd/sigil-sim

# sigild for the device architectures: static, stripped, no cgo.
cross:
	@set -e; for t in linux/arm64 linux/arm/7 linux/amd64; do \
	  os=$${t%%/*}; rest=$${t#*/}; arch=$${rest%%/*}; arm=""; \
	  [ "$$arch" = arm ] && arm=$${rest#*/}; \
	  out=bin/sigild-$$os-$$arch$${arm:+v$$arm}; \
	  CGO_ENABLED=0 GOEXPERIMENT=$(SIGILD_GOEXPERIMENT) GOOS=$$os GOARCH=$$arch GOARM=$$arm $(GO) build -trimpath $(SIGILD_GCFLAGS) -ldflags '$(LDFLAGS)' -o $$out ./cmd/sigild; \
	  size=$$(stat -c %s $$out); \
	  awk -v o=$$out -v s=$$size 'BEGIN { printf "%-28s %9d bytes (%.2f MiB)\n", o, s, s/1048576 }'; \
	  if [ "$$arch" = arm64 ] && [ $$size -gt $(ARM64_MAX) ]; then echo "FAIL: arm64 sigild exceeds 7 MiB"; exit 1; fi; \
	done
	@# The SPIFFE Workload API build (tag workloadapi, docs/WORKLOADS.md):
	@# gRPC and protobuf, reported, outside the 7 MiB budget.
	@out=bin/sigild-linux-arm64-workloadapi; \
	  CGO_ENABLED=0 GOEXPERIMENT=$(SIGILD_GOEXPERIMENT) GOOS=linux GOARCH=arm64 $(GO) build -tags workloadapi -trimpath $(SIGILD_GCFLAGS) -ldflags '$(LDFLAGS)' -o $$out ./cmd/sigild; \
	  awk -v o=$$out -v s=$$(stat -c %s $$out) 'BEGIN { printf "%-28s %9d bytes (%.2f MiB, no budget)\n", o, s, s/1048576 }'

# sigil (the fleet and its client) for the server architectures: static,
# stripped, no cgo, no size budget.
cross-sigil:
	@set -e; for arch in amd64 arm64; do \
	  CGO_ENABLED=0 GOOS=linux GOARCH=$$arch $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/sigil-linux-$$arch ./cmd/sigil; \
	done

# Debian packages (docs/DEPLOY.md, "Packages"): sigild for amd64, arm64 and
# armhf, sigil for amd64 and arm64, built with nfpm (NFPM_VERSION, from the
# Go module proxy, outside go.mod) into $(DIST). deploy/package_test.go
# lints and installs them.
DIST         ?= bin/dist
NFPM_VERSION := v2.48.0
package: cross cross-sigil
	@NFPM_VERSION=$(NFPM_VERSION) scripts/package.sh $(DIST)

test-deps:
	@scripts/deps.sh test
	@COSIGN_VERSION=$(COSIGN_VERSION) scripts/cosign.sh

demo-deps:
	@scripts/deps.sh demo

# The test tiers; scripts/tiers computes the packages of each from the tree
# (README.md, "Tests"), so every package runs in exactly one:
#   test-unit     tests that need no service (no swtpm, broker, sshd,
#                 browser): race detector, shuffled order; about a minute
#   test-swtpm    tests that start swtpm or another service (mosquitto, rsyslogd)
#   test-e2e      test/e2e: the real binaries end to end
#   test-browser  test/browser: the console in the system's Chromium
# Every tier runs with the race detector; fuzz targets run their seeds; the
# packages with long-running services check for leaked goroutines (goleak).
# $(call tiers,NAME...) sets the shell variable pkgs to the tiers' packages
# (and fails when scripts/tiers does).
tiers = pkgs=$$($(GO) run ./scripts/tiers $(1))

# The checks (gofmt, vet, staticcheck, govulncheck), then every tier. The
# swtpm and e2e tiers run in one go test, which shares the cores between
# their packages as one run did before the tiers.
# The cross builds come first: deploy's package test reuses them.
test: test-deps lint vuln
	$(MAKE) --no-print-directory cross cross-sigil
	$(MAKE) --no-print-directory test-unit
	$(call tiers,swtpm e2e) && $(GO) test -race -timeout 40m -count=1 $$pkgs
	$(MAKE) --no-print-directory test-browser

test-unit: test-deps
	$(call tiers,unit) && $(GO) test -race -shuffle=on -timeout 10m -count=1 $$pkgs

test-swtpm: test-deps
	$(call tiers,swtpm) && $(GO) test -race -timeout 20m -count=1 $$pkgs

test-e2e: test-deps
	$(call tiers,e2e) && $(GO) test -race -timeout 40m -count=1 $$pkgs

# The console in the system's Chromium, driven by playwright-core from npm
# (npm ci from test/browser/package-lock.json; never a browser download).
# SIGIL_UPDATE_SCREENSHOTS=1 also refreshes docs/screenshots.
test-browser: test-deps
	cd test/browser && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund
	$(call tiers,browser) && $(GO) test -race -count=1 -timeout 10m $$pkgs

# gofmt, go vet and staticcheck (part of make test).
lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))" || { echo "gofmt needed:"; gofmt -l .; exit 1; }
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...

# Known vulnerabilities (docs/VULNERABILITIES.md): govulncheck against a database
# built offline from the vulndb module, cached per version in the user's cache
# directory; a reachable vulnerability fails unless listed with its mitigation.
vuln:
	$(GO) run ./scripts/vulncheck -vulndb $(VULNDB_VERSION) -govulncheck $(GOVULNCHECK_VERSION) ./...

# Built first: the demo is bin/sigil-sim's, and the commands it prints run
# bin/sigil and bin/sigild beside it.
demo: build
	@scripts/deps.sh demo || echo "(continuing: the demo falls back to the in-process TPM simulator)"
	bin/sigil-sim demo

# Benchmarks recorded in docs/BENCHMARKS.md (bin/sigil-sim bench fleet, the
# fleet at scale, runs for tens of minutes: see there).
bench: test-deps
	$(GO) test -run '^$$' -bench . -benchmem -count 5 ./fleet/... ./pkg/... ./device/... | tee bench.out
	$(MAKE) --no-print-directory cross
	$(GO) run ./cmd/sigil-sim bench

# A short coverage-guided run of every fuzz target.
fuzz:
	@for p in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$p | grep '^Fuzz'); do \
	    $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime 20s $$p || exit 1; \
	  done; \
	done

clean:
	rm -rf bin bench.out
