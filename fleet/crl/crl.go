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

// Defaults of Config.
const (
	DefaultValidity     = 24 * time.Hour
	DefaultHold         = 50 * time.Second
	DefaultMaxWaiting   = 1024
	DefaultMaxPerSource = 4
	DefaultMinInterval  = time.Second
)

// Errors of Wait. Compare with errors.Is.
var (
	// ErrSourceBusy: the source already has MaxPerSource waiting requests.
	ErrSourceBusy = errors.New("crl: too many waiting requests from this source")
	// ErrBusy: MaxWaiting requests are waiting.
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
	// MinInterval bounds how often Changed has the waiting requests sign
	// a new CRL: a burst of revocations (a mass re-key revokes every
	// superseded certificate) is one CRL per MinInterval, not one each;
	// 0 means DefaultMinInterval.
	MinInterval time.Duration
	// MaxWaiting bounds the requests waiting at once, MaxPerSource those
	// of one source (a client address); 0 means the defaults.
	MaxWaiting, MaxPerSource int
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
}

// Publisher signs, keeps and hands out the fleet's CRL. Its methods are
// safe for concurrent use.
type Publisher struct {
	cfg Config
	gen atomic.Uint64 // counts Changed calls

	mu     sync.Mutex // held while reading and signing
	cur    List
	signed time.Time
	total  int    // revocations it was signed from
	at     uint64 // gen when it was signed

	wmu      sync.Mutex
	wake     chan struct{} // closed when a new CRL is signed or Changed
	waiting  int
	bySource map[string]int
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
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Publisher{cfg: cfg, wake: make(chan struct{}), bySource: map[string]int{}}
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

// Current returns the CRL to serve now. It reads the revocations each
// time and signs again when their number changed, when Changed was
// called since it signed, or when half its validity has passed.
func (p *Publisher) Current(ctx context.Context) (List, error) {
	l, _, err := p.list(ctx, true)
	return l, err
}

// list returns the CRL, reading the revocations when count is set or the
// one it keeps is stale. Without count, a CRL made stale by Changed less
// than MinInterval after it was signed is kept, and due says when it is
// to be signed again.
func (p *Publisher) list(ctx context.Context, count bool) (l List, due time.Duration, err error) {
	if p.cfg.Signer == nil {
		return List{}, 0, ErrNoSigner
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	now, gen := p.cfg.Now(), p.gen.Load()
	stale := p.cur.DER == nil || p.at != gen || now.Sub(p.signed) > p.cfg.Validity/2
	if stale && !count && p.cur.DER != nil && now.Sub(p.signed) < p.cfg.MinInterval {
		return p.cur, p.cfg.MinInterval - now.Sub(p.signed), nil
	}
	if !stale && !count {
		return p.cur, 0, nil
	}
	all, err := p.cfg.Revocations.Revocations(ctx, time.Time{})
	if err != nil {
		return List{}, 0, fmt.Errorf("crl: %w", err)
	}
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
	der, err := p.cfg.Signer.CRLNumbered(big.NewInt(number), entries, p.cfg.Validity)
	if err != nil {
		return List{}, 0, fmt.Errorf("crl: %w", err)
	}
	parsed, err := x509.ParseRevocationList(der)
	if err != nil {
		return List{}, 0, fmt.Errorf("crl: %w", err)
	}
	p.cur, p.signed, p.total, p.at = List{DER: der, Number: parsed.Number}, now, len(all), gen
	p.broadcast()
	return p.cur, 0, nil
}

// Wait returns the CRL as soon as its number is greater than after (at
// once when it already is, or after is nil), signing a new one when
// Changed is called (at most one per MinInterval). When none is within
// Hold it returns nil and no error. Only the requests that must wait
// count against the bounds: at most MaxPerSource per source
// (ErrSourceBusy) and MaxWaiting in all (ErrBusy).
func (p *Publisher) Wait(ctx context.Context, source string, after *big.Int) (*List, error) {
	ch := p.signal()
	l, due, err := p.list(ctx, false)
	if err != nil {
		return nil, err
	}
	if after == nil || l.Number.Cmp(after) > 0 {
		return &l, nil
	}
	if err := p.admit(source); err != nil {
		return nil, err
	}
	defer p.leave(source)
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

func (p *Publisher) admit(source string) error {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	switch {
	case p.bySource[source] >= p.cfg.MaxPerSource:
		return ErrSourceBusy
	case p.waiting >= p.cfg.MaxWaiting:
		return ErrBusy
	}
	p.waiting++
	p.bySource[source]++
	return nil
}

func (p *Publisher) leave(source string) {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	p.waiting--
	if p.bySource[source]--; p.bySource[source] == 0 {
		delete(p.bySource, source)
	}
}

// Waiting is the number of requests waiting now.
func (p *Publisher) Waiting() int {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	return p.waiting
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
