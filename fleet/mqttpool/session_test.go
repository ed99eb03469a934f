package mqttpool_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/ca"
	"github.com/sigil-iot/sigil/fleet/mqttpool"
	"github.com/sigil-iot/sigil/fleet/mqttpool/mosquittotest"
	"github.com/sigil-iot/sigil/fleet/storage/lease"
	"github.com/sigil-iot/sigil/fleet/storage/pgtest"
	"github.com/sigil-iot/sigil/fleet/storage/postgres"
	"github.com/sigil-iot/sigil/internal/wait"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// replicaEnv names what the child replica of TestPoolDeadReplicaIsDrained
// connects to.
const replicaEnv = "MQTTPOOL_TEST_REPLICA"

// sessionPool is a pool of the device brokers with persistent sessions
// under leases in the database at url (ttl: the leases' time to live).
func sessionPool(url string, brokers []string, caFile, password string, ttl time.Duration) (*mqttpool.Pool, func(), error) {
	ctx := context.Background()
	db, err := postgres.Open(ctx, url, postgres.Options{})
	if err != nil {
		return nil, nil, err
	}
	ls, err := lease.Open(ctx, db, lease.Config{TTL: ttl})
	if err != nil {
		db.Close()
		return nil, nil, err
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		db.Close()
		return nil, nil, err
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	p, err := mqttpool.New(mqttpool.Config{Devices: brokers, Username: mqttpool.Username, Password: password,
		TLS: &tls.Config{RootCAs: roots}, Sessions: ls, DrainEvery: ttl / 3, DrainQuiet: 300 * time.Millisecond})
	if err != nil {
		db.Close()
		return nil, nil, err
	}
	return p, db.Close, nil
}

// TestHelperReplica is the replica TestPoolDeadReplicaIsDrained kills:
// it reports each message it receives and never finishes handling one,
// so it acknowledges none. It does nothing in a normal run.
func TestHelperReplica(t *testing.T) {
	args := strings.Split(os.Getenv(replicaEnv), "\n")
	if len(args) != 4 {
		return
	}
	p, closeDB, err := sessionPool(args[0], []string{args[1]}, args[2], args[3], 600*time.Millisecond)
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	defer closeDB()
	var mu sync.Mutex // stdout lines whole
	p.Subscribe(wire.SegDevice, func(m mqttpool.Message) {
		mu.Lock()
		fmt.Printf("got %s\n", m.Payload)
		mu.Unlock()
		select {} // killed while handling: never acknowledged
	})
	go p.Run(context.Background())
	for !p.Ready() {
		time.Sleep(10 * time.Millisecond) // sleep: a child process polling its own readiness to report it; the parent waits on its output
	}
	mu.Lock()
	fmt.Println("ready")
	mu.Unlock()
	select {}
}

// TestPoolDeadReplicaIsDrained: two replicas with persistent sessions
// share a device's messages; one is killed (SIGKILL) with messages
// received and not handled (so never acknowledged), others still queued
// for it, and more arrive while it is dead. The other one takes its
// session over once its lease expires: every message is handled, each
// once, those the dead one had received among them.
func TestPoolDeadReplicaIsDrained(t *testing.T) {
	testDeadReplicaIsDrained(t, nil)
}

// TestPoolDrainsPastADeadBroker: as TestPoolDeadReplicaIsDrained, with a
// device broker of the pool down (listed first) while the survivor
// drains the dead replica's session: what the live broker kept for the
// session is still handled, once, rather than waiting behind the broker
// that is down.
func TestPoolDrainsPastADeadBroker(t *testing.T) {
	testDeadReplicaIsDrained(t, []string{fmt.Sprintf("127.0.0.1:%d", mosquittotest.FreePort(t))}) // nothing listens
}

// testDeadReplicaIsDrained runs the dead replica test; the survivor's
// pool holds the brokers down (never reachable) before the live one.
func testDeadReplicaIsDrained(t *testing.T, down []string) {
	e := newEnv(t)
	srv := pgtest.Start(t)
	url := srv.NewDatabase(t)
	password, err := mqttpool.Secret(e.dataDir)
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(e.dataDir, "ca", ca.CertFile)

	child := exec.Command(os.Args[0], "-test.run=^TestHelperReplica$", "-test.count=1")
	child.Env = append(os.Environ(), replicaEnv+"="+strings.Join([]string{url, e.dev.FleetAddr, caFile, password}, "\n"))
	out, err := child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	child.Stderr = os.Stderr
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { child.Process.Kill(); child.Wait() })
	var mu sync.Mutex
	childGot := map[string]bool{}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "ready":
				close(ready)
			case strings.HasPrefix(line, "got "):
				mu.Lock()
				childGot[strings.TrimPrefix(line, "got ")] = true
				mu.Unlock()
			}
		}
	}()
	select {
	case <-ready:
	case <-time.After(time.Minute):
		t.Fatal("the child replica never subscribed")
	}

	handled := map[string]int{}
	p, closeDB, err := sessionPool(url, append(down, e.dev.FleetAddr), caFile, password, 600*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer closeDB()
	p.Subscribe(wire.SegDevice, func(m mqttpool.Message) { mu.Lock(); handled[string(m.Payload)]++; mu.Unlock() })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = p.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	// Ready once subscribed on every broker: with one down, once
	// connected to the live one.
	wait.For(t, "the surviving replica to subscribe", func() bool { n, _ := p.Connected(); return p.Ready() || len(down) > 0 && n == 1 })

	dev := e.deviceClient(t, "deva", "deva")
	const n = 40
	for i := range n {
		publish(t, dev, e.topics.DeviceUp("deva", "telemetry"), fmt.Sprint(i))
	}
	defer func() {
		mu.Lock()
		t.Logf("child got %d, survivor handled %d", len(childGot), len(handled))
		mu.Unlock()
	}()
	// The child's messages wait behind the first, which it never
	// finishes: received, none acknowledged.
	wait.For(t, "the child replica to receive a message", func() bool { mu.Lock(); defer mu.Unlock(); return len(childGot) > 0 })
	if err := child.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	child.Wait()
	for i := n; i < 2*n; i++ { // to both members: the dead one's are queued for it
		publish(t, dev, e.topics.DeviceUp("deva", "telemetry"), fmt.Sprint(i))
	}
	wait.For(t, "every message handled by the surviving replica", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(handled) == 2*n
	})
	mu.Lock()
	defer mu.Unlock()
	for k, v := range handled {
		if v != 1 {
			t.Errorf("message %s handled %d times", k, v)
		}
	}
	for k := range childGot {
		if handled[k] != 1 {
			t.Errorf("message %s, received by the killed replica, handled %d times by the survivor", k, handled[k])
		}
	}
}
