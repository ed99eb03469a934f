package sso

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"golang.org/x/oauth2"

	"github.com/sigil-iot/sigil/fleet/auth"
)

// userState is what the provider last said about an operator signed in
// through it. It is kept with the account in the operators' store
// (auth.SetExternalState), sealed with a key derived from the client
// secret, so that every replica, and the fleet after a restart, re-checks
// with the same refresh token; each process caches it.
type userState struct {
	mu      sync.Mutex // held across a re-check: one at a time per person
	loaded  bool       // read from the store at least once
	subject string
	token   *oauth2.Token
	idToken string // the last raw ID token, as id_token_hint at logout
	checked time.Time
	role    auth.Role
}

// reset empties st (held), as read from a store without state.
func (st *userState) reset() {
	st.loaded, st.subject, st.token, st.idToken, st.checked, st.role = true, "", nil, "", time.Time{}, ""
}

// sealedState is userState as it is sealed into the store.
type sealedState struct {
	Subject string        `json:"sub"`
	Token   *oauth2.Token `json:"token"`
	IDToken string        `json:"id_token,omitempty"`
	Checked time.Time     `json:"checked"`
	Role    auth.Role     `json:"role"`
}

// stateKey derives the AEAD sealing the stored state from the client
// secret: replicas share it through their configuration, and the store
// alone does not open the tokens (which the provider honours only with
// that secret anyway).
func stateKey(secret string) (cipher.AEAD, error) {
	key, err := hkdf.Key(sha256.New, []byte(secret), nil, "sigil sso state v1", 32)
	if err != nil {
		return nil, fmt.Errorf("sso: state key: %w", err)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("sso: state key: %w", err)
	}
	return cipher.NewGCM(block)
}

// entry returns the cached state of user, made empty if there is none.
func (s *Service) entry(user string) *userState {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.users[user]
	if st == nil {
		st = &userState{}
		s.users[user] = st
	}
	return st
}

// load refreshes st (held) from the store when the store's copy is newer,
// or st was never read: another replica may have re-checked since.
func (s *Service) load(ctx context.Context, user string, st *userState) error {
	blob, err := s.opts.Auth.ExternalState(ctx, user, s.cfg.Issuer)
	if err != nil {
		return err
	}
	st.loaded = true
	if blob == nil {
		st.reset()
		return nil
	}
	ns := s.aead.NonceSize()
	if len(blob) < ns {
		return fmt.Errorf("sso: stored state of %s is truncated", user)
	}
	plain, err := s.aead.Open(nil, blob[:ns], blob[ns:], stateAAD(s.cfg.Issuer, user))
	if err != nil {
		return fmt.Errorf("sso: stored state of %s does not open (another client secret?): %w", user, err)
	}
	var v sealedState
	if err := json.Unmarshal(plain, &v); err != nil || v.Token == nil {
		return fmt.Errorf("sso: stored state of %s is malformed", user)
	}
	if v.Checked.After(st.checked) || st.subject == "" {
		st.subject, st.token, st.idToken, st.checked, st.role = v.Subject, v.Token, v.IDToken, v.Checked, v.Role
	}
	return nil
}

// save seals st (held) into the store.
func (s *Service) save(ctx context.Context, user string, st *userState) error {
	plain, err := json.Marshal(sealedState{Subject: st.subject, Token: st.token, IDToken: st.idToken, Checked: st.checked, Role: st.role})
	if err != nil {
		return fmt.Errorf("sso: %w", err)
	}
	nonce := make([]byte, s.aead.NonceSize())
	if _, err := io.ReadFull(s.opts.Rand, nonce); err != nil {
		return fmt.Errorf("sso: entropy: %w", err)
	}
	return s.opts.Auth.SetExternalState(ctx, user, s.cfg.Issuer, s.aead.Seal(nonce, nonce, plain, stateAAD(s.cfg.Issuer, user)))
}

// drop forgets user's state here and in the store.
func (s *Service) drop(ctx context.Context, user string, st *userState) {
	st.reset()
	if err := s.opts.Auth.SetExternalState(ctx, user, s.cfg.Issuer, nil); err != nil && !errors.Is(err, auth.ErrNotFound) {
		s.log.Error("single sign-on: clearing the stored state failed", "user", user, "err", err)
	}
}

// sealPending seals a login in progress for the state cookie.
func (s *Service) sealPending(p pending) (string, error) {
	plain, err := json.Marshal(p)
	if err != nil {
		return "", fmt.Errorf("sso: %w", err)
	}
	nonce := make([]byte, s.aead.NonceSize())
	if _, err := io.ReadFull(s.opts.Rand, nonce); err != nil {
		return "", fmt.Errorf("sso: entropy: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(s.aead.Seal(nonce, nonce, plain, []byte(pendingAAD))), nil
}

// openPending opens a state cookie sealPending made; anything else fails.
func (s *Service) openPending(v string) (pending, error) {
	var p pending
	blob, err := base64.RawURLEncoding.DecodeString(v)
	if err != nil || len(blob) < s.aead.NonceSize() {
		return p, errors.New("sso: malformed state cookie")
	}
	ns := s.aead.NonceSize()
	plain, err := s.aead.Open(nil, blob[:ns], blob[ns:], []byte(pendingAAD))
	if err != nil {
		return p, errors.New("sso: state cookie does not open")
	}
	if err := json.Unmarshal(plain, &p); err != nil || p.State == "" {
		return p, errors.New("sso: malformed state cookie")
	}
	return p, nil
}

// pendingAAD keeps a sealed login apart from a sealed account state.
const pendingAAD = "sigil sso login in progress"

func stateAAD(issuer, user string) []byte { return []byte(issuer + "\x00" + user) }
