package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/device/link"
	"github.com/sigil-iot/sigil/device/state"
	"github.com/sigil-iot/sigil/device/tpm"
	"github.com/sigil-iot/sigil/fleet/broker"
	"github.com/sigil-iot/sigil/fleet/server"
	"github.com/sigil-iot/sigil/internal/wait"
	"github.com/sigil-iot/sigil/sim/harness"
)

// received records what the fleet gets on device up topics.
type received struct {
	mu     sync.Mutex
	topics map[string]int
}

func (r *received) count(topic string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.topics[topic]
}

func watchUp(t testing.TB, f *harness.Fleet) *received {
	r := &received{topics: map[string]int{}}
	err := f.Broker.Subscribe("sigil/v1/dev/+/up/#", func(_ broker.Identity, topic string, _ []byte) {
		r.mu.Lock()
		r.topics[topic]++
		r.mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// fleetSays is what the fleet publishes to a subscriber under test.
const fleetSays = "fleet-says-hi"

// subscribe runs mosquitto_sub while the fleet publishes fleetSays to
// publishTopic every 100 ms, and returns what mosquitto_sub printed once
// the fleet's message reached it, or once it ended (refused, or after 4 s).
// The fleet may have other messages for the identity in flight — answers
// to a device session that just ended (a verdict, a telemetry ack) — so the
// wait is for the fleet's message, not for the first one; whatever came
// before it stays in the output.
func subscribe(t testing.TB, f *harness.Fleet, publishTopic string, args ...string) (string, error) {
	t.Helper()
	host, port := hostPort(t, f)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "mosquitto_sub", append([]string{"-h", host, "-p", port, "--cafile", f.CACertPath(), "-q", "1", "-W", "4", "-V", "mqttv311"}, args...)...)
	out := &watchedOutput{want: fleetSays, seen: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			return out.String(), err
		case <-out.seen:
			cancel()
			<-done
			return out.String(), nil
		case <-tick.C:
			_ = f.Broker.Publish(publishTopic, []byte(fleetSays), 1)
		}
	}
}

// watchedOutput collects a process's output and closes seen once it
// contains want.
type watchedOutput struct {
	mu   sync.Mutex
	b    strings.Builder
	want string
	seen chan struct{}
}

func (w *watchedOutput) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	had := strings.Contains(w.b.String(), w.want)
	w.b.Write(p)
	if !had && strings.Contains(w.b.String(), w.want) {
		close(w.seen)
	}
	return len(p), nil
}

func (w *watchedOutput) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

func publish(t testing.TB, f *harness.Fleet, topic string, args ...string) (string, error) {
	host, port := hostPort(t, f)
	return run(t, "mosquitto_pub", append([]string{"-h", host, "-p", port, "--cafile", f.CACertPath(), "-q", "1", "-t", topic, "-m", "intruder", "-V", "mqttv311"}, args...)...)
}

// TestBrokerACL checks topic isolation with independent clients
// (mosquitto_sub/mosquitto_pub) and with a second real device.
func TestBrokerACL(t *testing.T) {
	f := startFleet(t, func(c *server.Config) { c.EKCADir = ekCADir(t, vendorCA(t)) })
	a := startDevice(t, f, newTPM(t), harness.DeviceConfig{Serial: "SN-A"})
	instB := newTPM(t)
	dirB := t.TempDir()
	b := startDevice(t, f, instB, harness.DeviceConfig{Serial: "SN-B", Dir: dirB})
	idA, idB := waitConnected(t, a).DeviceID, waitConnected(t, b).DeviceID
	// B's own sigild would fight the clients below for its client ID:
	// stopped, the clients below speak for B alone. The fleet's answers to
	// its last messages (a verdict, a telemetry ack) may still be in flight
	// and reach them; subscribe waits past those.
	b.Stop()
	up := watchUp(t, f)
	certB, keyB := issuedIdentity(t, f, idB)
	asB := []string{"-i", idB, "--cert", certB, "--key", keyB}
	downA, downB := "sigil/v1/dev/"+idA+"/down/cmd", "sigil/v1/dev/"+idB+"/down/cmd"
	upA, upB := "sigil/v1/dev/"+idA+"/up/hello", "sigil/v1/dev/"+idB+"/up/probe"
	// flush publishes as B on its own topic and waits for the fleet to
	// receive it: a message the broker took before it and passed on has
	// reached the fleet by then (a barrier, not a time to wait).
	flush := func(t *testing.T) {
		t.Helper()
		n := up.count(upB)
		if out, err := publish(t, f, upB, asB...); err != nil {
			t.Fatalf("B on its own up topic: %v %s", err, out)
		}
		waitFor(t, func() bool { return up.count(upB) == n+1 }, "B's message after the ones under test")
	}

	// First: a connection with the software certificate recorded above,
	// issued after B's TPM one, supersedes (revokes) the TPM one.
	// B's TPM key and the certificate it was enrolled with.
	s, err := state.Open(filepath.Join(dirB, "state.db"), state.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	id, err := s.Identity()
	s.Close()
	if err != nil {
		t.Fatal(err)
	}
	tp, err := tpm.Open(instB.URI())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tp.Close() })
	signer, err := tp.Signer(&tpm.KeyBlob{Public: id.TK.Public, Private: id.TK.Private})
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(f.CA.Certificate())
	cfg := &tls.Config{RootCAs: roots, ServerName: "localhost", Certificates: []tls.Certificate{{Certificate: [][]byte{id.Cert}, PrivateKey: signer}}}
	enrolledB, err := x509.ParseCertificate(id.Cert)
	if err != nil {
		t.Fatal(err)
	}
	serialB := hex.EncodeToString(enrolledB.SerialNumber.Bytes())
	linkB := link.Config{Broker: f.MQTTAddr(), ClientID: idB, TLS: cfg, Timeout: 5 * time.Second}
	t.Run("second device with its TPM key", func(t *testing.T) {
		conn, err := link.Dial(context.Background(), linkB)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if err := conn.Subscribe(context.Background(), "sigil/v1/dev/"+idA+"/down/#", func(string, []byte) {}); !errors.Is(err, link.ErrRefused) {
			t.Fatalf("B's subscription to A's topics: %v", err)
		}
		_ = conn.Publish(context.Background(), upA, []byte("forged"))
		select {
		case <-conn.Done():
		case <-time.After(5 * time.Second):
			t.Fatal("broker kept a device that published on another device's topic")
		}
		if n := up.count(upA); n != 0 {
			t.Fatalf("fleet received %d forged messages", n)
		}
	})
	t.Run("own topics work", func(t *testing.T) {
		out, err := subscribe(t, f, downB, append(asB, "-t", "sigil/v1/dev/"+idB+"/down/#")...)
		if err != nil || !strings.Contains(out, fleetSays) {
			t.Fatalf("B on its own down topic: %v %q", err, out)
		}
		if out, err := publish(t, f, upB, asB...); err != nil {
			t.Fatalf("B on its own up topic: %v %s", err, out)
		}
		waitFor(t, func() bool { return up.count(upB) == 1 }, "fleet to receive B's message")
	})
	t.Run("subscribe to another device", func(t *testing.T) {
		out, _ := subscribe(t, f, downA, append(asB, "-t", "sigil/v1/dev/"+idA+"/down/#")...)
		if strings.Contains(out, fleetSays) {
			t.Fatalf("B received A's messages: %q", out)
		}
		if !strings.Contains(strings.ToLower(out), "denied") {
			t.Fatalf("mosquitto_sub was not told of the denial: %q", out)
		}
	})
	t.Run("wildcard over all devices", func(t *testing.T) {
		out, _ := subscribe(t, f, downA, append(asB, "-t", "sigil/v1/dev/+/down/#")...)
		if strings.Contains(out, fleetSays) || !strings.Contains(strings.ToLower(out), "denied") {
			t.Fatalf("wildcard subscription: %q", out)
		}
	})
	t.Run("publish as another device", func(t *testing.T) {
		publish(t, f, upA, asB...)
		flush(t)
		if n := up.count(upA); n != 0 {
			t.Fatalf("fleet received %d forged messages on A's topic", n)
		}
	})
	t.Run("client ID not matching the certificate", func(t *testing.T) {
		out, err := publish(t, f, upA, "-i", idA, "--cert", certB, "--key", keyB)
		if err == nil {
			t.Fatalf("connect as A with B's certificate accepted: %s", out)
		}
	})
	t.Run("client without certificate", func(t *testing.T) {
		out, _ := subscribe(t, f, downA, "-i", "e-nocert", "-t", "sigil/v1/dev/"+idA+"/down/#")
		if strings.Contains(out, fleetSays) || !strings.Contains(strings.ToLower(out), "denied") {
			t.Fatalf("no-cert subscription: %q", out)
		}
		publish(t, f, upA, "-i", "e-nocert")
		// Impersonating a device's client ID without its certificate.
		if out, err := publish(t, f, upA, "-i", idA); err == nil {
			t.Fatalf("a client without certificate took device A's client ID: %s", out)
		}
		flush(t)
		if n := up.count(upA); n != 0 {
			t.Fatalf("fleet received %d messages from clients without certificate", n)
		}
		if !f.Broker.Connected(idA) {
			t.Fatal("device A lost its session to an impersonator")
		}
	})
	t.Run("bootstrap client IDs that widen filters", func(t *testing.T) {
		for _, id := range []string{"a+b", "#", "a/b"} {
			if out, err := publish(t, f, "sigil/v1/enroll/x/up/enroll", "-i", id); err == nil {
				t.Errorf("client ID %q accepted: %s", id, out)
			}
		}
	})

	t.Run("TPM certificate superseded by the later one", func(t *testing.T) {
		// B connected with the software certificate issued after its TPM
		// one (the subtests above): the fleet revoked the older one.
		waitFor(t, func() bool {
			d, err := f.Inv.Device(t.Context(), idB)
			return err == nil && d.IsRevoked(serialB)
		}, "the TPM certificate to be revoked as superseded")
		_, err := link.Dial(context.Background(), linkB)
		var refused *link.ConnackError
		if !errors.As(err, &refused) || refused.Code != link.ConnackNotAuthorized {
			t.Fatalf("superseded certificate: %v, want CONNACK %d", err, link.ConnackNotAuthorized)
		}
	})
}

func waitFor(t testing.TB, cond func() bool, what string) {
	t.Helper()
	wait.For(t, what, cond)
}
