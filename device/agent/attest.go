package agent

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"os"
	"slices"
	"time"

	"github.com/sigil-iot/sigil/device/state"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// sessionLoop runs while a session is up: it asks for an attestation
// challenge at once and on its schedule, answers challenges, and renews the
// certificate at RenewAt of its lifetime or when the fleet asks (renew.go
// paces the renewals). It returns true when a renewed certificate arrived
// and the device should reconnect with it now.
func (a *Agent) sessionLoop(ctx context.Context, conn publisher, id *state.Identity) bool {
	defer a.sshSession(ctx, conn, id)() // SSH host certificates after passing attestations (ssh.go)
	a.requestAttestation(ctx, conn, id, "connect")
	every := time.Duration(a.cfg.AttestInterval)
	var tick <-chan time.Time // nil: no schedule
	rn := a.newRenewal()
	renew := time.NewTimer(a.renewDelay(id))
	defer renew.Stop()
	var sched *time.Timer
	if every > 0 {
		sched = time.NewTimer(a.jitter(every))
		defer sched.Stop()
		tick = sched.C
	}
	for {
		select {
		case <-ctx.Done():
			return false
		case ch := <-a.challenges:
			if ch.Purpose == wire.PurposeRenew {
				if d, ok := a.answerRenewal(ctx, conn, id, rn, ch); ok {
					renew.Reset(d)
				}
			} else {
				a.answerChallenge(ctx, conn, id, ch)
			}
		case <-tick:
			a.requestAttestation(ctx, conn, id, "schedule")
			sched.Reset(a.jitter(every))
		case <-a.rotate:
			if d, ok := a.rotateAsked(ctx, conn, id, rn); ok {
				renew.Reset(d)
			}
		case <-renew.C:
			renew.Reset(a.renewDue(ctx, conn, id, rn))
		case res := <-a.renewals:
			d, renewed, ok := a.renewAnswered(id, rn, res)
			if renewed {
				return true
			}
			if ok {
				renew.Reset(d)
			}
		case roots := <-a.trust:
			a.acceptTrustBundle(id, roots)
		}
	}
}

// acceptTrustBundle stores the fleet's roots pushed during a CA rotation.
// It arrived over the authenticated session on a topic only the fleet may
// publish to; it is still checked: every entry must be a CA certificate,
// and the bundle must keep verifying the device's own certificate (a
// bundle that would strand the device is refused).
func (a *Agent) acceptTrustBundle(id *state.Identity, roots [][]byte) {
	pool := x509.NewCertPool()
	for _, der := range roots {
		c, err := x509.ParseCertificate(der)
		if err != nil || !c.IsCA {
			a.log.Warn("refusing trust bundle: an entry is not a CA certificate")
			return
		}
		pool.AddCert(c)
	}
	if slices.EqualFunc(roots, id.TrustBundle, bytes.Equal) {
		return
	}
	if cert, err := x509.ParseCertificate(id.Cert); err == nil {
		inter := x509.NewCertPool()
		for _, der := range id.Chain {
			if c, err := x509.ParseCertificate(der); err == nil {
				inter.AddCert(c)
			}
		}
		_, verr := cert.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, CurrentTime: a.now(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
		if verr != nil {
			// The current certificate comes from a generation being
			// retired: keep the roots that verify it, add the new ones,
			// so the device can still reach the fleet until it is
			// re-issued or re-enrolled.
			roots = appendNew(roots, id.TrustBundle)
		}
	}
	id.TrustBundle = roots
	if id.Next != nil {
		id.Next.TrustBundle = appendNew(roots, id.Next.TrustBundle)
	}
	if err := a.st.SaveIdentity(id); err != nil {
		a.log.Warn("saving the trust bundle failed", "err", err)
		return
	}
	a.publishIdentity(id)
	a.log.Info("trust bundle updated by the fleet", "roots", len(roots))
}

// appendNew appends to a the entries of b it lacks.
func appendNew(a, b [][]byte) [][]byte {
	out := slices.Clone(a)
	for _, x := range b {
		if !slices.ContainsFunc(out, func(y []byte) bool { return bytes.Equal(x, y) }) {
			out = append(out, x)
		}
	}
	return out
}

// renewDelay is the time until RenewAt of the current certificate's
// lifetime (at least a second).
func (a *Agent) renewDelay(id *state.Identity) time.Duration {
	c, err := x509.ParseCertificate(id.Cert)
	if err != nil {
		return time.Hour
	}
	life := c.NotAfter.Sub(c.NotBefore)
	at := c.NotBefore.Add(time.Duration(float64(life) * a.cfg.RenewAt))
	return max(at.Sub(a.now()), time.Second)
}

// startRenewal creates the next transport key (stored before it is used)
// unless a renewal is already under way, then asks for a renewal nonce.
// It reports whether it asked.
func (a *Agent) startRenewal(ctx context.Context, conn publisher, id *state.Identity) bool {
	if id.Next == nil || len(id.Next.Cert) > 0 {
		tk, err := a.tpm.CreateTransportKey()
		if err != nil {
			a.log.Warn("renewal: creating the new transport key failed", "err", err)
			return false
		}
		id.Next = &state.Renewal{TK: state.KeyBlob{Public: tk.Public, Private: tk.Private}}
		if err := a.st.SaveIdentity(id); err != nil {
			a.log.Warn("renewal: saving the new key failed", "err", err)
			return false
		}
	}
	a.log.Info("renewing the certificate")
	return a.requestAttestation(ctx, conn, id, wire.PurposeRenew)
}

// sendRenewal answers a renewal challenge: fresh evidence, the new key
// certified by the AK over the same nonce, and a CSR signed by the new key.
// It reports whether the request was sent.
func (a *Agent) sendRenewal(ctx context.Context, conn publisher, id *state.Identity, ch *wire.AttestChallenge) bool {
	if id.Next == nil {
		return false
	}
	ev := a.evidence(ctx, id, ch)
	if ev == nil {
		return false
	}
	tk := blob(id.Next.TK)
	attest, sig, err := a.tpm.Certify(blob(id.AK), tk, ch.Nonce)
	if err != nil {
		a.log.Warn("renewal: certify failed", "err", err)
		return false
	}
	signer, err := a.tpm.Signer(tk)
	if err != nil {
		a.log.Warn("renewal: new key unusable", "err", err)
		return false
	}
	csr, err := x509.CreateCertificateRequest(a.rand, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: id.DeviceID}, SignatureAlgorithm: x509.ECDSAWithSHA256}, signer)
	if err != nil {
		a.log.Warn("renewal: CSR failed", "err", err)
		return false
	}
	req := &wire.RenewRequest{Nonce: ch.Nonce, TKPublic: id.Next.TK.Public, CertifyInfo: attest, CertifySig: sig, CSR: csr, Evidence: *ev}
	b, err := wire.Encode(wire.TypeRenewRequest, nil, a.now(), req)
	if err == nil {
		err = conn.Publish(ctx, a.topics.DeviceUp(id.DeviceID, "renew"), b)
	}
	if err != nil {
		if ctx.Err() == nil {
			a.log.Warn("renewal: sending the request failed", "err", err)
		}
		return false
	}
	return true
}

// acceptRenewal takes the fleet's answer to a renewal. A certificate is
// stored after checking it is for the new key and chains to the trust
// bundle (renewAccepted: the device reconnects with it). A certificate
// for another key is an answer to an older request (renewStale). A
// refusal, or a certificate for the new key that does not verify, is
// renewRefused; after the latter the new key is dropped, so that the next
// attempt asks for another (the fleet answers the same key with the same
// certificate).
func (a *Agent) acceptRenewal(id *state.Identity, res *wire.RenewResult) renewOutcome {
	if res.Status != wire.StatusActive {
		a.log.Warn("renewal refused", "reason", res.Reason.String(), "message", res.Message, "retry_after", res.RetryAfter)
		a.setStatus(func(s *Status) { s.LastReason = res.Reason.String() + ": " + res.Message })
		return renewRefused
	}
	if id.Next == nil || len(id.Next.Cert) > 0 {
		return renewStale
	}
	pub, err := a.tpm.PublicKey(blob(id.Next.TK))
	if err != nil {
		a.log.Warn("renewal: the new key is unusable", "err", err)
		return renewRefused
	}
	if c, err := x509.ParseCertificate(res.Certificate); err == nil {
		if k, ok := c.PublicKey.(*ecdsa.PublicKey); !ok || !k.Equal(pub) {
			a.log.Info("renewal: a certificate for another key arrived (an answer to an older request); ignored")
			return renewStale
		}
	}
	if err := verifyIssued(res.Certificate, res.Chain, res.TrustBundle, pub, a.now()); err != nil {
		a.log.Warn("renewal: refusing the issued certificate; the next attempt uses a new key", "err", err)
		id.Next = nil
		if err := a.st.SaveIdentity(id); err != nil {
			a.log.Warn("renewal: saving the identity failed", "err", err)
		}
		return renewRefused
	}
	id.Next.Cert, id.Next.Chain, id.Next.TrustBundle = res.Certificate, res.Chain, res.TrustBundle
	if err := a.st.SaveIdentity(id); err != nil {
		a.log.Warn("renewal: saving the certificate failed", "err", err)
		return renewRefused
	}
	a.log.Info("renewed certificate received; reconnecting with it")
	return renewAccepted
}

// jitter spreads d by ±10% so a fleet's devices do not attest in lockstep.
func (a *Agent) jitter(d time.Duration) time.Duration {
	span := int64(d / 5)
	if span <= 0 {
		return d
	}
	n, err := rand.Int(a.rand, big.NewInt(span))
	if err != nil {
		return d
	}
	return d - d/10 + time.Duration(n.Int64())
}

// requestAttestation asks the fleet for a challenge for reason (a
// schedule, a connection, wire.PurposeRenew); it reports whether it asked.
func (a *Agent) requestAttestation(ctx context.Context, conn publisher, id *state.Identity, reason string) bool {
	b, err := wire.Encode(wire.TypeAttestRequest, nil, a.now(), &wire.AttestRequest{Reason: reason})
	if err == nil {
		err = conn.Publish(ctx, a.topics.DeviceUp(id.DeviceID, "attest"), b)
	}
	if err != nil && ctx.Err() == nil {
		a.log.Warn("asking for an attestation challenge failed", "err", err)
	}
	return err == nil
}

// answerChallenge sends evidence for a challenge.
func (a *Agent) answerChallenge(ctx context.Context, conn publisher, id *state.Identity, ch *wire.AttestChallenge) {
	ev := a.evidence(ctx, id, ch)
	if ev == nil {
		return
	}
	b, err := wire.Encode(wire.TypeAttestEvidence, nil, a.now(), ev)
	if err == nil {
		err = conn.Publish(ctx, a.topics.DeviceUp(id.DeviceID, "attest"), b)
	}
	if err != nil {
		if ctx.Err() == nil {
			a.log.Warn("sending evidence failed", "err", err)
		}
		return
	}
	a.setStatus(func(s *Status) { s.LastAttested = a.now() })
}

// evidence quotes every requested bank (retrying a failed quote) and adds
// the logs asked for; a quote that keeps failing is reported in the
// evidence, not hidden. It returns nil when ctx ended.
func (a *Agent) evidence(ctx context.Context, id *state.Identity, ch *wire.AttestChallenge) *wire.AttestEvidence {
	ev := &wire.AttestEvidence{Nonce: ch.Nonce, Firmware: a.runningFirmware()}
	for _, sel := range ch.Selections {
		var q *wire.Quote
		var err error
		for attempt := range 3 {
			if q, err = a.tpm.Quote(blob(id.AK), ch.Nonce, sel); err == nil {
				break
			}
			a.log.Warn("quote failed", "attempt", attempt+1, "err", err)
			if !sleep(ctx, 200*time.Millisecond) {
				return nil
			}
		}
		if err != nil {
			ev.Quotes, ev.Error = nil, err.Error()
			break
		}
		ev.Quotes = append(ev.Quotes, *q)
	}
	if ch.EventLog && ev.Error == "" && a.cfg.EventLog != "-" {
		log, err := readBounded(a.cfg.EventLog, wire.MaxEventLog)
		switch {
		case err == nil:
			ev.EventLog = log
		case !errors.Is(err, os.ErrNotExist):
			a.log.Warn("event log unreadable; attesting without it", "path", a.cfg.EventLog, "err", err)
		}
	}
	if ch.IMALog && ev.Error == "" && a.cfg.IMALog != "" {
		if log, err := readBounded(a.cfg.IMALog, wire.MaxIMALog); err == nil {
			ev.IMALog = log
		} else {
			a.log.Warn("IMA log unreadable", "path", a.cfg.IMALog, "err", err)
		}
	}
	return ev
}

// readBounded reads a file of at most max bytes.
func readBounded(path string, max int) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, int64(max)+1))
	if err != nil {
		return nil, err
	}
	if len(b) > max {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, max)
	}
	return b, nil
}
