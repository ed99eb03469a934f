package fleetbench

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// Result is what a run measured; it is written as JSON beside the plot.
// Durations and latencies are in seconds or milliseconds as their names
// say; memory in bytes or kilobytes (1,000 bytes) as theirs say.
type Result struct {
	Command  string    `json:"command"`
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished"`
	Machine  Machine   `json:"machine"`
	Settings Settings  `json:"settings"`
	// Floor is the cryptography of each operation, timed here: the fleet's
	// CPU per operation is set against it (FloorRatio fields).
	Floor Floor `json:"floor"`
	// Sizes has one entry per device count the run reached (one without
	// --sizes): the devices' coming up, the soak and the API during it.
	Sizes      []SizeResult      `json:"sizes"`
	Rotation   *RotationResult   `json:"rotation,omitempty"`
	Campaign   *CampaignResult   `json:"campaign,omitempty"`
	Quarantine *QuarantineResult `json:"quarantine,omitempty"`
	Reconnect  *ReconnectResult  `json:"reconnect,omitempty"`
	// Messages accounts for every QoS 1 message the devices sent, by
	// kind, against what the fleet counted (read before the reconnect
	// storm, whose restart resets the fleet's counters).
	Messages []KindCount `json:"messages"`
	// Telemetry is the devices' telemetry outboxes at the end.
	Telemetry *OutboxTotals `json:"telemetry,omitempty"`
	// Devices is the devices' own account at the end.
	Devices *ShardSummary `json:"devices,omitempty"`
	// Notes say what was not measured, and why.
	Notes []string `json:"notes,omitempty"`
}

// Machine is where the run ran.
type Machine struct {
	CPUs        int        `json:"cpus"`
	MemoryBytes uint64     `json:"memory_bytes"`
	Kernel      string     `json:"kernel"`
	Go          string     `json:"go"`
	LoadBefore  [3]float64 `json:"load_before"`
	LoadAfter   [3]float64 `json:"load_after"`
}

// Settings are the run's parameters.
type Settings struct {
	Devices           int      `json:"devices"`
	Sizes             []int    `json:"sizes,omitempty"`
	Fleet             string   `json:"fleet"` // "child" or the external fleet's URL
	FleetEnv          []string `json:"fleet_env,omitempty"`
	Rate              float64  `json:"rate"`
	ShardSize         int      `json:"shard_size"`
	PerSource         int      `json:"per_source"`
	AttestInterval    Duration `json:"attest_interval"`
	TelemetryInterval Duration `json:"telemetry_interval"`
	Soak              Duration `json:"soak"`
	Phases            []string `json:"phases"`
	// The scale-out mode: Replicas `sigil serve` processes, Brokers
	// Mosquitto device brokers (and a bootstrap broker), PostgreSQL.
	Replicas int  `json:"replicas,omitempty"`
	Brokers  int  `json:"brokers,omitempty"`
	Postgres bool `json:"postgres,omitempty"`
}

// Dist is the median, 99th percentile and maximum of latencies, in
// milliseconds, over N observations.
type Dist struct {
	N   int     `json:"n"`
	P50 float64 `json:"p50_ms"`
	P99 float64 `json:"p99_ms"`
	Max float64 `json:"max_ms"`
}

// dist takes the nearest-rank percentiles of ms (which it sorts).
func dist(ms []float64) Dist {
	if len(ms) == 0 {
		return Dist{}
	}
	slices.Sort(ms)
	rank := func(p float64) float64 {
		i := int(math.Ceil(float64(len(ms))*p)) - 1
		return ms[min(max(i, 0), len(ms)-1)]
	}
	return Dist{N: len(ms), P50: rank(0.50), P99: rank(0.99), Max: ms[len(ms)-1]}
}

func (d Dist) String() string {
	if d.N == 0 {
		return "–"
	}
	return fmt.Sprintf("p50 %s, p99 %s, max %s (n=%d)", msString(d.P50), msString(d.P99), msString(d.Max), d.N)
}

func msString(ms float64) string {
	switch {
	case ms >= 10000:
		return fmt.Sprintf("%.1f s", ms/1000)
	case ms >= 100:
		return fmt.Sprintf("%.0f ms", ms)
	default:
		return fmt.Sprintf("%.1f ms", ms)
	}
}

// SizeResult is one device count: bringing the new devices up, the soak
// and the API during it.
type SizeResult struct {
	Devices int           `json:"devices"`
	Shards  int           `json:"shards"`
	Enroll  EnrollResult  `json:"enroll"`
	Soak    *SoakResult   `json:"soak,omitempty"`
	API     *APIResult    `json:"api,omitempty"`
	Fleet   FleetSnapshot `json:"fleet"` // at the end of this size
}

// EnrollResult is the devices started at one size coming up: enrolled
// from their EK certificates, connected over mTLS, attested on connect.
type EnrollResult struct {
	Devices int `json:"devices"` // started at this size
	Active  int `json:"active"`
	// WallSeconds is from the first device's start to the last one's
	// first mTLS session; PerSecond is Devices / WallSeconds.
	WallSeconds  float64 `json:"wall_s"`
	PerSecond    float64 `json:"per_second"`
	TimeToActive Dist    `json:"time_to_active"`
	// FleetCPUSeconds is the fleet's CPU time over the same span (its
	// enrollments, and the new devices' first attestation and telemetry);
	// CPUPerDeviceMS divides it by Devices.
	FleetCPUSeconds float64 `json:"fleet_cpu_s"`
	CPUPerDeviceMS  float64 `json:"fleet_cpu_per_device_ms"`
	// Enrolled is the fleet's sigil_enroll_enrolled_total over the span.
	Enrolled float64 `json:"enrolled"`
	// FloorRatio is CPUPerDeviceMS against Floor.Enrollment.
	FloorRatio float64 `json:"floor_ratio"`
	// Outside the fleet's replicas (scale-out mode): the database's and
	// the device brokers' CPU over the same span, per device.
	DatabaseCPUPerDeviceMS float64 `json:"database_cpu_per_device_ms,omitempty"`
	BrokerCPUPerDeviceMS   float64 `json:"broker_cpu_per_device_ms,omitempty"`
}

// FleetSnapshot is the fleet's process figures at one moment.
type FleetSnapshot struct {
	RSSBytes         float64 `json:"rss_bytes"`
	HeapInuseBytes   float64 `json:"heap_inuse_bytes"`
	StackInuseBytes  float64 `json:"stack_inuse_bytes"`
	Goroutines       float64 `json:"goroutines"`
	OpenFDs          float64 `json:"open_fds"`
	CPUSeconds       float64 `json:"cpu_s"`
	DeviceConnection float64 `json:"device_connections"`
	// The scale-out mode: the replicas (the figures above are their
	// sums), the device brokers' resident memory and CPU, the
	// database's (its server and backends).
	Replicas       float64 `json:"replicas,omitempty"`
	Brokers        float64 `json:"brokers,omitempty"`
	BrokerRSSBytes float64 `json:"broker_rss_bytes,omitempty"`
	BrokerCPU      float64 `json:"broker_cpu_s,omitempty"`
	DatabaseRSS    float64 `json:"database_pss_bytes,omitempty"` // proportional: shared buffers counted once
	DatabaseCPU    float64 `json:"database_cpu_s,omitempty"`
	// BrokerOpenFiles are each device broker's open files: its
	// connections and a few of its own.
	BrokerOpenFiles []float64 `json:"broker_open_files,omitempty"`
}

func snapshotOf(m sample) FleetSnapshot {
	return FleetSnapshot{RSSBytes: m["process_resident_memory_bytes"], HeapInuseBytes: m["go_memstats_heap_inuse_bytes"],
		StackInuseBytes: m["go_memstats_stack_inuse_bytes"], Goroutines: m["go_goroutines"], OpenFDs: m["process_open_fds"],
		CPUSeconds: m["process_cpu_seconds_total"], DeviceConnection: m["sigil_broker_device_connections"],
		Replicas: m[keyReplicas], Brokers: m[keyBrokerConns], BrokerRSSBytes: m[keyBrokerRSS], BrokerCPU: m[keyBrokerCPU],
		DatabaseRSS: m[keyDBRSS], DatabaseCPU: m[keyDBCPU], BrokerOpenFiles: brokerFiles(m)}
}

// brokerFiles lists the device brokers' open files from a scrape.
func brokerFiles(m sample) []float64 {
	var out []float64
	for i := 0; ; i++ {
		v, ok := m[brokerFilesKey(i)]
		if !ok {
			return out
		}
		out = append(out, v)
	}
}

// SoakResult is the fleet holding its devices for a while.
type SoakResult struct {
	Seconds   float64 `json:"seconds"`
	Connected int     `json:"connected"` // devices connected at the end
	// Disconnects are sessions the devices lost during the soak.
	Disconnects uint64 `json:"disconnects"`
	// Fleet memory at the end per connected device: RSS, Go heap in use,
	// goroutine stacks, goroutines (above the fleet's own at start).
	RSSPerDeviceKB   float64 `json:"rss_per_device_kb"`
	HeapPerDeviceKB  float64 `json:"heap_per_device_kb"`
	StackPerDeviceKB float64 `json:"stack_per_device_kb"`
	// MarginalRSSPerDeviceKB is the RSS added per device since the
	// previous size's soak (none at the first).
	MarginalRSSPerDeviceKB float64 `json:"marginal_rss_per_device_kb,omitempty"`
	GoroutinesPerDevice    float64 `json:"goroutines_per_device"`
	FleetCPUSeconds        float64 `json:"fleet_cpu_s"`
	CPUPerDevicePerMinMS   float64 `json:"fleet_cpu_per_device_per_minute_ms"`
	CPUPerMessageMS        float64 `json:"fleet_cpu_per_message_ms"`
	// CPUPerAttestationMS is the soak's fleet CPU over the attestations it
	// judged: every other cost of the soak (telemetry, keepalives, the
	// API probe) counted in, so an upper bound; AttestFloorRatio sets it
	// against Floor.Attestation.
	CPUPerAttestationMS float64 `json:"fleet_cpu_per_attestation_ms"`
	AttestFloorRatio    float64 `json:"attestation_floor_ratio"`
	// The scale-out mode: the device brokers' resident memory per
	// connected device (above the brokers' own before any device
	// connected), each replica's RSS and Go heap per device (the sums
	// above over the replicas), and the database's and brokers' CPU per
	// attestation (over the same verdicts) and per message.
	BrokerRSSPerDeviceKB        float64           `json:"broker_rss_per_device_kb,omitempty"`
	ReplicaRSSPerDeviceKB       float64           `json:"replica_rss_per_device_kb,omitempty"`
	ReplicaHeapPerDeviceKB      float64           `json:"replica_heap_per_device_kb,omitempty"`
	DatabaseCPUPerAttestationMS float64           `json:"database_cpu_per_attestation_ms,omitempty"`
	BrokerCPUPerMessageMS       float64           `json:"broker_cpu_per_message_ms,omitempty"`
	Sent                        map[string]uint64 `json:"sent"` // by kind, during the soak
	Verdicts                    float64           `json:"verdicts"`
	TelemetryBatches            float64           `json:"telemetry_batches"`
	Start, End                  FleetSnapshot     `json:"-"`
}

// APIResult is the API's and the console's latency under load.
type APIResult struct {
	DeviceList  Dist   `json:"device_list"`  // GET /api/v1/devices?limit=50
	DevicePage  Dist   `json:"device_page"`  // GET /api/v1/devices/{id}
	ConsoleList Dist   `json:"console_list"` // GET /devices (console)
	ConsolePage Dist   `json:"console_page"` // GET /devices/{id} (console)
	Errors      int    `json:"errors"`
	LastError   string `json:"last_error,omitempty"`
}

// RotationResult is a forced re-key of every connected device.
type RotationResult struct {
	Job     string `json:"job"`
	Devices int    `json:"devices"` // in the job
	Renewed int    `json:"renewed"`
	// JobSeconds is from the job's start to its done state;
	// AllNewSeconds to every device connected on its new certificate.
	JobSeconds      float64 `json:"job_s"`
	AllNewSeconds   float64 `json:"all_new_s"`
	OnNewCert       int     `json:"on_new_cert"`
	PerSecond       float64 `json:"per_second"`
	FleetCPUSeconds float64 `json:"fleet_cpu_s"`
	CPUPerRenewalMS float64 `json:"fleet_cpu_per_renewal_ms"`
	// FloorRatio is CPUPerRenewalMS against Floor.Renewal.
	FloorRatio float64 `json:"floor_ratio"`
	// NetCPUPerRenewalMS is CPUPerRenewalMS less the fleet's CPU of the
	// steady state (the last soak's CPU per second, over the job's time):
	// the devices' attestations and telemetry that went on during the
	// re-key; NetFloorRatio sets it against Floor.Renewal;
	// NetDatabaseCPUPerRenewalMS does the same for the database.
	NetCPUPerRenewalMS         float64 `json:"net_fleet_cpu_per_renewal_ms,omitempty"`
	NetFloorRatio              float64 `json:"net_floor_ratio,omitempty"`
	NetDatabaseCPUPerRenewalMS float64 `json:"net_database_cpu_per_renewal_ms,omitempty"`
	// The database's and device brokers' CPU per renewal (scale-out).
	DatabaseCPUPerRenewalMS float64 `json:"database_cpu_per_renewal_ms,omitempty"`
	BrokerCPUPerRenewalMS   float64 `json:"broker_cpu_per_renewal_ms,omitempty"`
	// TimeBoxed is set when the run stopped waiting for the job at
	// --rotate-for: the figures are those of the renewals done by then.
	TimeBoxed bool `json:"time_boxed,omitempty"`
	// Disconnects are sessions the devices lost (rather than closed to
	// reconnect on their new certificates) during the rotation.
	Disconnects uint64 `json:"disconnects"`
}

// CampaignResult is a firmware campaign.
type CampaignResult struct {
	ID              string  `json:"id"`
	Devices         int     `json:"devices"`
	ImageBytes      int     `json:"image_bytes"`
	Waves           int     `json:"waves"`
	Seconds         float64 `json:"seconds"` // start to completed
	Committed       int     `json:"committed"`
	Failed          int     `json:"failed"`
	State           string  `json:"state"`
	OnNew           int     `json:"devices_on_new_firmware"`
	FleetCPUSeconds float64 `json:"fleet_cpu_s"`
	// Disconnects are sessions the devices lost (not closed for their
	// reboot into the new image) during the campaign.
	Disconnects uint64 `json:"disconnects"`
}

// QuarantineResult is the latency from challenging a tampered device to
// its session closed (at the device), its certificates revoked (the
// fleet's quarantine event) and an alert at the sink.
type QuarantineResult struct {
	Samples int      `json:"samples"`
	Closed  Dist     `json:"session_closed"`
	Revoked Dist     `json:"revoked"`
	Alerted Dist     `json:"alert_at_sink"`
	Total   Dist     `json:"total"`
	Missing int      `json:"missing"` // samples where a step was not seen in time
	Rules   []string `json:"rules,omitempty"`
}

// ReconnectResult is the fleet restarted under its devices.
type ReconnectResult struct {
	Devices int `json:"devices"` // expected back
	// DownSeconds is from SIGTERM to the new process's API answering;
	// ReconnectedSeconds and ReattestedSeconds from SIGTERM to every
	// expected device connected again, and attested again.
	DownSeconds        float64 `json:"down_s"`
	ReconnectedSeconds float64 `json:"all_reconnected_s"`
	ReattestedSeconds  float64 `json:"all_reattested_s"`
	Reconnected        int     `json:"reconnected"`
	Reattested         int     `json:"reattested"`
	GaveUp             int     `json:"gave_up"`
	API                Dist    `json:"api_after_restart"`
	APIErrors          int     `json:"api_errors_after_restart"`
}

// KindCount accounts for one kind of message: what the devices sent (the
// broker acknowledged) against what the fleet counted. Sent is read
// before the fleet's counters and SentAfter after them; UnackedAfter
// counts, after them too, the publishes the broker did not acknowledge
// (a session lost while waiting), which the fleet may have received: with
// nothing lost Sent <= Fleet <= SentAfter + UnackedAfter.
type KindCount struct {
	Kind         string  `json:"kind"`
	Sent         uint64  `json:"sent"`
	SentAfter    uint64  `json:"sent_after"`
	UnackedAfter uint64  `json:"unacknowledged_after,omitempty"`
	Ingested     float64 `json:"ingested"`
	Dropped      float64 `json:"dropped"` // counted drops
	Refused      float64 `json:"refused,omitempty"`
	Lost         float64 `json:"lost"` // max(0, Sent - Ingested - Dropped - Refused)
	Fleet        string  `json:"fleet_counters"`
}

// writeJSON writes r to path.
func (r *Result) writeJSON(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// Print writes the report as text.
func (r *Result) Print(w io.Writer) {
	fmt.Fprintf(w, "sigil-sim bench fleet: %s\n", r.Command)
	fmt.Fprintf(w, "%s to %s, %d CPUs, %.1f GiB, load %.2f %.2f %.2f before, %.2f %.2f %.2f after; %s, %s\n",
		r.Started.Format(time.RFC3339), r.Finished.Format(time.TimeOnly), r.Machine.CPUs, float64(r.Machine.MemoryBytes)/(1<<30),
		r.Machine.LoadBefore[0], r.Machine.LoadBefore[1], r.Machine.LoadBefore[2], r.Machine.LoadAfter[0], r.Machine.LoadAfter[1], r.Machine.LoadAfter[2],
		r.Machine.Kernel, r.Machine.Go)
	f := r.Floor
	fmt.Fprintf(w, "crypto floor here (µs of CPU): ECDSA P-256 sign %.0f, verify %.0f, ECDH P-256 %.0f, X25519MLKEM768 server share %.0f; TLS handshake %.0f, mTLS %.0f; attestation %.0f, renewal %.0f, enrollment %.0f\n",
		f.ECDSASign, f.ECDSAVerify, f.ECDHP256, f.KeyExchange, f.Handshake, f.MTLSHandshake, f.Attestation, f.Renewal, f.Enrollment)
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	for _, s := range r.Sizes {
		fmt.Fprintf(w, "\n== %d devices (%d shards)\n", s.Devices, s.Shards)
		e := s.Enroll
		fmt.Fprintf(tw, "enrolled and active\t%d of %d started in %.1f s: %.1f/s\n", e.Active, e.Devices, e.WallSeconds, e.PerSecond)
		fmt.Fprintf(tw, "time to active\t%s\n", e.TimeToActive)
		fmt.Fprintf(tw, "fleet CPU while they came up\t%.1f s, %.2f ms per device: %.1f× the crypto floor of an enrollment (%.2f ms)\n",
			e.FleetCPUSeconds, e.CPUPerDeviceMS, e.FloorRatio, r.Floor.Enrollment/1000)
		if e.DatabaseCPUPerDeviceMS+e.BrokerCPUPerDeviceMS > 0 {
			fmt.Fprintf(tw, "database and brokers while they came up	PostgreSQL %.2f ms, Mosquitto %.2f ms of CPU per device\n", e.DatabaseCPUPerDeviceMS, e.BrokerCPUPerDeviceMS)
		}
		if so := s.Soak; so != nil {
			fmt.Fprintf(tw, "soak\t%.0f s, %d connected at the end, %d sessions lost\n", so.Seconds, so.Connected, so.Disconnects)
			fmt.Fprintf(tw, "fleet memory per device\tRSS %.1f KB, Go heap %.1f KB, stacks %.1f KB, %.2f goroutines\n",
				so.RSSPerDeviceKB, so.HeapPerDeviceKB, so.StackPerDeviceKB, so.GoroutinesPerDevice)
			if so.MarginalRSSPerDeviceKB != 0 {
				fmt.Fprintf(tw, "RSS added per device since the last size\t%.1f KB\n", so.MarginalRSSPerDeviceKB)
			}
			fmt.Fprintf(tw, "fleet CPU\t%.1f s: %.2f ms per device per minute, %.2f ms per message\n", so.FleetCPUSeconds, so.CPUPerDevicePerMinMS, so.CPUPerMessageMS)
			fmt.Fprintf(tw, "fleet CPU per attestation\tat most %.2f ms (all of the soak's CPU over its %.0f verdicts): %.1f× the floor (%.3f ms)\n",
				so.CPUPerAttestationMS, so.Verdicts, so.AttestFloorRatio, r.Floor.Attestation/1000)
			fmt.Fprintf(tw, "messages during the soak\t%s\n", kinds(so.Sent))
			if so.ReplicaRSSPerDeviceKB > 0 {
				fmt.Fprintf(tw, "each replica's memory per device\tRSS %.1f KB, Go heap %.1f KB\n", so.ReplicaRSSPerDeviceKB, so.ReplicaHeapPerDeviceKB)
			}
			if so.BrokerRSSPerDeviceKB > 0 {
				fmt.Fprintf(tw, "device brokers' memory per device\tRSS %.1f KB (Mosquitto, above their RSS before the devices)\n", so.BrokerRSSPerDeviceKB)
			}
			if so.DatabaseCPUPerAttestationMS+so.BrokerCPUPerMessageMS > 0 {
				fmt.Fprintf(tw, "database and brokers during the soak\tPostgreSQL %.2f ms of CPU per attestation, Mosquitto %.3f ms per message\n", so.DatabaseCPUPerAttestationMS, so.BrokerCPUPerMessageMS)
			}
		}
		if a := s.API; a != nil {
			fmt.Fprintf(tw, "API device list\t%s\n", a.DeviceList)
			fmt.Fprintf(tw, "API device page\t%s\n", a.DevicePage)
			fmt.Fprintf(tw, "console device list\t%s\n", a.ConsoleList)
			fmt.Fprintf(tw, "console device page\t%s\n", a.ConsolePage)
			if a.Errors > 0 {
				fmt.Fprintf(tw, "API errors\t%d (last: %s)\n", a.Errors, a.LastError)
			}
		}
		f := s.Fleet
		fmt.Fprintf(tw, "fleet at the end\tRSS %.0f MB, heap %.0f MB, %.0f goroutines, %.0f open files, %.0f device connections\n",
			f.RSSBytes/1e6, f.HeapInuseBytes/1e6, f.Goroutines, f.OpenFDs, f.DeviceConnection)
		if f.Replicas > 0 {
			fmt.Fprintf(tw, "scale-out at the end\t%.0f replicas (the figures above are their sums), %.0f device brokers: RSS %.0f MB, open files %v; PostgreSQL: PSS %.0f MB\n",
				f.Replicas, f.Brokers, f.BrokerRSSBytes/1e6, f.BrokerOpenFiles, f.DatabaseRSS/1e6)
		}
		tw.Flush()
	}
	if x := r.Rotation; x != nil {
		fmt.Fprintf(w, "\n== forced re-key (%s)\n", x.Job)
		fmt.Fprintf(tw, "renewed\t%d of %d in %.1f s (%.0f/s); all on new certificates after %.1f s (%d)\n", x.Renewed, x.Devices, x.JobSeconds, x.PerSecond, x.AllNewSeconds, x.OnNewCert)
		fmt.Fprintf(tw, "fleet CPU\t%.1f s, %.2f ms per renewal: %.1f× the crypto floor of a renewal (%.2f ms)\n", x.FleetCPUSeconds, x.CPUPerRenewalMS, x.FloorRatio, r.Floor.Renewal/1000)
		if x.NetCPUPerRenewalMS > 0 {
			fmt.Fprintf(tw, "less the steady state's CPU\t%.2f ms per renewal: %.1f× the floor (PostgreSQL %.2f ms)\n", x.NetCPUPerRenewalMS, x.NetFloorRatio, x.NetDatabaseCPUPerRenewalMS)
		}
		if x.DatabaseCPUPerRenewalMS+x.BrokerCPUPerRenewalMS > 0 {
			fmt.Fprintf(tw, "database and brokers\tPostgreSQL %.2f ms, Mosquitto %.2f ms of CPU per renewal\n", x.DatabaseCPUPerRenewalMS, x.BrokerCPUPerRenewalMS)
		}
		if x.TimeBoxed {
			fmt.Fprintf(tw, "time-boxed\tthe job was still running when the run stopped waiting: the figures are the renewals done by then\n")
		}
		fmt.Fprintf(tw, "sessions lost\t%d\n", x.Disconnects)
		tw.Flush()
	}
	if x := r.Campaign; x != nil {
		fmt.Fprintf(w, "\n== firmware campaign %s (%d KiB image)\n", x.ID, x.ImageBytes>>10)
		fmt.Fprintf(tw, "devices\t%d in %d waves: %s after %.1f s, %d committed, %d failed, %d report the new version\n", x.Devices, x.Waves, x.State, x.Seconds, x.Committed, x.Failed, x.OnNew)
		fmt.Fprintf(tw, "fleet CPU\t%.1f s\n", x.FleetCPUSeconds)
		fmt.Fprintf(tw, "sessions lost\t%d\n", x.Disconnects)
		tw.Flush()
	}
	if x := r.Quarantine; x != nil {
		fmt.Fprintf(w, "\n== quarantine under load (%d samples, %d incomplete; alert rules %s)\n", x.Samples, x.Missing, strings.Join(x.Rules, ", "))
		fmt.Fprintf(tw, "session closed\t%s\n", x.Closed)
		fmt.Fprintf(tw, "revoked\t%s\n", x.Revoked)
		fmt.Fprintf(tw, "alert at the sink\t%s\n", x.Alerted)
		fmt.Fprintf(tw, "all three\t%s\n", x.Total)
		tw.Flush()
	}
	if x := r.Reconnect; x != nil {
		fmt.Fprintf(w, "\n== reconnect storm (sigil serve restarted under %d devices)\n", x.Devices)
		fmt.Fprintf(tw, "fleet down\t%.1f s (SIGTERM to API answering)\n", x.DownSeconds)
		fmt.Fprintf(tw, "all reconnected\t%.1f s (%d)\n", x.ReconnectedSeconds, x.Reconnected)
		fmt.Fprintf(tw, "all re-attested\t%.1f s (%d)\n", x.ReattestedSeconds, x.Reattested)
		fmt.Fprintf(tw, "devices that gave up\t%d\n", x.GaveUp)
		fmt.Fprintf(tw, "API after the restart\t%s, %d errors\n", x.API, x.APIErrors)
		tw.Flush()
	}
	if len(r.Messages) > 0 {
		fmt.Fprintf(w, "\n== QoS 1 messages: sent by the devices (broker-acknowledged) and counted by the fleet\n")
		fmt.Fprintln(tw, "kind\tsent\tingested\tdropped (counted)\trefused\tlost\tfleet counters")
		for _, k := range r.Messages {
			fmt.Fprintf(tw, "%s\t%d\t%.0f\t%.0f\t%.0f\t%.0f\t%s\n", k.Kind, k.Sent, k.Ingested, k.Dropped, k.Refused, k.Lost, k.Fleet)
		}
		tw.Flush()
	}
	if t := r.Telemetry; t != nil {
		fmt.Fprintf(w, "telemetry outboxes at the end: %d points appended, %d acknowledged, %d dropped at the bound, %d pending\n", t.Appended, t.Acked, t.Dropped, t.Pending)
	}
	if d := r.Devices; d != nil {
		fmt.Fprintf(w, "devices at the end: %d of %d connected, %d gave up; %d sessions lost in all (the quarantines and the restart close sessions), %d warnings\n",
			d.Connected, d.Devices, d.Exited, d.Disconnects, d.Warnings)
		for _, l := range d.LastWarnings {
			fmt.Fprintf(w, "  %s\n", l)
		}
	}
	for _, n := range r.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
}

// kinds prints message counts by kind, sorted.
func kinds(m map[string]uint64) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}
