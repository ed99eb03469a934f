// Package memstate keeps a simulated device's state store in memory: a
// device/state Engine, so the device runs device/state's own logic
// (identity, key blobs, renewal, secrets, release trust, update records
// and floor, telemetry outbox) over a few kilobytes of heap instead of a
// bbolt file and its open descriptor. A process holding 20,000 devices
// cannot hold 20,000 files open (the cap here is 20,000 descriptors for
// everything), and does not need their durability.
//
// It is for simulation only and never reaches sigild (the dependency fence
// in cmd/sigild forbids sim/). It passes device/state's conformance suite
// (package statetest), as bbolt does.
package memstate

import (
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/sigil-iot/sigil/device/state"
)

// Errors of the engine, as bbolt reports the same misuses.
var (
	// ErrClosed is returned by a transaction on a closed engine.
	ErrClosed = errors.New("memstate: engine closed")
	// ErrReadOnly is returned by a write in a view, or an update on an
	// engine opened read-only.
	ErrReadOnly = errors.New("memstate: read-only")
	// ErrKeyRequired is returned by a write of an empty key.
	ErrKeyRequired = errors.New("memstate: empty key")
	// ErrIncompatible is returned for a value where a bucket is, or the
	// other way round.
	ErrIncompatible = errors.New("memstate: a key holds a value and a bucket")
)

// Volume is one device's state in memory, as its state file is on disk:
// what engines opened on it commit outlives them, so closing the store and
// opening a new one on the same volume is a device restart. It is safe for
// concurrent use: updates are serialized, views run beside each other.
type Volume struct {
	mu   sync.RWMutex
	root bucket
}

// New returns an empty volume.
func New() *Volume { return &Volume{} }

// Store opens a read-write store on v: state.New(v.Open()).
func (v *Volume) Store() *state.Store { return state.New(v.Open()) }

// Open returns a read-write engine on v.
func (v *Volume) Open() state.Engine { return &engine{v: v} }

// OpenReadOnly returns an engine on v whose updates fail.
func (v *Volume) OpenReadOnly() state.Engine { return &engine{v: v, readOnly: true} }

// Size returns what v holds in bytes: its keys and values, and the
// bookkeeping of the buckets they sit in (the slices of items, at their
// capacity). The Go heap adds its size classes on top.
func (v *Volume) Size() int {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.root.size()
}

// bucket is a sorted list of items; an item holds a value or a nested
// bucket, never both.
type bucket struct {
	items []item
}

type item struct {
	key string
	val []byte  // nil for a nested bucket
	sub *bucket // nil for a value
}

// find returns the index of key, or where it would go, and whether it is
// there.
func (b *bucket) find(key []byte) (int, bool) {
	return slices.BinarySearchFunc(b.items, key, func(it item, k []byte) int { return strings.Compare(it.key, string(k)) })
}

func (b *bucket) size() int {
	n := int(unsafe.Sizeof(bucket{})) + cap(b.items)*int(unsafe.Sizeof(item{}))
	for _, it := range b.items {
		n += len(it.key) + cap(it.val)
		if it.sub != nil {
			n += it.sub.size()
		}
	}
	return n
}

// set puts it at its place, replacing what the key held.
func (b *bucket) set(it item) {
	i, ok := b.find([]byte(it.key))
	if ok {
		b.items[i] = it
		return
	}
	b.items = slices.Insert(b.items, i, it)
}

// remove deletes key's item.
func (b *bucket) remove(key string) {
	if i, ok := b.find([]byte(key)); ok {
		b.items = slices.Delete(b.items, i, i+1)
	}
}

// engine is an Engine on a volume.
type engine struct {
	v        *Volume
	readOnly bool
	closed   atomic.Bool
}

var _ state.Engine = (*engine)(nil)

func (e *engine) View(fn func(state.Tx) error) error {
	if e.closed.Load() {
		return ErrClosed
	}
	e.v.mu.RLock()
	defer e.v.mu.RUnlock()
	return fn(&tx{v: e.v})
}

// Update runs fn holding the volume; when fn fails (or panics) the undo
// log, replayed backwards, restores what it changed.
func (e *engine) Update(fn func(state.Tx) error) (err error) {
	if e.closed.Load() {
		return ErrClosed
	}
	if e.readOnly {
		return ErrReadOnly
	}
	e.v.mu.Lock()
	defer e.v.mu.Unlock()
	t := &tx{v: e.v, writable: true}
	committed := false
	defer func() {
		if !committed {
			for i := len(t.undo) - 1; i >= 0; i-- {
				t.undo[i]()
			}
		}
		t.writable = false // a handle kept past the transaction cannot write
	}()
	if err := fn(t); err != nil {
		return err
	}
	committed = true
	return nil
}

func (e *engine) Close() error {
	e.closed.Store(true)
	return nil
}

// tx is a transaction on a volume.
type tx struct {
	v        *Volume
	writable bool
	undo     []func()
}

func (t *tx) Bucket(name []byte) state.Bucket { return (&handle{t: t, b: &t.v.root}).Bucket(name) }

func (t *tx) CreateBucketIfNotExists(name []byte) (state.Bucket, error) {
	return (&handle{t: t, b: &t.v.root}).CreateBucketIfNotExists(name)
}

// handle is a bucket as one transaction sees it.
type handle struct {
	t *tx
	b *bucket
}

var _ state.Bucket = (*handle)(nil)

func (h *handle) Get(key []byte) []byte {
	if i, ok := h.b.find(key); ok {
		return h.b.items[i].val
	}
	return nil
}

func (h *handle) write(key []byte) error {
	if !h.t.writable {
		return ErrReadOnly
	}
	if len(key) == 0 {
		return ErrKeyRequired
	}
	return nil
}

// remember adds to the undo log what restores key's item as it is now.
func (h *handle) remember(key []byte) {
	b := h.b
	if i, ok := b.find(key); ok {
		old := b.items[i]
		h.t.undo = append(h.t.undo, func() { b.set(old) })
		return
	}
	k := string(key)
	h.t.undo = append(h.t.undo, func() { b.remove(k) })
}

func (h *handle) Put(key, value []byte) error {
	if err := h.write(key); err != nil {
		return err
	}
	if i, ok := h.b.find(key); ok && h.b.items[i].sub != nil {
		return ErrIncompatible
	}
	h.remember(key)
	h.b.set(item{key: string(key), val: append(make([]byte, 0, len(value)), value...)})
	return nil
}

func (h *handle) Delete(key []byte) error {
	if err := h.write(key); err != nil {
		return err
	}
	i, ok := h.b.find(key)
	if !ok {
		return nil
	}
	if h.b.items[i].sub != nil {
		return ErrIncompatible
	}
	h.remember(key)
	h.b.remove(string(key))
	return nil
}

func (h *handle) First() (key, value []byte) {
	for _, it := range h.b.items {
		if it.sub == nil {
			return []byte(it.key), it.val
		}
	}
	return nil, nil
}

func (h *handle) Ascend(from []byte, fn func(key, value []byte) (bool, error)) error {
	i, _ := h.b.find(from)
	for ; i < len(h.b.items); i++ {
		it := h.b.items[i]
		if it.sub != nil {
			continue
		}
		more, err := fn([]byte(it.key), it.val)
		if err != nil || !more {
			return err
		}
	}
	return nil
}

func (h *handle) Bucket(name []byte) state.Bucket {
	if i, ok := h.b.find(name); ok && h.b.items[i].sub != nil {
		return &handle{t: h.t, b: h.b.items[i].sub}
	}
	return nil
}

func (h *handle) CreateBucketIfNotExists(name []byte) (state.Bucket, error) {
	if err := h.write(name); err != nil {
		return nil, err
	}
	if i, ok := h.b.find(name); ok {
		if h.b.items[i].sub == nil {
			return nil, ErrIncompatible
		}
		return &handle{t: h.t, b: h.b.items[i].sub}, nil
	}
	h.remember(name)
	sub := &bucket{}
	h.b.set(item{key: string(name), sub: sub})
	return &handle{t: h.t, b: sub}, nil
}
