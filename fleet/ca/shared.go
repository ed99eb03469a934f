package ca

import (
	"context"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/x509"
	"embed"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sigil-iot/sigil/fleet/storage/notify"
	"github.com/sigil-iot/sigil/fleet/storage/postgres"
)

// Replicas sharing a PostgreSQL database share the CA's generations
// (Share): a rotation step (Prepare, Activate, Retire) on one replica is
// committed to the table ca_generations with a NOTIFY on
// TopicGenerations in the same transaction; every other replica then
// adopts it at once (and at each resync of its bus), writing the new
// generation's files in its own Dir, so it issues from the new active
// generation and serves the new trust bundle.
//
// A generation's key crosses the database only sealed (AES-256-GCM) with
// a key every replica derives (HKDF-SHA256) from its copy of ca.key,
// generation 1's key, which replicas copy once and never leaves their
// data directories; the seal is bound to the generation's number and
// root, and the whole document (states included) carries a MAC under a
// second key derived so: a writer of the database without ca.key can
// change nothing a replica adopts. A CA whose key is external
// (Config.Signer) stores no keys and no MAC: each replica gets a
// generation's key from its own Config.NewSigner, and adopts only roots
// whose key that gives and cross certificates an earlier generation
// signed.

// TopicGenerations is the notify topic of a change of the CA's
// generations.
const TopicGenerations = "ca_generations"

// Errors of sharing. Compare with errors.Is.
var (
	// ErrStale: another replica changed the generations since this one
	// read them; it adopts the change, and the step can be tried again.
	ErrStale = errors.New("ca: another replica changed the CA generations; try again")
	// ErrDiverged: the database holds generations that contradict this
	// replica's (another root for a generation, another ca.crt): its
	// data directory is not a copy of the fleet's.
	ErrDiverged = errors.New("ca: the shared CA generations contradict this replica's")
	// ErrSealed: a shared generation's key does not unseal or does not
	// match its root.
	ErrSealed = errors.New("ca: a shared CA generation's key is unusable")
)

//go:embed migrations/*.sql
var migrations embed.FS

// sharing is the state of a CA shared through a database.
type sharing struct {
	db       *postgres.DB
	kek      []byte // seals the keys; nil with an external key
	mack     []byte // authenticates the document; nil with an external key
	version  int64  // of the generations c.gens holds
	onChange []func() error
}

// sharedGen is one generation in the shared document.
type sharedGen struct {
	N           int       `json:"n"`
	State       string    `json:"state"`
	PreparedAt  time.Time `json:"prepared_at,omitzero"`
	ActivatedAt time.Time `json:"activated_at,omitzero"`
	RetiredAt   time.Time `json:"retired_at,omitzero"`
	Cert        []byte    `json:"cert"`            // DER root
	Cross       []byte    `json:"cross,omitempty"` // DER cross certificate
	Key         []byte    `json:"key,omitempty"`   // sealed PKCS#8 (nonce, then ciphertext)
}

// Bus is how the replicas tell each other of a change
// (notify.Bus).
type Bus interface {
	Subscribe(topic string, fn func(notify.Event)) error
}

// shareTimeout bounds a rotation step's or an adoption's database work.
const shareTimeout = 30 * time.Second

// Share keeps c's generations in db, shared with the other replicas of
// the fleet (see TopicGenerations): from now on each rotation step is
// committed there first (and fails with ErrStale when another replica
// changed them meanwhile), and bus has c adopt the others' changes, then
// call each of onChange (e.g. ServerCert.Refresh; a failure is logged).
// At the first Share the database gets c's generations; later, c adopts
// the database's, or publishes its own when they extend the database's
// (ErrDiverged when they contradict). A nil db does nothing.
func (c *CA) Share(ctx context.Context, db *postgres.DB, bus Bus, onChange ...func() error) error {
	if db == nil {
		return nil
	}
	if err := db.Migrate(ctx, "ca", migrations); err != nil {
		return fmt.Errorf("ca: %w", err)
	}
	sh := &sharing{db: db, onChange: onChange}
	if c.cfg.Signer == nil {
		first, err := loadKey(filepath.Join(c.cfg.Dir, KeyFile))
		if err != nil {
			return fmt.Errorf("ca: %w", err)
		}
		der, err := x509.MarshalPKCS8PrivateKey(first)
		if err != nil {
			return fmt.Errorf("ca: %w", err)
		}
		if sh.kek, err = hkdf.Key(sha256.New, der, nil, "sigil ca generations: key seal v1", 32); err != nil {
			return fmt.Errorf("ca: %w", err)
		}
		if sh.mack, err = hkdf.Key(sha256.New, der, nil, "sigil ca generations: document mac v1", 32); err != nil {
			return fmt.Errorf("ca: %w", err)
		}
	}
	c.mu.Lock()
	c.shared = sh
	c.mu.Unlock()
	// Replicas starting at once race to publish first: the losers adopt.
	err := c.sync(ctx, true)
	for attempt := 1; errors.Is(err, ErrStale) && attempt < 3; attempt++ {
		err = c.sync(ctx, true)
	}
	if err != nil {
		return err
	}
	if bus == nil {
		return nil
	}
	return bus.Subscribe(TopicGenerations, func(notify.Event) {
		ctx, cancel := context.WithTimeout(context.Background(), shareTimeout)
		defer cancel()
		if err := c.sync(ctx, false); err != nil {
			c.log.Error("ca: adopting the shared CA generations failed", "err", err)
		}
	})
}

// sync reads the shared generations and adopts them when they are newer
// than c's; with publish (at Share) it writes c's when the database has
// none or c's extend them.
func (c *CA) sync(ctx context.Context, publish bool) error {
	c.mu.Lock()
	changed, err := c.syncLocked(ctx, publish)
	c.mu.Unlock()
	if err != nil || !changed {
		return err
	}
	for _, fn := range c.shared.onChange {
		if err := fn(); err != nil {
			c.log.Error("ca: after adopting the shared CA generations", "err", err)
		}
	}
	c.mu.Lock()
	hooks := append([]func(){}, c.adopted...)
	c.mu.Unlock()
	for _, fn := range hooks {
		fn()
	}
	return nil
}

// OnAdopt has fn called each time c adopts generations another replica
// changed (Share), after the Share's onChange: e.g. to push the new trust
// bundle to the devices this replica serves.
func (c *CA) OnAdopt(fn func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.adopted = append(c.adopted, fn)
}

// syncLocked is sync with c.mu held; it reports whether c's generations
// changed.
func (c *CA) syncLocked(ctx context.Context, publish bool) (bool, error) {
	sh := c.shared
	var version int64
	var raw, mac []byte
	err := sh.db.Pool().QueryRow(ctx, `SELECT version, doc, mac FROM ca_generations`).Scan(&version, &raw, &mac)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		if !publish {
			return false, nil
		}
		return false, c.publishLocked(ctx, c.generationsNow())
	case err != nil:
		return false, fmt.Errorf("ca: reading the shared generations: %w", err)
	case version == sh.version:
		return false, nil
	}
	var doc []sharedGen
	if err := json.Unmarshal(raw, &doc); err != nil {
		return false, fmt.Errorf("ca: the shared generations: %w", err)
	}
	mine := c.generationsNow()
	if len(doc) == 0 || fingerprint(mine[0].cert) != fingerprintDER(doc[0].Cert) {
		return false, fmt.Errorf("%w: generation 1 has another root: this replica's ca/ is not the fleet's", ErrDiverged)
	}
	if sh.mack != nil && !hmac.Equal(mac, sh.docMAC(version, raw)) {
		// Written by someone without this fleet's ca.key.
		return false, fmt.Errorf("%w: the shared generations' MAC does not verify with this replica's ca.key", ErrSealed)
	}
	for i, g := range doc {
		if i < len(mine) && fingerprint(mine[i].cert) != fingerprintDER(g.Cert) {
			return false, fmt.Errorf("%w: generation %d has another root", ErrDiverged, g.N)
		}
	}
	if publish && len(mine) > len(doc) {
		sh.version = version
		return false, c.publishLocked(ctx, mine)
	}
	next, err := c.adopt(doc, mine)
	if err != nil {
		return false, err
	}
	if err := c.saveGenerations(next); err != nil {
		return false, err
	}
	c.gmu.Lock()
	c.gens = next
	c.rebuild()
	c.gmu.Unlock()
	c.generationsChanged()
	sh.version = version
	c.log.Info("ca: adopted the shared CA generations", "generations", len(next), "version", version)
	return true, nil
}

// generationsNow returns c.gens.
func (c *CA) generationsNow() []*generation {
	c.gmu.RLock()
	defer c.gmu.RUnlock()
	return append([]*generation(nil), c.gens...)
}

// adopt checks the shared generations doc and returns them as c's,
// writing the files of those c lacks in Dir. It checks, for each: the
// numbering and states (exactly one active), that the root is a
// self-signed CA certificate whose key is the generation's (unsealed, or
// from NewSigner), and that its cross certificate is signed by an
// earlier generation's root.
func (c *CA) adopt(doc []sharedGen, mine []*generation) ([]*generation, error) {
	active := 0
	next := make([]*generation, 0, len(doc))
	for i, r := range doc {
		if r.N != i+1 || (r.State != GenPrepared && r.State != GenActive && r.State != GenSuperseded && r.State != GenRetired) {
			return nil, fmt.Errorf("%w: generation %d malformed", ErrDiverged, i+1)
		}
		if r.State == GenActive {
			active++
		}
		g := &generation{Generation: Generation{N: r.N, State: r.State, PreparedAt: r.PreparedAt, ActivatedAt: r.ActivatedAt, RetiredAt: r.RetiredAt}}
		if i < len(mine) {
			g.cert, g.cross, g.signer = mine[i].cert, mine[i].cross, mine[i].signer
			if g.signer == nil && r.State != GenRetired {
				// A generation this replica had retired cannot come back.
				return nil, fmt.Errorf("%w: generation %d is retired here", ErrDiverged, r.N)
			}
			next = append(next, g)
			continue
		}
		if err := c.adoptNew(g, r, next); err != nil {
			return nil, err
		}
		next = append(next, g)
	}
	if len(next) == 0 || active != 1 {
		return nil, fmt.Errorf("%w: want exactly one active generation", ErrDiverged)
	}
	return next, nil
}

// adoptNew fills g, a generation this replica lacks, from r, checking it
// against the earlier generations, and writes its files.
func (c *CA) adoptNew(g *generation, r sharedGen, earlier []*generation) error {
	var err error
	if g.cert, err = x509.ParseCertificate(r.Cert); err != nil || !g.cert.IsCA || g.cert.CheckSignatureFrom(g.cert) != nil {
		return fmt.Errorf("%w: generation %d: its root is not a self-signed CA certificate", ErrDiverged, r.N)
	}
	if g.cross, err = x509.ParseCertificate(r.Cross); err != nil {
		return fmt.Errorf("%w: generation %d: cross certificate: %v", ErrDiverged, r.N, err)
	}
	signed := false
	for _, e := range earlier {
		signed = signed || g.cross.CheckSignatureFrom(e.cert) == nil
	}
	if !signed || !publicKeyEqual(g.cross.PublicKey, g.cert.PublicKey) {
		return fmt.Errorf("%w: generation %d: its cross certificate is not an earlier generation's", ErrDiverged, r.N)
	}
	if r.State != GenRetired {
		if g.signer, err = c.sharedSigner(r, g.cert); err != nil {
			return err
		}
	}
	keyPath, certPath, crossPath := c.genPaths(r.N)
	if c.cfg.NewSigner == nil && g.signer != nil {
		der, err := x509.MarshalPKCS8PrivateKey(g.signer)
		if err != nil {
			return fmt.Errorf("ca: %w", err)
		}
		if err := writeFileAtomic(keyPath, pemKey(der), 0o600); err != nil {
			return fmt.Errorf("ca: %w", err)
		}
	}
	if err := writeFileAtomic(certPath, pemCert(g.cert.Raw), 0o644); err != nil {
		return fmt.Errorf("ca: %w", err)
	}
	if err := writeFileAtomic(crossPath, pemCert(g.cross.Raw), 0o644); err != nil {
		return fmt.Errorf("ca: %w", err)
	}
	return nil
}

// sharedSigner returns the key of a shared generation: unsealed from r,
// or with an external key NewSigner's; it must be the root's.
func (c *CA) sharedSigner(r sharedGen, root *x509.Certificate) (crypto.Signer, error) {
	var signer crypto.Signer
	if c.cfg.Signer != nil {
		if c.cfg.NewSigner == nil {
			return nil, ErrExternalSigner
		}
		s, err := c.cfg.NewSigner(r.N)
		if err != nil {
			return nil, fmt.Errorf("ca: generation %d key: %w", r.N, err)
		}
		signer = s
	} else {
		der, err := c.unseal(r.N, root, r.Key)
		if err != nil {
			return nil, err
		}
		key, err := x509.ParsePKCS8PrivateKey(der)
		if err != nil {
			return nil, fmt.Errorf("%w: generation %d: %v", ErrSealed, r.N, err)
		}
		s, ok := key.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("%w: generation %d: not a signing key", ErrSealed, r.N)
		}
		signer = s
	}
	if !publicKeyEqual(signer.Public(), root.PublicKey) {
		return nil, fmt.Errorf("%w: generation %d: the key is not its root's", ErrSealed, r.N)
	}
	return signer, nil
}

// publishLocked writes gens as the shared generations, if the database
// still holds the version c read (else ErrStale), with a NOTIFY on
// TopicGenerations. The caller holds c.mu.
func (c *CA) publishLocked(ctx context.Context, gens []*generation) error {
	sh := c.shared
	doc := make([]sharedGen, len(gens))
	for i, g := range gens {
		r := sharedGen{N: g.N, State: g.State, PreparedAt: g.PreparedAt, ActivatedAt: g.ActivatedAt, RetiredAt: g.RetiredAt, Cert: g.cert.Raw}
		if g.cross != nil {
			r.Cross = g.cross.Raw
		}
		if g.N > 1 && g.signer != nil && sh.kek != nil {
			der, err := x509.MarshalPKCS8PrivateKey(g.signer)
			if err != nil {
				return fmt.Errorf("ca: %w", err)
			}
			if r.Key, err = c.seal(g.N, g.cert, der); err != nil {
				return err
			}
		}
		doc[i] = r
	}
	raw, err := json.Marshal(doc)
	if err != nil {
		return fmt.Errorf("ca: %w", err)
	}
	var version int64
	err = sh.db.Tx(ctx, func(tx pgx.Tx) error {
		var cur int64
		switch err := tx.QueryRow(ctx, `SELECT version FROM ca_generations`).Scan(&cur); {
		case errors.Is(err, pgx.ErrNoRows):
			cur = 0
		case err != nil:
			return err
		}
		if cur != sh.version {
			return ErrStale
		}
		version = cur + 1
		if _, err := tx.Exec(ctx, `INSERT INTO ca_generations (id, version, doc, mac) VALUES (true, $1, $2, $3)
			ON CONFLICT (id) DO UPDATE SET version = $1, doc = $2, mac = $3`, version, raw, sh.docMAC(version, raw)); err != nil {
			return err
		}
		return notify.NotifyTx(ctx, tx, TopicGenerations, strconv.FormatInt(version, 10))
	})
	if errors.Is(err, ErrStale) {
		return err
	}
	if err != nil {
		return fmt.Errorf("ca: sharing the generations: %w", err)
	}
	sh.version = version
	return nil
}

// commit records next, the generations after a rotation step: first in
// the shared database (when Share was called), then in Dir. The caller
// holds c.mu.
func (c *CA) commit(next []*generation) error {
	if c.shared != nil {
		ctx, cancel := context.WithTimeout(context.Background(), shareTimeout)
		defer cancel()
		if err := c.publishLocked(ctx, next); err != nil {
			return err
		}
	}
	return c.saveGenerations(next)
}

// docMAC authenticates the shared document of a version (empty with an
// external key: no secret every replica holds).
func (sh *sharing) docMAC(version int64, doc []byte) []byte {
	if sh.mack == nil {
		return []byte{}
	}
	m := hmac.New(sha256.New, sh.mack)
	m.Write([]byte(strconv.FormatInt(version, 10) + "\n"))
	m.Write(doc)
	return m.Sum(nil)
}

// sealAAD binds a sealed key to its generation and root.
func sealAAD(n int, root *x509.Certificate) []byte {
	return []byte("sigil ca generation " + strconv.Itoa(n) + " " + fingerprint(root))
}

func (c *CA) aead() (cipher.AEAD, error) {
	block, err := aes.NewCipher(c.shared.kek)
	if err != nil {
		return nil, fmt.Errorf("ca: %w", err)
	}
	return cipher.NewGCM(block)
}

// seal encrypts a generation's PKCS#8 key for the shared database.
func (c *CA) seal(n int, root *x509.Certificate, der []byte) ([]byte, error) {
	aead, err := c.aead()
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, aead.NonceSize())
	if _, err := io.ReadFull(c.cfg.Rand, nonce); err != nil {
		return nil, fmt.Errorf("ca: %w", err)
	}
	return aead.Seal(nonce, nonce, der, sealAAD(n, root)), nil
}

// unseal decrypts a key seal made.
func (c *CA) unseal(n int, root *x509.Certificate, sealed []byte) ([]byte, error) {
	aead, err := c.aead()
	if err != nil {
		return nil, err
	}
	if len(sealed) < aead.NonceSize() {
		return nil, fmt.Errorf("%w: generation %d: no key", ErrSealed, n)
	}
	der, err := aead.Open(nil, sealed[:aead.NonceSize()], sealed[aead.NonceSize():], sealAAD(n, root))
	if err != nil {
		// Another ca.key than the replica that sealed it.
		return nil, fmt.Errorf("%w: generation %d: it does not unseal with this replica's ca.key", ErrSealed, n)
	}
	return der, nil
}

// pemKey encodes a PKCS#8 key in PEM.
func pemKey(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

// fingerprintDER is fingerprint of a DER certificate.
func fingerprintDER(der []byte) string {
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return ""
	}
	return fingerprint(c)
}
