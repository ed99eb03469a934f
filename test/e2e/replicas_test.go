package e2e

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/device/agent"
	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/ca"
	"github.com/sigil-iot/sigil/fleet/campaign"
	"github.com/sigil-iot/sigil/fleet/mqttpool"
	"github.com/sigil-iot/sigil/fleet/mqttpool/mosquittotest"
	"github.com/sigil-iot/sigil/fleet/rotation"
	"github.com/sigil-iot/sigil/fleet/secrets"
	"github.com/sigil-iot/sigil/fleet/server"
	"github.com/sigil-iot/sigil/fleet/storage/pgtest"
	"github.com/sigil-iot/sigil/internal/wait"
	"github.com/sigil-iot/sigil/pkg/config"
	"github.com/sigil-iot/sigil/pkg/wire"
	"github.com/sigil-iot/sigil/sim/harness"
	"github.com/sigil-iot/sigil/sim/softtpm"
	"github.com/sigil-iot/sigil/sim/swtpm"
)

// replicaFleet is the scale-out deployment of issue 14: one PostgreSQL,
// a pool of three Mosquitto device brokers and a bootstrap broker, and
// three `sigil serve` replicas sharing both. Replica 0 runs in the test's
// process (it creates the key files and gives the test its inventory);
// replicas 1 and 2 are `sigil serve` processes, each in its own data
// directory holding copies of replica 0's key files (docs/CONFIG.md,
// "Several replicas"), so that one can be killed with SIGKILL.
type replicaFleet struct {
	f       *harness.Fleet // replica 0
	dbURL   string
	dev     []*mosquittotest.Broker
	boot    *mosquittotest.Broker
	front   *frontDoor // the devices' address for the device brokers
	topics  wire.Topics
	sigil   string // the built binary
	ekCA    string
	procs   []*replicaProc // replicas 1 and 2
	roots   *x509.CertPool
	token   string
	replog  *lockedBuffer // replica 0's log
	dataDir string
	softCA  *softtpm.CA // the software TPMs' manufacturer
	kit     *releaseKit // the release keys the replicas trust
	ca      *ca.CA      // the fleet CA, as replica 0's data directory holds it
	secret  string      // the fleet's password on the brokers
}

// pool is the brokers as TestBrokerPool's helpers see them: for MQTT
// clients of the test's own (a certificate of the fleet CA, or the
// fleet's credentials).
func (r *replicaFleet) pool(t *testing.T) *brokerPool {
	return &brokerPool{f: r.f, dev: r.dev, boot: r.boot, dataDir: r.dataDir, ca: r.ca, topics: r.topics, secret: r.secret, deviceDir: t.TempDir()}
}

// replicaProc is a `sigil serve` process.
type replicaProc struct {
	name    string
	dataDir string
	config  string
	api     string // https://127.0.0.1:port
	log     *lockedBuffer

	mu     sync.Mutex // guards cmd and exited: a restart replaces them while the API watcher reads them
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd exits
}

// running returns p's process and the channel closed when it exits.
func (p *replicaProc) running() (*exec.Cmd, chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd, p.exited
}

// lockedBuffer collects a log written from several goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// replicaKeyFiles are the files of a replica's data directory the other
// replicas hold copies of (docs/CONFIG.md, "Several replicas").
var replicaKeyFiles = []string{"ca", "audit.key", "ssh_ca.key", "secrets.key", mqttpool.SecretFile}

func startReplicaFleet(t *testing.T) *replicaFleet {
	t.Helper()
	requireTools(t)
	pg := pgtest.Start(t)
	r := &replicaFleet{dbURL: pg.NewDatabase(t), dataDir: t.TempDir(), ekCA: ekCADir(t, vendorCA(t)), replog: &lockedBuffer{}}
	// The fleet trusts both manufacturers: swtpm's vendor CA and the
	// software TPMs' CA.
	var err error
	if r.softCA, err = softtpm.OpenCA(t.TempDir()); err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{"softtpm-root.pem": r.softCA.RootCertPEM(), "softtpm-intermediate.pem": r.softCA.IntermediateCertPEM()} {
		if err := os.WriteFile(filepath.Join(r.ekCA, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	build := make(chan error, 1)
	r.sigil = filepath.Join(t.TempDir(), "sigil")
	go func() {
		out, err := exec.Command("go", "build", "-o", r.sigil, "github.com/sigil-iot/sigil/cmd/sigil").CombinedOutput()
		if err != nil {
			err = fmt.Errorf("go build sigil: %v\n%s", err, out)
		}
		build <- err
	}()
	// The CA first, as `sigil serve` leaves it before `sigil broker-config`.
	fca, err := ca.Open(ca.Config{Dir: filepath.Join(r.dataDir, "ca"), TrustDomain: "sigil.local"})
	if err != nil {
		t.Fatal(err)
	}
	member := func(role string) *mosquittotest.Broker {
		m := mqttpool.Member{Role: role, Topics: r.topics}
		if role == mqttpool.RoleDevice {
			m.DynsecPlugin = mosquittotest.DynsecPlugin(t)
		}
		m, err := mqttpool.Complete(fca, r.dataDir, m, []string{"localhost", "127.0.0.1"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return mosquittotest.Start(t, m)
	}
	r.dev = []*mosquittotest.Broker{member(mqttpool.RoleDevice), member(mqttpool.RoleDevice), member(mqttpool.RoleDevice)}
	r.boot = member(mqttpool.RoleBootstrap)
	if r.secret, err = mqttpool.Secret(r.dataDir); err != nil {
		t.Fatal(err)
	}
	r.ca = fca
	pool := &server.BrokerPool{ServerName: "localhost", Bootstrap: []string{r.boot.FleetAddr}}
	for _, b := range r.dev {
		pool.Devices = append(pool.Devices, b.FleetAddr)
	}
	r.kit = newReleaseKit(t)
	cfg := server.Config{DataDir: r.dataDir, DatabaseURL: r.dbURL, APIRateLimit: -1, EKCADir: r.ekCA, BrokerPool: pool, ReleaseTrust: r.kit.trustFile}
	log := slog.New(slog.NewTextHandler(io.MultiWriter(r.replog, logSink()), &slog.HandlerOptions{Level: slog.LevelDebug}))
	if r.f, err = harness.StartFleet(context.Background(), cfg, log.With("side", "replica-0")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		r.f.Stop()
		if t.Failed() {
			t.Logf("replica-0 log:\n%s", r.replog.String())
		}
	})
	wait.For(t, "replica 0 to subscribe on every broker of the pool", r.f.BrokersReady)
	r.token = r.f.AdminToken()
	b, err := os.ReadFile(r.f.CACertPath())
	if err != nil {
		t.Fatal(err)
	}
	r.roots = x509.NewCertPool()
	r.roots.AppendCertsFromPEM(b)

	if err := <-build; err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 2; i++ {
		p := &replicaProc{name: fmt.Sprintf("replica-%d", i), dataDir: t.TempDir(), api: freeAddr(t), log: &lockedBuffer{}}
		for _, name := range replicaKeyFiles {
			copyTree(t, filepath.Join(r.dataDir, name), filepath.Join(p.dataDir, name))
		}
		// The firmware images are shared (a network file system between
		// machines; here replica 0's directory).
		if err := os.Symlink(filepath.Join(r.dataDir, server.FirmwareDir), filepath.Join(p.dataDir, server.FirmwareDir)); err != nil {
			t.Fatal(err)
		}
		c := map[string]any{
			"data_dir": p.dataDir, "database_url": r.dbURL, "api_addr": p.api, "mqtt_addr": freeAddr(t),
			"hostnames": []string{"localhost", "127.0.0.1"}, "ek_ca_dir": r.ekCA, "api_rate_limit": -1,
			"broker_pool": pool, "log_level": "debug", "release_trust": r.kit.trustFile,
		}
		b, err := json.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		p.config = filepath.Join(t.TempDir(), "serve.json")
		if err := os.WriteFile(p.config, b, 0o600); err != nil {
			t.Fatal(err)
		}
		p.api = "https://localhost" + p.api[strings.LastIndexByte(p.api, ':'):]
		r.procs = append(r.procs, p)
		r.startProc(t, p)
	}
	for _, p := range r.procs {
		r.waitAPI(t, p.api)
	}
	r.front = startFrontDoor(t, r.dev[0].Addr, r.dev[1].Addr, r.dev[2].Addr)
	return r
}

// logSink is where the replicas' logs go besides the test's buffers:
// stderr with SIGIL_E2E_LOG set.
func logSink() io.Writer {
	if os.Getenv("SIGIL_E2E_LOG") != "" {
		return os.Stderr
	}
	return io.Discard
}

// startProc starts `sigil serve` for p; it is killed when the test ends
// and its log shown if the test failed.
func (r *replicaFleet) startProc(t *testing.T, p *replicaProc) {
	t.Helper()
	cmd := exec.Command(r.sigil, "serve", "--config", p.config)
	cmd.Stdout, cmd.Stderr = io.MultiWriter(p.log, logSink()), io.MultiWriter(p.log, logSink())
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	p.mu.Lock()
	p.cmd, p.exited = cmd, exited
	p.mu.Unlock()
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("%s log:\n%s", p.name, p.log.String())
		}
	})
}

// kill ends p with SIGKILL and waits for it.
func (p *replicaProc) kill(t *testing.T) {
	t.Helper()
	cmd, exited := p.running()
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-exited
}

// client is an API client of the replica at base with the admin token.
func (r *replicaFleet) client(base string) *api.Client {
	return api.NewClient(base, r.token, r.roots)
}

// clients are API clients of every replica still running.
func (r *replicaFleet) clients() []*api.Client {
	cs := []*api.Client{r.client(r.f.APIURL())}
	for _, p := range r.procs {
		_, exited := p.running()
		select {
		case <-exited:
		default:
			cs = append(cs, r.client(p.api))
		}
	}
	return cs
}

// waitAPI waits until the replica at base answers the API with the
// admin token replica 0 made (the operators are shared).
func (r *replicaFleet) waitAPI(t *testing.T, base string) {
	t.Helper()
	c := r.client(base)
	wait.Until(t, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := c.Devices(ctx, "")
		return err
	})
}

// device starts sigild on an swtpm, enrolling through the bootstrap
// broker and connecting to the device brokers through the front door.
func (r *replicaFleet) device(t *testing.T, inst *swtpm.Instance, serial string) *harness.Device {
	t.Helper()
	return startDevice(t, r.f, inst, harness.DeviceConfig{Serial: serial, Tweak: func(c *agent.Config) {
		c.Broker, c.BootstrapBroker = r.front.addr, r.boot.Addr
	}})
}

// softDevice starts sigild on a software TPM (sim/softtpm) of the
// simulated manufacturer the fleet trusts, like device.
func (r *replicaFleet) softDevice(t *testing.T, serial string) *harness.Device {
	t.Helper()
	tp, err := softtpm.New(softtpm.WithCA(r.softCA))
	if err != nil {
		t.Fatal(err)
	}
	d, err := r.f.StartDevice(context.Background(), harness.DeviceConfig{TPM: "softtpm", Dir: t.TempDir(), Model: "gw-1", Firmware: "1.0.0", Serial: serial, Tweak: func(c *agent.Config) {
		c.Broker, c.BootstrapBroker, c.EventLog = r.front.addr, r.boot.Addr, "-"
	}}, logger(t).With("side", "device", "serial", serial), agent.WithTPM(tp))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Stop() })
	return d
}

// apiWatch calls the API of every running replica, round after round,
// while a scenario kills replicas and brokers: a round in which no
// replica answered, or replica 0 (never killed) did not, is recorded.
type apiWatch struct {
	mu     sync.Mutex
	rounds int
	fails  []string
	stop   chan struct{}
	done   chan struct{}
}

func (r *replicaFleet) watchAPI(t *testing.T) *apiWatch {
	w := &apiWatch{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for {
			select {
			case <-w.stop:
				return
			case <-time.After(100 * time.Millisecond): // sleep: the pace of the calls, not a wait
			}
			answered, zero := 0, error(nil)
			for i, c := range r.clients() {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				_, err := c.Devices(ctx, "")
				cancel()
				if err == nil {
					answered++
				} else if i == 0 {
					zero = err
				}
			}
			w.mu.Lock()
			w.rounds++
			if answered == 0 || zero != nil {
				w.fails = append(w.fails, fmt.Sprintf("round %d: %d replica(s) answered; replica 0: %v", w.rounds, answered, zero))
			}
			w.mu.Unlock()
		}
	}()
	t.Cleanup(w.end)
	return w
}

func (w *apiWatch) end() {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	<-w.done
}

// check ends the watch and fails t if a round went unanswered.
func (w *apiWatch) check(t *testing.T) {
	t.Helper()
	w.end()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.rounds == 0 || len(w.fails) > 0 {
		t.Fatalf("the API did not answer throughout (%d rounds): %v", w.rounds, w.fails)
	}
}

// copyTree copies a file or a directory tree, keeping the modes.
func copyTree(t *testing.T, from, to string) {
	t.Helper()
	err := filepath.WalkDir(from, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(from, path)
		if err != nil {
			return err
		}
		dst := filepath.Join(to, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		if d.IsDir() {
			return os.MkdirAll(dst, info.Mode().Perm())
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(dst, b, info.Mode().Perm())
	})
	if err != nil {
		t.Fatal(err)
	}
}

// frontDoor is the devices' entry to the device brokers, as a TCP load
// balancer in front of a pool is: each connection goes to the first
// broker of its list that accepts it. sigild names one broker address;
// when that broker dies, its devices reconnect through the front door to
// another broker.
type frontDoor struct {
	addr     string
	backends []string
	mu       sync.Mutex
	conns    map[string]int // connections accepted per backend
	active   map[string]int // connections open per backend
}

// open is how many connections to backend are open.
func (fd *frontDoor) open(backend string) int {
	fd.mu.Lock()
	defer fd.mu.Unlock()
	return fd.active[backend]
}

func startFrontDoor(t *testing.T, backends ...string) *frontDoor {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fd := &frontDoor{addr: l.Addr().String(), backends: backends, conns: map[string]int{}, active: map[string]int{}}
	var wg sync.WaitGroup
	done := make(chan struct{})
	var open sync.Map
	t.Cleanup(func() {
		close(done)
		l.Close()
		open.Range(func(k, _ any) bool { k.(net.Conn).Close(); return true })
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				fd.serve(c, &open, done)
			}()
		}
	}()
	return fd
}

// serve pipes c to the first backend that accepts a connection, in the
// order of the list, starting with the one after the least used (so that
// devices spread over the brokers).
func (fd *frontDoor) serve(c net.Conn, open *sync.Map, done chan struct{}) {
	defer c.Close()
	fd.mu.Lock()
	start, least := 0, -1
	for i, b := range fd.backends {
		if least < 0 || fd.conns[b] < least {
			start, least = i, fd.conns[b]
		}
	}
	fd.mu.Unlock()
	var up net.Conn
	var backend string
	for i := range fd.backends {
		b := fd.backends[(start+i)%len(fd.backends)]
		u, err := net.DialTimeout("tcp", b, time.Second)
		if err == nil {
			up, backend = u, b
			break
		}
	}
	if up == nil {
		return
	}
	defer up.Close()
	fd.mu.Lock()
	fd.conns[backend]++
	fd.active[backend]++
	fd.mu.Unlock()
	defer func() { fd.mu.Lock(); fd.active[backend]--; fd.mu.Unlock() }()
	open.Store(c, nil)
	open.Store(up, nil)
	defer open.Delete(c)
	defer open.Delete(up)
	ended := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(up, c); ended <- struct{}{} }()
	go func() { _, _ = io.Copy(c, up); ended <- struct{}{} }()
	select {
	case <-ended:
	case <-done:
	}
	// Either side gone: end both, as a load balancer does.
	c.Close()
	up.Close()
	<-ended
}

// handledBy reports whether a replica's log shows it handled a message
// of the device (a line with its device ID).
func handledBy(log, id string) bool {
	return strings.Contains(log, "device_id="+id)
}

// TestReplicas: three `sigil serve` replicas (one in the test's process,
// two real processes) on one PostgreSQL and a pool of three Mosquitto
// device brokers and a bootstrap broker. swtpm devices enroll through the
// pool and attest; their messages are spread over the replicas by the
// brokers' shared subscriptions, so each protocol (enrollment,
// attestation) crosses replicas, and every replica's API answers the
// same.
func TestReplicas(t *testing.T) {
	r := startReplicaFleet(t)
	a := r.device(t, newTPM(t), "SN-REP-A")
	b := r.device(t, newTPM(t), "SN-REP-B")
	stA, stB := waitConnected(t, a), waitConnected(t, b)
	ids := []string{stA.DeviceID, stB.DeviceID}
	c := r.client(r.f.APIURL())
	for _, id := range ids {
		if v := firstVerdict(t, c, id); v.Result != wire.VerdictPass {
			t.Fatalf("device %s: verdict %+v", id, v)
		}
	}
	// Every replica answers the API alike.
	for i, c := range r.clients() {
		for _, id := range ids {
			d, err := c.Device(context.Background(), id)
			if err != nil {
				t.Fatalf("replica %d: device %s: %v", i, id, err)
			}
			if d.State != "active" {
				t.Fatalf("replica %d: device %s: %+v", i, id, d)
			}
		}
	}
	// The devices' messages were handled by more than one replica.
	handlers := 0
	for _, log := range []string{r.replog.String(), r.procs[0].log.String(), r.procs[1].log.String()} {
		for _, id := range ids {
			if handledBy(log, id) {
				handlers++
				break
			}
		}
	}
	if handlers < 2 {
		t.Fatalf("the devices' messages were handled by %d replica(s), want at least 2", handlers)
	}

	// Software-TPM devices join them.
	devs := []*harness.Device{a, b}
	for i := range 8 {
		devs = append(devs, r.softDevice(t, fmt.Sprintf("SN-REP-SOFT-%d", i)))
	}
	for _, d := range devs[2:] {
		id := waitConnected(t, d).DeviceID
		ids = append(ids, id)
		if v := firstVerdict(t, c, id); v.Result != wire.VerdictPass {
			t.Fatalf("device %s: verdict %+v", id, v)
		}
	}
	watch := r.watchAPI(t)
	c1, c2 := r.client(r.procs[0].api), r.client(r.procs[1].api)
	ctx := context.Background()

	// Tamper: a device passes against a policy learned (through replica
	// 2) for its model; tpm2_pcrextend changes a PCR on its swtpm; the
	// attestation asked through replica 1 fails and quarantines it, which
	// every replica shows and every device broker enforces: a client with
	// the device's identity gets its attestation through each broker, not
	// its firmware report.
	instQ := newTPM(t)
	q := startDevice(t, r.f, instQ, harness.DeviceConfig{Serial: "SN-REP-TAMPER", Tweak: func(c *agent.Config) {
		c.Broker, c.BootstrapBroker, c.EventLog = r.front.addr, r.boot.Addr, "-"
	}})
	qid := waitConnected(t, q).DeviceID
	first := firstVerdict(t, c, qid)
	assign(t, c1, qid, "gw-tamper", "")
	pol, err := c2.LearnPolicy(ctx, api.LearnRequest{DeviceID: qid, Name: "gw-tamper golden"})
	if err != nil {
		t.Fatal(err)
	}
	if v := attestAfter(t, c1, qid, first.Seq, "a verdict under the learned policy", judgedBy(pol.ID)); v.Result != wire.VerdictPass {
		t.Fatalf("verdict under the learned policy %+v", v)
	}
	seq := latestSeq(t, c1, qid)
	tampered := quotedPCR("sha256", 9, extendPCR(t, instQ, "sha256", 9, strings.Repeat("ab", 32)))
	if v := attestAfter(t, c1, qid, seq, "a verdict on evidence quoting the extended PCR 9", tampered); v.Result != "fail" || v.Action != "quarantined" {
		t.Fatalf("verdict after tampering %+v", v)
	}
	for i, c := range r.clients() {
		if d, err := c.Device(ctx, qid); err != nil || d.State != "quarantined" {
			t.Fatalf("replica %d: tampered device: %+v, %v", i, d, err)
		}
	}
	q.Stop() // the test's client takes its identity on each broker
	bp := r.pool(t)
	cert, key := bp.clientCert(t, qid)
	for i, br := range r.dev {
		up := bp.watchUp(t, br, qid)
		mc := bp.mqttClient(t, br.Addr, qid, cert, key)
		mqttPublish(t, mc, r.topics.DeviceUp(qid, "firmware")) // PUBACKed and dropped
		mqttPublish(t, mc, r.topics.DeviceUp(qid, "attest"))
		wait.For(t, fmt.Sprintf("the attestation through broker %d", i+1), func() bool { return slices.Contains(up.list(), "attest") })
		if got := up.list(); slices.Contains(got, "firmware") {
			t.Fatalf("broker %d let a quarantined device's firmware report through: %v", i+1, got)
		}
		mc.Disconnect(0)
	}

	// Revocation through replica 2: every replica lists the certificate
	// in its CRL, and the device's session ends.
	v := r.softDevice(t, "SN-REP-REVOKED")
	vst := waitConnected(t, v)
	if _, err := c2.Revoke(ctx, vst.DeviceID, "keyCompromise", "e2e: replicas"); err != nil {
		t.Fatal(err)
	}
	if d, err := r.f.Inv.Device(ctx, vst.DeviceID); err != nil || !d.IsRevoked(vst.CertSerial) {
		t.Fatalf("the revoked certificate: %+v, %v", d, err)
	}
	for i, c := range r.clients() {
		der, err := c.CRL(ctx)
		if err != nil {
			t.Fatal(err)
		}
		crl, err := x509.ParseRevocationList(der)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.ContainsFunc(crl.RevokedCertificateEntries, func(e x509.RevocationListEntry) bool {
			return hex.EncodeToString(e.SerialNumber.Bytes()) == vst.CertSerial
		}) {
			t.Fatalf("replica %d: the CRL does not list %s", i, vst.CertSerial)
		}
	}
	if _, err := v.Wait(ctx, 30*time.Second, func(s agent.Status) bool { return !s.Connected || s.ConnectedAt.After(vst.ConnectedAt) }); err != nil {
		t.Fatalf("the revoked device's session did not end: %v", err)
	}
	v.Stop()

	// A secret put through replica 1 is delivered once, imported into
	// device A's TPM and acknowledged (seen through replica 2).
	value := []byte("e2e replicas secret")
	if info, err := c1.PutSecret(ctx, "replica-secret", value, secrets.Target{Device: stA.DeviceID}, false); err != nil || info.Version != 1 {
		t.Fatalf("put: %+v %v", info, err)
	}
	waitAcked(t, c2, stA.DeviceID, "replica-secret", 1)
	if got, err := agent.Unseal(a.Config, "replica-secret", 0); err != nil || !bytes.Equal(got, value) {
		t.Fatalf("unseal: %q %v", got, err)
	}
	deliveries := func() int {
		evs, err := r.f.Inv.Events(ctx, stA.DeviceID, 500)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, e := range evs {
			if e.Kind == "secret-delivered" && strings.Contains(e.Detail, "replica-secret version 1") {
				n++
			}
		}
		return n
	}
	// The sender records the delivery on the device's trail once its
	// publish returned, which may be after the ack: wait for it; it is
	// counted again once the scenario is over.
	wait.For(t, "the secret's delivery on the device's trail", func() bool { return deliveries() >= 1 })

	// A forced rotation of every device, started on replica 1; replica
	// 1 is killed with SIGKILL while the job runs. The job finishes on
	// the others: every device renewed exactly once.
	before := map[string]int{}
	serials := map[string]string{}
	for _, id := range ids {
		d, err := r.f.Inv.Device(t.Context(), id)
		if err != nil {
			t.Fatal(err)
		}
		before[id], serials[id] = len(d.Certs), d.CertSerial
	}
	job, err := c1.StartRotation(ctx, api.RotationRequest{
		Selector: rotation.Selector{DeviceIDs: ids}, Rate: 1, Reason: "e2e: replicas"})
	if err != nil {
		t.Fatal(err)
	}
	wait.For(t, "the rotation to renew a first device", func() bool {
		j, err := c.Rotation(context.Background(), job.ID)
		return err == nil && j.Progress.Renewed >= 1
	})
	r.procs[0].kill(t)
	if j, err := c.Rotation(context.Background(), job.ID); err != nil || j.State != rotation.JobRunning {
		t.Fatalf("the rotation was not running when replica 1 was killed: %+v, %v", j, err)
	}
	// A renewal request in flight to the killed replica is drained to
	// another one once its session's lease expires (acknowledged only
	// once answered: rotation.Config.WaitHandled); devices the killed
	// replica claimed and never asked are asked once its claim lapses
	// (15 s); a rotate message lost on the way is sent again after the
	// job's resend time, a minute.
	if !wait.Poll(3*time.Minute, func() bool {
		j, err := r.client(r.procs[1].api).Rotation(context.Background(), job.ID)
		return err == nil && j.State == rotation.JobDone
	}) {
		j, err := c.Rotation(context.Background(), job.ID)
		b, _ := json.Marshal(j)
		t.Fatalf("the rotation did not finish on the surviving replicas: %s, %v", b, err)
	}
	j, err := c.Rotation(context.Background(), job.ID)
	if err != nil {
		t.Fatal(err)
	}
	if j.Progress.Renewed != len(ids) || j.Progress.Total != len(ids) {
		t.Fatalf("rotation progress %+v, want %d renewed", j.Progress, len(ids))
	}
	for i, id := range ids {
		d, err := r.f.Inv.Device(t.Context(), id)
		if err != nil {
			t.Fatal(err)
		}
		if len(d.Certs) != before[id]+1 || d.CertSerial == serials[id] {
			t.Errorf("device %s: %d certificates (had %d), current %s (was %s): want exactly one renewal", id, len(d.Certs), before[id], d.CertSerial, serials[id])
		}
		if st, err := devs[i].Wait(context.Background(), 30*time.Second, func(s agent.Status) bool {
			return harness.Connected(s) && s.CertSerial == d.CertSerial
		}); err != nil {
			t.Errorf("device %s does not hold its new certificate: %+v, %v", id, st, err)
		}
	}

	// The device broker holding the most devices is killed (SIGKILL):
	// its devices come back through the front door on the other brokers,
	// and the fleet reaches each device where it is now (an attestation
	// on demand, asked through replica 2, answered). Which broker that is
	// depends on the order devices reconnected after the rotation.
	victim := r.dev[0]
	for _, b := range r.dev[1:] {
		if r.front.open(b.Addr) > r.front.open(victim.Addr) {
			victim = b
		}
	}
	if r.front.open(victim.Addr) == 0 {
		t.Fatal("no device on any device broker to move")
	}
	killedAt := time.Now()
	if err := syscall.Kill(victim.Pid(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for i, id := range ids {
		if _, err := devs[i].Wait(context.Background(), 30*time.Second, func(s agent.Status) bool {
			return harness.Connected(s) && (s.ConnectedAt.After(killedAt) || r.front.open(victim.Addr) == 0)
		}); err != nil {
			t.Fatalf("device %s after its broker died: %v", id, err)
		}
		seq := latestSeq(t, c2, id)
		if err := c2.Attest(context.Background(), id); err != nil {
			t.Fatalf("attest %s through replica 2: %v", id, err)
		}
		waitVerdict(t, c2, id, seq, "an attestation on demand after a broker died", anyVerdict)
	}
	if n := r.front.open(victim.Addr); n != 0 {
		t.Fatalf("%d connections still on the dead broker", n)
	}

	// A firmware campaign over the software-TPM devices, with replica 1
	// back (restarted) and replica 2 killed with SIGKILL once the
	// campaign is under way: it completes on the others, each device
	// counted committed once, running the new release.
	r.startProc(t, r.procs[0])
	r.waitAPI(t, r.procs[0].api)
	c1 = r.client(r.procs[0].api)
	soft := ids[2:]
	for _, id := range soft {
		assign(t, c1, id, "gw-1", "")
	}
	ana := asUser(t, r.f, c1, "ana", auth.RoleOperator)
	bo := asUser(t, r.f, c1, "bo", auth.RoleReleaseApprover)
	image := bytes.Repeat([]byte("gw-os 2.0.0 replicas "), 10_000)
	raw, bundles := r.kit.release(t, "2.0.0", 2, image, 2)
	rel, err := ana.UploadRelease(ctx, raw, bundles, bytes.NewReader(image), int64(len(image)))
	if err != nil {
		t.Fatal(err)
	}
	bo2 := *bo
	bo2.BaseURL = r.procs[1].api
	if _, err := bo2.ApproveRelease(ctx, rel.ID); err != nil {
		t.Fatal(err)
	}
	camp, err := ana.CreateCampaign(ctx, campaign.Definition{Release: rel.ID, Targets: campaign.Selector{DeviceIDs: soft},
		Waves: campaign.Waves{Canary: 1, Growth: 2}, DeviceTimeout: config.Duration(time.Minute)}, "e2e replicas rollout")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ana.CampaignAction(ctx, camp.ID, "start", "e2e replicas rollout", time.Time{}); err != nil {
		t.Fatal(err)
	}
	waitCampaign(t, ana, camp.ID, time.Minute, "a first device committed", func(c *campaign.Campaign) bool { return c.Counts.Committed >= 1 })
	r.procs[1].kill(t)
	if cur, err := ana.Campaign(ctx, camp.ID); err != nil || cur.State == campaign.StateCompleted {
		t.Fatalf("the campaign was not under way when replica 2 was killed: %+v, %v", cur, err)
	}
	done := waitCampaign(t, ana, camp.ID, 3*time.Minute, "completed on the surviving replicas", func(c *campaign.Campaign) bool {
		return c.State == campaign.StateCompleted
	})
	if done.Counts.Committed != len(soft) || done.Total != len(soft) || done.Counts.Finished() != len(soft) {
		t.Fatalf("campaign counts %+v of %d, want each of %d devices committed once", done.Counts, done.Total, len(soft))
	}
	for _, id := range soft {
		if d := campaignDevice(t, c1, camp.ID, id); d.Step != campaign.StepCommitted || d.RunningVersion != "2.0.0" {
			t.Errorf("device %s: %+v", id, d)
		}
		waitFirmware(t, r.f, id, "2.0.0")
	}
	if n := deliveries(); n != 1 {
		t.Errorf("the secret was delivered %d times, want once", n)
	}
	watch.check(t)
}
