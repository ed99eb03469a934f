package agent

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"math/big"
	"os"
	"time"

	"github.com/sigil-iot/sigil/device/link"
	"github.com/sigil-iot/sigil/device/state"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// attestLoop runs while a session is up: it asks for a challenge at once
// and on its schedule, and answers every challenge with quotes.
func (a *Agent) attestLoop(ctx context.Context, conn *link.Conn, id *state.Identity) {
	a.requestAttestation(ctx, conn, id, "connect")
	every := time.Duration(a.cfg.AttestInterval)
	var tick <-chan time.Time // nil: no schedule
	var t *time.Timer
	if every > 0 {
		t = time.NewTimer(a.jitter(every))
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case ch := <-a.challenges:
			a.answerChallenge(ctx, conn, id, ch)
		case <-tick:
			a.requestAttestation(ctx, conn, id, "schedule")
			t.Reset(a.jitter(every))
		}
	}
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

func (a *Agent) requestAttestation(ctx context.Context, conn *link.Conn, id *state.Identity, reason string) {
	b, err := wire.Encode(wire.TypeAttestRequest, nil, a.now(), &wire.AttestRequest{Reason: reason})
	if err == nil {
		err = conn.Publish(ctx, a.topics.DeviceUp(id.DeviceID, "attest"), b)
	}
	if err != nil && ctx.Err() == nil {
		a.log.Warn("asking for an attestation challenge failed", "err", err)
	}
}

// answerChallenge quotes every requested bank (retrying a failed quote) and
// sends the evidence; a quote that keeps failing is reported, not hidden.
func (a *Agent) answerChallenge(ctx context.Context, conn *link.Conn, id *state.Identity, ch *wire.AttestChallenge) {
	ev := &wire.AttestEvidence{Nonce: ch.Nonce, Firmware: a.cfg.Firmware}
	for _, sel := range ch.Selections {
		var q *wire.Quote
		var err error
		for attempt := range 3 {
			if q, err = a.tpm.Quote(blob(id.AK), ch.Nonce, sel); err == nil {
				break
			}
			a.log.Warn("quote failed", "attempt", attempt+1, "err", err)
			if !sleep(ctx, 200*time.Millisecond) {
				return
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
