// Package synthetic makes plausible system telemetry for simulated
// devices: a device/telemetry Source that stands in for the /proc and
// statfs collectors (agent.WithSystemTelemetry), so that 20,000 devices in
// one process neither scan the host 20,000 times a minute nor all report
// the host's numbers.
//
// Each device's values come from its seed: its size (CPUs, memory, disk),
// its usual CPU and memory load with jitter around it, a stable set of
// listening ports, traffic counters that only grow. Now and then
// (Config.Changes) something changes for a few points, a CPU spike or a
// new listening port, so that the fleet's alert rules (baselines,
// never-seen members) have something to judge.
//
// It is for simulation only and never reaches sigild.
package synthetic

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/sigil-iot/sigil/device/telemetry"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// DefaultChanges is the chance per point of a change when Config.Changes
// is zero: about one a device every hour and a half at one point a minute.
const DefaultChanges = 0.01

// changeLength is how many points a change lasts.
const changeLength = 3

// Config configures a System.
type Config struct {
	// Seed makes the device: the same seed, the same device and series.
	Seed uint64
	// Changes is the chance, at each point, that a change begins (a CPU
	// spike or a new listening port, for a few points). 0 means
	// DefaultChanges; negative means none.
	Changes float64
	// Now is the device's clock (uptime); nil means time.Now.
	Now func() time.Time
}

// System is one simulated device's system values. It is safe for
// concurrent use.
type System struct {
	now     func() time.Time
	changes float64

	mu      sync.Mutex
	rng     *rand.Rand
	booted  time.Time
	bootID  string
	cpus    int
	memory  float64 // bytes
	disk    float64 // bytes
	cpuBase float64 // usual share busy
	memBase float64 // usual share used
	diskUse float64 // share used, creeping up
	load5   float64
	load15  float64
	procs   int
	tcp     []int // stable listening ports
	udp     []int
	rx, tx  uint64
	spike   int // points of the current CPU spike left
	port    int // extra listening port of the current change, 0 for none
	portFor int // its points left
}

var _ telemetry.Source = (*System)(nil)

// New returns the system of the device cfg.Seed names.
func New(cfg Config) *System {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Changes == 0 {
		cfg.Changes = DefaultChanges
	}
	rng := rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x5157_4e54_4845_5449))
	s := &System{now: cfg.Now, changes: cfg.Changes, rng: rng, booted: cfg.Now()}
	s.bootID = fmt.Sprintf("%08x-%04x-%04x-%04x-%012x", rng.Uint32(), rng.Uint32()&0xffff, 0x4000|rng.Uint32()&0x0fff,
		0x8000|rng.Uint32()&0x3fff, rng.Uint64()&0xffff_ffff_ffff)
	s.cpus = []int{1, 2, 4}[rng.IntN(3)]
	s.memory = float64(int64(256<<20) << rng.IntN(4)) // 256 MiB to 2 GiB
	s.disk = float64(int64(4<<30) << rng.IntN(3))     // 4 to 16 GiB
	s.cpuBase = 0.05 + 0.25*rng.Float64()
	s.memBase = 0.25 + 0.4*rng.Float64()
	s.diskUse = 0.3 + 0.4*rng.Float64()
	s.procs = 60 + rng.IntN(90)
	s.tcp = []int{22}
	for _, p := range []int{80, 443, 1883, 8080, 9100} {
		if rng.IntN(3) == 0 {
			s.tcp = append(s.tcp, p)
		}
	}
	if rng.IntN(2) == 0 {
		s.udp = []int{123}
	}
	s.load5, s.load15 = s.cpuBase*float64(s.cpus), s.cpuBase*float64(s.cpus)
	return s
}

// BootID is the device's boot ID (info boot_id).
func (s *System) BootID() string { return s.bootID }

// Collect implements telemetry.Source: one point's system values, under
// the names device/telemetry's collectors use.
func (s *System) Collect(_ context.Context, p *wire.TelemetryPoint) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.rng
	if s.spike == 0 && s.portFor == 0 && s.changes > 0 && r.Float64() < s.changes {
		if r.IntN(2) == 0 {
			s.spike = changeLength
		} else {
			s.port, s.portFor = 2000+r.IntN(8000), changeLength
		}
	}
	cpu := clamp(s.cpuBase+0.03*r.NormFloat64(), 0, 1)
	if s.spike > 0 {
		cpu = 0.85 + 0.14*r.Float64()
		s.spike--
	}
	load1 := cpu * float64(s.cpus) * (0.8 + 0.4*r.Float64())
	s.load5 += (load1 - s.load5) / 5
	s.load15 += (load1 - s.load15) / 15
	mem := clamp(s.memBase+0.02*r.NormFloat64(), 0.05, 0.98)
	s.diskUse = math.Min(s.diskUse+0.00001*r.Float64(), 0.98)
	rx, tx := 10_000+r.Uint64N(90_000), 5_000+r.Uint64N(40_000)
	s.rx += rx
	s.tx += tx

	p.SetMetric("cpu.busy", round(cpu, 4))
	p.SetMetric("cpu.count", float64(s.cpus))
	p.SetMetric("load.1", round(load1, 2))
	p.SetMetric("load.5", round(s.load5, 2))
	p.SetMetric("load.15", round(s.load15, 2))
	p.SetMetric("mem.total_bytes", s.memory)
	p.SetMetric("mem.available_bytes", math.Round(s.memory*(1-mem)))
	p.SetMetric("mem.used_ratio", round(mem, 4))
	p.SetMetric("swap.total_bytes", 0)
	p.SetMetric("swap.used_bytes", 0)
	p.SetMetric("disk.root.total_bytes", s.disk)
	p.SetMetric("disk.root.avail_bytes", math.Round(s.disk*(1-s.diskUse)))
	p.SetMetric("disk.root.used_ratio", round(s.diskUse, 4))
	p.SetMetric("net.rx_bytes", float64(s.rx))
	p.SetMetric("net.tx_bytes", float64(s.tx))
	p.SetMetric("net.rx_packets", float64(s.rx/600))
	p.SetMetric("net.tx_packets", float64(s.tx/400))
	p.SetMetric("net.interfaces", 1)
	p.SetMetric("proc.count", float64(s.procs+r.IntN(5)))
	tcp := s.tcp
	if s.portFor > 0 {
		tcp = append(slices.Clone(tcp), s.port)
		slices.Sort(tcp)
		if s.portFor--; s.portFor == 0 {
			s.port = 0
		}
	}
	p.SetMetric("listen.tcp.count", float64(len(tcp)))
	p.SetMetric("listen.udp.count", float64(len(s.udp)))
	p.SetMembers("listen.tcp", ports(tcp))
	p.SetMembers("listen.udp", ports(s.udp))
	p.SetMetric("uptime.seconds", math.Round(s.now().Sub(s.booted).Seconds()))
	p.SetInfo("boot_id", s.bootID)
	return nil
}

func clamp(v, lo, hi float64) float64 { return math.Max(lo, math.Min(hi, v)) }

func round(v float64, digits int) float64 {
	f := math.Pow10(digits)
	return math.Round(v*f) / f
}

func ports(ps []int) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = strconv.Itoa(p)
	}
	return out
}
