package workload

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"sync"
	"time"
)

// JWT-SVIDs are signed RS256 (RSA-2048, PKCS#1 v1.5, SHA-256): the
// algorithm every cloud's workload identity federation accepts.
const (
	jwtAlg  = "RS256"
	rsaBits = 2048
)

// keys signs JWT-SVIDs with the active key of the store and publishes
// every key whose tokens may still be valid. A rotation makes a new key
// active at once (verifiers fetch the JWKS again on an unknown key ID);
// the retired key stays published until every token it signed has
// expired (retire + the longest JWT lifetime + skew), then it is deleted.
type keys struct {
	st     *Store
	now    func() time.Time
	keep   time.Duration // how long a retired key stays published
	mu     sync.Mutex
	opened map[string]*rsa.PrivateKey // by key ID
}

// jwkKey is one RFC 7517 RSA public key.
type jwkKey struct {
	Kty string `json:"kty"`
	Kid string `json:"kid"`
	Use string `json:"use"`
	Alg string `json:"alg"`
	N   string `json:"n"`
	E   string `json:"e"`
}

// JWKS is an RFC 7517 key set.
type JWKS struct {
	Keys []jwkKey `json:"keys"`
}

func newKey() (*storedKey, *rsa.PrivateKey, error) {
	k, err := rsa.GenerateKey(rand.Reader, rsaBits)
	if err != nil {
		return nil, nil, fmt.Errorf("workload: signing key: %w", err)
	}
	der, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		return nil, nil, fmt.Errorf("workload: signing key: %w", err)
	}
	sum := sha256.Sum256(der)
	return &storedKey{ID: base64.RawURLEncoding.EncodeToString(sum[:18])}, k, nil
}

// rotate makes a new key active and retires the active one. With
// onlyIfNone it creates the first key unless one is active.
func (k *keys) rotate(ctx context.Context, onlyIfNone bool) (string, error) {
	next, priv, err := newKey()
	if err != nil {
		return "", err
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return "", fmt.Errorf("workload: signing key: %w", err)
	}
	if next.Sealed, err = k.st.seal(next.ID, der); err != nil {
		return "", err
	}
	now := k.now().UTC()
	next.Created = now
	done, err := k.st.rotateKeys(ctx, next, now, now.Add(-k.keep), onlyIfNone)
	if err != nil || !done {
		return "", err
	}
	k.mu.Lock()
	k.opened[next.ID] = priv
	k.mu.Unlock()
	return next.ID, nil
}

// prune deletes the retired keys whose tokens have all expired.
func (k *keys) prune(ctx context.Context) error {
	now := k.now().UTC()
	_, err := k.st.rotateKeys(ctx, nil, now, now.Add(-k.keep), false)
	return err
}

// active returns the active key, creating the first one if there is none.
func (k *keys) active(ctx context.Context) (string, *rsa.PrivateKey, error) {
	for range 2 {
		all, err := k.st.keys(ctx)
		if err != nil {
			return "", nil, err
		}
		for _, sk := range all {
			if sk.Retired.IsZero() {
				priv, err := k.open(sk)
				return sk.ID, priv, err
			}
		}
		if _, err := k.rotate(ctx, true); err != nil {
			return "", nil, err
		}
	}
	return "", nil, errors.New("workload: no active signing key")
}

func (k *keys) open(sk storedKey) (*rsa.PrivateKey, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if p, ok := k.opened[sk.ID]; ok {
		return p, nil
	}
	der, err := k.st.unseal(sk.ID, sk.Sealed)
	if err != nil {
		return nil, err
	}
	p, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("workload: signing key %s: %w", sk.ID, err)
	}
	rk, ok := p.(*rsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("workload: signing key %s is not RSA", sk.ID)
	}
	k.opened[sk.ID] = rk
	return rk, nil
}

// jwks returns the published key set: the active key and the retired
// ones still within their keep time, newest first.
func (k *keys) jwks(ctx context.Context) (*JWKS, error) {
	all, err := k.st.keys(ctx)
	if err != nil {
		return nil, err
	}
	cut := k.now().Add(-k.keep)
	out := &JWKS{Keys: []jwkKey{}}
	for i := len(all) - 1; i >= 0; i-- {
		sk := all[i]
		if !sk.Retired.IsZero() && sk.Retired.Before(cut) {
			continue
		}
		priv, err := k.open(sk)
		if err != nil {
			return nil, err
		}
		out.Keys = append(out.Keys, jwkKey{Kty: "RSA", Kid: sk.ID, Use: "sig", Alg: jwtAlg,
			N: base64.RawURLEncoding.EncodeToString(priv.N.Bytes()),
			E: base64.RawURLEncoding.EncodeToString(big.NewInt(int64(priv.E)).Bytes())})
	}
	return out, nil
}

// Claims are a JWT-SVID's claims.
type Claims struct {
	Issuer   string   `json:"iss,omitempty"`
	Subject  string   `json:"sub"`
	Audience []string `json:"aud"`
	Expiry   int64    `json:"exp"`
	IssuedAt int64    `json:"iat"`
}

// sign returns the compact JWS of c signed with the active key.
func (k *keys) sign(ctx context.Context, c Claims) (string, error) {
	kid, priv, err := k.active(ctx)
	if err != nil {
		return "", err
	}
	return signJWT(kid, priv, c)
}

func signJWT(kid string, priv *rsa.PrivateKey, c Claims) (string, error) {
	h, err := json.Marshal(map[string]string{"alg": jwtAlg, "kid": kid, "typ": "JWT"})
	if err != nil {
		return "", err
	}
	p, err := json.Marshal(c)
	if err != nil {
		return "", err
	}
	input := base64.RawURLEncoding.EncodeToString(h) + "." + base64.RawURLEncoding.EncodeToString(p)
	sum := sha256.Sum256([]byte(input))
	sig, err := rsa.SignPKCS1v15(rand.Reader, priv, crypto.SHA256, sum[:])
	if err != nil {
		return "", fmt.Errorf("workload: sign JWT-SVID: %w", err)
	}
	return input + "." + base64.RawURLEncoding.EncodeToString(sig), nil
}
