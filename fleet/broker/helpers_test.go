package broker

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/sigil-iot/sigil/internal/pkitest"
	"github.com/sigil-iot/sigil/internal/runtest"
	polling "github.com/sigil-iot/sigil/internal/wait" // this package has a func wait
	"github.com/sigil-iot/sigil/pkg/wire"
)

const trustDomain = "fleet.test"

var topics = wire.Topics{}

// testCA is a throwaway certificate authority (pkitest) that also writes
// its certificates as PEM files for the mosquitto tools.
type testCA struct {
	*pkitest.CA
	pem string // path of the CA certificate PEM
	dir string
}

func newCA(t *testing.T, name string) *testCA {
	t.Helper()
	ca, dir := pkitest.NewCA(t, name), t.TempDir()
	return &testCA{CA: ca, pem: ca.WriteCA(t, dir, name+"-ca.pem", 0o600), dir: dir}
}

// leaf is an issued certificate and its files, for the mosquitto tools.
type leaf struct {
	tls      tls.Certificate
	certPath string
	keyPath  string
}

func (ca *testCA) files(t *testing.T, c tls.Certificate) leaf {
	t.Helper()
	certPath, keyPath := pkitest.WriteFiles(t, ca.dir, c, 0o600)
	return leaf{tls: c, certPath: certPath, keyPath: keyPath}
}

func (ca *testCA) issue(t *testing.T, tmpl *x509.Certificate) leaf {
	return ca.files(t, ca.Issue(t, tmpl))
}

func (ca *testCA) server(t *testing.T) leaf { return ca.files(t, ca.Server(t)) }

func (ca *testCA) device(t *testing.T, id string) leaf {
	return ca.files(t, ca.Device(t, trustDomain, id))
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
		ClientCAs:      ca.Pool,
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
	runtest.Start(t, b.Run)
	e.b = b
	e.addr = b.Addr().String()
	return e
}

// client connects a paho client; cert may be nil for a bootstrap client.
func (e *env) client(t *testing.T, clientID string, cert *leaf, mod func(*paho.ClientOptions)) (paho.Client, error) {
	t.Helper()
	tc := &tls.Config{RootCAs: e.ca.Pool, ServerName: "127.0.0.1"}
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
