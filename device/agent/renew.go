package agent

import (
	"context"
	"crypto/rand"
	"math/big"
	"time"

	"github.com/sigil-iot/sigil/device/link"
	"github.com/sigil-iot/sigil/device/state"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// publisher sends messages to the fleet over the session: *link.Conn.
type publisher interface {
	Publish(ctx context.Context, topic string, payload []byte) error
}

var _ publisher = (*link.Conn)(nil)

// Pacing of renewals.
const (
	// minRenewTimeout is the least time the device waits for the fleet's
	// answer to a renewal before it asks again (renewTimeout): a loaded
	// fleet answers in tens of seconds.
	minRenewTimeout = 2 * time.Minute
	// maxRetryAfter bounds the wait a fleet's RetryAfter may impose.
	maxRetryAfter = time.Hour
)

// renewal is where the session's certificate renewal stands. One renewal
// is outstanding at a time: the device asks for a renewal challenge
// (renewAsked), answers it with one renewal request (renewSent), and waits
// for the fleet's answer. Until the answer comes, or renewTimeout passes
// without one, nothing starts another: not the renewal timer, not the
// fleet's cert.rotate, not a second challenge. A refusal (or a certificate
// the device refuses) ends the attempt, and the next starts after a
// backoff that doubles from RetryMin to RetryMax, with jitter, and never
// before the RetryAfter the fleet's answer gave. A new session starts
// afresh: an answer to a request sent on a lost connection is lost with
// it, and the fleet answers a repeated request for the same key with the
// certificate it already issued.
type renewal struct {
	phase     renewPhase
	notBefore time.Time // a refused attempt's next one starts at or after it
	bo        *backoff
}

type renewPhase int

const (
	renewIdle  renewPhase = iota // nothing outstanding; the timer starts the next attempt
	renewAsked                   // a renewal challenge was asked for
	renewSent                    // the request was sent; waiting for the answer
)

// renewOutcome is what acceptRenewal made of an answer.
type renewOutcome int

const (
	renewAccepted renewOutcome = iota // certificate stored: reconnect with it
	renewRefused                      // the fleet refused, or the device refused the certificate
	renewStale                        // an answer to an older request: ignored
)

func (a *Agent) newRenewal() *renewal { return &renewal{bo: a.backoff()} }

// renewTimeout is how long the device waits for the answer to a renewal
// before it asks again: RetryMax, at least minRenewTimeout, spread by up
// to a fifth more.
func (a *Agent) renewTimeout() time.Duration {
	d := max(time.Duration(a.cfg.RetryMax), minRenewTimeout)
	return d + a.upTo(d/5)
}

// begin starts an attempt: a new key if needed, and the request for a
// renewal challenge. It returns when the timer should fire next: at the
// answer's timeout, or, if the attempt could not start, after the
// backoff.
func (a *Agent) begin(ctx context.Context, conn publisher, id *state.Identity, rn *renewal) time.Duration {
	if !a.startRenewal(ctx, conn, id) {
		return a.retryRenewal(rn, 0)
	}
	rn.phase = renewAsked
	return a.renewTimeout()
}

// renewDue handles the renewal timer: the certificate reached RenewAt, a
// backoff ended, or an outstanding renewal got no answer in time.
func (a *Agent) renewDue(ctx context.Context, conn publisher, id *state.Identity, rn *renewal) time.Duration {
	if rn.phase != renewIdle {
		a.log.Warn("no answer to the renewal request in time; asking again")
	}
	return a.begin(ctx, conn, id, rn)
}

// rotateAsked handles the fleet's cert.rotate: a renewal starts now unless
// one is outstanding or the fleet asked the device to wait. ok reports
// whether the timer is to be reset to d.
func (a *Agent) rotateAsked(ctx context.Context, conn publisher, id *state.Identity, rn *renewal) (d time.Duration, ok bool) {
	switch {
	case rn.phase != renewIdle:
		a.log.Info("the fleet asks for a rotation; the renewal under way answers it")
		return 0, false
	case a.now().Before(rn.notBefore):
		a.log.Info("the fleet asks for a rotation; renewing when the wait it asked for ends", "at", rn.notBefore)
		return 0, false
	}
	return a.begin(ctx, conn, id, rn), true
}

// answerRenewal answers a renewal challenge with the renewal request, once
// per attempt: a challenge the device did not ask for, or one for an
// attempt already answered, is dropped. ok reports whether the timer is
// to be reset to d (the request could not be made: backoff).
func (a *Agent) answerRenewal(ctx context.Context, conn publisher, id *state.Identity, rn *renewal, ch *wire.AttestChallenge) (d time.Duration, ok bool) {
	if rn.phase != renewAsked {
		a.log.Debug("renewal challenge not asked for, or already answered; dropped")
		return 0, false
	}
	if !a.sendRenewal(ctx, conn, id, ch) {
		return a.retryRenewal(rn, 0), true
	}
	rn.phase = renewSent
	return 0, false
}

// renewAnswered handles the fleet's answer to a renewal: renewed reports a
// stored certificate (the session ends to reconnect with it); otherwise ok
// reports whether the timer is to be reset to d (the outstanding attempt
// was refused: backoff, at least the answer's RetryAfter).
func (a *Agent) renewAnswered(id *state.Identity, rn *renewal, res *wire.RenewResult) (d time.Duration, renewed, ok bool) {
	switch a.acceptRenewal(id, res) {
	case renewAccepted:
		return 0, true, false
	case renewStale:
		return 0, false, false
	}
	if rn.phase == renewIdle {
		return 0, false, false // no attempt of this session waits for it
	}
	return a.retryRenewal(rn, retryAfter(res)), false, true
}

// retryRenewal ends the current attempt and returns how long to wait
// before the next: the next step of the backoff, and never less than what
// the fleet asked (ra), spread by up to a fifth more so that devices the
// fleet refused together do not return together.
func (a *Agent) retryRenewal(rn *renewal, ra time.Duration) time.Duration {
	d := rn.bo.next()
	if ra > 0 {
		d = max(d, ra+a.upTo(ra/5))
	}
	rn.phase, rn.notBefore = renewIdle, a.now().Add(d)
	return d
}

// retryAfter is the wait a renewal result asks for, at most maxRetryAfter.
func retryAfter(res *wire.RenewResult) time.Duration {
	if res.RetryAfter <= 0 {
		return 0
	}
	return min(time.Duration(res.RetryAfter)*time.Second, maxRetryAfter)
}

// upTo is a random duration in [0, d).
func (a *Agent) upTo(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	n, err := rand.Int(a.rand, big.NewInt(int64(d)))
	if err != nil {
		return 0
	}
	return time.Duration(n.Int64())
}
