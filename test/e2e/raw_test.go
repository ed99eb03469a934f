package e2e

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"os"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/device/link"
	"github.com/sigil-iot/sigil/device/tpm"
	"github.com/sigil-iot/sigil/pkg/identity"
	"github.com/sigil-iot/sigil/pkg/wire"
	"github.com/sigil-iot/sigil/sim/harness"
	"github.com/sigil-iot/sigil/sim/swtpm"
)

// kit is a hand-driven device: the test composes enrollment messages itself
// so that it can send what a faulty or hostile device would.
type kit struct {
	t      testing.TB
	inst   *swtpm.Instance
	tpm    *tpm.TPM
	ek     *tpm.EK
	ak, tk *tpm.KeyBlob
	id     string
}

func newKit(t testing.TB, inst *swtpm.Instance) *kit {
	t.Helper()
	tp, err := tpm.Open(inst.URI())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tp.Close() })
	k := &kit{t: t, inst: inst, tpm: tp}
	if k.ek, err = tp.EK(); err != nil {
		t.Fatal(err)
	}
	if k.ak, err = tp.CreateAK(); err != nil {
		t.Fatal(err)
	}
	if k.tk, err = tp.CreateTransportKey(); err != nil {
		t.Fatal(err)
	}
	k.id, _ = identity.DeviceID(k.ek.Key)
	return k
}

// csr makes a CSR signed by key.
func (k *kit) csr(key *tpm.KeyBlob) []byte {
	k.t.Helper()
	s, err := k.tpm.Signer(key)
	if err != nil {
		k.t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: k.id}}, s)
	if err != nil {
		k.t.Fatal(err)
	}
	return der
}

func (k *kit) request(serial, token string) *wire.EnrollRequest {
	return &wire.EnrollRequest{EKPublic: k.ek.Public, EKCert: k.ek.Cert, AKPublic: k.ak.Public, TKPublic: k.tk.Public,
		CSR: k.csr(k.tk), Model: "gw-1", Firmware: "1.0.0", Serial: serial, Token: token}
}

// answer builds an honest proof for a challenge.
func (k *kit) answer(ch *wire.EnrollChallenge) *wire.EnrollProof {
	k.t.Helper()
	secret, err := k.tpm.ActivateCredential(k.ak, ch.CredentialBlob, ch.EncryptedSecret)
	if err != nil {
		k.t.Fatal(err)
	}
	return k.prove(ch, secret)
}

// prove builds a proof claiming secret was activated.
func (k *kit) prove(ch *wire.EnrollChallenge, secret []byte) *wire.EnrollProof {
	k.t.Helper()
	attest, sig, err := k.tpm.Certify(k.ak, k.tk, ch.Nonce)
	if err != nil {
		k.t.Fatal(err)
	}
	q, err := k.tpm.Quote(k.ak, ch.Nonce, ch.Selection)
	if err != nil {
		k.t.Fatal(err)
	}
	return &wire.EnrollProof{Session: ch.Session, Activation: activation(secret, ch), CertifyInfo: attest, CertifySig: sig, Quote: *q}
}

func activation(secret []byte, ch *wire.EnrollChallenge) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write(ch.Session)
	m.Write(ch.Nonce)
	return m.Sum(nil)
}

// raw is a bootstrap MQTT session driven by the test.
type raw struct {
	t        testing.TB
	conn     *link.Conn
	clientID string
	topics   wire.Topics
	inbox    chan *wire.Envelope
	sent     [][]byte // every payload sent, for replays
}

func dialRaw(t testing.TB, f *harness.Fleet, clientID string) *raw {
	t.Helper()
	pemBytes, err := os.ReadFile(f.CACertPath())
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pemBytes)
	conn, err := link.Dial(context.Background(), link.Config{Broker: f.MQTTAddr(), ClientID: clientID,
		TLS: &tls.Config{RootCAs: roots, ServerName: "localhost"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(conn.Close)
	r := &raw{t: t, conn: conn, clientID: clientID, inbox: make(chan *wire.Envelope, 16)}
	err = conn.Subscribe(context.Background(), r.topics.Filter(wire.SegEnroll, clientID, wire.Down), func(_ string, p []byte) {
		if env, err := wire.Decode(p); err == nil {
			r.inbox <- env
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// send publishes a message and returns its ID.
func (r *raw) send(typ string, corr []byte, body any) []byte {
	r.t.Helper()
	b, err := wire.Encode(typ, corr, time.Now(), body)
	if err != nil {
		r.t.Fatal(err)
	}
	r.sendBytes(b)
	env, _ := wire.Decode(b)
	return env.ID
}

func (r *raw) sendBytes(b []byte) {
	r.t.Helper()
	r.sent = append(r.sent, b)
	if err := r.conn.Publish(context.Background(), r.topics.EnrollUp(r.clientID, "enroll"), b); err != nil {
		r.t.Fatal(err)
	}
}

// await returns the next message answering corr.
func (r *raw) await(corr []byte) *wire.Envelope {
	r.t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		select {
		case env := <-r.inbox:
			if hmac.Equal(env.Corr, corr) {
				return env
			}
		case <-timeout:
			r.t.Fatal("no answer from the fleet")
			return nil
		}
	}
}

// challenge expects a challenge for the request corr.
func (r *raw) challenge(corr []byte) *wire.EnrollChallenge {
	r.t.Helper()
	env := r.await(corr)
	if env.Type != wire.TypeEnrollChallenge {
		var res wire.EnrollResult
		_ = wire.DecodeBody(env, wire.TypeEnrollResult, &res)
		r.t.Fatalf("want a challenge, got %s %+v", env.Type, res)
	}
	var ch wire.EnrollChallenge
	if err := wire.DecodeBody(env, wire.TypeEnrollChallenge, &ch); err != nil {
		r.t.Fatal(err)
	}
	return &ch
}

// result expects a result for corr.
func (r *raw) result(corr []byte) *wire.EnrollResult {
	r.t.Helper()
	env := r.await(corr)
	var res wire.EnrollResult
	if err := wire.DecodeBody(env, wire.TypeEnrollResult, &res); err != nil {
		r.t.Fatalf("want a result, got %s: %v", env.Type, err)
	}
	return &res
}

func wantRefusal(t testing.TB, res *wire.EnrollResult, reason wire.Reason) {
	t.Helper()
	if res.Status != wire.StatusRefused || res.Reason != reason {
		t.Fatalf("result = %s %s (%q), want refused %s", res.Status, res.Reason, res.Message, reason)
	}
	if res.Message == "" {
		t.Error("refusal without a public message")
	}
	if len(res.Certificate) != 0 {
		t.Fatal("refusal carries a certificate")
	}
}
