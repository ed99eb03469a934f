package sign

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/sigstore/sigstore/pkg/signature/kms"
	"github.com/sigstore/sigstore/pkg/signature/options"
)

// ErrNoKMS is wrapped by OpenKMS's error when no key service answers to a
// key URI's scheme: no provider built into this program and no
// sigstore-kms-NAME plugin on PATH.
var ErrNoKMS = errors.New("sign: no key service for the key URI")

// IsKMS reports whether ref names a key held by a key service ("NAME://REF",
// as cosign's --key takes it) rather than a key file.
func IsKMS(ref string) bool {
	scheme, rest, ok := strings.Cut(ref, "://")
	return ok && scheme != "" && rest != "" && !strings.ContainsAny(scheme, "/\\.")
}

// kmsSigner is the part of sigstore's kms.SignerVerifier a release key
// needs.
type kmsSigner interface {
	PublicKey(...signature.PublicKeyOption) (crypto.PublicKey, error)
	SignMessage(io.Reader, ...signature.SignOption) ([]byte, error)
}

// kmsKey is a crypto.Signer whose private key stays in a key service: it
// hands the digest (ECDSA) or the message (Ed25519) to the service and
// never holds key material.
type kmsKey struct {
	ctx context.Context
	sv  kmsSigner
	pub crypto.PublicKey
}

var _ crypto.Signer = (*kmsKey)(nil)

// OpenKMS returns the release key named by uri, held by a key service
// through sigstore's KMS interfaces (github.com/sigstore/sigstore/pkg/
// signature/kms): "NAME://REF" runs the plugin program sigstore-kms-NAME
// found on PATH (sigstore's KMS plugin protocol, the one cosign uses), which
// holds the key and signs; providers linked into the program (none by
// default) take their own schemes first. The key never enters this
// process: the returned crypto.Signer sends the digest to the service.
//
// The key must be ECDSA P-256, ECDSA P-384 or Ed25519 (New's algorithms);
// OpenKMS asks the service for the public key once and returns an error
// wrapping ErrNoKMS when no service answers to the scheme, or
// verify.ErrUnsupportedKey for another key type. ctx bounds every call to
// the service, including later signatures.
func OpenKMS(ctx context.Context, uri string) (crypto.Signer, error) {
	if !IsKMS(uri) {
		return nil, fmt.Errorf("sign: %q is not a key URI (NAME://REF)", uri)
	}
	k, err := openKMS(ctx, uri, crypto.SHA256)
	if err != nil {
		return nil, err
	}
	// The plugin signs with the hash it was opened with: a P-384 key signs
	// SHA-384 digests, as New makes them.
	if e, ok := k.pub.(*ecdsa.PublicKey); ok && e.Curve == elliptic.P384() {
		if k, err = openKMS(ctx, uri, crypto.SHA384); err != nil {
			return nil, err
		}
	}
	return k, nil
}

func openKMS(ctx context.Context, uri string, h crypto.Hash) (*kmsKey, error) {
	sv, err := kms.Get(ctx, uri, h)
	var nf *kms.ProviderNotFoundError
	if errors.As(err, &nf) {
		scheme, _, _ := strings.Cut(uri, "://")
		return nil, fmt.Errorf("%w: %s:// (install the plugin sigstore-kms-%s on PATH): %w", ErrNoKMS, scheme, scheme, err)
	}
	if err != nil {
		return nil, fmt.Errorf("sign: key service: %w", err)
	}
	pub, err := sv.PublicKey(options.WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("sign: key service: public key: %w", err)
	}
	if pub == nil {
		return nil, errors.New("sign: key service: no public key")
	}
	return &kmsKey{ctx: ctx, sv: sv, pub: pub}, nil
}

// Public returns the public key the service reported when it was opened.
func (k *kmsKey) Public() crypto.PublicKey { return k.pub }

// Sign asks the key service to sign: digest is a digest of opts' hash
// (ECDSA), or the whole message when opts' hash is zero (Ed25519).
func (k *kmsKey) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	var sig []byte
	var err error
	if h := opts.HashFunc(); h == 0 {
		sig, err = k.sv.SignMessage(bytes.NewReader(digest), options.WithContext(k.ctx))
	} else {
		sig, err = k.sv.SignMessage(bytes.NewReader(nil), options.WithContext(k.ctx),
			options.WithDigest(digest), options.WithCryptoSignerOpts(h))
	}
	if err != nil {
		return nil, fmt.Errorf("key service: %w", err)
	}
	return sig, nil
}

// CreateKMSKey asks the key service named by uri to create the key (see
// OpenKMS) with the service's name for an algorithm, or its default when
// alg is "", and returns the public key. Not every service creates keys.
func CreateKMSKey(ctx context.Context, uri, alg string) (crypto.PublicKey, error) {
	if !IsKMS(uri) {
		return nil, fmt.Errorf("sign: %q is not a key URI (NAME://REF)", uri)
	}
	sv, err := kms.Get(ctx, uri, crypto.SHA256)
	var nf *kms.ProviderNotFoundError
	if errors.As(err, &nf) {
		return nil, fmt.Errorf("%w: %w", ErrNoKMS, err)
	}
	if err != nil {
		return nil, fmt.Errorf("sign: key service: %w", err)
	}
	if alg == "" {
		alg = sv.DefaultAlgorithm()
	}
	pub, err := sv.CreateKey(ctx, alg)
	if err != nil {
		return nil, fmt.Errorf("sign: key service: create key: %w", err)
	}
	return pub, nil
}
