package sink

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/alert"
)

// TestSyslogWithRsyslogd sends through a real rsyslogd, when one is
// installed, as an independent judge of the framing and the RFC 5424
// header: rsyslog's RFC 5424 parser must split the message into the fields
// the sink meant, and the MSG must be the CEF event byte for byte. It is
// an independent check beside the strict in-test receiver: skipped without
// rsyslogd, failed under CI=true (scripts/deps.sh installs rsyslog).
func TestSyslogWithRsyslogd(t *testing.T) {
	bin, err := exec.LookPath("rsyslogd")
	if err != nil {
		bin, err = exec.LookPath("/usr/sbin/rsyslogd")
	}
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("rsyslogd not found (CI=true requires it: install rsyslog)")
		}
		t.Skip("rsyslogd not installed (install rsyslog)")
	}
	dir := t.TempDir()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	out := filepath.Join(dir, "out.json")
	conf := fmt.Sprintf(`global(workDirectory=%q)
module(load="imtcp")
template(name="j" type="string" string="{\"pri\":\"%%pri%%\",\"host\":\"%%hostname:::json%%\",\"app\":\"%%app-name:::json%%\",\"procid\":\"%%procid:::json%%\",\"msgid\":\"%%msgid:::json%%\",\"sd\":\"%%structured-data:::json%%\",\"ts\":\"%%timereported:::date-rfc3339%%\",\"msg\":\"%%msg:::json%%\"}\n")
ruleset(name="r") { action(type="omfile" file=%q template="j") }
input(type="imtcp" address="127.0.0.1" port="%d" ruleset="r")
`, dir, out, port)
	confPath := filepath.Join(dir, "rsyslog.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := exec.Command(bin, "-N1", "-f", confPath).Run(); err != nil {
		t.Fatalf("rsyslogd refuses the test configuration: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, "-n", "-f", confPath, "-i", filepath.Join(dir, "pid"))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); _ = cmd.Wait() })
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	waitFor(t, func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})

	sink, err := NewSyslog(SyslogConfig{Addr: addr, Hostname: "fleet-1", Version: "1.0"})
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	at := time.Date(2026, 3, 1, 12, 0, 0, 123456000, time.UTC)
	var sent []string
	for i, summary := range []string{tricky, "second alert"} {
		n := alert.Notification{Transition: alert.TransitionFiring, At: at, Alert: alert.Alert{
			ID: uint64(i + 1), RuleID: "clone-suspect", RuleName: "Cloned | identity", DeviceID: "gw-7",
			Severity: alert.SeverityCritical, State: alert.StateFiring, Summary: summary, StartsAt: at}}
		if err := sink.Notify(t.Context(), n); err != nil {
			t.Fatal(err)
		}
		m, err := parse5424(sink.Message(&n))
		if err != nil {
			t.Fatal(err)
		}
		sent = append(sent, m.Msg)
	}
	type line struct{ Pri, Host, App, Procid, Msgid, Sd, Ts, Msg string }
	var got []line
	waitFor(t, func() bool {
		f, err := os.Open(out)
		if err != nil {
			return false
		}
		defer f.Close()
		got = got[:0]
		sc := bufio.NewScanner(f)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			var l line
			if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
				t.Fatalf("rsyslog output %q: %v", sc.Text(), err)
			}
			got = append(got, l)
		}
		return len(got) == 2
	})
	for i, l := range got {
		if l.Pri != "34" || l.Host != "fleet-1" || l.App != "sigil" || l.Procid != "-" || l.Msgid != "firing" ||
			l.Sd != `[origin software="sigil" swVersion="1.0"]` || !strings.HasPrefix(l.Ts, "2026-03-01T12:00:00.123456") {
			t.Errorf("rsyslog parsed message %d as %+v", i, l)
		}
		if l.Msg != sent[i] {
			t.Errorf("rsyslog MSG %d:\n got %q\nwant %q", i, l.Msg, sent[i])
		}
	}
}
