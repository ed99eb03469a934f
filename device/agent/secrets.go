package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/sigil-iot/sigil/device/state"
	"github.com/sigil-iot/sigil/device/tpm"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// Sealed secrets on the device (docs/PROTOCOL.md, "Sealed secrets").
//
// The fleet delivers a secret wrapped to this TPM's EK (secret.deliver).
// The daemon imports it into the TPM (TPM2_Import under the EK), stores the
// resulting TPM-wrapped blob in the state store under the secret's name,
// and acknowledges (secret.ack). The value is never unsealed by the
// daemon, never stored in the clear and never logged.
//
// Services read a secret with `sigild secret get NAME`: that process asks
// the running daemon for the stored blob over the control socket (or, with
// no daemon running, reads the state store), then unseals it through the
// TPM itself. Only the TPM-wrapped blob crosses the socket; the plaintext
// exists only in the calling process (and, inside the TPM's salted,
// response-encrypted session, on the TPM bus).

// secretQueue bounds deliveries waiting for the TPM; a delivery dropped
// because the queue is full is not acknowledged, so the fleet sends it
// again on the next connect.
const secretQueue = 16

// queueSecret hands a delivery from the MQTT reader to the session's
// secret worker without waiting for the TPM.
func (a *Agent) queueSecret(env *wire.Envelope) {
	var d wire.SecretDeliver
	if err := wire.DecodeBody(env, wire.TypeSecretDeliver, &d); err != nil {
		a.log.Warn("dropping malformed secret delivery", "err", err)
		return
	}
	select {
	case a.secrets <- &d:
	default:
		a.log.Warn("secret deliveries arrive faster than the TPM imports them; one dropped (the fleet sends it again)", "name", d.Name, "version", d.Version)
	}
}

// secretLoop imports queued deliveries while a session is up, one at a
// time, and acknowledges each on conn.
func (a *Agent) secretLoop(ctx context.Context, conn publisher, deviceID string) {
	for {
		select {
		case <-ctx.Done():
			return
		case d := <-a.secrets:
			ack := &wire.SecretAck{Name: d.Name, Version: d.Version, OK: true}
			if err := a.importSecret(d); err != nil {
				a.log.Warn("importing a delivered secret failed", "name", d.Name, "version", d.Version, "err", err)
				ack.OK, ack.Error = false, truncate(err.Error(), 512)
			} else {
				a.log.Info("secret imported into the TPM", "name", d.Name, "version", d.Version, "pcr_bound", d.PCRs != nil)
			}
			b, err := wire.Encode(wire.TypeSecretAck, nil, a.now(), ack)
			if err == nil {
				err = conn.Publish(ctx, a.topics.DeviceUp(deviceID, "secret"), b)
			}
			if err != nil && ctx.Err() == nil {
				a.log.Warn("acknowledging a secret failed", "name", d.Name, "err", err)
			}
		}
	}
}

// importSecret imports d into the TPM and stores the blob before it is
// acknowledged. A version the store already holds (a redelivery) or one
// older than it is acknowledged without TPM work.
func (a *Agent) importSecret(d *wire.SecretDeliver) error {
	if old, err := a.st.Secret(d.Name); err == nil && old.Version >= d.Version {
		return nil
	}
	blob, err := a.tpm.ImportSecret(d.Public, d.Duplicate, d.Seed, d.PCRs)
	if err != nil {
		return err
	}
	err = a.st.PutSecret(&state.Secret{Name: d.Name, Version: d.Version, Public: blob.Public, Private: blob.Private, PCRs: blob.PCRs, Received: a.now().UTC()},
		time.Duration(d.Grace)*time.Second)
	if errors.Is(err, state.ErrOlderSecret) {
		return nil
	}
	return err
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// SecretInfo describes a stored secret without its value.
type SecretInfo struct {
	Name     string    `json:"name"`
	Version  int       `json:"version"`
	PCRBound bool      `json:"pcr_bound"`
	Received time.Time `json:"received,omitzero"`
	// Previous is the replaced version still available until
	// PreviousUntil (a rotation's grace period); 0 when none.
	Previous      int       `json:"previous,omitempty"`
	PreviousUntil time.Time `json:"previous_until,omitzero"`
}

// controlRequest is what a control socket client sends (one JSON object).
// A client that sends nothing gets the status.
type controlRequest struct {
	Op      string `json:"op"`                // "status" (default), "secret", "secrets"
	Name    string `json:"name,omitempty"`    // secret name for "secret"
	Version int    `json:"version,omitempty"` // for "secret": 0 the current one, or the previous during its grace period
}

// controlSecret is the answer to "secret": the TPM-wrapped blob, never the
// value.
type controlSecret struct {
	Secret   *state.Secret `json:"secret,omitempty"`
	List     []SecretInfo  `json:"list,omitempty"`
	NotFound bool          `json:"not_found,omitempty"`
	Error    string        `json:"error,omitempty"`
}

// answerSecrets serves the "secret" and "secrets" control requests from
// the daemon's open state store.
func (a *Agent) answerSecrets(w io.Writer, req controlRequest) {
	var out controlSecret
	if req.Op == "secrets" {
		l, err := listSecrets(a.st)
		if err != nil {
			out.Error = err.Error()
		}
		out.List = l
	} else {
		sec, err := a.st.SecretVersion(req.Name, req.Version, a.now())
		switch {
		case errors.Is(err, state.ErrNoSecret):
			out.NotFound = true
		case err != nil:
			out.Error = err.Error()
		}
		out.Secret = sec
	}
	_ = json.NewEncoder(w).Encode(out)
}

func listSecrets(st *state.Store) ([]SecretInfo, error) {
	all, err := st.Secrets()
	if err != nil {
		return nil, err
	}
	out := make([]SecretInfo, 0, len(all))
	for _, s := range all {
		info := SecretInfo{Name: s.Name, Version: s.Version, PCRBound: s.PCRs != nil, Received: s.Received}
		if p := s.Previous; p != nil && time.Now().Before(p.ValidUntil) {
			info.Previous, info.PreviousUntil = p.Version, p.ValidUntil
		}
		out = append(out, info)
	}
	return out, nil
}

// askDaemon sends a control request to the running daemon and decodes its
// answer; it fails when no daemon listens.
func askDaemon(path string, req controlRequest) (*controlSecret, error) {
	c, err := net.DialTimeout("unix", path, 2*time.Second)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if err := json.NewEncoder(c).Encode(req); err != nil {
		return nil, err
	}
	var out controlSecret
	if err := json.NewDecoder(io.LimitReader(c, 1<<20)).Decode(&out); err != nil {
		return nil, fmt.Errorf("agent: control socket answer: %w", err)
	}
	return &out, nil
}

// withStore runs f on the daemon's answer when it runs, else on the state
// store opened read-only (the daemon holds the store's lock while it runs,
// so the socket is the only way to it then).
func withStore(cfg Config, req controlRequest, f func(*state.Store) (*controlSecret, error)) (*controlSecret, error) {
	cfg.setDefaults()
	if cfg.Control != "-" {
		if out, err := askDaemon(cfg.Control, req); err == nil {
			return out, nil
		}
	}
	st, err := state.Open(cfg.State, state.Options{ReadOnly: true, Timeout: 500 * time.Millisecond})
	if err != nil {
		if errors.Is(err, state.ErrLocked) {
			return nil, fmt.Errorf("agent: sigild holds the state store but its control socket %s does not answer", cfg.Control)
		}
		return nil, err
	}
	defer st.Close()
	return f(st)
}

// SecretBlob returns the stored TPM-wrapped blob of the secret name (version
// 0: the current one; or the replaced one during its grace period): from
// the running daemon over its control socket, or from the state store when
// no daemon runs. It returns an error wrapping state.ErrNoSecret when the
// device holds no such secret.
func SecretBlob(cfg Config, name string, version int) (*state.Secret, error) {
	if !wire.ValidID(name) {
		return nil, fmt.Errorf("agent: %q is not a valid secret name", name)
	}
	out, err := withStore(cfg, controlRequest{Op: "secret", Name: name, Version: version}, func(st *state.Store) (*controlSecret, error) {
		sec, err := st.SecretVersion(name, version, time.Now())
		if errors.Is(err, state.ErrNoSecret) {
			return &controlSecret{NotFound: true}, nil
		}
		return &controlSecret{Secret: sec}, err
	})
	switch {
	case err != nil:
		return nil, fmt.Errorf("agent: secret %s: %w", name, err)
	case out.NotFound:
		return nil, fmt.Errorf("agent: secret %s: %w", name, state.ErrNoSecret)
	case out.Error != "":
		return nil, fmt.Errorf("agent: secret %s: %s", name, out.Error)
	}
	if out.Secret == nil {
		return nil, fmt.Errorf("agent: secret %s: empty answer from sigild", name)
	}
	return out.Secret, nil
}

// Secrets lists the secrets the device holds (names and versions, never
// values), from the running daemon or the state store.
func Secrets(cfg Config) ([]SecretInfo, error) {
	out, err := withStore(cfg, controlRequest{Op: "secrets"}, func(st *state.Store) (*controlSecret, error) {
		l, err := listSecrets(st)
		return &controlSecret{List: l}, err
	})
	if err != nil {
		return nil, fmt.Errorf("agent: secrets: %w", err)
	}
	if out.Error != "" {
		return nil, fmt.Errorf("agent: secrets: %s", out.Error)
	}
	return out.List, nil
}

// Unseal opens the secret name (version as in SecretBlob) through the device's TPM (cfg.TPM) in the
// calling process: it fetches the blob with SecretBlob and unseals it. A
// PCR-bound secret opens only while the bound PCRs hold the values the
// fleet sealed it to. The caller owns the returned value; clear it after
// use.
func Unseal(cfg Config, name string, version int) ([]byte, error) {
	sec, err := SecretBlob(cfg, name, version)
	if err != nil {
		return nil, err
	}
	cfg.setDefaults()
	t, err := tpm.Open(cfg.TPM)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	defer t.Close()
	v, err := t.Unseal(&tpm.SealedBlob{Public: sec.Public, Private: sec.Private, PCRs: sec.PCRs})
	if err != nil {
		return nil, fmt.Errorf("agent: secret %s: %w", name, err)
	}
	return v, nil
}
