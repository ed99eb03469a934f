package inventory

import (
	"bytes"
	"cmp"
	"context"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"slices"

	bolt "go.etcd.io/bbolt"

	"github.com/sigil-iot/sigil/fleet/storage/boltdb"
)

// File is the inventory's bbolt file in the fleet's data directory.
const File = "inventory.db"

// The bbolt file's layout. Records are the versioned JSON of
// fleet/internal/record.
const schemaVersion = 2 // 2: secondary indexes (see below)

var (
	bucketMeta    = []byte("meta")
	bucketDevices = []byte("devices")   // device ID -> device record
	bucketEK      = []byte("ek")        // EK fingerprint -> device ID
	bucketTokens  = []byte("tokens")    // token ID -> token record
	bucketTokHash = []byte("tokenhash") // SHA-256 of secret -> token ID
	bucketEvents  = []byte("events")    // device ID 0x00 seq(8) -> event record
	bucketAnon    = []byte("anonymous") // anonymous events, keyed alike (bucketEvents' sequence)
	bucketRevoked = []byte("revoked")   // serial -> revocation record (created with the first)
)

// Open opens or creates the inventory's bbolt file (mode 0600).
func Open(path string, opts ...Option) (*Store, error) {
	o := newStore(opts)
	db, err := boltdb.Open(path, boltdb.Schema{
		Buckets: [][]byte{bucketMeta, bucketDevices, bucketEK, bucketTokens, bucketTokHash, bucketEvents, bucketAnon},
		Version: schemaVersion,
		// A new file, or one written before the indexes (schema 1).
		Steps: []boltdb.Step{{Version: 2, Apply: buildIndexes}},
	}, boltdb.Options{Name: "inventory", Timeout: o.timeout, NoSync: o.noSync, Locked: ErrLocked})
	if err != nil {
		return nil, err
	}
	protos := newProtocols() // one process: every write is seen here
	return &Store{e: &boltEngine{db: db, onRevoke: o.onRevoke, protos: protos}, opts: o, protos: protos}, nil
}

// boltEngine keeps the inventory in a bbolt file.
type boltEngine struct {
	db       *boltdb.DB // group commit (Write) for the frequent writes: devices and events
	onRevoke func()     // WithRevocationHook
	protos   *protocols // Store.protos
}

var _ engine = (*boltEngine)(nil)

func (b *boltEngine) close() error { return b.db.Close() }

func (b *boltEngine) view(ctx context.Context, fn func(tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return b.db.View(func(t *bolt.Tx) error { return fn(boltTx{tx: t}) })
}

func (b *boltEngine) update(ctx context.Context, fn func(tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return b.db.Update(func(t *bolt.Tx) error { return fn(boltTx{t, b.onRevoke, b.protos}) })
}

func (b *boltEngine) write(ctx context.Context, fn func(tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return b.db.Write(func(t *bolt.Tx) error { return fn(boltTx{t, b.onRevoke, b.protos}) })
}

func (b *boltEngine) writeAll(ctx context.Context, fns []func(tx) error) []error {
	errs := make([]error, len(fns))
	if err := ctx.Err(); err != nil {
		for i := range errs {
			errs[i] = err
		}
		return errs
	}
	bfns := make([]func(*bolt.Tx) error, len(fns))
	for i, fn := range fns {
		bfns[i] = func(t *bolt.Tx) error { return fn(boltTx{t, b.onRevoke, b.protos}) }
	}
	return b.db.WriteAll(bfns)
}

func (b *boltEngine) query(ctx context.Context, q *Query, where map[Field][]byte, after []byte, limit, budget int) (Page, error) {
	var out Page
	err := b.view(ctx, func(t tx) error {
		out = Page{}
		w := walker{tx: t.(boltTx).tx, where: where, q: q, limit: limit, budget: budget}
		return w.run(after, &out)
	})
	if err != nil {
		return Page{}, err
	}
	return out, nil
}

func (b *boltEngine) count(ctx context.Context, ws map[Field][]byte) (int, error) {
	n := 0
	err := b.view(ctx, func(t tx) error {
		tx := t.(boltTx).tx
		if len(ws) == 0 {
			meta := tx.Bucket(bucketMeta)
			for _, st := range []State{StatePending, StateActive, StateQuarantined, StateDecommissioned} {
				if v := meta.Get(countKey(st)); len(v) == 8 {
					n += int(binary.BigEndian.Uint64(v))
				}
			}
			return nil
		}
		first, _ := smallest(tx, ws, -1)
		return eachInRange(tx, first, ws[first], func(id string) bool {
			if memberOfAll(tx, ws, first, id) {
				n++
			}
			return true
		})
	})
	return n, err
}

func (b *boltEngine) counts(ctx context.Context) (map[State]int, error) {
	out := make(map[State]int)
	err := b.view(ctx, func(t tx) error {
		meta := t.(boltTx).tx.Bucket(bucketMeta)
		for _, st := range []State{StatePending, StateActive, StateQuarantined, StateDecommissioned} {
			if v := meta.Get(countKey(st)); len(v) == 8 && binary.BigEndian.Uint64(v) > 0 {
				out[st] = int(binary.BigEndian.Uint64(v))
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func (b *boltEngine) events(ctx context.Context, deviceID string, limit int) ([]Event, error) {
	var out []Event
	err := b.view(ctx, func(t tx) error {
		tx := t.(boltTx).tx
		prefix := eventPrefix(deviceID)
		// Merge the two lists by their shared sequence, newest first.
		c, a := tx.Bucket(bucketEvents).Cursor(), tx.Bucket(bucketAnon).Cursor()
		ck, cv := seekLast(c, prefix)
		ak, av := seekLast(a, prefix)
		for {
			if limit > 0 && len(out) == limit {
				return nil
			}
			cOK, aOK := ck != nil && bytes.HasPrefix(ck, prefix), ak != nil && bytes.HasPrefix(ak, prefix)
			var v []byte
			switch {
			case cOK && (!aOK || bytes.Compare(ck, ak) > 0):
				v = cv
				ck, cv = c.Prev()
			case aOK:
				v = av
				ak, av = a.Prev()
			default:
				return nil
			}
			e, err := decode[Event](v)
			if err != nil {
				return err
			}
			out = append(out, *e)
		}
	})
	return out, err
}

func eventPrefix(deviceID string) []byte {
	return append([]byte(deviceID), 0)
}

// seekLast positions c on the last key with prefix (whose last byte is
// 0x00), or returns nil.
func seekLast(c *bolt.Cursor, prefix []byte) ([]byte, []byte) {
	end := bytes.Clone(prefix)
	end[len(end)-1] = 1 // the first key past every key with prefix
	k, _ := c.Seek(end)
	var v []byte
	if k == nil {
		k, v = c.Last()
	} else {
		k, v = c.Prev()
	}
	if k == nil || !bytes.HasPrefix(k, prefix) {
		return nil, nil
	}
	return k, v
}

// boltTx is a transaction of the bbolt file.
type boltTx struct {
	tx       *bolt.Tx
	onRevoke func()     // called once a transaction that put a revocation commits
	protos   *protocols // forgets a changed protocol version once the transaction commits
}

var _ tx = boltTx{}

func (b boltTx) device(id string) (*Device, error) { return getDevice(b.tx, id) }

func getDevice(tx *bolt.Tx, id string) (*Device, error) {
	v := tx.Bucket(bucketDevices).Get([]byte(id))
	if v == nil {
		return nil, fmt.Errorf("%w: device %q", ErrNotFound, id)
	}
	return decode[Device](v)
}

func (b boltTx) state(id string) (stateOnly, error) {
	v := b.tx.Bucket(bucketDevices).Get([]byte(id))
	if v == nil {
		return stateOnly{}, fmt.Errorf("%w: device %q", ErrNotFound, id)
	}
	d, err := decode[stateOnly](v)
	if err != nil {
		return stateOnly{}, err
	}
	return *d, nil
}

func (b boltTx) ekHolder(fingerprint string) (string, error) {
	return string(b.tx.Bucket(bucketEK).Get([]byte(fingerprint))), nil
}

func (b boltTx) putDevice(old, d *Device) error {
	// An EK entry d already holds is left alone: rewriting it would only
	// dirty a page for the commit to write.
	if ek := b.tx.Bucket(bucketEK); d.EKFingerprint != "" && string(ek.Get([]byte(d.EKFingerprint))) != d.ID {
		if err := ek.Put([]byte(d.EKFingerprint), []byte(d.ID)); err != nil {
			return err
		}
	}
	if err := updateIndexes(b.tx, old, d); err != nil {
		return err
	}
	v, err := encode(d)
	if err != nil {
		return err
	}
	return b.tx.Bucket(bucketDevices).Put([]byte(d.ID), v)
}

func (b boltTx) protocolChanged(id string) error {
	if b.protos != nil {
		b.tx.OnCommit(func() { b.protos.forget(id) })
	}
	return nil
}

func (b boltTx) revoked(serial string) (bool, error) {
	bk := b.tx.Bucket(bucketRevoked)
	return bk != nil && bk.Get([]byte(serial)) != nil, nil
}

func (b boltTx) putRevocation(r *Revocation) error {
	bk, err := b.tx.CreateBucketIfNotExists(bucketRevoked)
	if err != nil {
		return err
	}
	v, err := encode(r)
	if err != nil {
		return err
	}
	if b.onRevoke != nil {
		b.tx.OnCommit(b.onRevoke)
	}
	return bk.Put([]byte(r.Serial), v)
}

func (b boltTx) eachRevocation(fn func(*Revocation) error) error {
	bk := b.tx.Bucket(bucketRevoked)
	if bk == nil {
		return nil
	}
	return bk.ForEach(func(_, v []byte) error {
		r, err := decode[Revocation](v)
		if err != nil {
			return err
		}
		return fn(r)
	})
}

func (b boltTx) token(id string) (*Token, error) {
	v := b.tx.Bucket(bucketTokens).Get([]byte(id))
	if v == nil {
		return nil, nil
	}
	return decode[Token](v)
}

func (b boltTx) tokenByHash(hash []byte) (*Token, error) {
	id := b.tx.Bucket(bucketTokHash).Get(hash)
	if id == nil {
		return nil, nil
	}
	return b.token(string(id))
}

func (b boltTx) putToken(t *Token) error {
	v, err := encode(t)
	if err != nil {
		return err
	}
	if err := b.tx.Bucket(bucketTokens).Put([]byte(t.ID), v); err != nil {
		return err
	}
	return b.tx.Bucket(bucketTokHash).Put(t.Hash, []byte(t.ID))
}

func (b boltTx) deleteToken(t *Token) error {
	if err := b.tx.Bucket(bucketTokHash).Delete(t.Hash); err != nil {
		return err
	}
	return b.tx.Bucket(bucketTokens).Delete([]byte(t.ID))
}

func (b boltTx) eachToken(fn func(*Token) error) error {
	return b.tx.Bucket(bucketTokens).ForEach(func(_, v []byte) error {
		t, err := decode[Token](v)
		if err != nil {
			return err
		}
		return fn(t)
	})
}

func (b boltTx) addEvent(e *Event, limit int) error {
	seq, err := b.tx.Bucket(bucketEvents).NextSequence()
	if err != nil {
		return err
	}
	bk := b.tx.Bucket(bucketEvents)
	if e.Anonymous {
		bk = b.tx.Bucket(bucketAnon)
	}
	v, err := encode(e)
	if err != nil {
		return err
	}
	prefix := eventPrefix(e.DeviceID)
	if err := bk.Put(binary.BigEndian.AppendUint64(prefix, seq), v); err != nil {
		return err
	}
	// Count from the newest; delete what is past the limit.
	c := bk.Cursor()
	n := 0
	var old [][]byte
	for k, _ := seekLast(c, prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Prev() {
		n++
		if n > limit {
			old = append(old, bytes.Clone(k))
		}
	}
	for _, k := range old {
		if err := bk.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// The secondary indexes (index.go) in the bbolt file: a bucket per Field,
// "ix." + its name, whose keys are the value, a 0x00 byte and the device
// ID (values empty), and the state counts in bucket meta.

// updateIndexes moves d's index keys from what old had (nil for a new
// record) to what d has, and the state counts with them.
func updateIndexes(tx *bolt.Tx, old, d *Device) error {
	for _, f := range indexedFields() {
		b := tx.Bucket(indexBucket(f))
		var was, is [][]byte
		if old != nil {
			was = fieldValues(old, f)
		}
		if d != nil {
			is = fieldValues(d, f)
		}
		has := func(set [][]byte, v []byte) bool {
			return slices.ContainsFunc(set, func(x []byte) bool { return bytes.Equal(x, v) })
		}
		for _, v := range was {
			if !has(is, v) {
				if err := b.Delete(indexKey(v, old.ID)); err != nil {
					return err
				}
			}
		}
		for _, v := range is {
			if !has(was, v) {
				if err := b.Put(indexKey(v, d.ID), nil); err != nil {
					return err
				}
			}
		}
	}
	switch {
	case old == nil && d != nil:
		return addCount(tx, d.State, 1)
	case old != nil && d != nil && old.State != d.State:
		if err := addCount(tx, old.State, -1); err != nil {
			return err
		}
		return addCount(tx, d.State, 1)
	}
	return nil
}

func countKey(s State) []byte { return []byte("count." + string(s)) }

func addCount(tx *bolt.Tx, s State, delta int64) error {
	meta := tx.Bucket(bucketMeta)
	var n int64
	if v := meta.Get(countKey(s)); len(v) == 8 {
		n = int64(binary.BigEndian.Uint64(v))
	}
	return meta.Put(countKey(s), binary.BigEndian.AppendUint64(nil, uint64(max(0, n+delta))))
}

// buildIndexes (re)creates every index and the state counts from the
// records.
func buildIndexes(tx *bolt.Tx) error {
	for _, f := range indexedFields() {
		if tx.Bucket(indexBucket(f)) != nil {
			if err := tx.DeleteBucket(indexBucket(f)); err != nil {
				return err
			}
		}
		if _, err := tx.CreateBucket(indexBucket(f)); err != nil {
			return err
		}
	}
	meta := tx.Bucket(bucketMeta)
	for _, s := range []State{StatePending, StateActive, StateQuarantined, StateDecommissioned} {
		if err := meta.Delete(countKey(s)); err != nil {
			return err
		}
	}
	return tx.Bucket(bucketDevices).ForEach(func(k, v []byte) error {
		d, err := decode[Device](v)
		if err != nil {
			return fmt.Errorf("%w (device %q)", err, k)
		}
		return updateIndexes(tx, nil, d)
	})
}

// smallest returns the filter with the fewest keys, and that count (each
// range counted up to limit+1; limit < 0 counts all).
func smallest(tx *bolt.Tx, ws map[Field][]byte, limit int) (Field, int) {
	var best Field
	bestN := -1
	for _, f := range sortedFields(ws) {
		n := 0
		_ = eachInRange(tx, f, ws[f], func(string) bool {
			n++
			return limit < 0 || n <= limit
		})
		if bestN < 0 || n < bestN {
			best, bestN = f, n
		}
	}
	return best, bestN
}

func sortedFields(ws map[Field][]byte) []Field {
	fs := make([]Field, 0, len(ws))
	for f := range ws {
		fs = append(fs, f)
	}
	slices.Sort(fs)
	return fs
}

// eachInRange calls fn with the ID of each key of f's index whose value
// is v, in ID order, until fn returns false.
func eachInRange(tx *bolt.Tx, f Field, v []byte, fn func(id string) bool) error {
	prefix := append(bytes.Clone(v), 0)
	c := tx.Bucket(indexBucket(f)).Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		if bytes.IndexByte(k[len(prefix):], 0) >= 0 {
			continue
		}
		if !fn(string(k[len(prefix):])) {
			return nil
		}
	}
	return nil
}

// memberOfAll reports whether device id has every filter's value, but
// skip's (already known).
func memberOfAll(tx *bolt.Tx, ws map[Field][]byte, skip Field, id string) bool {
	for f, v := range ws {
		if f == skip {
			continue
		}
		if tx.Bucket(indexBucket(f)).Get(indexKey(v, id)) == nil {
			return false
		}
	}
	return true
}

// walker runs one Query in a read transaction.
type walker struct {
	tx     *bolt.Tx
	where  map[Field][]byte
	q      *Query
	limit  int
	budget int
}

// run fills out, starting after the cursor key after (nil: from the
// start).
func (w *walker) run(after []byte, out *Page) error {
	devices := w.tx.Bucket(bucketDevices)
	// emit decodes the candidate at cursor key k and adds it if it
	// matches; it reports false once the page is done.
	var last []byte
	emit := func(k []byte, id string) (bool, error) {
		if len(out.Devices) == w.limit {
			out.Next = w.cursor(last)
			return false, nil
		}
		if out.Examined >= w.budget {
			out.Next, out.Partial = w.cursor(last), true
			return false, nil
		}
		v := devices.Get([]byte(id))
		last = k
		if v == nil {
			return true, nil
		}
		d, err := decode[Device](v)
		if err != nil {
			return false, fmt.Errorf("%w (device %q)", err, id)
		}
		out.Examined++
		if w.q.Matches(d) {
			out.Devices = append(out.Devices, *d)
		}
		return true, nil
	}

	if w.q.Order == FieldID && len(w.where) > 0 {
		// The smallest filter's range is in ID order already.
		first, _ := smallest(w.tx, w.where, smallSet)
		prefix := append(bytes.Clone(w.where[first]), 0)
		c := w.tx.Bucket(indexBucket(first)).Cursor()
		k, _ := w.start(c, prefix, after, func(id []byte) []byte { return append(bytes.Clone(prefix), id...) })
		for ; k != nil && bytes.HasPrefix(k, prefix); k, _ = w.step(c) {
			id := k[len(prefix):]
			if bytes.IndexByte(id, 0) >= 0 || !memberOfAll(w.tx, w.where, first, string(id)) {
				continue
			}
			if ok, err := emit(id, string(id)); !ok || err != nil {
				return err
			}
		}
		return nil
	}

	// Walk the order's index (or the records for ID order), keeping the
	// candidates: a collected set when the filters are selective, or a
	// check of each key against the filters' indexes.
	var set map[string]bool
	if len(w.where) > 0 {
		first, n := smallest(w.tx, w.where, smallSet)
		if n <= smallSet {
			set = make(map[string]bool, n)
			_ = eachInRange(w.tx, first, w.where[first], func(id string) bool {
				if memberOfAll(w.tx, w.where, first, id) {
					set[string(id)] = true
				}
				return true
			})
			if len(set) == 0 {
				return nil
			}
		}
	}
	var c *bolt.Cursor
	if w.q.Order == FieldID {
		c = devices.Cursor()
	} else {
		c = w.tx.Bucket(indexBucket(w.q.Order)).Cursor()
	}
	k, _ := w.start(c, nil, after, nil)
	for ; k != nil; k, _ = w.step(c) {
		id := string(k)
		if w.q.Order != FieldID {
			id = keyID(k)
		}
		switch {
		case set != nil && !set[id]:
			continue
		case set == nil && len(w.where) > 0 && !memberOfAll(w.tx, w.where, "", id):
			continue
		}
		if ok, err := emit(k, id); !ok || err != nil {
			return err
		}
	}
	return nil
}

// start positions c at the first key of the walk: after the cursor key
// after (made from an ID by fromID, when not nil, for walks of one range),
// or at the start (or end, descending) of the range prefix.
func (w *walker) start(c *bolt.Cursor, prefix, after []byte, fromID func([]byte) []byte) ([]byte, []byte) {
	if after != nil && fromID != nil {
		after = fromID(after)
	}
	if !w.q.Desc {
		if after == nil {
			if prefix != nil {
				return c.Seek(prefix)
			}
			return c.First()
		}
		k, v := c.Seek(after)
		if k != nil && bytes.Equal(k, after) {
			return c.Next()
		}
		return k, v
	}
	if after == nil {
		if prefix != nil {
			end := bytes.Clone(prefix)
			end[len(end)-1] = 1 // past every key of the range
			if k, _ := c.Seek(end); k == nil {
				return c.Last()
			}
			return c.Prev()
		}
		return c.Last()
	}
	if k, _ := c.Seek(after); k == nil {
		return c.Last()
	}
	return c.Prev() // the key before after (after itself was listed)
}

func (w *walker) step(c *bolt.Cursor) ([]byte, []byte) {
	if w.q.Desc {
		return c.Prev()
	}
	return c.Next()
}

// cursor turns the last key walked into Query.After.
func (w *walker) cursor(k []byte) string {
	if k == nil {
		return ""
	}
	if w.q.Order == FieldID {
		return string(k)
	}
	return base64.RawURLEncoding.EncodeToString(k)
}

func (b boltTx) eachDevice(fn func(*Device) error) error {
	return b.tx.Bucket(bucketDevices).ForEach(func(_, v []byte) error {
		d, err := decode[Device](v)
		if err != nil {
			return err
		}
		return fn(d)
	})
}

// eachEvent merges the two event buckets by their shared sequence, the
// last 8 bytes of each key.
func (b boltTx) eachEvent(fn func(*Event) error) error {
	type rec struct {
		seq uint64
		v   []byte
	}
	var all []rec
	for _, name := range [][]byte{bucketEvents, bucketAnon} {
		bk := b.tx.Bucket(name)
		if bk == nil {
			continue
		}
		if err := bk.ForEach(func(k, v []byte) error {
			if len(k) < 8 {
				return fmt.Errorf("event key %x", k)
			}
			all = append(all, rec{binary.BigEndian.Uint64(k[len(k)-8:]), v})
			return nil
		}); err != nil {
			return err
		}
	}
	slices.SortStableFunc(all, func(a, b rec) int { return cmp.Compare(a.seq, b.seq) })
	for _, r := range all {
		e, err := decode[Event](r.v)
		if err != nil {
			return err
		}
		if err := fn(e); err != nil {
			return err
		}
	}
	return nil
}
