package telemetry

import (
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
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
	ingested, duplicates, dropped, rejected atomic.Uint64
	deviceReported, reboots, newStreams     atomic.Uint64
	queueFull                               atomic.Uint64
	byResult                                map[string]*atomic.Uint64
	histograms                              map[string]prometheus.Histogram // by device metric name
}

// batchResults are the values of sigil_telemetry_batches_total's result
// label.
var batchResults = []string{"accepted", "duplicate", "rejected", "malformed", "stale"}

func (m *instruments) batches(result string) *atomic.Uint64 { return m.byResult[result] }

func (m *instruments) totals() Counts {
	return Counts{
		Batches:  m.byResult["accepted"].Load() + m.byResult["duplicate"].Load() + m.byResult["rejected"].Load(),
		Ingested: m.ingested.Load(), Duplicates: m.duplicates.Load(), Dropped: m.dropped.Load(), Rejected: m.rejected.Load(),
		DeviceReported: m.deviceReported.Load(), Reboots: m.reboots.Load(), NewStreams: m.newStreams.Load(),
	}
}

// newInstruments registers the aggregates in r: the counters read the
// ingester's own totals (Totals) at each scrape.
func newInstruments(r prometheus.Registerer, in *Ingester) (*instruments, error) {
	m := &instruments{byResult: map[string]*atomic.Uint64{}, histograms: map[string]prometheus.Histogram{}}
	counter := func(n *atomic.Uint64, name, help string, labels prometheus.Labels) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help, ConstLabels: labels},
			func() float64 { return float64(n.Load()) })
	}
	cs := []prometheus.Collector{
		counter(&m.ingested, "sigil_telemetry_points_ingested_total", "Telemetry points stored, each exactly once.", nil),
		counter(&m.duplicates, "sigil_telemetry_points_duplicate_total", "Duplicate telemetry points skipped (redeliveries and resends).", nil),
		counter(&m.dropped, "sigil_telemetry_points_dropped_total", "Telemetry points dropped by devices' full outboxes, from sequence gaps.", nil),
		counter(&m.rejected, "sigil_telemetry_points_rejected_total", "Telemetry points of batches refused as invalid.", nil),
		counter(&m.deviceReported, "sigil_telemetry_device_reported_drops_total", "Telemetry drops as devices report them.", nil),
		counter(&m.reboots, "sigil_telemetry_reboots_total", "Device reboots seen as a new boot_id.", nil),
		counter(&m.newStreams, "sigil_telemetry_stream_restarts_total", "Devices that started a new telemetry stream (state store recreated).", nil),
		counter(&m.queueFull, "sigil_telemetry_queue_full_total", "Telemetry batches left unacknowledged because the ingestion queue was full.", nil),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "sigil_telemetry_devices", Help: "Devices with telemetry since the fleet started."},
			func() float64 { return float64(len(in.Devices())) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "sigil_telemetry_devices_reporting", Help: "Devices whose last telemetry batch is within the reporting window."},
			func() float64 { return float64(in.reporting()) }),
	}
	for _, res := range batchResults {
		n := new(atomic.Uint64)
		m.byResult[res] = n
		cs = append(cs, counter(n, "sigil_telemetry_batches_total", "Telemetry batches by result.", prometheus.Labels{"result": res}))
	}
	ratios := []float64{0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1}
	for metric, name := range map[string]string{
		"cpu.busy":             "sigil_telemetry_cpu_busy_ratio",
		"mem.used_ratio":       "sigil_telemetry_memory_used_ratio",
		"disk.root.used_ratio": "sigil_telemetry_disk_used_ratio",
	} {
		h := prometheus.NewHistogram(prometheus.HistogramOpts{Name: name, Help: "Distribution of " + metric + " over the fleet's telemetry points.", Buckets: ratios})
		m.histograms[metric] = h
		cs = append(cs, h)
	}
	var errs []error
	for _, c := range cs {
		errs = append(errs, r.Register(c))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("telemetry: register metrics: %w", err)
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
