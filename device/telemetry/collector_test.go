package telemetry

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/internal/testenv"
	"github.com/sigil-iot/sigil/internal/wait"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// fakeProc writes a proc tree of fixtures; the collector reads it like
// the real one.
func fakeProc(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range map[string]string{
		"stat": statA, "meminfo": meminfoText, "loadavg": "0.50 0.25 0.10 2/99 1234\n", "uptime": "3600.50 7000.00\n",
		"net/dev": netDev, "net/tcp": netTCP, "net/tcp6": netTCP6, "net/udp": netUDP,
		"sys/kernel/random/boot_id": bootID,
	} {
		write(t, filepath.Join(dir, name), content)
	}
	for _, pid := range []string{"1", "42", "4242", "self", "sys", "net"} {
		os.MkdirAll(filepath.Join(dir, pid), 0o755)
	}
	return dir
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestCollectorOnFixtures(t *testing.T) {
	proc := fakeProc(t)
	data := t.TempDir()
	now := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	c, err := NewCollector(Config{Proc: proc, Disks: map[string]string{"data": data}, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	p := c.Collect(context.Background())
	if err := p.Validate(); err != nil {
		t.Fatalf("collected an invalid point: %v", err)
	}
	if _, ok := p.Metrics["cpu.busy"]; ok {
		t.Fatal("cpu.busy without a previous reading")
	}
	want := map[string]float64{
		"cpu.count": 2, "load.1": 0.5, "load.15": 0.1,
		"mem.total_bytes": 1000000 * 1024, "mem.available_bytes": 250000 * 1024, "mem.used_ratio": 0.75,
		"swap.used_bytes": 100000 * 1024,
		"net.rx_bytes":    1100, "net.tx_bytes": 2200, "net.tx_dropped": 4, "net.interfaces": 2,
		"proc.count": 3, "listen.tcp.count": 3, "listen.udp.count": 2, "uptime.seconds": 3600.5,
		"telemetry.collect_errors": 0,
	}
	for name, v := range want {
		if got, ok := p.Metrics[name]; !ok || math.Abs(got-v) > 1e-9 {
			t.Errorf("%s = %v (present %v), want %v", name, got, ok, v)
		}
	}
	if got := strings.Join(p.Sets["listen.tcp"], ","); got != "22,443,631" {
		t.Errorf("listen.tcp = %s", got)
	}
	if got := strings.Join(p.Sets["listen.udp"], ","); got != "53,68" {
		t.Errorf("listen.udp = %s", got)
	}
	if p.Info["boot_id"] != strings.TrimSpace(bootID) || p.Time != now.UnixMilli() {
		t.Errorf("boot id %q, time %d", p.Info["boot_id"], p.Time)
	}
	if p.Metrics["disk.data.total_bytes"] <= 0 || p.Metrics["disk.data.used_ratio"] < 0 || p.Metrics["disk.data.used_ratio"] > 1 {
		t.Errorf("disk metrics %v %v", p.Metrics["disk.data.total_bytes"], p.Metrics["disk.data.used_ratio"])
	}

	// The second point has CPU use since the first.
	write(t, filepath.Join(proc, "stat"), statB)
	p = c.Collect(context.Background())
	if v := p.Metrics["cpu.busy"]; math.Abs(v-0.4) > 1e-12 {
		t.Fatalf("cpu.busy = %v, want 0.4", v)
	}

	// A part that cannot be read is left out and counted; the rest stays.
	os.Remove(filepath.Join(proc, "meminfo"))
	write(t, filepath.Join(proc, "loadavg"), "garbage\n")
	p = c.Collect(context.Background())
	if _, ok := p.Metrics["mem.total_bytes"]; ok || p.Metrics["telemetry.collect_errors"] != 2 || p.Metrics["net.rx_bytes"] != 1100 {
		t.Fatalf("with two parts broken: %v", p.Metrics)
	}
}

func TestCollectorConfigRefusals(t *testing.T) {
	for name, cfg := range map[string]Config{
		"label with dot":    {Disks: map[string]string{"a.b.": "/"}},
		"upper-case label":  {Disks: map[string]string{"Root": "/"}},
		"relative path":     {Disks: map[string]string{"root": "var"}},
		"empty label":       {Disks: map[string]string{"": "/"}},
		"label with spaces": {Disks: map[string]string{"my disk": "/"}},
	} {
		if _, err := NewCollector(cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestSources(t *testing.T) {
	proc := fakeProc(t)
	good := SourceFunc(func(_ context.Context, p *wire.TelemetryPoint) error {
		p.SetMetric("tpm.ok", 1)
		p.SetMetric("cert.expiry_seconds", 3600)
		p.SetInfo("update.state", "idle")
		return nil
	})
	failing := SourceFunc(func(context.Context, *wire.TelemetryPoint) error { return errors.New("TPM busy") })
	invalid := SourceFunc(func(_ context.Context, p *wire.TelemetryPoint) error {
		p.SetMetric("ok.metric", 1)
		p.SetMetric("Bad Name", 1)
		return nil
	})
	tooMany := SourceFunc(func(_ context.Context, p *wire.TelemetryPoint) error {
		for i := range 40 {
			p.SetMetric(fmt.Sprintf("extra.m%d", i), 1)
		}
		return nil
	})
	c, err := NewCollector(Config{Proc: proc, Sources: []Source{good, failing, invalid, tooMany}})
	if err != nil {
		t.Fatal(err)
	}
	p := c.Collect(context.Background())
	if err := p.Validate(); err != nil {
		t.Fatalf("invalid point: %v", err)
	}
	if p.Metrics["tpm.ok"] != 1 || p.Metrics["cert.expiry_seconds"] != 3600 || p.Info["update.state"] != "idle" {
		t.Fatalf("good source missing: %v %v", p.Metrics, p.Info)
	}
	if _, ok := p.Metrics["ok.metric"]; ok {
		t.Fatal("a source with an invalid value was partly merged")
	}
	if _, ok := p.Metrics["extra.m0"]; ok {
		t.Fatal("a source that does not fit was merged")
	}
	if p.Metrics["telemetry.collect_errors"] != 3 {
		t.Fatalf("collect_errors = %v, want 3", p.Metrics["telemetry.collect_errors"])
	}
}

// TestSystemSource: with Config.System the collector reads nothing of the
// host (a proc root that does not exist costs no error) and the point
// holds the system source's values, then the agent's sources'.
func TestSystemSource(t *testing.T) {
	system := SourceFunc(func(_ context.Context, p *wire.TelemetryPoint) error {
		p.SetMetric("cpu.busy", 0.25)
		p.SetMembers("listen.tcp", []string{"22"})
		return nil
	})
	agent := SourceFunc(func(_ context.Context, p *wire.TelemetryPoint) error {
		p.SetMetric("tpm.ok", 1)
		return nil
	})
	c, err := NewCollector(Config{Proc: filepath.Join(t.TempDir(), "absent"), System: system, Sources: []Source{agent}})
	if err != nil {
		t.Fatal(err)
	}
	p := c.Collect(context.Background())
	if p.Metrics["cpu.busy"] != 0.25 || p.Metrics["tpm.ok"] != 1 || !slices.Equal(p.Sets["listen.tcp"], []string{"22"}) {
		t.Fatalf("point %v %v, want the system's and the agent's values", p.Metrics, p.Sets)
	}
	if _, ok := p.Metrics["mem.total_bytes"]; ok || p.Metrics["telemetry.collect_errors"] != 0 {
		t.Fatalf("the host was read: %v", p.Metrics)
	}
	failing := SourceFunc(func(context.Context, *wire.TelemetryPoint) error { return errors.New("no values") })
	c, _ = NewCollector(Config{System: failing})
	if p := c.Collect(context.Background()); p.Metrics["telemetry.collect_errors"] != 1 || len(p.Metrics) != 1 {
		t.Fatalf("a failing system source: %v", p.Metrics)
	}
}

// TestCollectorOnThisMachine reads the real /proc and statfs and checks
// them against independent tools: ss for listening sockets (with ports
// this test opens) and df for disk size.
func TestCollectorOnThisMachine(t *testing.T) {
	if _, err := os.Stat("/proc/stat"); err != nil {
		t.Skip("no /proc here")
	}
	testenv.RequireBinaries(t, "ss", "df")
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	tcp6, err := net.Listen("tcp6", "[::1]:0")
	if err == nil {
		defer tcp6.Close()
	}
	udp, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	dir := t.TempDir()
	c, err := NewCollector(Config{Disks: map[string]string{"root": "/", "tmp": dir}})
	if err != nil {
		t.Fatal(err)
	}
	c.Collect(context.Background())
	// CPU counters tick every 10 ms: collect again until they moved.
	var p wire.TelemetryPoint
	wait.For(t, "the CPU counters to move", func() bool {
		p = c.Collect(context.Background())
		_, ok := p.Metrics["cpu.busy"]
		return ok
	})
	if err := p.Validate(); err != nil {
		t.Fatalf("invalid point: %v", err)
	}
	if p.Metrics["telemetry.collect_errors"] != 0 {
		t.Fatalf("collect errors on this machine: %v", p.Metrics)
	}
	for _, name := range []string{"cpu.count", "mem.total_bytes", "proc.count", "uptime.seconds", "disk.root.total_bytes"} {
		if p.Metrics[name] <= 0 {
			t.Errorf("%s = %v", name, p.Metrics[name])
		}
	}
	port := func(a net.Addr) string { _, p, _ := net.SplitHostPort(a.String()); return p }
	if !slices.Contains(p.Sets["listen.tcp"], port(tcp.Addr())) || !slices.Contains(p.Sets["listen.udp"], port(udp.LocalAddr())) {
		t.Fatalf("ports this test listens on are missing: tcp %s in %v, udp %s in %v",
			port(tcp.Addr()), p.Sets["listen.tcp"], port(udp.LocalAddr()), p.Sets["listen.udp"])
	}
	if tcp6 != nil && !slices.Contains(p.Sets["listen.tcp"], port(tcp6.Addr())) {
		t.Fatalf("IPv6 listener %s missing from %v", port(tcp6.Addr()), p.Sets["listen.tcp"])
	}

	// ss agrees on the listening TCP ports. Other processes on this machine
	// open and close ports: compare only when two collections around the
	// ss run agree.
	for attempt := 0; ; attempt++ {
		before := c.Collect(context.Background()).Sets["listen.tcp"]
		out, err := exec.Command("ss", "-Hltn").Output()
		if err != nil {
			t.Fatalf("ss: %v", err)
		}
		after := c.Collect(context.Background()).Sets["listen.tcp"]
		if !slices.Equal(before, after) {
			if attempt < 5 {
				continue
			}
			t.Skip("listening ports keep changing on this machine")
		}
		var ss []string
		for line := range strings.Lines(string(out)) {
			f := strings.Fields(line)
			if len(f) < 4 {
				continue
			}
			i := strings.LastIndexByte(f[3], ':')
			if _, err := strconv.Atoi(f[3][i+1:]); err == nil {
				ss = append(ss, f[3][i+1:])
			}
		}
		slices.Sort(ss)
		ss = slices.Compact(ss)
		if !slices.Equal(ss, before) {
			t.Fatalf("listening TCP ports: ss says %v, collector %v", ss, before)
		}
		break
	}

	// df agrees on the size of the file system of dir.
	out, err := exec.Command("df", "-B1", "--output=size", dir).Output()
	if err != nil {
		t.Fatalf("df: %v", err)
	}
	f := strings.Fields(string(out))
	size, err := strconv.ParseFloat(f[len(f)-1], 64)
	if err != nil {
		t.Fatalf("df output %q", out)
	}
	if got := p.Metrics["disk.tmp.total_bytes"]; got != size {
		t.Fatalf("disk.tmp.total_bytes = %v, df says %v", got, size)
	}
}

func TestAuthLog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "auth.log")
	write(t, path, "Nov 22 sshd[1]: Failed password for root from 10.0.0.9\n") // history: not counted
	a := &AuthLog{Path: path}
	collect := func() float64 {
		t.Helper()
		var p wire.TelemetryPoint
		if err := a.Collect(context.Background(), &p); err != nil {
			t.Fatal(err)
		}
		return p.Metrics["auth.failures"]
	}
	if n := collect(); n != 0 {
		t.Fatalf("history counted: %v", n)
	}
	appendTo := func(s string) {
		f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		f.WriteString(s)
		f.Close()
	}
	appendTo("Nov 22 sshd[2]: Invalid user admin from 10.0.0.9\nNov 22 sshd[2]: Accepted publickey for ops\nNov 22 su: FAILED SU (to root) x on pts/0\nNov 22 sshd[3]: Failed passw")
	if n := collect(); n != 2 {
		t.Fatalf("new failures = %v, want 2", n)
	}
	appendTo("ord for pi from 10.0.0.7\n") // the partial line completes
	if n := collect(); n != 1 {
		t.Fatalf("completed line = %v, want 1", n)
	}
	if n := collect(); n != 0 {
		t.Fatalf("nothing new = %v", n)
	}
	// Rotation: a new, shorter file is read from the start.
	os.Rename(path, path+".1")
	write(t, path, "Nov 23 login: FAILED LOGIN 1 FROM tty1\n")
	if n := collect(); n != 1 {
		t.Fatalf("after rotation = %v, want 1", n)
	}
	os.Remove(path)
	var p wire.TelemetryPoint
	if err := a.Collect(context.Background(), &p); err == nil {
		t.Fatal("missing log file not reported")
	}
}

// BenchmarkCollect measures one collection on this machine's /proc (the
// cost sigild pays every interval).
func BenchmarkCollect(b *testing.B) {
	if _, err := os.Stat("/proc/stat"); err != nil {
		b.Skip("no /proc here")
	}
	c, err := NewCollector(Config{})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		c.Collect(context.Background())
	}
}
