package telemetry

import (
	"fmt"

	"github.com/sigil-iot/sigil/fleet/metrics"
)

// The fleet-level aggregates on /metrics. None has a per-device label: the
// number of series stays the same however many devices report.
//
//	sigil_telemetry_batches_total{result}        accepted, duplicate, rejected, malformed, stale
//	sigil_telemetry_points_ingested_total        points stored, each once
//	sigil_telemetry_points_duplicate_total       extra copies skipped
//	sigil_telemetry_points_dropped_total         points devices' outboxes dropped (sequence gaps)
//	sigil_telemetry_points_rejected_total        points of refused (invalid) batches
//	sigil_telemetry_device_reported_drops_total  drops as the devices report them
//	sigil_telemetry_reboots_total                boot_id changes
//	sigil_telemetry_stream_restarts_total        devices that started a new outbox stream
//	sigil_telemetry_queue_full_total             batches left unacknowledged because the queue was full
//	sigil_telemetry_devices                      devices with telemetry
//	sigil_telemetry_devices_reporting            devices with a batch within ReportingWindow
//	sigil_telemetry_cpu_busy_ratio               histogram of cpu.busy over every point of the fleet
//	sigil_telemetry_memory_used_ratio            histogram of mem.used_ratio
//	sigil_telemetry_disk_used_ratio              histogram of disk.root.used_ratio

type instruments struct {
	ingested, duplicates, dropped, rejected *metrics.Counter
	deviceReported, reboots, newStreams     *metrics.Counter
	queueFull                               *metrics.Counter
	byResult                                map[string]*metrics.Counter
	histograms                              map[string]*metrics.Histogram // by device metric name
}

func (m *instruments) batches(result string) *metrics.Counter { return m.byResult[result] }

func (m *instruments) totals() Counts {
	u := func(c *metrics.Counter) uint64 { return uint64(c.Value()) }
	return Counts{
		Batches:  u(m.byResult["accepted"]) + u(m.byResult["duplicate"]) + u(m.byResult["rejected"]),
		Ingested: u(m.ingested), Duplicates: u(m.duplicates), Dropped: u(m.dropped), Rejected: u(m.rejected),
		DeviceReported: u(m.deviceReported), Reboots: u(m.reboots), NewStreams: u(m.newStreams),
	}
}

func newInstruments(r *metrics.Registry, in *Ingester) (*instruments, error) {
	m := &instruments{byResult: map[string]*metrics.Counter{}, histograms: map[string]*metrics.Histogram{}}
	var errs []error
	counter := func(name, help string) *metrics.Counter {
		c, err := r.Counter(name, help)
		errs = append(errs, err)
		if c == nil {
			c = &metrics.Counter{}
		}
		return c
	}
	m.ingested = counter("sigil_telemetry_points_ingested_total", "Telemetry points stored, each exactly once.")
	m.duplicates = counter("sigil_telemetry_points_duplicate_total", "Duplicate telemetry points skipped (redeliveries and resends).")
	m.dropped = counter("sigil_telemetry_points_dropped_total", "Telemetry points dropped by devices' full outboxes, from sequence gaps.")
	m.rejected = counter("sigil_telemetry_points_rejected_total", "Telemetry points of batches refused as invalid.")
	m.deviceReported = counter("sigil_telemetry_device_reported_drops_total", "Telemetry drops as devices report them.")
	m.reboots = counter("sigil_telemetry_reboots_total", "Device reboots seen as a new boot_id.")
	m.newStreams = counter("sigil_telemetry_stream_restarts_total", "Devices that started a new telemetry stream (state store recreated).")
	m.queueFull = counter("sigil_telemetry_queue_full_total", "Telemetry batches left unacknowledged because the ingestion queue was full.")
	vec, err := r.CounterVec("sigil_telemetry_batches_total", "Telemetry batches by result.", "result")
	errs = append(errs, err)
	for _, res := range []string{"accepted", "duplicate", "rejected", "malformed", "stale"} {
		c := &metrics.Counter{}
		if vec != nil {
			c, err = vec.With(res)
			errs = append(errs, err)
		}
		m.byResult[res] = c
	}
	ratios := []float64{0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1}
	for metric, name := range map[string]string{
		"cpu.busy":             "sigil_telemetry_cpu_busy_ratio",
		"mem.used_ratio":       "sigil_telemetry_memory_used_ratio",
		"disk.root.used_ratio": "sigil_telemetry_disk_used_ratio",
	} {
		h, err := r.Histogram(name, "Distribution of "+metric+" over the fleet's telemetry points.", ratios)
		errs = append(errs, err)
		if h != nil {
			m.histograms[metric] = h
		}
	}
	errs = append(errs,
		r.GaugeFunc("sigil_telemetry_devices", "Devices with telemetry since the fleet started.", func() float64 {
			return float64(len(in.Devices()))
		}),
		r.GaugeFunc("sigil_telemetry_devices_reporting", "Devices whose last telemetry batch is within the reporting window.", func() float64 {
			return float64(in.reporting())
		}))
	for _, err := range errs {
		if err != nil {
			return nil, fmt.Errorf("telemetry: register metrics: %w", err)
		}
	}
	return m, nil
}

// reporting counts the devices with a batch within the reporting window.
func (in *Ingester) reporting() int {
	in.mu.Lock()
	devs := make([]*device, 0, len(in.devices))
	for _, d := range in.devices {
		devs = append(devs, d)
	}
	in.mu.Unlock()
	since := in.cfg.Now().Add(-in.cfg.ReportingWindow)
	n := 0
	for _, d := range devs {
		d.mu.Lock()
		if d.counts.Batches > 0 && d.lastSeen.After(since) {
			n++
		}
		d.mu.Unlock()
	}
	return n
}
