// Package crl publishes the fleet's certificate revocation list: signed
// from the inventory's revocations, kept until a revocation is recorded
// (Publisher.Changed) or half its validity has passed, and handed to the
// clients waiting for a newer one (Publisher.Wait, the long-poll behind
// GET /crl?after=N) the moment it is signed.
//
// Every replica of the fleet signs its own CRL; its number is the
// signing time (ca.CA.CRL), so a newer CRL has a greater number on any
// replica whose clock is right. A replica learns of a revocation made
// on another through the inventory (inventory.WithRevocationHook on this
// process, inventory.TopicRevocations through PostgreSQL's NOTIFY).
package crl

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"math/big"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sigil-iot/sigil/fleet/ca"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/storage/notify"
)

// Revocations lists the revocations a CRL holds (*inventory.Store).
type Revocations interface {
	Revocations(ctx context.Context, now time.Time) ([]inventory.Revocation, error)
}

// Signer signs a CRL with the number given (*ca.CA).
type Signer interface {
	CRLNumbered(number *big.Int, entries []ca.Revoked, validity time.Duration) ([]byte, error)
}

// SetSigner is a Signer that also signs one CRL per trusted CA
// generation with the trust bundle (*ca.CA; ca.CA.CRLsNumbered): what a
// broker needs during a CA rotation (List.Set).
type SetSigner interface {
	CRLsNumbered(number *big.Int, entries []ca.Revoked, validity time.Duration) (ca.CRLSet, error)
}

// generationSource tells of changes of the CA's generations (*ca.CA): a
// new CRL set is then signed.
type generationSource interface {
	OnGenerations(fn func())
}

// Defaults of Config.
const (
	DefaultValidity     = 24 * time.Hour
	DefaultHold         = 50 * time.Second
	DefaultMaxWaiting   = 1024
	DefaultMaxPerSource = 4
	DefaultReserved     = 256
	DefaultMinInterval  = time.Second
)

// Errors of Wait. Compare with errors.Is.
var (
	// ErrSourceBusy: the source already has MaxPerSource waiting requests.
	ErrSourceBusy = errors.New("crl: too many waiting requests from this source")
	// ErrBusy: MaxWaiting requests are waiting (for a broker's sync:
	// Reserved syncs and MaxWaiting others).
	ErrBusy = errors.New("crl: too many waiting requests")
	// ErrNoSigner: the Publisher has no Signer.
	ErrNoSigner = errors.New("crl: no signer")
)

// Config configures a Publisher.
type Config struct {
	Revocations Revocations
	Signer      Signer
	// Validity of a signed CRL (its NextUpdate); 0 means DefaultValidity.
	// A CRL is signed again when half of it has passed.
	Validity time.Duration
	// Hold bounds how long Wait waits for a newer CRL; 0 means
	// DefaultHold.
	Hold time.Duration
	// MinInterval bounds how often a CRL is signed, whatever the rate of
	// changes and requests: a burst of revocations (a mass re-key revokes
	// every superseded certificate) is one CRL per MinInterval, not one
	// each, and the revocations are read again for a plain read (Current)
	// at most once per MinInterval. A change is in a CRL within
	// MinInterval of Changed. 0 means DefaultMinInterval.
	MinInterval time.Duration
	// MaxWaiting bounds the requests waiting at once, MaxPerSource those
	// of one source (a client address, an IPv6 /64: the caller's
	// Waiter.Source); 0 means the defaults.
	MaxWaiting, MaxPerSource int
	// Reserved is the number of waiting slots kept for brokers' syncs
	// (Waiter.Sync, a caller that presented a broker sync's credential),
	// beyond MaxWaiting: however many anonymous requests wait, a sync
	// still gets one. A sync takes one of MaxWaiting's when the reserved
	// ones are taken. 0 means DefaultReserved.
	Reserved int
	// Numbers, when set, numbers the CRLs (replicas: OpenNumbers); nil
	// numbers each by the clock (Now, in nanoseconds), which one process
	// keeps increasing.
	Numbers Numbers
	// Now is the clock (nil: time.Now).
	Now func() time.Time
}

// List is a signed CRL.
type List struct {
	DER    []byte
	Number *big.Int
	// Set, when the Signer is a SetSigner, is the trust bundle and one
	// CRL per trusted CA generation, numbered Number, in PEM
	// (ca.CRLSet.PEM): GET /crl?set=generations, what a broker's sync
	// installs.
	Set []byte
}

// Publisher signs, keeps and hands out the fleet's CRL. Its methods are
// safe for concurrent use.
type Publisher struct {
	cfg Config
	gen atomic.Uint64 // counts Changed calls

	mu      sync.Mutex // held while reading and signing
	cur     List
	signed  time.Time
	counted time.Time // when the revocations were last read
	total   int       // revocations it was signed from
	at      uint64    // gen when it was signed

	wmu      sync.Mutex
	wake     chan struct{} // closed when a new CRL is signed or Changed
	waiting  int           // anonymous requests waiting, in MaxWaiting's slots
	syncs    int           // syncs waiting in the reserved slots
	bySource map[sourceKey]int
}

// Waiter is who makes a request that may wait (Publisher.Wait).
type Waiter struct {
	// Source is the request's source, bounded to MaxPerSource waiting
	// requests: the client's IPv4 address or IPv6 /64 (auth.ClientAddr),
	// since one host usually holds a whole /64.
	Source string
	// Sync is set when the request presented a broker sync's credential,
	// checked by the caller: it may take the Reserved slots, and is
	// bounded per source apart from anonymous requests.
	Sync bool
}

// sourceKey counts a source's syncs apart from its anonymous requests.
type sourceKey struct {
	source string
	sync   bool
}

// New returns a Publisher.
func New(cfg Config) *Publisher {
	if cfg.Validity <= 0 {
		cfg.Validity = DefaultValidity
	}
	if cfg.Hold <= 0 {
		cfg.Hold = DefaultHold
	}
	if cfg.MaxWaiting <= 0 {
		cfg.MaxWaiting = DefaultMaxWaiting
	}
	if cfg.MaxPerSource <= 0 {
		cfg.MaxPerSource = DefaultMaxPerSource
	}
	if cfg.MinInterval <= 0 {
		cfg.MinInterval = DefaultMinInterval
	}
	if cfg.Reserved <= 0 {
		cfg.Reserved = DefaultReserved
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	p := &Publisher{cfg: cfg, wake: make(chan struct{}), bySource: map[sourceKey]int{}}
	if g, ok := cfg.Signer.(generationSource); ok {
		// A rotation step changes the CAs a broker must trust and the
		// CRLs it needs: the waiting syncs get them at once.
		g.OnGenerations(p.Changed)
	}
	return p
}

// Bus tells the replicas sharing a database of changes
// (fleet/storage/notify).
type Bus interface {
	Subscribe(topic string, fn func(notify.Event)) error
}

// Listen has bus call Changed for each inventory.TopicRevocations (a
// revocation recorded on any replica) and each resync of the bus. A nil
// bus (one process) does nothing: WithRevocationHook tells it all.
func (p *Publisher) Listen(bus Bus) error {
	if bus == nil {
		return nil
	}
	if err := bus.Subscribe(inventory.TopicRevocations, func(notify.Event) { p.Changed() }); err != nil {
		return fmt.Errorf("crl: %w", err)
	}
	return nil
}

// Hold is how long Wait waits at most.
func (p *Publisher) Hold() time.Duration { return p.cfg.Hold }

// Changed tells p that a revocation was recorded (or may have been):
// the next read signs a new CRL, and the waiting requests read it. It
// does not block.
func (p *Publisher) Changed() {
	p.gen.Add(1)
	p.broadcast()
}

func (p *Publisher) broadcast() {
	p.wmu.Lock()
	close(p.wake)
	p.wake = make(chan struct{})
	p.wmu.Unlock()
}

func (p *Publisher) signal() <-chan struct{} {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	return p.wake
}

// Current returns the CRL to serve now: one that lists every revocation
// Changed told of. When Changed was called since the CRL was signed, it
// signs a new one, waiting until MinInterval has passed since the last
// signature (the requests of that interval share that one signature). It
// also reads the revocations again, at most once per MinInterval, and
// signs again when their number changed (a revocation made on another
// replica whose notice did not arrive), and when half the CRL's validity
// has passed.
func (p *Publisher) Current(ctx context.Context) (List, error) {
	for {
		l, due, err := p.list(ctx, true)
		if err != nil || due == 0 {
			return l, err
		}
		t := time.NewTimer(due)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return List{}, ctx.Err()
		}
	}
}

// list returns the CRL, or, when it is stale and was signed less than
// MinInterval ago, the one it keeps and in due how long until it may sign
// again. With count it also reads the revocations when it last did
// MinInterval ago or more, and signs again when their number changed.
// Signatures are so MinInterval apart at least.
func (p *Publisher) list(ctx context.Context, count bool) (l List, due time.Duration, err error) {
	if p.cfg.Signer == nil {
		return List{}, 0, ErrNoSigner
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	now, gen := p.cfg.Now(), p.gen.Load()
	age := now.Sub(p.signed)
	stale := p.cur.DER == nil || p.at != gen || age > p.cfg.Validity/2
	if stale && p.cur.DER != nil && age < p.cfg.MinInterval {
		return p.cur, p.cfg.MinInterval - age, nil
	}
	if !stale && (!count || now.Sub(p.counted) < p.cfg.MinInterval) {
		return p.cur, 0, nil
	}
	all, err := p.cfg.Revocations.Revocations(ctx, time.Time{})
	if err != nil {
		return List{}, 0, fmt.Errorf("crl: %w", err)
	}
	p.counted = now
	if !stale && len(all) == p.total {
		return p.cur, 0, nil
	}
	entries := make([]ca.Revoked, 0, len(all))
	for _, r := range all {
		if r.Expires.IsZero() || r.Expires.After(now) {
			entries = append(entries, ca.Revoked{Serial: r.Serial, Time: r.Time, Reason: r.Reason})
		}
	}
	number := now.UnixNano()
	if p.cfg.Numbers != nil {
		if number, err = p.cfg.Numbers.Next(ctx, number); err != nil {
			return List{}, 0, err
		}
	}
	var der, set []byte
	if ss, ok := p.cfg.Signer.(SetSigner); ok {
		all, err := ss.CRLsNumbered(big.NewInt(number), entries, p.cfg.Validity)
		if err != nil {
			return List{}, 0, fmt.Errorf("crl: %w", err)
		}
		der, set = all.Active, all.PEM
	} else if der, err = p.cfg.Signer.CRLNumbered(big.NewInt(number), entries, p.cfg.Validity); err != nil {
		return List{}, 0, fmt.Errorf("crl: %w", err)
	}
	parsed, err := x509.ParseRevocationList(der)
	if err != nil {
		return List{}, 0, fmt.Errorf("crl: %w", err)
	}
	p.cur, p.signed, p.total, p.at = List{DER: der, Number: parsed.Number, Set: set}, now, len(all), gen
	p.broadcast()
	return p.cur, 0, nil
}

// Wait returns the CRL as soon as its number is greater than after (at
// once when it already is, or after is nil), signing a new one when
// Changed is called (at most one per MinInterval). When none is within
// Hold it returns nil and no error. Only the requests that must wait
// count against the bounds: at most MaxPerSource per source
// (ErrSourceBusy; a source's syncs are counted apart) and MaxWaiting in
// all (ErrBusy), and for syncs Reserved more.
func (p *Publisher) Wait(ctx context.Context, from Waiter, after *big.Int) (*List, error) {
	ch := p.signal()
	l, due, err := p.list(ctx, false)
	if err != nil {
		return nil, err
	}
	if after == nil || l.Number.Cmp(after) > 0 {
		return &l, nil
	}
	reserved, err := p.admit(from)
	if err != nil {
		return nil, err
	}
	defer p.leave(from, reserved)
	hold := time.NewTimer(p.cfg.Hold)
	defer hold.Stop()
	for {
		var retry <-chan time.Time
		if due > 0 {
			retry = time.After(due)
		}
		select {
		case <-ch:
		case <-retry:
		case <-hold.C:
			return nil, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		ch = p.signal()
		if l, due, err = p.list(ctx, false); err != nil {
			return nil, err
		}
		if l.Number.Cmp(after) > 0 {
			return &l, nil
		}
	}
}

// admit takes a waiting slot for from, and reports whether it is one of
// the reserved ones.
func (p *Publisher) admit(from Waiter) (reserved bool, err error) {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	key := sourceKey{from.Source, from.Sync}
	switch {
	case p.bySource[key] >= p.cfg.MaxPerSource:
		return false, ErrSourceBusy
	case from.Sync && p.syncs < p.cfg.Reserved:
		p.syncs++
		reserved = true
	case p.waiting >= p.cfg.MaxWaiting:
		return false, ErrBusy
	default:
		p.waiting++
	}
	p.bySource[key]++
	return reserved, nil
}

func (p *Publisher) leave(from Waiter, reserved bool) {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	if reserved {
		p.syncs--
	} else {
		p.waiting--
	}
	key := sourceKey{from.Source, from.Sync}
	if p.bySource[key]--; p.bySource[key] == 0 {
		delete(p.bySource, key)
	}
}

// Waiting is the number of requests waiting now, syncs included.
func (p *Publisher) Waiting() int {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	return p.waiting + p.syncs
}

// maxNumberDigits bounds a CRL number in decimal: RFC 5280 allows 20
// octets (at most 49 digits).
const maxNumberDigits = 49

// ParseNumber parses a CRL number in decimal (the after of GET
// /crl?after=N).
func ParseNumber(s string) (*big.Int, error) {
	if s == "" || len(s) > maxNumberDigits {
		return nil, fmt.Errorf("crl: a CRL number is 1 to %d decimal digits", maxNumberDigits)
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return nil, fmt.Errorf("crl: a CRL number is decimal digits")
		}
	}
	n, ok := new(big.Int).SetString(s, 10)
	if !ok {
		return nil, fmt.Errorf("crl: a CRL number is decimal digits")
	}
	return n, nil
}
