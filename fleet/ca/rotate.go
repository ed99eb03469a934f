package ca

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// CA rotation follows the signing-authority hygiene of prepare, activate and
// retire. Each signing key is a generation, numbered from 1:
//
//   - Prepare creates generation N+1: a new key and self-signed root, plus a
//     cross certificate of the new root signed by the active one. The new
//     root joins the trust bundle every device receives (with each
//     certificate, and pushed by the server), while the active generation
//     keeps signing.
//   - Activate makes the prepared generation the one that signs. The server
//     certificate is issued anew by it and presented with the cross
//     certificate, so a device that only ever learnt the old root still
//     authenticates the fleet. Devices are then re-issued (a forced
//     rotation job run by the server).
//   - Retire takes every generation older than the active one out of the
//     trust bundle. Certificates they issued are refused at the broker (see
//     Issuer), so a device that slept through the whole overlap is refused,
//     enrolls again from its EK and is attested before it gets a certificate
//     of the new generation.
//
// Generation 1 lives in ca.key and ca.crt (the files of a CA that never
// rotated); generation N > 1 in ca-N.key, ca-N.crt and ca-N-cross.crt.
// generations.json records each generation's state; its absence means
// generation 1 alone, active.

// Generation states.
const (
	GenPrepared   = "prepared"   // trusted, not yet signing
	GenActive     = "active"     // signing
	GenSuperseded = "superseded" // was active; trusted until Retire
	GenRetired    = "retired"    // no longer trusted
)

// GenerationsFile records the generations in Config.Dir.
const GenerationsFile = "generations.json"

// Errors returned by rotation.
var (
	ErrNothingPrepared  = errors.New("ca: no prepared generation to activate")
	ErrAlreadyPrepared  = errors.New("ca: a generation is already prepared")
	ErrNothingToRetire  = errors.New("ca: no generation older than the active one is still trusted")
	ErrExternalSigner   = errors.New("ca: rotation needs Config.NewSigner when the CA key is external")
	ErrRetiredGenerator = errors.New("ca: certificate issued by a retired CA generation")
	ErrUnknownIssuer    = errors.New("ca: certificate not issued by any CA generation")
)

// Generation describes one signing key of the CA.
type Generation struct {
	N           int       `json:"n"`
	State       string    `json:"state"`
	PreparedAt  time.Time `json:"prepared_at,omitzero"`
	ActivatedAt time.Time `json:"activated_at,omitzero"`
	RetiredAt   time.Time `json:"retired_at,omitzero"`
	// Subject, NotAfter and Fingerprint (SHA-256 of the root, hex) describe
	// the root certificate; they are filled from it and not stored.
	Subject     string    `json:"subject,omitempty"`
	NotAfter    time.Time `json:"not_after,omitzero"`
	Fingerprint string    `json:"fingerprint,omitempty"`
}

// generation is a Generation with its certificate, key and cross
// certificate (nil for generation 1).
type generation struct {
	Generation
	cert   *x509.Certificate
	cross  *x509.Certificate
	signer crypto.Signer
}

func (c *CA) genPaths(n int) (key, cert, cross string) {
	if n == 1 {
		return filepath.Join(c.cfg.Dir, KeyFile), filepath.Join(c.cfg.Dir, CertFile), ""
	}
	p := filepath.Join(c.cfg.Dir, "ca-"+strconv.Itoa(n))
	return p + ".key", p + ".crt", p + "-cross.crt"
}

// loadGenerations reads generations.json (if any) after Open has loaded
// generation 1 into c.cert and c.signer, and makes the active generation
// the signing one.
func (c *CA) loadGenerations() error {
	path := filepath.Join(c.cfg.Dir, GenerationsFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		c.gens = []*generation{{Generation: Generation{N: 1, State: GenActive}, cert: c.cert, signer: c.signer}}
		c.rebuild()
		return nil
	}
	if err != nil {
		return fmt.Errorf("ca: %w", err)
	}
	var recs []Generation
	if err := json.Unmarshal(b, &recs); err != nil {
		return fmt.Errorf("ca: %s: %w", path, err)
	}
	active := 0
	for i, r := range recs {
		if r.N != i+1 || (r.State != GenPrepared && r.State != GenActive && r.State != GenSuperseded && r.State != GenRetired) {
			return fmt.Errorf("ca: %s: generation %d malformed", path, i+1)
		}
		if r.State == GenActive {
			active++
		}
	}
	if len(recs) == 0 || active != 1 {
		return fmt.Errorf("ca: %s: want exactly one active generation", path)
	}
	gens := make([]*generation, 0, len(recs))
	for _, r := range recs {
		g := &generation{Generation: r}
		if r.N == 1 {
			g.cert, g.signer = c.cert, c.signer
		} else if err := c.loadGeneration(g); err != nil {
			return err
		}
		gens = append(gens, g)
	}
	c.gens = gens
	c.rebuild()
	return nil
}

// loadGeneration reads the files of generation g.N > 1. The key of a
// retired generation is not needed and is not loaded.
func (c *CA) loadGeneration(g *generation) error {
	keyPath, certPath, crossPath := c.genPaths(g.N)
	b, err := os.ReadFile(certPath)
	if err != nil {
		return fmt.Errorf("ca: generation %d: %w", g.N, err)
	}
	if g.cert, err = parseCertPEM(b); err != nil {
		return fmt.Errorf("ca: %s: %w", certPath, err)
	}
	if b, err = os.ReadFile(crossPath); err == nil {
		if g.cross, err = parseCertPEM(b); err != nil {
			return fmt.Errorf("ca: %s: %w", crossPath, err)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("ca: %w", err)
	}
	if g.State == GenRetired {
		return nil
	}
	if c.cfg.NewSigner != nil {
		g.signer, err = c.cfg.NewSigner(g.N)
	} else {
		g.signer, err = loadKey(keyPath)
	}
	if err != nil {
		return fmt.Errorf("ca: generation %d key: %w", g.N, err)
	}
	if !publicKeyEqual(g.signer.Public(), g.cert.PublicKey) {
		return fmt.Errorf("ca: %s does not match its key", certPath)
	}
	return nil
}

// rebuild derives the signing key, certificate and pool from c.gens. The
// caller holds c.gmu for writing (or owns c during Open).
func (c *CA) rebuild() {
	pool := x509.NewCertPool()
	for _, g := range c.gens {
		pool.AddCert(g.cert)
		if g.State == GenActive {
			c.cert, c.signer = g.cert, g.signer
		}
	}
	c.pool = pool
}

// saveGenerations writes generations.json atomically.
func (c *CA) saveGenerations(gens []*generation) error {
	recs := make([]Generation, len(gens))
	for i, g := range gens {
		recs[i] = Generation{N: g.N, State: g.State, PreparedAt: g.PreparedAt, ActivatedAt: g.ActivatedAt, RetiredAt: g.RetiredAt}
	}
	b, err := json.MarshalIndent(recs, "", "  ")
	if err != nil {
		return fmt.Errorf("ca: %w", err)
	}
	if err := writeFileAtomic(filepath.Join(c.cfg.Dir, GenerationsFile), append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("ca: %w", err)
	}
	return nil
}

// Generations lists the CA's generations, oldest first.
func (c *CA) Generations() []Generation {
	c.gmu.RLock()
	defer c.gmu.RUnlock()
	out := make([]Generation, len(c.gens))
	for i, g := range c.gens {
		out[i] = g.describe()
	}
	return out
}

func (g *generation) describe() Generation {
	d := g.Generation
	d.Subject = g.cert.Subject.CommonName
	d.NotAfter = g.cert.NotAfter
	d.Fingerprint = fingerprint(g.cert)
	return d
}

// TrustBundle returns the DER root certificates devices must trust: the
// active generation's first, then a prepared or superseded one. Retired
// generations are left out.
func (c *CA) TrustBundle() [][]byte {
	c.gmu.RLock()
	defer c.gmu.RUnlock()
	out := [][]byte{c.cert.Raw}
	for _, g := range c.gens {
		if g.State == GenPrepared || g.State == GenSuperseded {
			out = append(out, g.cert.Raw)
		}
	}
	return out
}

// Rotating reports whether devices may hold a trust bundle that differs
// from the current one: a generation is prepared, or the active one was
// reached by rotation.
func (c *CA) Rotating() bool {
	c.gmu.RLock()
	defer c.gmu.RUnlock()
	return len(c.gens) > 1
}

// Issuer returns the generation that issued cert, a certificate that
// already verified against Pool (it identifies, it does not verify). It fails with
// ErrRetiredGenerator when that generation is retired and with
// ErrUnknownIssuer when none did.
func (c *CA) Issuer(cert *x509.Certificate) (Generation, error) {
	c.gmu.RLock()
	defer c.gmu.RUnlock()
	g := c.issuerOf(cert)
	switch {
	case g == nil:
		return Generation{}, ErrUnknownIssuer
	case g.State == GenRetired:
		return g.describe(), ErrRetiredGenerator
	}
	return g.describe(), nil
}

// issuerOf returns the generation that issued cert, newest first, or nil.
// The caller holds c.gmu.
func (c *CA) issuerOf(cert *x509.Certificate) *generation {
	for i := len(c.gens) - 1; i >= 0; i-- {
		g := c.gens[i]
		// The broker's TLS layer verified the chain against these roots a
		// moment ago: the authority key ID names the generation without
		// another signature check, which is made only when it is absent.
		if len(cert.AuthorityKeyId) > 0 && len(g.cert.SubjectKeyId) > 0 {
			if !bytes.Equal(cert.AuthorityKeyId, g.cert.SubjectKeyId) {
				continue
			}
		} else if cert.CheckSignatureFrom(g.cert) != nil {
			continue
		}
		return g
	}
	return nil
}

// IssuerCertificate returns the root certificate of the generation that
// issued cert, and that generation, retired ones included, after checking
// cert's signature with it; ErrUnknownIssuer when no generation issued it.
// It serves exports of certificates the CA issued (the chain to show with
// one), not authentication: use Issuer for that.
func (c *CA) IssuerCertificate(cert *x509.Certificate) (*x509.Certificate, Generation, error) {
	c.gmu.RLock()
	defer c.gmu.RUnlock()
	g := c.issuerOf(cert)
	if g == nil || cert.CheckSignatureFrom(g.cert) != nil {
		return nil, Generation{}, ErrUnknownIssuer
	}
	return g.cert, g.describe(), nil
}

// Prepare creates the next generation: a new key, a self-signed root named
// after the trust domain and the generation, and a cross certificate of the
// new root signed by the active generation (valid as long as the active
// root). The new root joins TrustBundle; the active generation keeps
// signing until Activate.
func (c *CA) Prepare() (Generation, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gmu.RLock()
	gens := append([]*generation(nil), c.gens...)
	activeCert, activeSigner := c.cert, c.signer
	c.gmu.RUnlock()
	for _, g := range gens {
		if g.State == GenPrepared {
			return Generation{}, ErrAlreadyPrepared
		}
	}
	if c.cfg.Signer != nil && c.cfg.NewSigner == nil {
		return Generation{}, ErrExternalSigner
	}
	n := len(gens) + 1
	keyPath, certPath, crossPath := c.genPaths(n)
	var signer crypto.Signer
	var err error
	if c.cfg.NewSigner != nil {
		signer, err = c.cfg.NewSigner(n)
	} else {
		// A key left by a Prepare that crashed before generations.json was
		// written is reused: FileSigner loads it.
		signer, err = FileSigner(keyPath)
	}
	if err != nil {
		return Generation{}, err
	}
	root, err := c.createRootFor(signer, fmt.Sprintf("Sigil fleet CA %s G%d", c.cfg.TrustDomain, n))
	if err != nil {
		return Generation{}, err
	}
	cross, err := c.crossSign(root, activeCert, activeSigner)
	if err != nil {
		return Generation{}, err
	}
	if err := writeFileAtomic(certPath, pemCert(root.Raw), 0o644); err != nil {
		return Generation{}, fmt.Errorf("ca: %w", err)
	}
	if err := writeFileAtomic(crossPath, pemCert(cross.Raw), 0o644); err != nil {
		return Generation{}, fmt.Errorf("ca: %w", err)
	}
	g := &generation{Generation: Generation{N: n, State: GenPrepared, PreparedAt: c.cfg.Now().UTC()}, cert: root, cross: cross, signer: signer}
	next := append(gens, g)
	if err := c.commit(next); err != nil {
		return Generation{}, err
	}
	c.gmu.Lock()
	c.gens = next
	c.rebuild()
	c.gmu.Unlock()
	c.generationsChanged()
	c.log.Info("ca: prepared generation", "generation", n, "subject", root.Subject.CommonName, "fingerprint", fingerprint(root))
	return g.describe(), nil
}

// crossSign certifies the new root's subject and key with the active
// generation, so chains ending at the old root still verify.
func (c *CA) crossSign(root, parent *x509.Certificate, signer crypto.Signer) (*x509.Certificate, error) {
	serial, err := c.serial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               root.Subject,
		NotBefore:             root.NotBefore,
		NotAfter:              parent.NotAfter,
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		SubjectKeyId:          root.SubjectKeyId,
	}
	der, err := x509.CreateCertificate(c.cfg.Rand, tmpl, parent, root.PublicKey, signer)
	if err != nil {
		return nil, fmt.Errorf("ca: cross-sign: %w", err)
	}
	return x509.ParseCertificate(der)
}

// Activate makes the prepared generation the signing one; the previous
// active generation stays trusted until Retire. The caller re-issues the
// server certificate (ServerTLS does, because the stored one is no longer
// from the active generation) and the devices' certificates.
func (c *CA) Activate() (Generation, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gmu.RLock()
	next := make([]*generation, len(c.gens))
	var prepared *generation
	for i, g := range c.gens {
		cp := *g
		next[i] = &cp
		if g.State == GenPrepared {
			prepared = next[i]
		}
	}
	c.gmu.RUnlock()
	if prepared == nil {
		return Generation{}, ErrNothingPrepared
	}
	for _, g := range next {
		if g.State == GenActive {
			g.State = GenSuperseded
		}
	}
	prepared.State = GenActive
	prepared.ActivatedAt = c.cfg.Now().UTC()
	if err := c.commit(next); err != nil {
		return Generation{}, err
	}
	c.gmu.Lock()
	c.gens = next
	c.rebuild()
	c.gmu.Unlock()
	c.generationsChanged()
	c.log.Info("ca: activated generation", "generation", prepared.N)
	return prepared.describe(), nil
}

// Retire takes every superseded generation out of the trust bundle.
// Certificates they issued are refused from then on (Issuer); their keys
// are no longer loaded.
func (c *CA) Retire() ([]Generation, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gmu.RLock()
	next := make([]*generation, len(c.gens))
	var retired []*generation
	now := c.cfg.Now().UTC()
	for i, g := range c.gens {
		cp := *g
		next[i] = &cp
		if g.State == GenSuperseded {
			cp.State, cp.RetiredAt, cp.signer = GenRetired, now, nil
			retired = append(retired, &cp)
		}
	}
	c.gmu.RUnlock()
	if len(retired) == 0 {
		return nil, ErrNothingToRetire
	}
	if err := c.commit(next); err != nil {
		return nil, err
	}
	c.gmu.Lock()
	c.gens = next
	c.rebuild()
	c.gmu.Unlock()
	c.generationsChanged()
	out := make([]Generation, len(retired))
	for i, g := range retired {
		out[i] = g.describe()
		c.log.Info("ca: retired generation", "generation", g.N)
	}
	return out, nil
}

// OnGenerations has fn called each time c's generations change: a
// rotation step made here (Prepare, Activate, Retire) or adopted from
// another replica (Share). fn is called with c's rotation lock held: it
// must not call c back, only note the change (crl.Publisher.Changed).
func (c *CA) OnGenerations(fn func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.changed = append(c.changed, fn)
}

// generationsChanged calls OnGenerations' functions; the caller holds
// c.mu.
func (c *CA) generationsChanged() {
	for _, fn := range c.changed {
		fn()
	}
}

// serverChain returns the certificates to present after a server leaf
// issued by the active generation: the cross certificate that links it to
// the previous root, while that is valid.
func (c *CA) serverChain() [][]byte {
	c.gmu.RLock()
	defer c.gmu.RUnlock()
	now := c.cfg.Now()
	for _, g := range c.gens {
		if g.State == GenActive && g.cross != nil && now.Before(g.cross.NotAfter) {
			return [][]byte{g.cross.Raw}
		}
	}
	return nil
}

// fingerprint is the hex SHA-256 of a certificate.
func fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:])
}
