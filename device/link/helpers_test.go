package link

import (
	"bufio"
	"context"
	"crypto"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/device/link/internal/packet"
	"github.com/sigil-iot/sigil/fleet/broker"
	"github.com/sigil-iot/sigil/internal/pkitest"
	"github.com/sigil-iot/sigil/internal/runtest"
	"github.com/sigil-iot/sigil/internal/wait"
	"github.com/sigil-iot/sigil/pkg/wire"
)

const (
	trustDomain = "fleet.test"
	devA        = "0123456789abcdef0123456789abcdef"
	devB        = "fedcba9876543210fedcba9876543210"
)

var topics = wire.Topics{}

// testCA is a throwaway certificate authority (pkitest); it writes PEM
// files for mosquitto into a directory that the mosquitto user can read.
type testCA struct {
	*pkitest.CA
	pem string
	dir string
}

func newCA(t *testing.T) *testCA {
	t.Helper()
	// mosquitto started as root drops to its own user, which must read
	// these files: t.TempDir's parent is private, so make our own.
	dir, err := os.MkdirTemp("", "linktest-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	ca := pkitest.NewCA(t, "link test CA")
	return &testCA{CA: ca, dir: dir, pem: ca.WriteCA(t, dir, "ca.pem", 0o644)}
}

// leaf is an issued certificate; its key is reachable only as a
// crypto.Signer, like a TPM key, and counts its signatures.
type leaf struct {
	tls      tls.Certificate
	signs    *atomic.Int64
	certPath string
	keyPath  string
}

type countingSigner struct {
	crypto.Signer
	n *atomic.Int64
}

func (s countingSigner) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	s.n.Add(1)
	return s.Signer.Sign(r, digest, opts)
}

// files writes c for mosquitto and hides its key behind a counting signer.
func (ca *testCA) files(t *testing.T, c tls.Certificate) leaf {
	t.Helper()
	certPath, keyPath := pkitest.WriteFiles(t, ca.dir, c, 0o644)
	n := new(atomic.Int64)
	c.PrivateKey = countingSigner{c.PrivateKey.(crypto.Signer), n}
	return leaf{tls: c, signs: n, certPath: certPath, keyPath: keyPath}
}

func (ca *testCA) server(t *testing.T) leaf { return ca.files(t, ca.Server(t)) }

func (ca *testCA) device(t *testing.T, id string) leaf {
	return ca.files(t, ca.Device(t, trustDomain, id))
}

// clientTLS trusts the CA and presents cert (if any), as the agent does:
// no ServerName, so Dial derives it from the broker address.
func (ca *testCA) clientTLS(cert *leaf) *tls.Config {
	c := &tls.Config{RootCAs: ca.Pool, MinVersion: tls.VersionTLS12}
	if cert != nil {
		c.Certificates = []tls.Certificate{cert.tls}
	}
	return c
}

// dial connects and arranges Close and a goroutine check at the end.
func dial(t *testing.T, cfg Config) *Conn {
	t.Helper()
	if cfg.Timeout == 0 {
		cfg.Timeout = 5 * time.Second
	}
	c, err := Dial(context.Background(), cfg)
	if err != nil {
		t.Fatalf("Dial %s as %q: %v", cfg.Broker, cfg.ClientID, err)
	}
	t.Cleanup(func() { c.Close(); waitStopped(t, c) })
	return c
}

// waitStopped fails unless the connection's goroutines have ended.
func waitStopped(t *testing.T, c *Conn) {
	t.Helper()
	ch := make(chan struct{})
	go func() { c.wg.Wait(); close(ch) }()
	select {
	case <-ch:
	case <-time.After(5 * time.Second):
		t.Error("connection goroutines still running after Close")
	}
}

func expectDone(t *testing.T, c *Conn, within time.Duration, what string) {
	t.Helper()
	select {
	case <-c.Done():
	case <-time.After(within):
		t.Fatalf("Done not closed within %v after %s", within, what)
	}
	if c.Connected() {
		t.Fatal("Connected after Done")
	}
	if c.Err() == nil {
		t.Fatal("Err is nil after Done")
	}
}

// msg is what a handler received.
type msg struct {
	topic   string
	payload []byte
}

func collector(n int) (chan msg, func(string, []byte)) {
	ch := make(chan msg, n)
	return ch, func(topic string, payload []byte) { ch <- msg{topic, payload} }
}

// fleetEnv is a running embedded broker (fleet/broker) with its CA.
type fleetEnv struct {
	ca     *testCA
	b      *broker.Broker
	addr   string
	events chan broker.Event
}

func startFleetBroker(t *testing.T) *fleetEnv {
	t.Helper()
	ca := newCA(t)
	srv := ca.server(t)
	e := &fleetEnv{ca: ca, events: make(chan broker.Event, 100)}
	b, err := broker.New(broker.Config{
		Addr: "127.0.0.1:0", TLS: &tls.Config{Certificates: []tls.Certificate{srv.tls}},
		ClientCAs: ca.Pool, TrustDomain: trustDomain, AllowBootstrap: true,
		Events: func(ev broker.Event) {
			select {
			case e.events <- ev:
			default:
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	runtest.Start(t, b.Run)
	e.b, e.addr = b, b.Addr().String()
	return e
}

// mosquittoEnv is a running mosquitto with two TLS listeners: Addr requires
// a client certificate whose CN becomes the user name, and the dynamic
// security plugin lets each known device subscribe and publish only under
// sigil/v1/dev/<cn>/ (a forbidden subscription gets SUBACK 0x80); AnonAddr
// takes clients without certificate and, with no user known, refuses them
// CONNACK 5.
type mosquittoEnv struct {
	ca       *testCA
	addr     string
	anonAddr string
}

// needMosquitto finds mosquitto and its dynamic security plugin: missing
// fails under CI=true, skips otherwise.
func needMosquitto(t *testing.T) (bin, plugin string) {
	t.Helper()
	bin, err := exec.LookPath("mosquitto")
	if err == nil {
		for _, g := range []string{"/usr/lib/*/mosquitto_dynamic_security.so", "/usr/lib/mosquitto_dynamic_security.so", "/usr/local/lib/mosquitto_dynamic_security.so"} {
			if m, _ := filepath.Glob(g); len(m) > 0 {
				return bin, m[0]
			}
		}
		err = fmt.Errorf("mosquitto_dynamic_security.so not found")
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("mosquitto is required when CI=true: %v", err)
	}
	t.Skipf("mosquitto not usable (install the mosquitto package): %v", err)
	return "", ""
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func startMosquitto(t *testing.T, devices ...string) *mosquittoEnv {
	t.Helper()
	bin, plugin := needMosquitto(t)
	ca := newCA(t)
	srv := ca.server(t)
	var clients, roles []string
	for _, d := range devices {
		clients = append(clients, fmt.Sprintf(`{"username":%q,"roles":[{"rolename":%q}]}`, d, d))
		roles = append(roles, fmt.Sprintf(`{"rolename":%q,"acls":[`+
			`{"acltype":"subscribePattern","topic":"sigil/v1/dev/%s/#","allow":true},`+
			`{"acltype":"publishClientSend","topic":"sigil/v1/dev/%s/#","allow":true}]}`, d, d, d))
	}
	dynsec := fmt.Sprintf(`{"defaultACLAccess":{"publishClientSend":false,"publishClientReceive":true,"subscribe":false,"unsubscribe":true},`+
		`"clients":[%s],"groups":[],"roles":[%s]}`, strings.Join(clients, ","), strings.Join(roles, ","))
	dynsecPath := filepath.Join(ca.dir, "dynsec.json")
	if err := os.WriteFile(dynsecPath, []byte(dynsec), 0o644); err != nil {
		t.Fatal(err)
	}
	port, anon := freePort(t), freePort(t)
	tlsFiles := fmt.Sprintf("cafile %s\ncertfile %s\nkeyfile %s\n", ca.pem, srv.certPath, srv.keyPath)
	conf := fmt.Sprintf("per_listener_settings false\nplugin %s\nplugin_opt_config_file %s\n"+
		"listener %d 127.0.0.1\n%srequire_certificate true\nuse_identity_as_username true\n"+
		"listener %d 127.0.0.1\n%s", plugin, dynsecPath, port, tlsFiles, anon, tlsFiles)
	confPath := filepath.Join(ca.dir, "mosquitto.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	var log strings.Builder
	cmd := exec.Command(bin, "-c", confPath)
	var mu sync.Mutex
	out := writerFunc(func(b []byte) (int, error) { mu.Lock(); defer mu.Unlock(); return log.Write(b) })
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if t.Failed() {
			mu.Lock()
			t.Logf("mosquitto output:\n%s", log.String())
			mu.Unlock()
		}
	})
	e := &mosquittoEnv{ca: ca, addr: fmt.Sprintf("127.0.0.1:%d", port), anonAddr: fmt.Sprintf("127.0.0.1:%d", anon)}
	for _, a := range []string{e.addr, e.anonAddr} {
		wait.Until(t, func() error {
			select {
			case <-exited:
				mu.Lock()
				out := log.String()
				mu.Unlock()
				t.Fatalf("mosquitto exited:\n%s", out)
			default:
			}
			c, err := net.DialTimeout("tcp", a, time.Second)
			if err != nil {
				return fmt.Errorf("mosquitto not listening on %s: %w", a, err)
			}
			return c.Close()
		})
	}
	return e
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }

// fakeBroker is a TLS listener that the test drives packet by packet, to
// play a broker that misbehaves.
type fakeBroker struct {
	ca    *testCA
	ln    net.Listener
	conns chan *fakeConn
}

type fakeConn struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func startFake(t *testing.T) *fakeBroker {
	t.Helper()
	ca := newCA(t)
	srv := ca.server(t)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{srv.tls}})
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeBroker{ca: ca, ln: ln, conns: make(chan *fakeConn, 4)}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			select {
			case f.conns <- &fakeConn{t: t, c: c, r: bufio.NewReader(c)}:
			case <-stop:
				c.Close()
				return
			}
		}
	}()
	t.Cleanup(func() {
		close(stop)
		ln.Close()
		wg.Wait()
		for {
			select {
			case fc := <-f.conns:
				fc.c.Close()
			default:
				return
			}
		}
	})
	return f
}

func (f *fakeBroker) addr() string { return f.ln.Addr().String() }

// accept takes the next connection and answers its CONNECT with code.
func (f *fakeBroker) accept(t *testing.T, code byte) (*fakeConn, *packet.Packet) {
	t.Helper()
	fc := wait.Recv(t, f.conns, "a connection")
	t.Cleanup(func() { fc.c.Close() })
	p := fc.read()
	if p.Type != packet.Connect {
		t.Fatalf("first packet %v, want CONNECT", p.Type)
	}
	fc.send(packet.Packet{Type: packet.Connack, ReturnCode: code})
	return fc, p
}

// read returns the next packet from the client; it fails the test after 5s.
func (fc *fakeConn) read() *packet.Packet {
	fc.t.Helper()
	p, err := fc.readWithin(5 * time.Second)
	if err != nil {
		fc.t.Fatalf("fake broker read: %v", err)
	}
	return p
}

func (fc *fakeConn) readWithin(d time.Duration) (*packet.Packet, error) {
	_ = fc.c.SetReadDeadline(time.Now().Add(d))
	return packet.Read(fc.r, MaxPacketSize)
}

func (fc *fakeConn) send(p packet.Packet) {
	fc.t.Helper()
	b, err := p.Append(nil)
	if err != nil {
		fc.t.Fatal(err)
	}
	fc.sendRaw(b)
}

func (fc *fakeConn) sendRaw(b []byte) {
	fc.t.Helper()
	_ = fc.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := fc.c.Write(b); err != nil {
		fc.t.Fatalf("fake broker write: %v", err)
	}
}

// dial connects a client to the fake broker, which accepts it (CONNACK 0);
// it returns the client, the broker's end and the CONNECT received.
func (f *fakeBroker) dial(t *testing.T, cfg Config) (*Conn, *fakeConn, *packet.Packet) {
	t.Helper()
	if cfg.TLS == nil {
		cfg.TLS = f.ca.clientTLS(nil)
	}
	cfg.Broker = f.addr()
	type result struct {
		c   *Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		c, err := Dial(context.Background(), cfg)
		ch <- result{c, err}
	}()
	fc, connect := f.accept(t, 0)
	r := wait.Recv(t, ch, "Dial")
	if r.err != nil {
		t.Fatalf("Dial: %v", r.err)
	}
	t.Cleanup(func() { r.c.Close(); waitStopped(t, r.c) })
	return r.c, fc, connect
}
