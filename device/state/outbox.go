package state

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/sigil-iot/sigil/pkg/wire"
)

// The telemetry outbox (docs/PROTOCOL.md, "Telemetry").
//
// Points wait here until the fleet acknowledges them, across restarts and
// outages. Each point gets the next sequence number of the outbox's stream
// when it is appended; Ack deletes points up to a sequence, and nothing
// else does except the bound: when a new point would exceed MaxPoints or
// MaxBytes the oldest points are dropped and counted, and the count is
// persisted and sent with every batch so the loss is reported, never
// silent. Every method is one transaction (on bbolt, synced).

// Defaults of OutboxOptions.
// A point as device/telemetry collects it is about 800 bytes, so the byte
// bound binds first: about 10,000 points, three and a half days of one
// point every 30 s.
const (
	DefaultOutboxPoints = 20000
	DefaultOutboxBytes  = 8 << 20 // 8 MiB
)

// Errors of the outbox.
var (
	// ErrOutboxStream is returned by Ack for an acknowledgement of another
	// stream than the outbox's (a late ack from before the store was
	// recreated); nothing is deleted.
	ErrOutboxStream = errors.New("state: telemetry ack for another stream")
	// ErrOutboxAck is returned by Ack for a sequence the outbox never
	// assigned; nothing is deleted.
	ErrOutboxAck = errors.New("state: telemetry ack beyond the last point")
	// ErrPointTooLarge is returned by Append for a point whose encoding
	// alone exceeds the outbox's byte bound or a batch's size.
	ErrPointTooLarge = errors.New("state: telemetry point too large")
)

// OutboxOptions bounds an outbox.
type OutboxOptions struct {
	// MaxPoints bounds the points held; 0 means DefaultOutboxPoints.
	MaxPoints int
	// MaxBytes bounds the encoded points held; 0 means DefaultOutboxBytes.
	MaxBytes int64
	// Rand is the entropy for the stream ID chosen when the outbox is
	// first used; nil means crypto/rand.
	Rand io.Reader
}

// Outbox is the telemetry outbox in a Store. It is safe for concurrent use.
type Outbox struct {
	db   Engine
	opts OutboxOptions
}

// OutboxStats describes an outbox.
type OutboxStats struct {
	Stream  []byte // empty before the first Append
	Next    uint64 // sequence the next point gets
	Acked   uint64 // highest sequence acknowledged by the fleet
	Dropped uint64 // points dropped by the bound since the stream began
	Points  int    // points held
	Bytes   int64  // their encoded size
}

// outboxMeta is the outbox's persisted bookkeeping, kept beside the points
// and updated in the same transactions.
type outboxMeta struct {
	Stream  []byte `cbor:"1,keyasint"`
	Next    uint64 `cbor:"2,keyasint"`
	Acked   uint64 `cbor:"3,keyasint,omitempty"`
	Dropped uint64 `cbor:"4,keyasint,omitempty"`
	Points  int    `cbor:"5,keyasint,omitempty"`
	Bytes   int64  `cbor:"6,keyasint,omitempty"`
}

var (
	bucketOutbox = []byte("telemetry-outbox")
	bucketPoints = []byte("points") // nested in bucketOutbox: 8-byte big-endian sequence -> CBOR point
	keyMeta      = []byte("meta")
)

// maxPointSize keeps room in a message for the batch around a point.
const maxPointSize = wire.MaxMessageSize - 4096

// Outbox returns the store's telemetry outbox with the given bounds. The
// bounds apply from the next Append; points above a lowered bound are
// dropped (and counted) then.
func (s *Store) Outbox(opts OutboxOptions) *Outbox {
	if opts.MaxPoints <= 0 {
		opts.MaxPoints = DefaultOutboxPoints
	}
	if opts.MaxBytes <= 0 {
		opts.MaxBytes = DefaultOutboxBytes
	}
	if opts.Rand == nil {
		opts.Rand = rand.Reader
	}
	return &Outbox{db: s.db, opts: opts}
}

// Append stores points with the next sequence numbers, in order, dropping
// the oldest points held if the bound is exceeded. It returns how many
// points it dropped. Invalid points are refused before anything is stored.
func (o *Outbox) Append(points ...wire.TelemetryPoint) (dropped int, err error) {
	enc := make([][]byte, len(points))
	for i := range points {
		if err := points[i].Validate(); err != nil {
			return 0, fmt.Errorf("state: telemetry point %d: %w", i, err)
		}
		b, err := wire.Marshal(&points[i])
		if err != nil {
			return 0, fmt.Errorf("state: encode telemetry point %d: %w", i, err)
		}
		if int64(len(b)) > o.opts.MaxBytes || len(b) > maxPointSize {
			return 0, fmt.Errorf("%w: %d bytes", ErrPointTooLarge, len(b))
		}
		enc[i] = b
	}
	err = o.db.Update(func(tx Tx) error {
		root, pts, m, err := o.open(tx, true)
		if err != nil {
			return err
		}
		for _, b := range enc {
			if err := pts.Put(seqKey(m.Next), b); err != nil {
				return err
			}
			m.Next++
			m.Points++
			m.Bytes += int64(len(b))
		}
		for k, v := pts.First(); k != nil && (m.Points > o.opts.MaxPoints || m.Bytes > o.opts.MaxBytes); k, v = pts.First() {
			m.Points--
			m.Bytes -= int64(len(v))
			if err := pts.Delete(k); err != nil {
				return err
			}
			m.Dropped++
			dropped++
		}
		return putMeta(root, m)
	})
	if err != nil {
		return 0, fmt.Errorf("state: append telemetry: %w", err)
	}
	return dropped, nil
}

// Pending returns the oldest points held as the next batch to send: at
// most maxPoints points (at most wire.MaxTelemetryPoints) whose encodings
// add up to at most maxBytes, but always at least one point. It returns
// nil when the outbox is empty.
func (o *Outbox) Pending(maxPoints, maxBytes int) (*wire.TelemetryBatch, error) {
	if maxPoints <= 0 || maxPoints > wire.MaxTelemetryPoints {
		maxPoints = wire.MaxTelemetryPoints
	}
	var batch *wire.TelemetryBatch
	err := o.db.View(func(tx Tx) error {
		_, pts, m, err := o.open(tx, false)
		if err != nil || pts == nil {
			return err
		}
		size := 0
		return pts.Ascend(nil, func(k, v []byte) (bool, error) {
			if batch != nil && (len(batch.Points) >= maxPoints || size+len(v) > maxBytes) {
				return false, nil
			}
			var p wire.TelemetryPoint
			if err := wire.Unmarshal(v, &p); err != nil {
				return false, fmt.Errorf("point %d: %w", binary.BigEndian.Uint64(k), err)
			}
			if batch == nil {
				batch = &wire.TelemetryBatch{Stream: bytes.Clone(m.Stream), First: binary.BigEndian.Uint64(k), Acked: m.Acked, Dropped: m.Dropped}
			}
			batch.Points = append(batch.Points, p)
			size += len(v)
			return true, nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("state: read telemetry: %w", err)
	}
	return batch, nil
}

// Ack deletes the points of stream up to and including through, the
// fleet's cursor, and returns how many it deleted. Acks are cumulative and
// idempotent: a repeated or older ack deletes nothing more.
func (o *Outbox) Ack(stream []byte, through uint64) (deleted int, err error) {
	err = o.db.Update(func(tx Tx) error {
		root, pts, m, err := o.open(tx, false)
		if err != nil {
			return err
		}
		if pts == nil || !bytes.Equal(stream, m.Stream) {
			return ErrOutboxStream
		}
		if through >= m.Next {
			return fmt.Errorf("%w: ack %d, last %d", ErrOutboxAck, through, m.Next-1)
		}
		if through <= m.Acked {
			return nil
		}
		for k, v := pts.First(); k != nil && binary.BigEndian.Uint64(k) <= through; k, v = pts.First() {
			m.Points--
			m.Bytes -= int64(len(v))
			if err := pts.Delete(k); err != nil {
				return err
			}
			deleted++
		}
		m.Acked = through
		return putMeta(root, m)
	})
	if errors.Is(err, ErrOutboxStream) || errors.Is(err, ErrOutboxAck) {
		return 0, err
	}
	if err != nil {
		return 0, fmt.Errorf("state: ack telemetry: %w", err)
	}
	return deleted, nil
}

// Stats returns the outbox's bookkeeping.
func (o *Outbox) Stats() (OutboxStats, error) {
	var st OutboxStats
	err := o.db.View(func(tx Tx) error {
		_, pts, m, err := o.open(tx, false)
		if err != nil || pts == nil {
			return err
		}
		st = OutboxStats{Stream: bytes.Clone(m.Stream), Next: m.Next, Acked: m.Acked, Dropped: m.Dropped, Points: m.Points, Bytes: m.Bytes}
		return nil
	})
	if err != nil {
		return OutboxStats{}, fmt.Errorf("state: read telemetry stats: %w", err)
	}
	if st.Next == 0 {
		st.Next = 1
	}
	return st, nil
}

// open returns the outbox's buckets and bookkeeping. With create it makes
// them (a new stream) if the outbox was never used; without, pts is nil
// for an outbox never used.
func (o *Outbox) open(tx Tx, create bool) (root, pts Bucket, m *outboxMeta, err error) {
	root = tx.Bucket(bucketOutbox)
	if root == nil && !create {
		return nil, nil, nil, nil
	}
	if root == nil {
		if root, err = tx.CreateBucketIfNotExists(bucketOutbox); err != nil {
			return nil, nil, nil, err
		}
	}
	m = &outboxMeta{}
	if v := root.Get(keyMeta); v != nil {
		if err := wire.Unmarshal(v, m); err != nil {
			return nil, nil, nil, fmt.Errorf("outbox bookkeeping: %w", err)
		}
	}
	pts = root.Bucket(bucketPoints)
	if pts == nil && create {
		if pts, err = root.CreateBucketIfNotExists(bucketPoints); err != nil {
			return nil, nil, nil, err
		}
	}
	if len(m.Stream) == 0 && create {
		m.Stream = make([]byte, wire.TelemetryStreamLen)
		if _, err := io.ReadFull(o.opts.Rand, m.Stream); err != nil {
			return nil, nil, nil, fmt.Errorf("stream ID: %w", err)
		}
		m.Next = 1
	}
	if pts != nil && (len(m.Stream) != wire.TelemetryStreamLen || m.Next == 0) {
		return nil, nil, nil, errors.New("outbox bookkeeping missing or damaged")
	}
	return root, pts, m, nil
}

func putMeta(root Bucket, m *outboxMeta) error {
	v, err := wire.Marshal(m)
	if err != nil {
		return err
	}
	return root.Put(keyMeta, v)
}

func seqKey(seq uint64) []byte {
	var k [8]byte
	binary.BigEndian.PutUint64(k[:], seq)
	return k[:]
}
