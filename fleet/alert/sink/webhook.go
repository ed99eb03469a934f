package sink

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/sigil-iot/sigil/fleet/alert"
)

// SignatureHeader carries a webhook body's signature:
//
//	X-Sigil-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>
//
// The timestamp is signed with the body so that a receiver can refuse a
// replayed request (VerifySignature).
const SignatureHeader = "X-Sigil-Signature"

// WebhookVersion is the version of the webhook payload; it grows when a
// field changes meaning. History: 1 (2026) — first version.
const WebhookVersion = 1

// WebhookConfig configures NewWebhook.
type WebhookConfig struct {
	// URL receives each notification as a JSON POST. Required.
	URL string
	// Client sends the requests. Nil: a client that does not follow
	// redirects.
	Client *http.Client
	// Header is added to every request. Its values never appear in
	// errors.
	Header http.Header
	// Secret, when set, signs each body (SignatureHeader). Keep it out of
	// logs and configuration dumps.
	Secret []byte
	// Now stamps signatures. Nil means time.Now.
	Now func() time.Time
}

// WebhookPayload is the body the generic webhook POSTs.
type WebhookPayload struct {
	Version int `json:"version"` // WebhookVersion
	alert.Notification
}

// Webhook posts notifications as JSON to any HTTP receiver.
type Webhook struct {
	cfg WebhookConfig
}

var _ alert.Notifier = (*Webhook)(nil)

// NewWebhook returns a generic JSON webhook sink.
func NewWebhook(cfg WebhookConfig) (*Webhook, error) {
	if err := checkURL("webhook", cfg.URL); err != nil {
		return nil, err
	}
	if cfg.Client == nil {
		cfg.Client = defaultClient()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	cfg.Secret = append([]byte(nil), cfg.Secret...)
	return &Webhook{cfg: cfg}, nil
}

// Notify posts n as a WebhookPayload, signed when a Secret is set.
func (s *Webhook) Notify(ctx context.Context, n alert.Notification) error {
	body, err := json.Marshal(WebhookPayload{Version: WebhookVersion, Notification: n})
	if err != nil {
		return fmt.Errorf("%w: sink: webhook: encode: %v", alert.ErrPermanent, err)
	}
	header := s.cfg.Header
	if len(s.cfg.Secret) > 0 {
		header = header.Clone()
		if header == nil {
			header = http.Header{}
		}
		header.Set(SignatureHeader, Sign(s.cfg.Secret, s.cfg.Now(), body))
	}
	return post(ctx, "webhook", s.cfg.Client, s.cfg.URL, header, body)
}

// Sign returns the SignatureHeader value for body sent at t.
func Sign(secret []byte, t time.Time, body []byte) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	return "t=" + ts + ",v1=" + hex.EncodeToString(mac(secret, ts, body))
}

func mac(secret []byte, ts string, body []byte) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(ts))
	m.Write([]byte{'.'})
	m.Write(body)
	return m.Sum(nil)
}

// Signature errors.
var (
	ErrSignature = errors.New("sink: webhook signature does not verify")
	ErrStale     = errors.New("sink: webhook signature too old or in the future")
)

// VerifySignature checks a SignatureHeader value for body, as a receiver
// does: the header parses, one v1 signature matches HMAC-SHA256(secret,
// "<t>.<body>") in constant time, and t is within maxAge of now (either
// way). It returns the signed time.
func VerifySignature(secret []byte, header string, body []byte, now time.Time, maxAge time.Duration) (time.Time, error) {
	var ts string
	var sigs [][]byte
	for _, part := range strings.Split(header, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return time.Time{}, fmt.Errorf("%w: malformed header", ErrSignature)
		}
		switch k {
		case "t":
			ts = v
		case "v1":
			b, err := hex.DecodeString(v)
			if err != nil || len(b) != sha256.Size {
				return time.Time{}, fmt.Errorf("%w: malformed v1", ErrSignature)
			}
			sigs = append(sigs, b)
		}
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || len(sigs) == 0 || strings.Trim(ts, "0123456789") != "" {
		return time.Time{}, fmt.Errorf("%w: missing t or v1", ErrSignature)
	}
	want := mac(secret, ts, body)
	ok := false
	for _, s := range sigs {
		if hmac.Equal(s, want) {
			ok = true
		}
	}
	if !ok {
		return time.Time{}, ErrSignature
	}
	t := time.Unix(sec, 0)
	if d := now.Sub(t); d > maxAge || d < -maxAge {
		return time.Time{}, ErrStale
	}
	return t, nil
}
