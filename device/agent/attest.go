package agent

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"time"

	"github.com/sigil-iot/sigil/device/internal/retry"
	"github.com/sigil-iot/sigil/device/renew"
	"github.com/sigil-iot/sigil/device/state"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// publisher sends messages to the fleet over the session: *link.Conn.
type publisher interface {
	Publish(ctx context.Context, topic string, payload []byte) error
}

// renewConfig is the configuration of the session's certificate renewal
// (device/renew).
func (a *Agent) renewConfig() renew.Config {
	return renew.Config{TPM: a.tpm, Store: a.st, Attester: renew.AttesterFunc(a.evidence), Topics: a.topics,
		RenewAt: a.cfg.RenewAt, RetryMin: time.Duration(a.cfg.RetryMin), RetryMax: time.Duration(a.cfg.RetryMax),
		Refused: func(reason wire.Reason, msg string) {
			a.setStatus(func(s *Status) { s.LastReason = reason.String() + ": " + msg })
		},
		Now: a.now, Rand: a.rand, Logger: a.log}
}

// sessionLoop runs while a session is up: it asks for an attestation
// challenge at once and on its schedule, answers challenges, and renews the
// certificate at RenewAt of its lifetime or when the fleet asks
// (device/renew paces the renewals). It returns true when a renewed
// certificate arrived and the device should reconnect with it now.
func (a *Agent) sessionLoop(ctx context.Context, conn publisher, id *state.Identity) bool {
	defer a.sshSession(ctx, conn, id)()             // SSH host certificates after passing attestations (ssh.go)
	defer a.accessSession(ctx, conn, id.DeviceID)() // operator sessions read in sshd's log (access.go)
	defer a.extSession(ctx, conn, id.DeviceID)()
	a.requestAttestation(ctx, conn, id, "connect")
	every := time.Duration(a.cfg.AttestInterval)
	var tick <-chan time.Time // nil: no schedule
	rn, err := renew.Start(a.renewConfig(), conn, id)
	if err != nil {
		a.log.Error("certificate renewal unavailable", "err", err)
		<-ctx.Done()
		return false
	}
	defer rn.Stop()
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
				rn.Challenge(ctx, ch)
			} else {
				a.answerChallenge(ctx, conn, id, ch)
			}
		case <-tick:
			a.requestAttestation(ctx, conn, id, "schedule")
			sched.Reset(a.jitter(every))
		case <-a.rotate:
			rn.Rotate(ctx)
		case <-rn.C():
			rn.Due(ctx)
		case res := <-a.renewals:
			if rn.Result(res) {
				return true
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

// jitter spreads d by ±10% so a fleet's devices do not attest in lockstep.
func (a *Agent) jitter(d time.Duration) time.Duration {
	span := int64(d / 5)
	if span <= 0 {
		return d
	}
	return d - d/10 + retry.UpTo(a.rand, time.Duration(span))
}

// requestAttestation asks the fleet for a challenge for reason (a
// schedule, a connection, wire.PurposeRenew); it reports whether it asked.
func (a *Agent) requestAttestation(ctx context.Context, conn publisher, id *state.Identity, reason string) bool {
	b, err := wire.Encode(wire.TypeAttestRequest, nil, a.now(), &wire.AttestRequest{Reason: reason})
	if err == nil {
		a.expectAnswer() // a challenge
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
		a.expectAnswer() // a verdict
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
			if !retry.Sleep(ctx, 200*time.Millisecond) {
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
