package api

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"time"

	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/telemetry"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// Telemetry is the telemetry ingester as the API uses it
// (fleet/telemetry.Ingester).
type Telemetry interface {
	Device(deviceID string) (telemetry.DeviceStatus, error)
	Series(deviceID, metric string, since time.Time) ([]telemetry.Sample, error)
}

var _ Telemetry = (*telemetry.Ingester)(nil)

// TelemetrySeries is GET /api/v1/devices/{id}/telemetry/series.
type TelemetrySeries struct {
	DeviceID string             `json:"device_id"`
	Metric   string             `json:"metric"`
	Since    time.Time          `json:"since"`
	Samples  []telemetry.Sample `json:"samples"`
}

// defaultSeriesWindow is how far back a series goes without ?since=.
const defaultSeriesWindow = time.Hour

func (h *handler) routesTelemetry() {
	h.route("GET /api/v1/devices/{id}/telemetry", auth.PermDevicesRead, h.deviceTelemetry)
	h.route("GET /api/v1/devices/{id}/telemetry/series", auth.PermDevicesRead, h.telemetrySeries)
	// Prometheus scrapes with a bearer API token (bearer_token_file in its
	// scrape configuration; docs/CONFIG.md). Fleet-level series only.
	h.route("GET /metrics", auth.PermDevicesRead, h.serveMetrics)

	h.describe("GET /api/v1/devices/{id}/telemetry", "A device's telemetry: latest values, sets, delivery counts", nil, telemetry.DeviceStatus{})
	h.describe("GET /api/v1/devices/{id}/telemetry/series", "A charted metric's recent series (?metric=cpu.busy&since=1h or RFC 3339)", nil, TelemetrySeries{})
	h.describe("GET /metrics", "Fleet-level metrics in the Prometheus text format (0.0.4); no per-device labels", nil, nil)
}

// telemetryOn writes a 501 when no ingester is configured.
func (h *handler) telemetryOn(w http.ResponseWriter) bool {
	if h.cfg.Telemetry == nil {
		problem(w, http.StatusNotImplemented, "not implemented", "telemetry is not enabled on this server")
		return false
	}
	return true
}

func (h *handler) deviceTelemetry(w http.ResponseWriter, r *http.Request, _ string) {
	if !h.telemetryOn(w) {
		return
	}
	st, err := h.cfg.Telemetry.Device(r.PathValue("id"))
	if errors.Is(err, telemetry.ErrUnknownDevice) {
		problem(w, http.StatusNotFound, "not found", "no telemetry from a device with that ID since the fleet started")
		return
	}
	if err != nil {
		h.internal(w, err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

func (h *handler) telemetrySeries(w http.ResponseWriter, r *http.Request, _ string) {
	if !h.telemetryOn(w) {
		return
	}
	q := r.URL.Query()
	metric := q.Get("metric")
	if !wire.ValidMetricName(metric) {
		problem(w, http.StatusBadRequest, "bad request", "metric must name a charted metric, e.g. cpu.busy")
		return
	}
	now := h.cfg.Now()
	since := now.Add(-defaultSeriesWindow)
	if s := q.Get("since"); s != "" {
		if d, err := time.ParseDuration(s); err == nil && d > 0 {
			since = now.Add(-d)
		} else if t, err := time.Parse(time.RFC3339, s); err == nil {
			since = t
		} else {
			problem(w, http.StatusBadRequest, "bad request", "since is a positive duration (\"1h\") or an RFC 3339 time")
			return
		}
	}
	id := r.PathValue("id")
	samples, err := h.cfg.Telemetry.Series(id, metric, since)
	switch {
	case errors.Is(err, telemetry.ErrUnknownDevice):
		problem(w, http.StatusNotFound, "not found", "no telemetry from a device with that ID since the fleet started")
		return
	case errors.Is(err, telemetry.ErrUnknownSeries):
		problem(w, http.StatusNotFound, "not found", "the device has no series of that metric (only charted metrics keep one)")
		return
	case err != nil:
		h.internal(w, err)
		return
	}
	if samples == nil {
		samples = []telemetry.Sample{}
	}
	writeJSON(w, http.StatusOK, TelemetrySeries{DeviceID: id, Metric: metric, Since: since.UTC(), Samples: samples})
}

// serveMetrics serves the shared metrics registry.
func (h *handler) serveMetrics(w http.ResponseWriter, r *http.Request, _ string) {
	if h.cfg.Metrics == nil {
		problem(w, http.StatusNotImplemented, "not implemented", "metrics are not enabled on this server")
		return
	}
	h.cfg.Metrics.ServeHTTP(w, r)
}

// Telemetry returns a device's telemetry status.
func (c *Client) Telemetry(ctx context.Context, deviceID string) (*telemetry.DeviceStatus, error) {
	var out telemetry.DeviceStatus
	return &out, c.Do(ctx, http.MethodGet, "/api/v1/devices/"+url.PathEscape(deviceID)+"/telemetry", nil, &out)
}

// TelemetrySeries returns a device's charted metric over the last window.
func (c *Client) TelemetrySeries(ctx context.Context, deviceID, metric string, window time.Duration) (*TelemetrySeries, error) {
	v := url.Values{"metric": {metric}}
	if window > 0 {
		v.Set("since", window.String())
	}
	var out TelemetrySeries
	return &out, c.Do(ctx, http.MethodGet, "/api/v1/devices/"+url.PathEscape(deviceID)+"/telemetry/series?"+v.Encode(), nil, &out)
}
