package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/metrics/metricstest"
	"github.com/sigil-iot/sigil/internal/wait"
	"github.com/sigil-iot/sigil/sim/harness"
)

// The examples in the documentation (README.md and docs/*.md) run against
// a live fleet (TestDocExamples). An HTML comment on the line right before
// a fenced code block says what the test does with the block:
//
//	<!-- example: run -->
//	    a shell script, run with bash -e -o pipefail: every command must
//	    exit 0, and every curl must carry --fail or --fail-with-body so
//	    that an HTTP error fails it too;
//	<!-- example: run, retry 30s: WHY -->
//	    the same, run again until it succeeds, for at most the duration
//	    given, because what it shows happens asynchronously (WHY says what);
//	<!-- example: not run: WHY -->
//	    not run, for the reason given (a daemon that does not return, a
//	    benchmark, a package installation);
//	<!-- example: prometheus -->
//	    a Prometheus scrape configuration: the test scrapes the fleet as it
//	    says, with the Accept header Prometheus sends, and reads the answer
//	    as the text exposition format.
//
// Every shell block (marked sh, bash, shell or console, or whose first
// line starts with a command such as sigil, sigild, curl, make or go)
// carries a marker. Blocks run in document order, README.md first and
// then docs/*.md by name, in one working directory holding password.txt;
// PATH starts with the sigil and sigild just built; SIGIL_SERVER,
// SIGIL_TOKEN (the admin token) and SIGIL_CA name the fleet. These
// placeholders are replaced by the live fleet's and device's values:
//
//	https://fleet.example.net:8443   the API's URL (fleet.example.net:8443 its address)
//	<data_dir>, /var/lib/sigil       the fleet's data directory
//	<device-id>                      an enrolled, attested device (model gw-1, by token)
//	/etc/sigild/config.json          that device's sigild configuration
//	/etc/prometheus/                 a directory of the test's

// docExample is one marked block.
type docExample struct {
	file, lang string
	line       int    // of the opening fence
	mark       string // the marker's text after "example:", "" when unmarked
	text       string
}

var markerRE = regexp.MustCompile(`^<!--\s*example:\s*(.*?)\s*-->$`)

// docExamples reads the fenced blocks of a Markdown file with the marker
// before each.
func docExamples(t *testing.T, path string) []docExample {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var (
		out  []docExample
		cur  *docExample
		prev string
		n    int
		body strings.Builder
	)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		n++
		line := sc.Text()
		switch {
		case cur == nil && strings.HasPrefix(line, "```"):
			cur = &docExample{file: path, lang: strings.TrimSpace(strings.TrimPrefix(line, "```")), line: n}
			if m := markerRE.FindStringSubmatch(strings.TrimSpace(prev)); m != nil {
				cur.mark = m[1]
			}
			body.Reset()
		case cur != nil && strings.HasPrefix(line, "```"):
			cur.text = body.String()
			out = append(out, *cur)
			cur = nil
		case cur != nil:
			body.WriteString(line + "\n")
		}
		prev = line
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if cur != nil {
		t.Fatalf("%s:%d: a code block is not closed", path, cur.line)
	}
	return out
}

// commandWords start the lines of a block that is a shell example even
// without a language.
var commandWords = []string{"sigil", "sigild", "sigil-sim", "curl", "make", "go", "apt", "apt-get", "sudo", "openssl", "cosign",
	"systemctl", "docker", "mosquitto_pub", "mosquitto_sub", "swtpm", "swtpm_setup", "export", "cat", "cp"}

func (e docExample) shell() bool {
	switch e.lang {
	case "sh", "bash", "shell", "console":
		return true
	case "":
		for _, line := range strings.Split(e.text, "\n") {
			f := strings.Fields(strings.TrimPrefix(strings.TrimSpace(line), "$ "))
			if len(f) == 0 || strings.HasPrefix(f[0], "#") {
				continue
			}
			return slices.Contains(commandWords, f[0]) || strings.HasPrefix(f[0], "tpm2_")
		}
	}
	return false
}

func (e docExample) where() string { return fmt.Sprintf("%s:%d", filepath.Base(e.file), e.line) }

// TestDocExamples runs every example the documentation marks as runnable
// against a live fleet and an enrolled device, with the real sigil,
// sigild and curl (see the convention above). The Prometheus example of
// docs/CONFIG.md answered 415: its curl sent the JSON without
// Content-Type: application/json.
func TestDocExamples(t *testing.T) {
	requireTools(t)
	root := filepath.Join("..", "..")
	files := []string{filepath.Join(root, "README.md")}
	more, _ := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	slices.Sort(more)
	files = append(files, more...)
	var examples []docExample
	for _, f := range files {
		for _, e := range docExamples(t, f) {
			switch {
			case e.mark == "" && e.shell():
				t.Errorf("%s: a shell example without a marker (<!-- example: run --> or <!-- example: not run: WHY -->)", e.where())
			case e.mark != "":
				examples = append(examples, e)
			}
		}
	}
	if t.Failed() {
		return
	}

	sigil, _ := buildBinaries(t)
	f := startFleet(t, nil)
	admin, err := f.Client()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	tok, err := admin.CreateToken(ctx, "gw-1", "docs", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	devDir := t.TempDir()
	tokenFile := filepath.Join(devDir, "token")
	if err := os.WriteFile(tokenFile, []byte(tok.Token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d := startDevice(t, f, newTPM(t), harness.DeviceConfig{Dir: devDir, Model: "gw-1",
		Tweak: func(c *agentConfig) { c.TokenFile, c.EventLog = tokenFile, "-" }})
	id := waitConnected(t, d).DeviceID
	waitFor(t, func() bool {
		l, err := admin.Attestations(ctx, id)
		return err == nil && len(l.Attestations) > 0 && l.Attestations[0].Result == "pass"
	}, "the device's first passing attestation")

	work := t.TempDir()
	devConfig := filepath.Join(work, "device", "sigild.json")
	if err := os.MkdirAll(filepath.Dir(devConfig), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := writeJSON(devConfig, d.Config); err != nil {
		t.Fatal(err)
	}
	prom := filepath.Join(work, "etc", "prometheus")
	if err := os.MkdirAll(prom, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(work, "password.txt"), []byte("the database password\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(f.APIURL())
	if err != nil {
		t.Fatal(err)
	}
	replacer := strings.NewReplacer(
		"https://fleet.example.net:8443", f.APIURL(),
		"fleet.example.net:8443", u.Host,
		"<data_dir>", f.Config.DataDir,
		"/var/lib/sigil", f.Config.DataDir,
		"<device-id>", id,
		"/etc/sigild/config.json", devConfig,
		"/etc/prometheus/", prom+"/",
	)
	env := append(os.Environ(),
		"PATH="+filepath.Dir(sigil)+string(os.PathListSeparator)+os.Getenv("PATH"),
		"SIGIL_SERVER="+f.APIURL(), "SIGIL_TOKEN="+f.AdminToken(), "SIGIL_CA="+f.CACertPath())

	ran := 0
	for _, e := range examples {
		text := replacer.Replace(e.text)
		if m := regexp.MustCompile(`<[a-z][a-z_-]*>`).FindString(text); m != "" {
			t.Errorf("%s: unknown placeholder %s", e.where(), m)
			continue
		}
		switch mark := e.mark; {
		case strings.HasPrefix(mark, "not run:"):
			if strings.TrimSpace(strings.TrimPrefix(mark, "not run:")) == "" {
				t.Errorf("%s: not run, without a reason", e.where())
			}
		case mark == "run" || strings.HasPrefix(mark, "run, retry "):
			for _, line := range strings.Split(text, "\n") {
				if regexp.MustCompile(`(^|[|;&(]\s*)curl\s`).MatchString(strings.TrimSpace(line)) && !strings.Contains(line, "--fail") {
					t.Errorf("%s: curl without --fail-with-body (an HTTP error would pass): %s", e.where(), strings.TrimSpace(line))
				}
			}
			retry := time.Duration(0)
			if r, ok := strings.CutPrefix(mark, "run, retry "); ok {
				dur, why, _ := strings.Cut(r, ":")
				if retry, err = time.ParseDuration(strings.TrimSpace(dur)); err != nil || strings.TrimSpace(why) == "" {
					t.Errorf("%s: marker %q: want run, retry DURATION: WHY", e.where(), mark)
					continue
				}
			}
			runExample(t, e, text, work, env, retry)
			ran++
		case mark == "prometheus":
			scrapeAsPrometheus(t, e, text, work)
			t.Logf("%s: scraped as Prometheus does", e.where())
			ran++
		default:
			t.Errorf("%s: unknown marker %q", e.where(), mark)
		}
	}
	if ran < 5 {
		t.Errorf("only %d examples ran", ran)
	}
}

// runExample runs a shell example with bash, again until it succeeds
// within retry if that is not zero.
func runExample(t *testing.T, e docExample, script, dir string, env []string, retry time.Duration) {
	t.Helper()
	var (
		out []byte
		err error
	)
	if wait.Poll(retry, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "bash", "-e", "-o", "pipefail", "-c", script)
		cmd.Dir, cmd.Env = dir, env
		out, err = cmd.CombinedOutput()
		return err == nil
	}) {
		t.Logf("%s: ran", e.where())
		return
	}
	t.Errorf("%s: example failed: %v\n--- script\n%s--- output\n%s", e.where(), err, script, out)
}

// prometheusAccept is the Accept header Prometheus 3 sends when it scrapes.
const prometheusAccept = "application/openmetrics-text;version=1.0.0;escaping=underscores;q=0.5," +
	"application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;escaping=underscores;q=0.3," +
	"text/plain;version=0.0.4;q=0.2,*/*;q=0.1"

// scrapeAsPrometheus reads a scrape configuration (the fields the example
// uses) and scrapes the target with curl as Prometheus would: its Accept
// header, gzip accepted, the bearer token from credentials_file, the CA
// from ca_file. The answer must be 200, gzip-compressed, in the text
// exposition format as expfmt reads it (metricstest.Parse).
func scrapeAsPrometheus(t *testing.T, e docExample, yaml, dir string) {
	t.Helper()
	field := func(name string) string {
		m := regexp.MustCompile(`(?m)^\s*-?\s*` + name + `:\s*(.+?)\s*(#.*)?$`).FindStringSubmatch(yaml)
		if m == nil {
			t.Fatalf("%s: the scrape configuration has no %s", e.where(), name)
		}
		return strings.Trim(m[1], `"'`)
	}
	if field("type") != "Bearer" {
		t.Fatalf("%s: authorization type %q", e.where(), field("type"))
	}
	targets := regexp.MustCompile(`"([^"]+)"`).FindAllStringSubmatch(field("targets"), -1)
	if len(targets) != 1 {
		t.Fatalf("%s: targets %q", e.where(), field("targets"))
	}
	target := field("scheme") + "://" + targets[0][1] + field("metrics_path")
	token, err := os.ReadFile(field("credentials_file"))
	if err != nil {
		t.Fatalf("%s: credentials_file: %v (the example before it should have written it)", e.where(), err)
	}
	headers := filepath.Join(dir, "scrape.headers")
	cmd := exec.Command("curl", "-sS", "--fail-with-body", "--compressed", "--cacert", field("ca_file"), "-D", headers,
		"-H", "Authorization: Bearer "+strings.TrimSpace(string(token)), "-H", "Accept: "+prometheusAccept,
		"-H", "User-Agent: Prometheus/3.5.0", "-H", "X-Prometheus-Scrape-Timeout-Seconds: 10", target)
	body, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: scraping %s as Prometheus does: %v\n%s", e.where(), target, err, body)
	}
	h, _ := os.ReadFile(headers)
	if !regexp.MustCompile(`(?im)^content-type: text/plain; version=0\.0\.4`).Match(h) {
		t.Errorf("%s: the scrape's answer is not the text format 0.0.4:\n%s", e.where(), h)
	}
	if !regexp.MustCompile(`(?im)^content-encoding: gzip`).Match(h) {
		t.Errorf("%s: the scrape's answer is not gzip-compressed, though Prometheus accepts it:\n%s", e.where(), h)
	}
	fams, err := metricstest.Parse(bytes.NewReader(body))
	if err != nil {
		t.Errorf("%s: the scrape's answer is not valid text exposition: %v", e.where(), err)
	}
	if len(fams.Samples()) == 0 {
		t.Errorf("%s: the scrape returned no samples", e.where())
	}
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o600)
}
