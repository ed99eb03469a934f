package main

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sigil-iot/sigil/pkg/wire"
	"github.com/sigil-iot/sigil/sim/fleetbench"
)

// TestHelp: every command answers --help with its usage on stdout, exit
// 0; a bad flag is a usage error (exit 2).
func TestHelp(t *testing.T) {
	for _, args := range [][]string{{"help"}, {"demo", "--help"}, {"bench", "--help"}, {"bench", "fleet", "--help"}} {
		var out, errb bytes.Buffer
		if code := run(args, nil, &out, &errb); code != exitOK || !strings.Contains(out.String(), "usage") || errb.Len() != 0 {
			t.Errorf("sigil-sim %s: exit %d, stdout %q, stderr %q", strings.Join(args, " "), code, out.String(), errb.String())
		}
	}
	for _, args := range [][]string{{"demo", "--nope"}, {"bench", "fleet", "--shard-size", "20000"}, {"bench", "fleet", "--phases", "soak,nap"}, {"nope"},
		{"bench", "fleet", "--replicas", "2", "--brokers", "2"}, {"bench", "fleet", "--devices", "40000", "--brokers", "2", "--postgres"},
		{"bench", "fleet", "--fleet", "https://localhost:8443", "--ek-ca", "x", "--postgres"}} {
		var errb bytes.Buffer
		if code := run(args, nil, io.Discard, &errb); code != exitUsage || errb.Len() == 0 {
			t.Errorf("sigil-sim %s: exit %d, stderr %q", strings.Join(args, " "), code, errb.String())
		}
	}
}

// TestBenchFleet runs `sigil-sim bench fleet` as a user does — the real
// sigil-sim and sigil binaries: a sigil serve child process, 200 devices
// in two shard processes — through every phase, and checks the
// bookkeeping of its report, never a timing: every device active and
// connected through the soak; every QoS 1 message the devices sent
// counted by the fleet as ingested or dropped; the forced re-key renewed
// every device, each back on a new certificate; the campaign committed on
// each of its devices; each tampered device closed, revoked and alerted;
// every device back and attested again after the fleet's restart, none
// given up; every telemetry point acknowledged, dropped or pending; the
// JSON result and the SVG plot written and well-formed.
func TestBenchFleet(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a fleet and 200 simulated devices")
	}
	bin := t.TempDir()
	for _, c := range []string{"sigil", "sigil-sim"} {
		if out, err := exec.Command("go", "build", "-o", filepath.Join(bin, c), "github.com/sigil-iot/sigil/cmd/"+c).CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", c, err, out)
		}
	}
	work, out := t.TempDir(), t.TempDir()
	const devices, campaign, samples = 200, 20, 3
	cmd := exec.Command(filepath.Join(bin, "sigil-sim"), "bench", "fleet", "--devices", "200", "--shard-size", "120", "--rate", "200",
		"--soak", "20s", "--attest-interval", "8s", "--telemetry-interval", "3s", "--retry-min", "200ms", "--retry-max", "5s",
		"--campaign-devices", "20", "--quarantine-samples", "3", "--api-rate", "5", "--timeout", "2m", "--dir", work, "--out", out)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	defer func() {
		if t.Failed() {
			t.Logf("stdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
			if b, err := os.ReadFile(filepath.Join(work, "fleet.log")); err == nil {
				t.Logf("fleet log (tail):\n%s", tail(b, 4000))
			}
		}
	}()
	if err != nil {
		t.Fatalf("sigil-sim bench fleet: %v", err)
	}

	b, err := os.ReadFile(filepath.Join(out, fleetbench.ResultFile))
	if err != nil {
		t.Fatal(err)
	}
	var r fleetbench.Result
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("the JSON result does not parse: %v", err)
	}
	if len(r.Notes) > 0 {
		t.Errorf("notes: %q", r.Notes)
	}
	if len(r.Sizes) != 1 {
		t.Fatalf("%d sizes", len(r.Sizes))
	}
	s := r.Sizes[0]
	if s.Devices != devices || s.Shards != 2 || s.Enroll.Devices != devices || s.Enroll.Active != devices || s.Enroll.TimeToActive.N != devices {
		t.Errorf("coming up: %+v", s)
	}
	if so := s.Soak; so == nil || so.Connected != devices || so.Disconnects != 0 || so.Sent[wire.TypeTelemetryBatch] == 0 || so.Sent[wire.TypeAttestEvidence] == 0 {
		t.Errorf("soak: %+v", so)
	}
	if a := s.API; a == nil || a.Errors != 0 || a.DeviceList.N == 0 || a.DevicePage.N == 0 || a.ConsoleList.N == 0 || a.ConsolePage.N == 0 {
		t.Errorf("API: %+v", a)
	}
	if s.Fleet.RSSBytes == 0 || s.Fleet.CPUSeconds == 0 || s.Fleet.DeviceConnection != devices {
		t.Errorf("fleet figures: %+v", s.Fleet)
	}

	kinds := map[string]bool{}
	for _, k := range r.Messages {
		kinds[k.Kind] = true
		if k.Kind == fleetbench.KindWithheld {
			if k.Dropped != 0 {
				t.Errorf("the broker withheld %v messages from the fleet", k.Dropped)
			}
			continue
		}
		counted := k.Ingested + k.Dropped + k.Refused
		// A publish whose PUBACK was lost with its session may have
		// reached the fleet: QoS 1 is at least once.
		if k.Lost != 0 || float64(k.Sent) > counted || counted > float64(k.SentAfter+k.UnackedAfter) || k.Sent == 0 {
			t.Errorf("%s: sent %d (then %d, and %d unacknowledged), the fleet counted %v ingested, %v dropped, %v refused: lost %v",
				k.Kind, k.Sent, k.SentAfter, k.UnackedAfter, k.Ingested, k.Dropped, k.Refused, k.Lost)
		}
	}
	for _, want := range []string{wire.TypeTelemetryBatch, wire.TypeAttestEvidence + "+" + wire.TypeRenewRequest, wire.TypeEnrollRequest, fleetbench.KindWithheld} {
		if !kinds[want] {
			t.Errorf("no account of %s: %+v", want, r.Messages)
		}
	}

	if x := r.Rotation; x == nil || x.Devices != devices || x.Renewed != devices || x.OnNewCert != devices || x.Disconnects != 0 {
		t.Errorf("rotation: %+v", x)
	}
	if x := r.Campaign; x == nil || x.Devices != campaign || x.Committed != campaign || x.Failed != 0 || x.State != "completed" || x.OnNew != campaign || x.Disconnects != 0 {
		t.Errorf("campaign: %+v", x)
	}
	if x := r.Quarantine; x == nil || x.Samples != samples || x.Missing != 0 || x.Total.N != samples || x.Closed.N != samples || x.Revoked.N != samples || x.Alerted.N != samples {
		t.Errorf("quarantine: %+v", x)
	}
	if x := r.Reconnect; x == nil || x.Devices != devices-samples || x.GaveUp != 0 || x.Reattested < x.Devices || x.Reconnected < x.Devices || x.APIErrors != 0 {
		t.Errorf("reconnect: %+v", x)
	}
	if tel := r.Telemetry; tel == nil || tel.Appended == 0 || tel.Appended != tel.Acked+tel.Dropped+tel.Pending {
		t.Errorf("telemetry outboxes: %+v", tel)
	}
	if d := r.Devices; d == nil || d.Devices != devices || d.Exited != 0 {
		t.Errorf("devices: %+v", d)
	}

	svg, err := os.ReadFile(filepath.Join(out, fleetbench.PlotFile))
	if err != nil {
		t.Fatal(err)
	}
	root, circles, err := parseXML(svg)
	if err != nil || root != "svg" || circles < 5 {
		t.Errorf("the plot: root %q, %d points, %v", root, circles, err)
	}
	for _, want := range []string{"devices at the end: ", "forced re-key", "reconnect storm", "QoS 1 messages"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("the report lacks %q", want)
		}
	}
}

// parseXML reads a document through and returns its root element and
// how many circle elements it holds.
func parseXML(b []byte) (root string, circles int, err error) {
	d := xml.NewDecoder(bytes.NewReader(b))
	for {
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			return root, circles, nil
		}
		if err != nil {
			return root, circles, err
		}
		if se, ok := tok.(xml.StartElement); ok {
			if root == "" {
				root = se.Name.Local
			}
			if se.Name.Local == "circle" {
				circles++
			}
		}
	}
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}
