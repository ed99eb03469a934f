package telemetry

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sigil-iot/sigil/pkg/wire"
)

// Source adds values to a point that the collector cannot read from the
// system: TPM health, certificate expiry, update state, the daemon's own
// counters. It writes into p with p.SetMetric, SetMembers and SetInfo. A
// Source whose additions are invalid or do not fit the point is left out
// of it (and counted in telemetry.collect_errors).
type Source interface {
	Collect(ctx context.Context, p *wire.TelemetryPoint) error
}

// SourceFunc adapts a function to Source.
type SourceFunc func(ctx context.Context, p *wire.TelemetryPoint) error

// Collect calls f.
func (f SourceFunc) Collect(ctx context.Context, p *wire.TelemetryPoint) error { return f(ctx, p) }

// Config configures a Collector.
type Config struct {
	// Proc is the root of the proc file system; "" means "/proc".
	Proc string
	// Disks maps a label to a mount point whose usage is reported as
	// disk.<label>.*; nil means {"root": "/"}. Labels are of [a-z0-9_].
	Disks map[string]string
	// System, if set, takes the system's values in place of the /proc and
	// statfs collectors (Proc and Disks are then unused): a simulated
	// device reports synthetic values instead of its host's. nil reads
	// the system.
	System Source
	// Sources add the agent's values to every point, in order.
	Sources []Source
	// Now is the device clock stamped on points; nil means time.Now.
	Now func() time.Time
	// Logger receives collection failures; nil means discard.
	Logger *slog.Logger
}

// Collector samples the system. It is safe for concurrent use; CPU use is
// measured between consecutive calls of Collect.
type Collector struct {
	cfg   Config
	log   *slog.Logger
	disks []string // labels, sorted

	mu      sync.Mutex
	prevCPU cpuTimes
	hasPrev bool
	failing map[string]bool // collectors whose failure was logged
}

// NewCollector returns a collector.
func NewCollector(cfg Config) (*Collector, error) {
	if cfg.Proc == "" {
		cfg.Proc = "/proc"
	}
	if cfg.Disks == nil {
		cfg.Disks = map[string]string{"root": "/"}
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	for label, path := range cfg.Disks {
		if label == "" || strings.Trim(label, "abcdefghijklmnopqrstuvwxyz0123456789_") != "" || !wire.ValidMetricName("disk."+label+".avail_bytes") {
			return nil, fmt.Errorf("telemetry: disk label %q: use [a-z0-9_]", label)
		}
		if !filepath.IsAbs(path) {
			return nil, fmt.Errorf("telemetry: disk %s: mount point %q is not absolute", label, path)
		}
	}
	return &Collector{cfg: cfg, log: cfg.Logger, disks: slices.Sorted(maps.Keys(cfg.Disks)), failing: map[string]bool{}}, nil
}

// Collect returns a point with everything that could be read now. Parts
// that fail are left out, logged once until they work again, and counted
// in telemetry.collect_errors.
func (c *Collector) Collect(ctx context.Context) wire.TelemetryPoint {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := wire.TelemetryPoint{Time: max(c.cfg.Now().UnixMilli(), 0)}
	errs := 0
	check := func(part string, err error) {
		if err != nil {
			errs++
			if !c.failing[part] {
				c.log.Warn("telemetry: collecting failed; left out of points until it works", "part", part, "err", err)
			}
		} else if c.failing[part] {
			c.log.Info("telemetry: collecting works again", "part", part)
		}
		c.failing[part] = err != nil
	}
	if c.cfg.System != nil {
		check("system", c.source(ctx, &p, c.cfg.System))
	} else {
		check("cpu", c.cpu(&p))
		check("load", c.load(&p))
		check("memory", c.memory(&p))
		for _, label := range c.disks {
			check("disk "+label, c.disk(&p, label, c.cfg.Disks[label]))
		}
		check("network", c.network(&p))
		check("processes", c.processes(&p))
		check("sockets", c.sockets(&p))
		check("uptime", c.uptime(&p))
	}
	for i, s := range c.cfg.Sources {
		check("source "+strconv.Itoa(i), c.source(ctx, &p, s))
	}
	p.SetMetric("telemetry.collect_errors", float64(errs))
	return p
}

func (c *Collector) read(name string) ([]byte, error) {
	return os.ReadFile(filepath.Join(c.cfg.Proc, name))
}

func (c *Collector) cpu(p *wire.TelemetryPoint) error {
	b, err := c.read("stat")
	if err != nil {
		return err
	}
	t, cpus, err := parseStat(b)
	if err != nil {
		return fmt.Errorf("stat: %w", err)
	}
	if c.hasPrev {
		if v, ok := busy(c.prevCPU, t); ok {
			p.SetMetric("cpu.busy", v)
		}
	}
	c.prevCPU, c.hasPrev = t, true
	p.SetMetric("cpu.count", float64(cpus))
	return nil
}

func (c *Collector) load(p *wire.TelemetryPoint) error {
	b, err := c.read("loadavg")
	if err != nil {
		return err
	}
	l, err := parseLoadavg(b)
	if err != nil {
		return fmt.Errorf("loadavg: %w", err)
	}
	p.SetMetric("load.1", l[0])
	p.SetMetric("load.5", l[1])
	p.SetMetric("load.15", l[2])
	return nil
}

func (c *Collector) memory(p *wire.TelemetryPoint) error {
	b, err := c.read("meminfo")
	if err != nil {
		return err
	}
	m, err := parseMeminfo(b)
	if err != nil {
		return fmt.Errorf("meminfo: %w", err)
	}
	p.SetMetric("mem.total_bytes", float64(m.total))
	p.SetMetric("mem.available_bytes", float64(m.available))
	p.SetMetric("mem.used_ratio", 1-float64(m.available)/float64(m.total))
	p.SetMetric("swap.total_bytes", float64(m.swapTotal))
	p.SetMetric("swap.used_bytes", float64(m.swapTotal-m.swapFree))
	return nil
}

func (c *Collector) disk(p *wire.TelemetryPoint, label, path string) error {
	u, err := statfs(path)
	if err != nil {
		return err
	}
	p.SetMetric("disk."+label+".total_bytes", float64(u.total))
	p.SetMetric("disk."+label+".avail_bytes", float64(u.avail))
	if u.used+u.avail > 0 {
		p.SetMetric("disk."+label+".used_ratio", float64(u.used)/float64(u.used+u.avail))
	}
	return nil
}

func (c *Collector) network(p *wire.TelemetryPoint) error {
	b, err := c.read("net/dev")
	if err != nil {
		return err
	}
	n, err := parseNetDev(b)
	if err != nil {
		return fmt.Errorf("net/dev: %w", err)
	}
	for name, v := range map[string]uint64{
		"net.rx_bytes": n.rxBytes, "net.tx_bytes": n.txBytes, "net.rx_packets": n.rxPackets, "net.tx_packets": n.txPackets,
		"net.rx_errors": n.rxErrors, "net.tx_errors": n.txErrors, "net.rx_dropped": n.rxDropped, "net.tx_dropped": n.txDropped,
		"net.interfaces": uint64(n.interfaces),
	} {
		p.SetMetric(name, float64(v))
	}
	return nil
}

func (c *Collector) processes(p *wire.TelemetryPoint) error {
	f, err := os.Open(c.cfg.Proc)
	if err != nil {
		return err
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return err
	}
	n := 0
	for _, name := range names {
		if _, err := strconv.ParseUint(name, 10, 32); err == nil {
			n++
		}
	}
	p.SetMetric("proc.count", float64(n))
	return nil
}

func (c *Collector) sockets(p *wire.TelemetryPoint) error {
	ports := func(state uint64, files ...string) ([]uint16, error) {
		var all []uint16
		read := 0
		for _, name := range files {
			b, err := c.read(name)
			if err != nil {
				continue // no IPv6, or no UDP support
			}
			read++
			all = append(all, parseSockets(b, state)...)
		}
		if read == 0 {
			return nil, fmt.Errorf("none of %v readable", files)
		}
		slices.Sort(all)
		return slices.Compact(all), nil
	}
	var tcp, udp []uint16
	var err error
	if c.cfg.Proc == "/proc" {
		tcp, udp, err = listeningPorts()
		if err != nil && !c.failing["sock_diag"] {
			c.log.Info("telemetry: socket diagnostics over netlink failed; reading /proc/net instead", "err", err)
		}
		c.failing["sock_diag"] = err != nil
	}
	if c.cfg.Proc != "/proc" || err != nil {
		if tcp, err = ports(tcpListen, "net/tcp", "net/tcp6"); err != nil {
			return err
		}
		if udp, err = ports(udpClose, "net/udp", "net/udp6"); err != nil {
			return err
		}
	}
	p.SetMetric("listen.tcp.count", float64(len(tcp)))
	p.SetMetric("listen.udp.count", float64(len(udp)))
	p.SetMembers("listen.tcp", portStrings(tcp))
	p.SetMembers("listen.udp", portStrings(udp))
	return nil
}

func portStrings(ports []uint16) []string {
	ports = ports[:min(len(ports), wire.MaxSetMembers)] // the lowest; the count says how many there are
	out := make([]string, len(ports))
	for i, v := range ports {
		out[i] = strconv.Itoa(int(v))
	}
	return out
}

func (c *Collector) uptime(p *wire.TelemetryPoint) error {
	b, err := c.read("uptime")
	if err != nil {
		return err
	}
	u, err := parseUptime(b)
	if err != nil {
		return fmt.Errorf("uptime: %w", err)
	}
	p.SetMetric("uptime.seconds", u)
	b, err = c.read("sys/kernel/random/boot_id")
	if err != nil {
		return err
	}
	id, err := parseBootID(b)
	if err != nil {
		return fmt.Errorf("boot_id: %w", err)
	}
	p.SetInfo("boot_id", id)
	return nil
}

// source runs s on a scratch point and merges what it added into p if
// that is valid and fits.
func (c *Collector) source(ctx context.Context, p *wire.TelemetryPoint, s Source) error {
	var add wire.TelemetryPoint
	if err := s.Collect(ctx, &add); err != nil {
		return err
	}
	if err := add.Validate(); err != nil {
		return fmt.Errorf("invalid values: %w", err)
	}
	merged := wire.TelemetryPoint{Time: p.Time, Metrics: maps.Clone(p.Metrics), Sets: maps.Clone(p.Sets), Info: maps.Clone(p.Info)}
	for k, v := range add.Metrics {
		merged.SetMetric(k, v)
	}
	for k, v := range add.Sets {
		merged.SetMembers(k, v)
	}
	for k, v := range add.Info {
		merged.SetInfo(k, v)
	}
	// One more metric is still to come: telemetry.collect_errors.
	if len(merged.Metrics) >= wire.MaxPointMetrics || merged.Validate() != nil {
		return fmt.Errorf("values do not fit the point (at most %d metrics, %d sets, %d info)", wire.MaxPointMetrics, wire.MaxPointSets, wire.MaxPointInfo)
	}
	*p = merged
	return nil
}
