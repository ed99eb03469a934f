package broker

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"log/slog"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	polling "github.com/sigil-iot/sigil/internal/wait" // this package has a func wait
	"github.com/sigil-iot/sigil/pkg/identity"
	"github.com/sigil-iot/sigil/pkg/wire"
)

const trustDomain = "fleet.test"

var topics = wire.Topics{}

// testCA is a throwaway certificate authority.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
	pem  string // path of the CA certificate PEM
	dir  string
}

func newCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	dir := t.TempDir()
	p := filepath.Join(dir, name+"-ca.pem")
	writePEM(t, p, "CERTIFICATE", der)
	return &testCA{cert: cert, key: key, pool: pool, pem: p, dir: dir}
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

var serial struct {
	sync.Mutex
	n int64
}

func nextSerial() *big.Int {
	serial.Lock()
	defer serial.Unlock()
	serial.n++
	return big.NewInt(serial.n + 100)
}

// issue makes a leaf certificate; files are written for the mosquitto tools.
type leaf struct {
	tls      tls.Certificate
	certPath string
	keyPath  string
}

func (ca *testCA) issue(t *testing.T, tmpl *x509.Certificate) leaf {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl.SerialNumber = nextSerial()
	tmpl.NotBefore = time.Now().Add(-time.Hour)
	tmpl.NotAfter = time.Now().Add(time.Hour)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	base := filepath.Join(ca.dir, tmpl.SerialNumber.String())
	writePEM(t, base+".crt", "CERTIFICATE", der)
	writePEM(t, base+".key", "PRIVATE KEY", kder)
	leafCert, _ := x509.ParseCertificate(der)
	return leaf{
		tls:      tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leafCert},
		certPath: base + ".crt", keyPath: base + ".key",
	}
}

func (ca *testCA) server(t *testing.T) leaf {
	return ca.issue(t, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "broker"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		DNSNames:    []string{"localhost"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
}

func (ca *testCA) device(t *testing.T, id string) leaf {
	return ca.issue(t, &x509.Certificate{
		Subject:     pkix.Name{CommonName: id},
		URIs:        []*url.URL{identity.SPIFFEID(trustDomain, id)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
}

// env is a running broker with its CA.
type env struct {
	ca     *testCA
	srv    leaf
	b      *Broker
	addr   string
	events chan Event
}

func startBroker(t *testing.T, mod func(*Config)) *env {
	t.Helper()
	ca := newCA(t, "sigil")
	srv := ca.server(t)
	e := &env{ca: ca, srv: srv, events: make(chan Event, 1000)}
	cfg := Config{
		Addr:           "127.0.0.1:0",
		TLS:            &tls.Config{Certificates: []tls.Certificate{srv.tls}},
		ClientCAs:      ca.pool,
		TrustDomain:    trustDomain,
		AllowBootstrap: true,
		Events: func(ev Event) {
			select {
			case e.events <- ev:
			default:
			}
		},
	}
	if testing.Verbose() {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	if mod != nil {
		mod(&cfg)
	}
	b, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			_ = pprof.Lookup("goroutine").WriteTo(os.Stderr, 1)
			t.Error("broker did not stop")
		}
	})
	e.b = b
	e.addr = b.Addr().String()
	return e
}

// client connects a paho client; cert may be nil for a bootstrap client.
func (e *env) client(t *testing.T, clientID string, cert *leaf, mod func(*paho.ClientOptions)) (paho.Client, error) {
	t.Helper()
	tc := &tls.Config{RootCAs: e.ca.pool, ServerName: "127.0.0.1"}
	if cert != nil {
		// Present the certificate whatever CAs the server names.
		tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert.tls, nil }
	}
	lost := make(chan struct{})
	opts := paho.NewClientOptions().
		AddBroker("tls://" + e.addr).
		SetClientID(clientID).
		SetTLSConfig(tc).
		SetAutoReconnect(false).
		SetProtocolVersion(4).
		SetConnectTimeout(5 * time.Second).
		SetConnectionLostHandler(func(paho.Client, error) { close(lost) })
	if mod != nil {
		mod(opts)
	}
	c := paho.NewClient(opts)
	tok := c.Connect()
	if !tok.WaitTimeout(10 * time.Second) {
		return nil, errors.New("connect timed out")
	}
	if err := tok.Error(); err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Disconnect(50) })
	return c, nil
}

func (e *env) mustClient(t *testing.T, clientID string, cert *leaf) paho.Client {
	t.Helper()
	c, err := e.client(t, clientID, cert, nil)
	if err != nil {
		t.Fatalf("connect %s: %v", clientID, err)
	}
	return c
}

func wait(t *testing.T, tok paho.Token) {
	t.Helper()
	if !tok.WaitTimeout(10 * time.Second) {
		t.Fatal("token timed out")
	}
}

// subCode returns the single reason code of a SUBACK.
func subCode(t *testing.T, tok paho.Token) byte {
	t.Helper()
	wait(t, tok)
	res := tok.(*paho.SubscribeToken).Result()
	if len(res) != 1 {
		t.Fatalf("SUBACK result %v", res)
	}
	for _, c := range res {
		return c
	}
	return 0
}

// received collects what a fleet subscription gets.
type received struct {
	id      Identity
	topic   string
	payload string
}

func (e *env) fleetSub(t *testing.T, filter string) chan received {
	t.Helper()
	ch := make(chan received, 100)
	if err := e.b.Subscribe(filter, func(id Identity, topic string, payload []byte) {
		ch <- received{id, topic, string(payload)}
	}); err != nil {
		t.Fatal(err)
	}
	return ch
}

func expectMsg[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
	var zero T
	return zero
}

func expectNone[T any](t *testing.T, ch <-chan T, d time.Duration, what string) {
	t.Helper()
	select {
	case v := <-ch:
		t.Fatalf("unexpected %s: %+v", what, v)
	case <-time.After(d):
	}
}

func eventually(t *testing.T, what string, f func() bool) {
	t.Helper()
	polling.For(t, what, f)
}

// needTool finds an external binary: missing fails under CI=true, skips otherwise.
func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s not found (required when CI=true): %v", name, err)
		}
		t.Skipf("%s not installed; install mosquitto-clients to run this test", name)
	}
	return p
}
