// Package telemetry is the fleet's telemetry ingestion: it decodes and
// validates the batches devices send from their outboxes, stores each point
// exactly once or counts it as dropped, acknowledges, keeps recent series per
// device (bounded and downsampled) for the console, exports fleet-level
// aggregates to Prometheus (client_golang) and hands accepted points to observers
// such as the alert engine.
//
// # Exactly once or counted as dropped
//
// A device numbers the points of its outbox stream 1, 2, 3, … and sends
// them oldest first (pkg/wire, TelemetryBatch). The ingester keeps a
// cursor per device: the stream and the highest sequence up to which every
// point was stored or accounted for. For each batch it
//
//   - skips the points at or below the cursor (duplicates: QoS 1
//     redelivery, a resend after a lost ack);
//   - counts a gap between the cursor and the batch's first sequence as
//     dropped: the device sends its oldest point first, so a point it no
//     longer holds and the fleet never stored was dropped by its bounded
//     outbox (the device reports its own drop count too);
//   - advances the cursor in the store (Cursors), then keeps the rest in
//     the device's series and hands them to OnBatch, and only then
//     acknowledges the cursor, so the device deletes only what the fleet
//     has. A point is handed to OnBatch after its cursor is committed:
//     never twice, but a process that stops between the commit and OnBatch
//     has handed that batch to no observer.
//
// A batch that decodes but fails validation is refused as a whole: its
// points are counted as rejected and acknowledged, so one bad batch cannot
// block the device's outbox. A batch of a new stream (the device's state
// store was recreated) restarts the cursor; batches of the streams it
// replaced are ignored. A fleet that lost its cursors (in memory, after a
// restart) resumes from the Acked sequence each batch carries instead of
// counting delivered points as dropped.
//
// # Several replicas
//
// `sigil serve` replicas sharing one PostgreSQL database consume a
// device's batches from a broker pool through shared subscriptions, so
// consecutive batches of one device, or two copies of one batch, may reach
// different replicas at once. With Config.SharedCursors the cursor kept in
// memory is only a guess: each batch's cursor is compared and set in the
// store (CursorSwapper), and a batch decided against a cursor another
// replica has since moved is decided again against the stored one. Of two
// replicas ingesting the same batch, one commits it and hands it to
// OnBatch; the other finds its range covered and acknowledges it as a
// duplicate. A gap is counted dropped, and a replaced stream retired, by
// the replica whose commit records it; the retired streams are kept with
// the cursor, so a replica that did not see the stream replaced still
// refuses its batches. The counts and series are each replica's own: of
// what it ingested.
package telemetry

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sigil-iot/sigil/pkg/wire"
)

// Errors of the ingester.
var (
	// ErrUnknownDevice is returned by queries about a device that sent no
	// telemetry since the ingester started (or was forgotten).
	ErrUnknownDevice = errors.New("telemetry: no telemetry from this device")
	// ErrUnknownSeries is returned by Series for a metric that is not
	// charted or that the device never reported.
	ErrUnknownSeries = errors.New("telemetry: no such series")
	// ErrStaleStream is returned by Ingest for a batch of a stream the
	// device replaced; it is not acknowledged.
	ErrStaleStream = errors.New("telemetry: batch of a replaced stream")
	// ErrMalformed is returned by Ingest for a batch whose sequence
	// numbers cannot be read; it is not acknowledged.
	ErrMalformed = errors.New("telemetry: malformed batch")
)

// Bounds on what one device can make the fleet keep.
const (
	maxDeviceMetrics = 256 // distinct metric names with a latest value
	maxDeviceSets    = 16
	maxDeviceInfo    = 32
	retiredStreams   = 4 // replaced streams remembered per device
)

// Cursor is where a device's stream stands at the fleet.
type Cursor struct {
	Stream  []byte // the device's outbox stream
	Through uint64 // every point up to this sequence is stored or counted
	// Reported is the device's own cumulative drop count as last seen.
	Reported uint64
	// Retired are the streams the device replaced, oldest first (at most
	// four): their batches are refused (ErrStaleStream).
	Retired [][]byte `json:",omitempty"`
}

// equal reports whether c and o are the same cursor.
func (c Cursor) equal(o Cursor) bool {
	return bytes.Equal(c.Stream, o.Stream) && c.Through == o.Through && c.Reported == o.Reported &&
		slices.EqualFunc(c.Retired, o.Retired, bytes.Equal)
}

// Cursors keeps the cursors across fleet restarts. Without one (nil in
// Config) they live in memory: exactly once holds while the process runs,
// and after a restart each device's first batch resumes from the sequence
// the device holds an ack for (a batch stored just before the restart
// whose ack was lost is then stored again).
type Cursors interface {
	// Cursor returns the device's cursor; ok is false for a device
	// without one.
	Cursor(ctx context.Context, deviceID string) (c Cursor, ok bool, err error)
	// SetCursor stores the device's cursor.
	SetCursor(ctx context.Context, deviceID string, c Cursor) error
}

// CursorSwapper is what Cursors shared by several ingesters
// (Config.SharedCursors) must also do.
type CursorSwapper interface {
	// SwapCursor stores next as the device's cursor if the stored one is
	// old (a device without a cursor has the zero Cursor), reading and
	// writing it in one transaction, and returns next and true; otherwise
	// it stores nothing and returns the stored cursor and false. Of
	// concurrent swaps from the same cursor, one succeeds.
	SwapCursor(ctx context.Context, deviceID string, old, next Cursor) (stored Cursor, swapped bool, err error)
}

// Point is an accepted point as observers and queries see it.
type Point struct {
	Seq uint64
	// Time is the point's time on the fleet's clock: the device's
	// timestamp shifted by the difference between the fleet's clock and
	// the device's when the batch arrived, so a device with a wrong clock
	// still charts right. DeviceTime is the device's own timestamp.
	Time       time.Time
	DeviceTime time.Time
	Metrics    map[string]float64
	Sets       map[string][]string
	Info       map[string]string
}

// Batch is what one accepted batch added, for observers.
type Batch struct {
	DeviceID string
	Points   []Point // new points only, in sequence order; may be empty
	// Dropped is how many points of the device this batch showed to be
	// dropped by its outbox (a sequence gap).
	Dropped uint64
	// Reboot is true when a point carries another boot_id than the
	// device's previous point.
	Reboot bool
	// NewStream is true when the device started a new outbox stream (its
	// state store was recreated).
	NewStream bool
}

// Config configures an Ingester.
type Config struct {
	// Send publishes an ack to a device's down topic of kind
	// ("telemetry"). nil means no acks are sent (the device resends until
	// one is): for tests and tools only.
	Send func(deviceID, kind string, payload []byte) error
	// Metrics is the registry the fleet-level aggregates are registered
	// in, shared with the fleet's other components; nil means a private
	// registry (see Ingester.Metrics).
	Metrics *prometheus.Registry
	// Cursors keeps cursors across restarts; nil means in memory.
	Cursors Cursors
	// SharedCursors says that other ingesters (replicas on one database)
	// share Cursors and may ingest the same devices' batches: each batch's
	// cursor is then compared and set in Cursors, which must be a
	// CursorSwapper, and the cursor this ingester keeps in memory is never
	// trusted over the stored one (see the package doc). false means this
	// ingester is the only one writing Cursors (the bbolt file).
	SharedCursors bool
	// OnBatch, if set, is called for each accepted batch after its cursor
	// is committed and its points are stored and before it is
	// acknowledged, one device's batches in order. With SharedCursors it
	// gets the batches this ingester committed; another replica's OnBatch
	// gets the others. It must not block for long (hand work to a queue).
	OnBatch func(Batch)
	// Series bounds the recent series kept per device.
	Series SeriesConfig
	// ReportingWindow is how recent a device's last batch must be for it
	// to count as reporting; 0 means 5 minutes.
	ReportingWindow time.Duration
	// QueueSize bounds Submit's queue; 0 means 1024. A batch that finds it
	// full is not acknowledged, so the device sends it again.
	QueueSize int
	// Workers is how many goroutines Run ingests on; 0 means 32. A
	// batch's cursor write waits for the store's commit (with bbolt,
	// concurrent writes share one transaction and one fsync), so many
	// workers keep ingestion going while commits are slow.
	Workers int
	// Now is the fleet's clock; nil means time.Now.
	Now    func() time.Time
	Logger *slog.Logger // nil means discard
}

// Ingester ingests telemetry. It is safe for concurrent use.
type Ingester struct {
	cfg     Config
	log     *slog.Logger
	charted map[string]int // charted metric -> its index in Config.Series.Charted
	q       chan submitted
	m       *instruments
	swap    CursorSwapper // Cursors when shared, else nil

	mu      sync.Mutex
	devices map[string]*device
}

type submitted struct {
	deviceID string
	env      *wire.Envelope
}

// device is one device's telemetry state; mu guards everything in it.
type device struct {
	mu       sync.Mutex
	id       string
	loaded   bool // cursor read from Cursors
	cur      Cursor
	lastSeen time.Time // fleet clock of the last accepted batch
	last     time.Time // fleet time of the newest point
	bootID   string
	latest   map[string]float64
	sets     map[string][]string
	info     map[string]string
	series   []series // by index in Config.Series.Charted, once one has a point
	counts   Counts
}

// Counts are the accounting of one device, or of the fleet: every point
// a device appended is Ingested once, or Dropped (never reached the
// fleet), or Rejected (invalid); Duplicates are extra copies skipped.
type Counts struct {
	Batches    uint64 `json:"batches"`
	Ingested   uint64 `json:"ingested"`
	Duplicates uint64 `json:"duplicates"`
	Dropped    uint64 `json:"dropped"`
	Rejected   uint64 `json:"rejected"`
	// DeviceReported is the sum of the drops the device reported itself;
	// it can exceed Dropped when the device dropped points the fleet had
	// already stored but not yet acknowledged.
	DeviceReported uint64 `json:"device_reported"`
	Reboots        uint64 `json:"reboots"`
	NewStreams     uint64 `json:"new_streams"`
}

// New returns an ingester; Run processes what Submit queues.
func New(cfg Config) (*Ingester, error) {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Metrics == nil {
		cfg.Metrics = prometheus.NewRegistry()
	}
	if cfg.ReportingWindow <= 0 {
		cfg.ReportingWindow = 5 * time.Minute
	}
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = 1024
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 32
	}
	cfg.Series.defaults()
	var swap CursorSwapper
	if cfg.SharedCursors {
		var ok bool
		if swap, ok = cfg.Cursors.(CursorSwapper); !ok {
			return nil, fmt.Errorf("telemetry: shared cursors need a store that compares and sets them (CursorSwapper), not %T", cfg.Cursors)
		}
	}
	for _, name := range cfg.Series.Charted {
		if !wire.ValidMetricName(name) {
			return nil, fmt.Errorf("telemetry: charted metric %q is not a valid metric name", name)
		}
	}
	in := &Ingester{cfg: cfg, log: cfg.Logger, charted: map[string]int{}, q: make(chan submitted, cfg.QueueSize),
		swap: swap, devices: map[string]*device{}}
	for i, name := range cfg.Series.Charted {
		if _, ok := in.charted[name]; !ok {
			in.charted[name] = i
		}
	}
	m, err := newInstruments(cfg.Metrics, in)
	if err != nil {
		return nil, err
	}
	in.m = m
	return in, nil
}

// Metrics returns the registry the ingester's aggregates are in.
func (in *Ingester) Metrics() *prometheus.Registry { return in.cfg.Metrics }

// Submit queues a batch from an authenticated device (the ID the broker
// authenticated, never one from the payload) for Run. When the queue is
// full the batch is left unacknowledged and the device sends it again.
func (in *Ingester) Submit(deviceID string, env *wire.Envelope) {
	select {
	case in.q <- submitted{deviceID, env}:
	default:
		in.m.queueFull.Add(1)
		in.log.Warn("telemetry queue full; batch left for the device to resend", "device_id", deviceID)
	}
}

// Run ingests submitted batches on Config.Workers goroutines until ctx
// ends, and returns once they stopped. Batches are ingested in parallel: a
// device sends one batch at a time, and the sequence numbers keep the
// accounting right whatever order redelivered batches are handled in.
func (in *Ingester) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for range in.cfg.Workers {
		wg.Go(func() {
			for {
				select {
				case <-ctx.Done():
					return
				case s := <-in.q:
					in.Handle(s.deviceID, s.env)
				}
			}
		})
	}
	wg.Wait()
	return nil
}

// Handle ingests one batch and sends the ack, if any.
func (in *Ingester) Handle(deviceID string, env *wire.Envelope) {
	ack, err := in.Ingest(deviceID, env)
	if err != nil {
		in.log.Warn("telemetry batch not ingested", "device_id", deviceID, "err", err)
	}
	if ack == nil || in.cfg.Send == nil {
		return
	}
	b, err := wire.Encode(wire.TypeTelemetryAck, env.ID, in.cfg.Now(), ack)
	if err == nil {
		err = in.cfg.Send(deviceID, wire.KindTelemetry, b)
	}
	if err != nil {
		in.log.Warn("sending telemetry ack failed; the device will resend", "device_id", deviceID, "err", err)
	}
}

// Ingest decodes, validates and stores one batch and returns the ack to
// send, or nil when the batch must not be acknowledged (with an error that
// says why). An error with a non-nil ack means the batch was refused and
// its points counted as rejected.
func (in *Ingester) Ingest(deviceID string, env *wire.Envelope) (*wire.TelemetryAck, error) {
	if !wire.ValidID(deviceID) {
		return nil, fmt.Errorf("%w: device ID %q", ErrMalformed, deviceID)
	}
	var b wire.TelemetryBatch
	decodeErr := wire.DecodeBody(env, wire.TypeTelemetryBatch, &b)
	if decodeErr != nil && (!errors.Is(decodeErr, wire.ErrInvalidBody) || !sequenced(&b)) {
		in.m.batches("malformed").Add(1)
		return nil, fmt.Errorf("%w: %w", ErrMalformed, decodeErr)
	}
	now := in.cfg.Now()
	d, err := in.device(deviceID)
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for attempt := 1; ; attempt++ {
		ack, err := in.ingest(d, env, &b, decodeErr, now)
		if !errors.Is(err, errCursorMoved) {
			return ack, err
		}
		// Another replica moved the cursor: d.cur is now the stored one,
		// and the batch is decided again against it.
		if attempt == maxSwaps {
			return nil, fmt.Errorf("telemetry: cursor of %s moved under %d attempts to advance it: %w", deviceID, attempt, err)
		}
	}
}

// errCursorMoved is returned by ingest when the shared store's cursor was
// not the one the batch was decided against (Config.SharedCursors).
var errCursorMoved = errors.New("telemetry: cursor moved by another replica")

// maxSwaps bounds the decisions of one batch whose shared cursor keeps
// moving; the batch is then left unacknowledged for the device to resend.
const maxSwaps = 8

// ingest decides b against d's cursor and stores the new one (Ingest);
// d.mu is held. It returns errCursorMoved, having changed nothing but
// d.cur (now the stored cursor), when a shared store's cursor moved.
func (in *Ingester) ingest(d *device, env *wire.Envelope, b *wire.TelemetryBatch, decodeErr error, now time.Time) (*wire.TelemetryAck, error) {
	deviceID := d.id
	// Nothing of this batch counts until its cursor is stored: the
	// counters, metrics and logs change with commit, and a failed save
	// puts the device back as it was, so that the resent batch (or the
	// batch decided again) is counted once.
	orig, origCounts := d.cur, d.counts
	var commit []func()
	save := func() error {
		if err := in.saveCursor(d, orig); err != nil {
			d.counts = origCounts
			return err
		}
		for _, f := range commit {
			f()
		}
		return nil
	}
	newStream := false
	if !bytes.Equal(d.cur.Stream, b.Stream) {
		// A retired stream stays retired: a replica may refuse it on what
		// it keeps in memory.
		for _, r := range d.cur.Retired {
			if bytes.Equal(r, b.Stream) {
				in.m.batches("stale").Add(1)
				return nil, ErrStaleStream
			}
		}
		var retired [][]byte
		if old := d.cur; old.Stream != nil {
			retired = append(slices.Clone(old.Retired), old.Stream)
			retired = retired[max(0, len(retired)-retiredStreams):]
			d.counts.NewStreams++
			commit = append(commit, func() {
				in.m.newStreams.Add(1)
				in.log.Info("device started a new telemetry stream (state store recreated?)", "device_id", deviceID,
					"old_stream", hex.EncodeToString(old.Stream), "old_through", old.Through, "stream", hex.EncodeToString(b.Stream))
			})
			newStream = true
		}
		d.cur = Cursor{Stream: bytes.Clone(b.Stream), Retired: retired}
	}
	// Points the device holds an ack for were delivered, whatever this
	// fleet remembers.
	d.cur.Through = max(d.cur.Through, b.Acked)
	d.counts.Batches++
	d.lastSeen = now
	if b.Dropped > d.cur.Reported {
		d.counts.DeviceReported += b.Dropped - d.cur.Reported
		reported := b.Dropped - d.cur.Reported
		commit = append(commit, func() { in.m.deviceReported.Add(reported) })
		d.cur.Reported = b.Dropped
	}
	ack := &wire.TelemetryAck{Stream: d.cur.Stream}
	if b.Last() <= d.cur.Through {
		d.counts.Duplicates += uint64(len(b.Points))
		commit = append(commit, func() { in.m.duplicates.Add(uint64(len(b.Points))) })
		commit = append(commit, func() { in.m.batches("duplicate").Add(1) })
		ack.Through = d.cur.Through
		if err := save(); err != nil {
			return nil, err
		}
		return ack, nil
	}
	var gap uint64
	if b.First > d.cur.Through+1 {
		gap = b.First - d.cur.Through - 1
		d.counts.Dropped += gap
		from := d.cur.Through + 1
		commit = append(commit, func() {
			in.m.dropped.Add(gap)
			in.log.Warn("device dropped telemetry points from its full outbox", "device_id", deviceID, "dropped", gap,
				"from", from, "to", b.First-1)
		})
		ack.Reason, ack.Dropped = wire.ReasonTelemetryDropped, gap
	}
	skip := int(d.cur.Through + 1 - min(b.First, d.cur.Through+1)) // points already stored
	d.counts.Duplicates += uint64(skip)
	commit = append(commit, func() { in.m.duplicates.Add(uint64(skip)) })

	if decodeErr != nil {
		n := uint64(len(b.Points) - skip)
		d.counts.Rejected += n
		commit = append(commit, func() { in.m.rejected.Add(n) })
		commit = append(commit, func() { in.m.batches("rejected").Add(1) })
		d.cur.Through = b.Last()
		ack.Through, ack.Reason, ack.Message = d.cur.Through, wire.ReasonBadRequest, truncate(decodeErr.Error(), 512)
		if err := save(); err != nil {
			return nil, err
		}
		return ack, fmt.Errorf("telemetry: %d points refused: %w", n, decodeErr)
	}

	batch := Batch{DeviceID: deviceID, Dropped: gap, NewStream: newStream, Points: make([]Point, 0, len(b.Points)-skip)}
	offset := now.Sub(env.Timestamp()) // fleet clock minus device clock, at arrival
	for i := skip; i < len(b.Points); i++ {
		p := &b.Points[i]
		dt := time.UnixMilli(p.Time)
		t := dt.Add(offset)
		if t.After(now) {
			t = now
		}
		batch.Points = append(batch.Points, Point{Seq: b.First + uint64(i), Time: t, DeviceTime: dt, Metrics: p.Metrics, Sets: p.Sets, Info: p.Info})
	}
	n := uint64(len(batch.Points))
	d.counts.Ingested += n
	commit = append(commit, func() { in.m.ingested.Add(n) })
	commit = append(commit, func() { in.m.batches("accepted").Add(1) })
	d.cur.Through = b.Last()
	if err := save(); err != nil {
		return nil, err
	}
	for i := range batch.Points {
		if in.record(d, &batch.Points[i]) {
			batch.Reboot = true
		}
	}
	if in.cfg.OnBatch != nil {
		in.cfg.OnBatch(batch)
	}
	ack.Through = d.cur.Through
	return ack, nil
}

// sequenced reports whether a batch that failed validation still has
// sequence numbers the fleet can account for.
func sequenced(b *wire.TelemetryBatch) bool {
	v := wire.TelemetryBatch{Stream: b.Stream, First: b.First, Acked: b.Acked, Dropped: b.Dropped,
		Points: make([]wire.TelemetryPoint, len(b.Points))}
	return v.Validate() == nil
}

// saveCursor persists d's cursor if it changed; on failure it restores
// prev so that nothing is acknowledged that is not recorded. With shared
// cursors it compares and sets it, changed or not (the store's cursor is
// the one to trust), and returns errCursorMoved with d.cur set to the
// stored cursor when that was not prev.
func (in *Ingester) saveCursor(d *device, prev Cursor) error {
	if in.swap != nil {
		stored, swapped, err := in.swap.SwapCursor(context.Background(), d.id, prev, d.cur)
		if err != nil {
			d.cur = prev
			return fmt.Errorf("telemetry: save cursor of %s: %w", d.id, err)
		}
		if !swapped {
			d.cur = stored
			return errCursorMoved
		}
		return nil
	}
	if in.cfg.Cursors == nil || prev.equal(d.cur) {
		return nil
	}
	if err := in.cfg.Cursors.SetCursor(context.Background(), d.id, d.cur); err != nil {
		d.cur = prev
		return fmt.Errorf("telemetry: save cursor of %s: %w", d.id, err)
	}
	return nil
}

// record keeps a point's values in d and the fleet histograms; it reports
// whether the point shows a reboot.
func (in *Ingester) record(d *device, p *Point) (reboot bool) {
	t := p.Time.UnixMilli()
	newest := !p.Time.Before(d.last)
	if newest {
		d.last = p.Time
	}
	for name, v := range p.Metrics {
		if h := in.m.histograms[name]; h != nil {
			h.Observe(v)
		}
		if i, ok := in.charted[name]; ok {
			if d.series == nil {
				d.series = make([]series, len(in.cfg.Series.Charted))
			}
			d.series[i].add(&in.cfg.Series, t, v)
		}
		if !newest {
			continue
		}
		if _, ok := d.latest[name]; ok || len(d.latest) < maxDeviceMetrics {
			d.latest[name] = v
		}
	}
	if !newest {
		return false
	}
	for name, m := range p.Sets {
		if _, ok := d.sets[name]; ok || len(d.sets) < maxDeviceSets {
			d.sets[name] = m
		}
	}
	for name, v := range p.Info {
		if _, ok := d.info[name]; ok || len(d.info) < maxDeviceInfo {
			d.info[name] = v
		}
	}
	if id := p.Info["boot_id"]; id != "" {
		reboot = d.bootID != "" && id != d.bootID
		d.bootID = id
		if reboot {
			d.counts.Reboots++
			in.m.reboots.Add(1)
		}
	}
	return reboot
}

// device returns id's state, creating it (and loading its cursor) if
// needed.
func (in *Ingester) device(id string) (*device, error) {
	in.mu.Lock()
	d := in.devices[id]
	if d == nil {
		d = &device{id: id, latest: map[string]float64{}, sets: map[string][]string{}, info: map[string]string{}}
		in.devices[id] = d
	}
	in.mu.Unlock()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.loaded || in.cfg.Cursors == nil {
		d.loaded = true
		return d, nil
	}
	c, ok, err := in.cfg.Cursors.Cursor(context.Background(), id)
	if err != nil {
		return nil, fmt.Errorf("telemetry: load cursor of %s: %w", id, err)
	}
	if ok {
		d.cur = c
	}
	d.loaded = true
	return d, nil
}

// Forget drops everything the ingester keeps about a device (after it was
// decommissioned). Its stored cursor, if any, stays with Cursors.
func (in *Ingester) Forget(deviceID string) {
	in.mu.Lock()
	delete(in.devices, deviceID)
	in.mu.Unlock()
}

// DeviceStatus is what the fleet knows of one device's telemetry.
type DeviceStatus struct {
	DeviceID  string              `json:"device_id"`
	LastSeen  time.Time           `json:"last_seen"`  // fleet clock of the last accepted batch
	LastPoint time.Time           `json:"last_point"` // fleet time of the newest point
	Metrics   map[string]float64  `json:"metrics"`    // latest values
	Sets      map[string][]string `json:"sets"`
	Info      map[string]string   `json:"info"`
	BootID    string              `json:"boot_id,omitempty"`
	Stream    string              `json:"stream"` // hex
	Through   uint64              `json:"through"`
	Counts    Counts              `json:"counts"`
	Charted   []string            `json:"charted"` // series available to Series
}

// Device returns a device's status, or ErrUnknownDevice.
func (in *Ingester) Device(deviceID string) (DeviceStatus, error) {
	in.mu.Lock()
	d := in.devices[deviceID]
	in.mu.Unlock()
	if d == nil {
		return DeviceStatus{}, ErrUnknownDevice
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.counts.Batches == 0 {
		return DeviceStatus{}, ErrUnknownDevice
	}
	sets := make(map[string][]string, len(d.sets))
	for k, v := range d.sets {
		sets[k] = slices.Clone(v)
	}
	st := DeviceStatus{DeviceID: d.id, LastSeen: d.lastSeen, LastPoint: d.last, Metrics: maps.Clone(d.latest), Sets: sets,
		Info: maps.Clone(d.info), BootID: d.bootID, Stream: hex.EncodeToString(d.cur.Stream), Through: d.cur.Through,
		Counts: d.counts, Charted: in.chartedOf(d)}
	return st, nil
}

// Devices returns the IDs of the devices with telemetry, sorted.
func (in *Ingester) Devices() []string {
	in.mu.Lock()
	defer in.mu.Unlock()
	return slices.Sorted(maps.Keys(in.devices))
}

// Series returns a device's charted metric since the given time: coarse
// buckets first, then the raw points of the recent window. It returns
// ErrUnknownDevice or ErrUnknownSeries when there is nothing to chart.
func (in *Ingester) Series(deviceID, metric string, since time.Time) ([]Sample, error) {
	in.mu.Lock()
	d := in.devices[deviceID]
	in.mu.Unlock()
	if d == nil {
		return nil, ErrUnknownDevice
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	i, ok := in.charted[metric]
	if !ok || d.series == nil || d.series[i].empty() {
		return nil, fmt.Errorf("%w: %s", ErrUnknownSeries, metric)
	}
	return d.series[i].samples(&in.cfg.Series, since.UnixMilli()), nil
}

// chartedOf returns the names of d's series that have points, sorted;
// d.mu is held.
func (in *Ingester) chartedOf(d *device) []string {
	var out []string
	for name, i := range in.charted {
		if d.series != nil && !d.series[i].empty() {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// Totals returns the fleet's accounting: the sum over devices, including
// devices since forgotten.
func (in *Ingester) Totals() Counts { return in.m.totals() }

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "")
}
