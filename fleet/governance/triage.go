package governance

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/sigil-iot/sigil/fleet/storage/kv"
)

// AttemptKind says why a connection attempt came from an unknown identity.
type AttemptKind string

// Attempt kinds.
const (
	// AttemptForeignCert: a client certificate that does not chain to the
	// fleet CA (the TLS handshake refused it).
	AttemptForeignCert AttemptKind = "foreign-certificate"
	// AttemptUnknownDevice: a fleet certificate naming a device the
	// inventory does not hold.
	AttemptUnknownDevice AttemptKind = "unknown-device"
	// AttemptUnknownClient: a client ID nobody enrolled, e.g. a refused
	// bootstrap connection.
	AttemptUnknownClient AttemptKind = "unknown-client"
	// AttemptUnknownEK: an enrollment presenting an EK the fleet does not
	// trust or know.
	AttemptUnknownEK AttemptKind = "unknown-ek"
)

func (k AttemptKind) valid() bool {
	switch k {
	case AttemptForeignCert, AttemptUnknownDevice, AttemptUnknownClient, AttemptUnknownEK:
		return true
	}
	return false
}

// Attempt is one connection attempt from an unknown identity. Every field
// is what the client presented: untrusted, stored cleaned and truncated.
type Attempt struct {
	Kind          AttemptKind
	ClientID      string
	EKFingerprint string
	Cert          *x509.Certificate // the presented leaf, if any (not verified)
	Remote        string            // source address, "host:port" or "host"
	Reason        string            // why it was refused
	Time          time.Time         // zero means now
}

// CertSummary describes a presented certificate.
type CertSummary struct {
	Subject  string    `json:"subject"`
	Issuer   string    `json:"issuer"`
	Serial   string    `json:"serial"` // hex
	SHA256   string    `json:"sha256"` // of the DER
	NotAfter time.Time `json:"not_after"`
}

// Decision is an operator's decision on a triage entry.
type Decision string

// Decisions.
const (
	DecisionNone    Decision = ""
	DecisionEnroll  Decision = "enroll"  // handed to the Enroller
	DecisionBlock   Decision = "block"   // its identity is on the block list
	DecisionDismiss Decision = "dismiss" // looked at; nothing to do
)

// maxRemotes bounds the source hosts kept per triage entry.
const maxRemotes = 8

// Shadow is a triage entry: an unknown identity and its attempts.
type Shadow struct {
	Key           string       `json:"key"` // kind "/" identity
	Kind          AttemptKind  `json:"kind"`
	ClientID      string       `json:"client_id,omitempty"`
	EKFingerprint string       `json:"ek_fingerprint,omitempty"`
	Cert          *CertSummary `json:"cert,omitempty"`
	FirstSeen     time.Time    `json:"first_seen"`
	LastSeen      time.Time    `json:"last_seen"`
	Count         uint64       `json:"count"`
	// Remotes are distinct source hosts, most recent last, at most 8.
	Remotes   []string  `json:"remotes,omitempty"`
	Reason    string    `json:"reason,omitempty"` // the latest
	Decision  Decision  `json:"decision,omitempty"`
	DecidedBy string    `json:"decided_by,omitempty"`
	DecidedAt time.Time `json:"decided_at,omitzero"`
	Note      string    `json:"note,omitempty"`
}

// pendingAttempt aggregates attempts of one identity between flushes.
type pendingAttempt struct {
	s Shadow
}

func summarize(c *x509.Certificate) *CertSummary {
	if c == nil {
		return nil
	}
	sum := sha256.Sum256(c.Raw)
	serial := ""
	if c.SerialNumber != nil {
		serial = clean(c.SerialNumber.Text(16))
	}
	return &CertSummary{Subject: clean(c.Subject.String()), Issuer: clean(c.Issuer.String()),
		Serial: serial, SHA256: hex.EncodeToString(sum[:]), NotAfter: c.NotAfter.UTC()}
}

// identityKey names the identity an attempt is aggregated under.
func identityKey(kind AttemptKind, client, ek string, cert *CertSummary, host string) string {
	byClient, byEK, byCert, byHost := "", "", "", ""
	if client != "" {
		byClient = "client:" + client
	}
	if ek != "" {
		byEK = "ek:" + ek
	}
	if cert != nil {
		byCert = "cert:" + cert.SHA256
	}
	if host != "" {
		byHost = "addr:" + host
	}
	var order []string
	switch kind {
	case AttemptForeignCert:
		order = []string{byCert, byClient, byHost}
	case AttemptUnknownEK:
		order = []string{byEK, byClient, byCert, byHost}
	default:
		order = []string{byClient, byCert, byEK, byHost}
	}
	for _, k := range order {
		if k != "" {
			return k
		}
	}
	return ""
}

// Observe records an attempt in the triage aggregate; Flush writes it. It
// never blocks on disk: the broker may call it on its connection paths. It
// fails only for an attempt without a valid kind or without anything to
// identify it by. When Config.MaxPending identities already wait for a
// flush, an attempt from a new identity is counted as dropped (see
// TriageStats) instead of being kept.
func (s *Service) Observe(a Attempt) error {
	if a.Time.IsZero() {
		a.Time = s.cfg.Now()
	}
	one, err := prepare(a)
	if err != nil {
		return err
	}
	s.pmu.Lock()
	defer s.pmu.Unlock()
	p, ok := s.pending[one.Key]
	if !ok {
		if len(s.pending) >= s.cfg.MaxPending {
			s.dropped++
			return nil
		}
		s.pending[one.Key] = &pendingAttempt{s: one}
		return nil
	}
	p.s.merge(one)
	return nil
}

// prepare turns an attempt into a one-attempt triage entry: its fields
// cleaned, its key derived.
func prepare(a Attempt) (Shadow, error) {
	if !a.Kind.valid() {
		return Shadow{}, fmt.Errorf("%w: attempt kind %q", ErrInvalid, clean(string(a.Kind)))
	}
	client, ek := clean(a.ClientID), strings.ToLower(clean(a.EKFingerprint))
	host := ""
	if a.Remote != "" {
		host = hostOf(a.Remote)
	}
	cert := summarize(a.Cert)
	id := identityKey(a.Kind, client, ek, cert, host)
	if id == "" {
		return Shadow{}, fmt.Errorf("%w: attempt with no client ID, EK, certificate or address", ErrInvalid)
	}
	at := a.Time.UTC()
	return Shadow{Key: string(a.Kind) + "/" + id, Kind: a.Kind, ClientID: client, EKFingerprint: ek, Cert: cert,
		FirstSeen: at, LastSeen: at, Count: 1, Remotes: nonEmpty(host), Reason: clean(a.Reason)}, nil
}

func nonEmpty(s string) []string {
	if s == "" {
		return nil
	}
	return []string{s}
}

// merge adds the attempts summarized in o (newer or older) to sh.
func (sh *Shadow) merge(o Shadow) {
	sh.Count += o.Count
	if o.FirstSeen.Before(sh.FirstSeen) {
		sh.FirstSeen = o.FirstSeen
	}
	newer := !o.LastSeen.Before(sh.LastSeen)
	if newer {
		sh.LastSeen = o.LastSeen
		if o.Reason != "" {
			sh.Reason = o.Reason
		}
	}
	if sh.ClientID == "" {
		sh.ClientID = o.ClientID
	}
	if sh.EKFingerprint == "" {
		sh.EKFingerprint = o.EKFingerprint
	}
	if sh.Cert == nil {
		sh.Cert = o.Cert
	}
	for _, h := range o.Remotes {
		if i := slices.Index(sh.Remotes, h); i >= 0 {
			if !newer {
				continue
			}
			sh.Remotes = slices.Delete(sh.Remotes, i, i+1)
		}
		sh.Remotes = append(sh.Remotes, h)
		if len(sh.Remotes) > maxRemotes {
			sh.Remotes = slices.Delete(sh.Remotes, 0, len(sh.Remotes)-maxRemotes)
		}
	}
}

func lruKey(last time.Time, key string) []byte {
	n := last.UnixNano()
	if n < 0 {
		n = 0
	}
	return append(binary.BigEndian.AppendUint64(nil, uint64(n)), key...)
}

// Flush writes the triage aggregate in one transaction, alerts on new
// unknown identities and acts on clones detected from sessions. Run calls
// it every Config.FlushInterval.
func (s *Service) Flush() error {
	s.pmu.Lock()
	pending, dropped := s.pending, s.dropped
	s.pending, s.dropped = map[string]*pendingAttempt{}, 0
	s.pmu.Unlock()

	var fresh []string
	var evicted int
	if len(pending) > 0 || dropped > 0 {
		keys := make([]string, 0, len(pending))
		for k := range pending {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		err := s.db.Update(context.TODO(), func(tx kv.Tx) error {
			fresh, evicted = nil, 0
			if dropped > 0 {
				if err := addCounter(tx, keyDropped, int64(dropped)); err != nil {
					return err
				}
			}
			for _, k := range keys {
				isNew, ev, err := s.storeAttempts(tx, &pending[k].s)
				if err != nil {
					return err
				}
				if isNew {
					fresh = append(fresh, k)
				}
				evicted += ev
			}
			return nil
		})
		if err != nil {
			// Put the counts back so a later flush may succeed.
			s.pmu.Lock()
			s.dropped += dropped
			for k, p := range pending {
				if q, ok := s.pending[k]; ok {
					p.s.merge(q.s)
				}
				s.pending[k] = p
			}
			s.pmu.Unlock()
			return fmt.Errorf("governance: flush triage: %w", err)
		}
	}
	if len(fresh) > 0 || dropped > 0 {
		s.alertShadows(fresh, dropped, evicted)
	}
	return s.processDetected()
}

// storeAttempts merges p into the stored entry (creating it, evicting the
// least recently seen entry when the list is full).
func (s *Service) storeAttempts(tx kv.Tx, p *Shadow) (isNew bool, evicted int, err error) {
	tb, lb := tx.Bucket(bucketTriage), tx.Bucket(bucketTriageLR)
	old, err := get[Shadow](tx, bucketTriage, []byte(p.Key))
	if err != nil {
		return false, 0, err
	}
	rec := p
	if old != nil {
		if err := lb.Delete(lruKey(old.LastSeen, old.Key)); err != nil {
			return false, 0, err
		}
		old.merge(*p)
		rec = old
	} else {
		isNew = true
		for getCounter(tx, keyTriageN) >= uint64(s.cfg.MaxTriage) {
			k, _ := lb.Cursor().First()
			if k == nil {
				break
			}
			if err := tb.Delete(k[8:]); err != nil {
				return false, 0, err
			}
			if err := lb.Delete(k); err != nil {
				return false, 0, err
			}
			evicted++
			if err := addCounter(tx, keyTriageN, -1); err != nil {
				return false, 0, err
			}
			if err := addCounter(tx, keyEvicted, 1); err != nil {
				return false, 0, err
			}
		}
		if err := addCounter(tx, keyTriageN, 1); err != nil {
			return false, 0, err
		}
	}
	if err := put(tx, bucketTriage, []byte(rec.Key), rec); err != nil {
		return false, 0, err
	}
	return isNew, evicted, lb.Put(lruKey(rec.LastSeen, rec.Key), nil)
}

func (s *Service) alertShadows(fresh []string, dropped uint64, evicted int) {
	attrs := map[string]string{"new": strconv.Itoa(len(fresh))}
	summary := fmt.Sprintf("%d unknown identities tried to connect", len(fresh))
	if len(fresh) > 0 {
		shown := fresh[:min(len(fresh), 5)]
		attrs["identities"] = strings.Join(shown, ", ")
		summary += ": " + strings.Join(shown, ", ")
		if len(fresh) > len(shown) {
			summary += fmt.Sprintf(" and %d more", len(fresh)-len(shown))
		}
	}
	sev := SeverityInfo
	if dropped > 0 {
		sev = SeverityWarning
		attrs["dropped"] = strconv.FormatUint(dropped, 10)
		summary += fmt.Sprintf("; %d attempts from further identities were not recorded (flood)", dropped)
	}
	if evicted > 0 {
		attrs["evicted"] = strconv.Itoa(evicted)
	}
	s.alert(Alert{Kind: KindShadow, Severity: sev, Summary: summary, Attrs: attrs})
}

// Shadow returns one triage entry (after a flush).
func (s *Service) Shadow(key string) (*Shadow, error) {
	var sh *Shadow
	err := s.db.View(context.TODO(), func(tx kv.Tx) error {
		var err error
		sh, err = get[Shadow](tx, bucketTriage, []byte(key))
		return err
	})
	if err == nil && sh == nil {
		err = fmt.Errorf("%w: triage entry %q", ErrNotFound, clean(key))
	}
	return sh, err
}

// TriageFilter selects triage entries.
type TriageFilter struct {
	Undecided bool        // only entries without a decision
	Kind      AttemptKind // "" for any
	After     string      // cursor from the previous page
	Limit     int         // default 100, at most 1000
}

// Triage lists triage entries, most recently seen first, and the cursor of
// the next page ("" when there is none).
func (s *Service) Triage(f TriageFilter) ([]Shadow, string, error) {
	limit := pageLimit(f.Limit)
	var after []byte
	if f.After != "" {
		var err error
		if after, err = hex.DecodeString(f.After); err != nil || len(after) < 8 {
			return nil, "", fmt.Errorf("%w: triage cursor", ErrInvalid)
		}
	}
	var out []Shadow
	next := ""
	err := s.db.View(context.TODO(), func(tx kv.Tx) error {
		tb := tx.Bucket(bucketTriage)
		c := tx.Bucket(bucketTriageLR).Cursor()
		var k []byte
		if after == nil {
			k, _ = c.Last()
		} else {
			k, _ = c.Seek(after)
			if k == nil {
				k, _ = c.Last()
			}
			for k != nil && string(k) >= string(after) {
				k, _ = c.Prev()
			}
		}
		var last []byte
		for ; k != nil; k, _ = c.Prev() {
			v := tb.Get(k[8:])
			if v == nil {
				continue
			}
			sh, err := decode[Shadow](v)
			if err != nil {
				return err
			}
			if (f.Undecided && sh.Decision != DecisionNone) || (f.Kind != "" && sh.Kind != f.Kind) {
				continue
			}
			if len(out) == limit {
				next = hex.EncodeToString(last)
				return nil
			}
			out = append(out, *sh)
			last = slices.Clone(k)
		}
		return nil
	})
	return out, next, err
}

// TriageStats are the triage list's counters.
type TriageStats struct {
	Entries uint64 // kept now
	Pending int    // identities waiting for a flush
	Dropped uint64 // attempts never recorded because too many new identities arrived between flushes
	Evicted uint64 // entries removed to keep the list at Config.MaxTriage
}

// TriageStats returns the counters, including attempts not yet flushed.
func (s *Service) TriageStats() (TriageStats, error) {
	var st TriageStats
	s.pmu.Lock()
	st.Pending, st.Dropped = len(s.pending), s.dropped
	s.pmu.Unlock()
	err := s.db.View(context.TODO(), func(tx kv.Tx) error {
		st.Entries = getCounter(tx, keyTriageN)
		st.Dropped += getCounter(tx, keyDropped)
		st.Evicted = getCounter(tx, keyEvicted)
		return nil
	})
	return st, err
}

// NotEnrollableError says why a triage entry cannot be enrolled. Its
// Reason is meant for operators. It matches ErrNotEnrollable.
type NotEnrollableError struct {
	Key    string
	Reason string
}

func (e *NotEnrollableError) Error() string {
	return "governance: " + e.Key + " cannot be enrolled: " + e.Reason
}

// Is makes errors.Is(err, ErrNotEnrollable) hold.
func (e *NotEnrollableError) Is(target error) bool { return target == ErrNotEnrollable }

// Enrollable reports whether an operator may decide to enroll the entry,
// and if not, why (a *NotEnrollableError). Only identities a device can
// then prove with its own TPM qualify: an unknown EK (enrollment trusts
// that EK once decided) and an unknown bootstrap client ID (it may open a
// bootstrap session; its EK still needs a trust path). A certificate
// issued by another CA — or a fleet certificate of a device the inventory
// no longer holds — names no TPM: enrolling it would trust a credential
// the fleet never issued or already forgot, so such entries can only be
// blocked or dismissed.
func (sh *Shadow) Enrollable() error {
	why := ""
	switch {
	case sh.Kind == AttemptForeignCert:
		issuer := "an unknown issuer"
		if sh.Cert != nil && sh.Cert.Issuer != "" {
			issuer = sh.Cert.Issuer
		}
		why = "its certificate was issued by another CA (" + issuer + "), not by this fleet nor for a TPM the fleet knows; block or dismiss it (a device of yours enrolls with its TPM)"
	case sh.Kind == AttemptUnknownDevice:
		why = "it holds a fleet certificate of a device the inventory no longer has; that device enrolls again with its TPM, so block or dismiss this entry"
	case sh.Kind == AttemptUnknownEK && sh.EKFingerprint == "":
		why = "it presented no EK to trust"
	case sh.Kind == AttemptUnknownClient && sh.ClientID == "":
		why = "it presented no client ID"
	case sh.Kind != AttemptUnknownEK && sh.Kind != AttemptUnknownClient:
		why = "entries of kind " + string(sh.Kind) + " cannot be enrolled"
	}
	if why == "" {
		return nil
	}
	return &NotEnrollableError{Key: sh.Key, Reason: why}
}

// Decide records an operator's decision on a triage entry and carries it
// out: DecisionEnroll hands the entry to the Enroller if the entry is
// Enrollable (else a *NotEnrollableError; either error aborts the
// decision); DecisionBlock puts the entry's client ID and EK on the block
// list, or its source addresses when it has neither (a foreign
// certificate); DecisionDismiss only records. It returns the updated entry.
func (s *Service) Decide(key string, d Decision, by, note string) (*Shadow, error) {
	if d != DecisionEnroll && d != DecisionBlock && d != DecisionDismiss {
		return nil, fmt.Errorf("%w: decision %q", ErrInvalid, clean(string(d)))
	}
	if err := s.Flush(); err != nil {
		return nil, err
	}
	sh, err := s.Shadow(key)
	if err != nil {
		return nil, err
	}
	by, note = clean(by), clean(note)
	switch d {
	case DecisionEnroll:
		if err := sh.Enrollable(); err != nil {
			return nil, err
		}
		if s.cfg.Enroller == nil {
			return nil, ErrNoEnroller
		}
		if err := s.cfg.Enroller.Enroll(*sh); err != nil {
			return nil, fmt.Errorf("governance: enroll %s: %w", sh.Key, err)
		}
	case DecisionBlock:
		var blocks []Block
		for _, b := range []Block{{Kind: BlockClientID, Value: sh.ClientID}, {Kind: BlockEK, Value: sh.EKFingerprint}} {
			// What a client presented may not be a valid EK fingerprint.
			if b.Value != "" && normalizeBlock(&b) == nil {
				blocks = append(blocks, b)
			}
		}
		if len(blocks) == 0 {
			for _, h := range sh.Remotes {
				if b := (Block{Kind: BlockAddress, Value: h}); normalizeBlock(&b) == nil {
					blocks = append(blocks, b)
				}
			}
		}
		if len(blocks) == 0 {
			return nil, fmt.Errorf("%w: entry %s has nothing the broker can block", ErrInvalid, sh.Key)
		}
		for _, b := range blocks {
			b.Reason, b.By, b.Source = note, by, sh.Key
			if err := s.Block(b); err != nil {
				return nil, err
			}
		}
	}
	err = s.db.Update(context.TODO(), func(tx kv.Tx) error {
		cur, err := get[Shadow](tx, bucketTriage, []byte(key))
		if err != nil {
			return err
		}
		if cur == nil {
			return fmt.Errorf("%w: triage entry %q was evicted", ErrNotFound, clean(key))
		}
		cur.Decision, cur.DecidedBy, cur.DecidedAt, cur.Note = d, by, s.cfg.Now().UTC(), note
		sh = cur
		return put(tx, bucketTriage, []byte(key), cur)
	})
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return nil, err
		}
		return nil, fmt.Errorf("governance: decide: %w", err)
	}
	return sh, nil
}
