// Command kmsplugin is a key service for tests: a sigstore KMS plugin (the
// protocol of github.com/sigstore/sigstore/pkg/signature/kms/cliplugin)
// that tests build as sigstore-kms-NAME on PATH, so that `sigil firmware
// sign --key NAME://PATH` and `cosign sign-blob --key NAME://PATH` sign
// through it. The key reference is the path of a key file this program
// creates (createKey) and alone reads: the signing program gets signatures
// and the public key, never the key.
//
// Each signature appends a line to PATH.log, so a test can tell that the
// plugin, not the caller, made it. It is a test program: its key file is a
// plain PKCS#8 file.
package main

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/sigstore/sigstore/pkg/signature/kms/cliplugin/common"
	"github.com/sigstore/sigstore/pkg/signature/kms/cliplugin/handler"
)

// Algorithms of createKey.
const (
	algP256    = "ecdsa-p256"
	algP384    = "ecdsa-p384"
	algEd25519 = "ed25519"
)

func main() {
	args, err := handler.GetPluginArgs(os.Args)
	if err != nil {
		handler.WriteErrorResponse(os.Stdout, err)
		return
	}
	if args.InitOptions == nil || args.InitOptions.ProtocolVersion != common.ProtocolVersion {
		handler.WriteErrorResponse(os.Stdout, errors.New("kmsplugin: unsupported protocol version"))
		return
	}
	k := &key{path: args.InitOptions.KeyResourceID, hash: args.InitOptions.HashFunc}
	if _, err := handler.Dispatch(os.Stdout, os.Stdin, args, k); err != nil {
		fmt.Fprintln(os.Stderr, "kmsplugin:", err)
	}
}

// key implements sigstore's kms.SignerVerifier over a key file.
type key struct {
	path string
	hash crypto.Hash
}

func (k *key) load() (signature.SignerVerifier, error) {
	b, err := os.ReadFile(k.path)
	if err != nil {
		return nil, fmt.Errorf("kmsplugin: %w", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, errors.New("kmsplugin: no PEM block in the key file")
	}
	priv, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("kmsplugin: %w", err)
	}
	h := k.hash
	if h == 0 {
		h = crypto.SHA256
	}
	return signature.LoadSignerVerifier(priv, h)
}

func (k *key) PublicKey(opts ...signature.PublicKeyOption) (crypto.PublicKey, error) {
	sv, err := k.load()
	if err != nil {
		return nil, err
	}
	return sv.PublicKey(opts...)
}

func (k *key) SignMessage(message io.Reader, opts ...signature.SignOption) ([]byte, error) {
	sv, err := k.load()
	if err != nil {
		return nil, err
	}
	sig, err := sv.SignMessage(message, opts...)
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(k.path+".log", os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if _, err := fmt.Fprintln(f, "signed"); err != nil {
		return nil, err
	}
	return sig, nil
}

func (k *key) VerifySignature(sig, message io.Reader, opts ...signature.VerifyOption) error {
	sv, err := k.load()
	if err != nil {
		return err
	}
	return sv.VerifySignature(sig, message, opts...)
}

func (k *key) CreateKey(_ context.Context, alg string) (crypto.PublicKey, error) {
	var priv crypto.Signer
	var err error
	switch alg {
	case "", algP256:
		priv, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case algP384:
		priv, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case algEd25519:
		_, priv, err = ed25519.GenerateKey(rand.Reader)
	default:
		return nil, fmt.Errorf("kmsplugin: algorithm %q", alg)
	}
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(k.path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("kmsplugin: %w", err)
	}
	if err := pem.Encode(f, &pem.Block{Type: "PRIVATE KEY", Bytes: der}); err != nil {
		f.Close()
		return nil, err
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	return priv.Public(), nil
}

func (k *key) CryptoSigner(context.Context, func(error)) (crypto.Signer, crypto.SignerOpts, error) {
	return nil, nil, errors.New("kmsplugin: CryptoSigner is not part of the protocol")
}

func (k *key) SupportedAlgorithms() []string { return []string{algP256, algP384, algEd25519} }

func (k *key) DefaultAlgorithm() string { return algP256 }
