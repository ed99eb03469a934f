// Package swtpmtest starts swtpm instances for tests and reads TPM objects
// back with tpm2-tools, an independent client.
//
// A missing swtpm or tpm2-tools binary skips the test, or fails it when the
// environment variable CI is "true".
package swtpmtest

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/internal/testenv"
	"github.com/sigil-iot/sigil/sim/swtpm"
)

// Require skips t (or fails it under CI=true) unless the swtpm binaries are
// installed.
func Require(t testing.TB) {
	t.Helper()
	if err := swtpm.Available(); err != nil {
		missing(t, err)
	}
}

// RequireBinaries skips t (or fails it under CI=true) unless every named
// binary is on PATH (testenv.RequireBinaries; a test that needs no swtpm
// calls that one, so as not to link this package).
func RequireBinaries(t testing.TB, names ...string) {
	t.Helper()
	testenv.RequireBinaries(t, names...)
}

func missing(t testing.TB, err error) {
	t.Helper()
	testenv.Unavailable(t, fmt.Errorf("swtpmtest: %w", err))
}

// NewCA returns a private swtpm CA in a temporary directory of t. Its
// certificates exist once the first instance has been set up with it. Share
// one CA between the instances of a test; a package that wants one CA for
// all its tests can create it with swtpm.NewCA in TestMain.
func NewCA(t testing.TB) *swtpm.CA {
	t.Helper()
	Require(t)
	ca, err := swtpm.NewCA(filepath.Join(t.TempDir(), "ca"))
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// New starts a freshly manufactured swtpm in a temporary directory of t,
// with EK certificates signed by ca (a new CA when ca is nil), and stops it
// when the test ends.
func New(t testing.TB, ca *swtpm.CA) *swtpm.Instance {
	t.Helper()
	Require(t)
	if ca == nil {
		ca = NewCA(t)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	inst, err := swtpm.Start(ctx, swtpm.Options{StateDir: filepath.Join(t.TempDir(), "tpm"), CA: ca})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := inst.Stop(); err != nil {
			t.Errorf("stop swtpm: %v\n%s", err, inst.LogTail(10))
		}
	})
	return inst
}

// SRK is the persistent handle ReadPublicPEM loads keys under: the SRK
// device/tpm creates when the handle is free, as it is on a fresh swtpm.
const SRK = "0x81000001"

// ReadPublicPEM loads a key blob made under the SRK at 0x81000001 with
// tpm2-tools (tpm2_load, then tpm2_readpublic -f pem) and returns the public
// key PEM as tpm2-tools sees it. pub is a marshaled TPMT_PUBLIC and priv the
// contents of a TPM2B_PRIVATE (device/tpm's KeyBlob fields); they are written
// in tpm2-tools' formats, a TPM2B_PUBLIC and a TPM2B_PRIVATE (2-byte size
// prefix). The transient objects tpm2-tools leaves behind are flushed.
//
// swtpm serves one TCP connection at a time: the caller must not hold a
// connection to inst while calling this. device/tpm connects to swtpm only
// for the duration of each operation, so an open *tpm.TPM is fine.
func ReadPublicPEM(t testing.TB, inst *swtpm.Instance, pub, priv []byte) []byte {
	t.Helper()
	RequireBinaries(t, "tpm2_load", "tpm2_readpublic", "tpm2_flushcontext")
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, sized(b), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	pubFile, privFile := write("key.pub", pub), write("key.priv", priv)
	ctxFile, pemFile := filepath.Join(dir, "key.ctx"), filepath.Join(dir, "key.pem")
	tcti := inst.TCTI()
	defer func() {
		// tpm2-tools without a resource manager leave transient objects.
		if out, err := exec.Command("tpm2_flushcontext", "-T", tcti, "-t").CombinedOutput(); err != nil {
			t.Errorf("tpm2_flushcontext: %v: %s", err, out)
		}
	}()
	run(t, "tpm2_load", "-T", tcti, "-C", SRK, "-u", pubFile, "-r", privFile, "-c", ctxFile)
	run(t, "tpm2_readpublic", "-T", tcti, "-c", ctxFile, "-f", "pem", "-o", pemFile)
	b, err := os.ReadFile(pemFile)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// ReadPCR reads PCR pcr of bank ("sha256") from inst with tpm2_pcrread.
func ReadPCR(t testing.TB, inst *swtpm.Instance, bank string, pcr int) []byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), "pcr.bin")
	Run(t, "tpm2_pcrread", "-T", inst.TCTI(), fmt.Sprintf("%s:%d", bank, pcr), "-o", out)
	b, err := os.ReadFile(out)
	if err != nil || len(b) == 0 {
		t.Fatalf("tpm2_pcrread: %d bytes, %v", len(b), err)
	}
	return b
}

// ReadNVCounter reads the 8-byte NV counter at index from inst with
// tpm2_nvread (owner authorization).
func ReadNVCounter(t testing.TB, inst *swtpm.Instance, index uint32) uint64 {
	t.Helper()
	out := filepath.Join(t.TempDir(), "nv.bin")
	Run(t, "tpm2_nvread", "-T", inst.TCTI(), "-C", "o", "-s", "8", "-o", out, fmt.Sprintf("0x%08x", index))
	b, err := os.ReadFile(out)
	if err != nil || len(b) != 8 {
		t.Fatalf("tpm2_nvread: %d bytes, %v", len(b), err)
	}
	return binary.BigEndian.Uint64(b)
}

// Run runs a tpm2-tools command (or any command) and fails t with its output
// if it fails; it returns standard output.
func Run(t testing.TB, name string, args ...string) []byte {
	t.Helper()
	RequireBinaries(t, name)
	return run(t, name, args...)
}

func run(t testing.TB, name string, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			t.Fatalf("%s timed out (is a client holding swtpm's only TCP connection?): %s", name, stderr.Bytes())
		}
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, stderr.Bytes())
	}
	return stdout.Bytes()
}

// sized prefixes b with its 2-byte big-endian length (a TPM2B).
func sized(b []byte) []byte {
	return append(binary.BigEndian.AppendUint16(nil, uint16(len(b))), b...)
}
