package fleetbench

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sigil-iot/sigil/fleet/alert"
	"github.com/sigil-iot/sigil/fleet/alert/sink"
	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/metrics/metricstest"
	"github.com/sigil-iot/sigil/pkg/config"
)

// fleet is the fleet under test: a `sigil serve` this run started as a
// child process (so that its CPU and memory are its own), or one running
// elsewhere.
type fleet struct {
	apiURL       string // https://host:port
	broker       string // host:port of the MQTT listener
	serverName   string // TLS name of the broker and the update server
	caFile       string // the fleet CA devices trust at enrollment
	updateServer string // host:port devices download images from
	debugURL     string // http://host:port of the Go profiles, "" when unknown
	admin        *api.Client
	roots        *x509.CertPool

	// A child fleet's process, configuration and log; nil proc for an
	// external fleet.
	proc    *exec.Cmd
	exited  chan struct{}
	sigil   string
	env     []string
	cfgPath string
	logPath string
	dataDir string
	sink    *alertSink

	// In the scale-out mode: the other replicas (this one is the first,
	// whose API the run drives), and the database and brokers.
	replicas []*fleet
	pool     *poolDeployment
	// brokers are the devices' broker addresses (one, the fleet's own,
	// without a pool); bootstrap the enrollment broker's ("" without a
	// pool: the device broker's bootstrap listener).
	brokers   []string
	bootstrap string
}

// childFleet writes a configuration for `sigil serve` and starts it:
// embedded broker and bbolt stores in dataDir, the simulated
// manufacturer's CA as its ek_ca_dir, the release trust set, the alert
// sink, fixed loopback ports (a restart keeps them) and a debug listener
// for profiles. extra, if not nil, is merged over the generated keys.
func childFleet(ctx context.Context, sigil, work, ekCADir, releaseTrust string, attestInterval time.Duration, as *alertSink, extra map[string]any, env []string) (*fleet, error) {
	f, err := prepareChild(sigil, work, ekCADir, releaseTrust, attestInterval, as, extra, env)
	if err != nil {
		return nil, err
	}
	if err := f.start(ctx); err != nil {
		return nil, err
	}
	return f, nil
}

// prepareChild writes childFleet's configuration without starting it.
func prepareChild(sigil, work, ekCADir, releaseTrust string, attestInterval time.Duration, as *alertSink, extra map[string]any, env []string) (*fleet, error) {
	if sigil == "" {
		return nil, errors.New("fleetbench: no sigil binary to run the fleet (build it beside sigil-sim, put it on PATH, or pass --sigil)")
	}
	ports, err := freePorts(3)
	if err != nil {
		return nil, err
	}
	dataDir := filepath.Join(work, "fleet")
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("fleetbench: %w", err)
	}
	cfg := map[string]any{
		"data_dir": dataDir, "mqtt_addr": fmt.Sprintf("127.0.0.1:%d", ports[0]), "api_addr": fmt.Sprintf("127.0.0.1:%d", ports[1]),
		"debug_addr": fmt.Sprintf("127.0.0.1:%d", ports[2]), "hostnames": []string{"localhost", "127.0.0.1"},
		"ek_ca_dir": ekCADir, "release_trust": releaseTrust, "log_level": "warn",
		"attest_interval": attestInterval.String(),
		// The quarantine figure needs its alerts at the sink, not held
		// back by flood control behind the synthetic telemetry's.
		"alert_flood": map[string]any{"window": "10m", "per_rule": 100000, "fleet": 100000},
		"alert_sinks": []map[string]any{{"name": "bench", "type": "webhook", "url": as.url(), "attempts": 1}},
	}
	maps.Copy(cfg, extra)
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return nil, err
	}
	cfgPath := filepath.Join(work, "serve.json")
	if err := os.WriteFile(cfgPath, b, 0o600); err != nil {
		return nil, fmt.Errorf("fleetbench: %w", err)
	}
	f := &fleet{
		apiURL: fmt.Sprintf("https://localhost:%d", ports[1]), broker: cfg["mqtt_addr"].(string), serverName: "localhost",
		caFile: filepath.Join(dataDir, "ca", "ca.crt"), updateServer: cfg["api_addr"].(string),
		debugURL: "http://" + cfg["debug_addr"].(string), sigil: sigil, cfgPath: cfgPath, logPath: filepath.Join(work, "fleet.log"),
		dataDir: dataDir, sink: as, env: env,
	}
	if v, ok := extra["mqtt_addr"].(string); ok {
		f.broker = v
	}
	f.brokers = []string{f.broker}
	return f, nil
}

// externalFleet is a fleet this run did not start.
func externalFleet(apiURL, broker, serverName, caFile, token, debugURL string) (*fleet, error) {
	u, err := url.Parse(apiURL)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("%w: --fleet %q is not an https URL", ErrUsage, apiURL)
	}
	if broker == "" || caFile == "" || token == "" {
		return nil, fmt.Errorf("%w: --fleet needs --broker, --ca and a token (--token-file or SIGIL_TOKEN)", ErrUsage)
	}
	if serverName == "" {
		serverName, _, _ = net.SplitHostPort(broker)
	}
	f := &fleet{apiURL: strings.TrimRight(apiURL, "/"), broker: broker, serverName: serverName, caFile: caFile, updateServer: u.Host, debugURL: debugURL,
		brokers: []string{broker}}
	if err := f.connect(token); err != nil {
		return nil, err
	}
	return f, nil
}

// start runs `sigil serve` and waits until its API answers.
func (f *fleet) start(ctx context.Context) error {
	logf, err := os.OpenFile(f.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("fleetbench: %w", err)
	}
	cmd := exec.Command(f.sigil, "serve", "--config", f.cfgPath)
	cmd.Env = append(os.Environ(), f.env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("fleetbench: start %s serve: %w", f.sigil, err)
	}
	f.proc, f.exited = cmd, make(chan struct{})
	go func(done chan struct{}) { _ = cmd.Wait(); logf.Close(); close(done) }(f.exited)
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if err := f.ready(ctx); err == nil {
			return nil
		} else if time.Now().After(deadline) {
			f.kill()
			return fmt.Errorf("fleetbench: sigil serve not ready: %v (log: %s)", err, f.logPath)
		}
		select {
		case <-f.exited:
			return fmt.Errorf("fleetbench: sigil serve exited (log: %s)", f.logPath)
		case <-ctx.Done():
			f.kill()
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// ready connects the admin client once the child wrote its token and CA,
// and checks that the API answers.
func (f *fleet) ready(ctx context.Context) error {
	if f.admin == nil {
		tok, err := os.ReadFile(filepath.Join(f.dataDir, "admin.token"))
		if err != nil {
			return err
		}
		if err := f.connect(strings.TrimSpace(string(tok))); err != nil {
			return err
		}
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var st struct {
		Status string `json:"status"`
	}
	return f.admin.Do(cctx, http.MethodGet, "/healthz", nil, &st)
}

// connect makes the admin API client.
func (f *fleet) connect(token string) error {
	pemBytes, err := os.ReadFile(f.caFile)
	if err != nil {
		return fmt.Errorf("fleetbench: fleet CA: %w", err)
	}
	f.roots = x509.NewCertPool()
	if !f.roots.AppendCertsFromPEM(pemBytes) {
		return fmt.Errorf("fleetbench: %s holds no PEM certificate", f.caFile)
	}
	f.admin = api.NewClient(f.apiURL, token, f.roots)
	f.admin.HTTP.Timeout = time.Minute
	return nil
}

// restart stops the child fleet (SIGTERM, as systemd would) and starts it
// again on the same data directory and ports. It returns when the old
// process has exited; the new one is started, and may not answer yet.
func (f *fleet) restart(ctx context.Context) (stopped time.Time, err error) {
	if f.proc == nil {
		return time.Time{}, errors.New("fleetbench: the reconnect storm restarts the fleet: it needs a fleet this run started")
	}
	_ = f.proc.Process.Signal(syscall.SIGTERM)
	select {
	case <-f.exited:
	case <-time.After(time.Minute):
		f.kill()
	}
	stopped = time.Now()
	return stopped, f.start(ctx)
}

// stop ends a child fleet: its replicas, then its brokers and database.
func (f *fleet) stop() {
	defer f.pool.stop()
	for _, o := range f.replicas {
		o.stop()
	}
	if f.proc == nil {
		return
	}
	_ = f.proc.Process.Signal(syscall.SIGTERM)
	select {
	case <-f.exited:
	case <-time.After(time.Minute):
		f.kill()
	}
}

func (f *fleet) kill() {
	if f.proc != nil && f.proc.Process != nil {
		_ = f.proc.Process.Kill()
		<-f.exited
	}
}

// freePorts returns n loopback TCP ports free now.
func freePorts(n int) ([]int, error) {
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	var out []int
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("fleetbench: %w", err)
		}
		lns = append(lns, ln)
		out = append(out, ln.Addr().(*net.TCPAddr).Port)
	}
	return out, nil
}

// sample is one scrape of the fleet's /metrics: each sample by its name
// and labels ("name" or `name{k="v",…}`, labels sorted).
type sample map[string]float64

// scrape reads the fleet's /metrics: with several replicas, every
// replica's samples added up (the counters are each replica's share of
// the work, the memory and CPU its own), with the brokers' and the
// database's CPU and memory from /proc.
func (f *fleet) scrape(ctx context.Context) (sample, error) {
	m, err := f.scrapeOne(ctx)
	if err != nil {
		return nil, err
	}
	for _, o := range f.replicas {
		mo, err := o.scrapeOne(ctx)
		if err != nil {
			return nil, err
		}
		for k, v := range mo {
			m[k] += v
		}
	}
	if f.pool != nil {
		m[keyReplicas] = float64(1 + len(f.replicas))
		f.pool.addProcesses(m)
	}
	return m, nil
}

// scrapeOne reads one replica's /metrics.
func (f *fleet) scrapeOne(ctx context.Context) (sample, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, f.apiURL+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+f.admin.Token)
	resp, err := f.admin.HTTP.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fleetbench: /metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("fleetbench: /metrics answered %s", resp.Status)
	}
	fams, err := metricstest.Parse(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("fleetbench: /metrics: %w", err)
	}
	out := sample{}
	for _, s := range fams.Samples() {
		out[sampleKey(s.Name, s.Labels)] = s.Value
	}
	return out, nil
}

func sampleKey(name string, labels map[string]string) string {
	if len(labels) == 0 {
		return name
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		parts = append(parts, fmt.Sprintf("%s=%q", k, labels[k]))
	}
	return name + "{" + strings.Join(parts, ",") + "}"
}

// person is an operator account this run created, with an API client
// acting as them and a console session.
type person struct {
	name    string
	client  *api.Client
	console *http.Client // with the session cookie
}

// newPerson creates a user with role and signs them in: a console
// session, and an API token of their own (what a second person approves
// a release with).
func (f *fleet) newPerson(ctx context.Context, prefix string, role auth.Role) (*person, error) {
	name := fmt.Sprintf("%s-%d", prefix, time.Now().UnixNano()%1e9)
	u, err := f.admin.CreateUser(ctx, api.UserRequest{Name: name, Role: role})
	if err != nil {
		return nil, fmt.Errorf("fleetbench: create user %s: %w", name, err)
	}
	if u.Password == "" {
		return nil, fmt.Errorf("fleetbench: user %s was created without a password (two-person rule on?)", name)
	}
	jar, _ := cookiejar.New(nil)
	hc := &http.Client{Timeout: time.Minute, Jar: jar, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: f.roots, MinVersion: tls.VersionTLS12}},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	body, _ := json.Marshal(map[string]string{"user": name, "password": u.Password})
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, f.apiURL+"/api/v1/login", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fleetbench: log in as %s: %w", name, err)
	}
	var login auth.LoginResponse
	err = json.NewDecoder(io.LimitReader(resp.Body, 1<<16)).Decode(&login)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || err != nil {
		return nil, fmt.Errorf("fleetbench: log in as %s: %s %v", name, resp.Status, err)
	}
	body, _ = json.Marshal(api.TokenRequest{Name: name, Role: role, TTL: config.Duration(24 * time.Hour)})
	req, _ = http.NewRequestWithContext(ctx, http.MethodPost, f.apiURL+"/api/v1/tokens", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(auth.CSRFHeader, login.CSRFToken)
	resp, err = hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fleetbench: API token for %s: %w", name, err)
	}
	var tok api.TokenCreated
	err = json.NewDecoder(io.LimitReader(resp.Body, 1<<16)).Decode(&tok)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated || err != nil || tok.Secret == "" {
		return nil, fmt.Errorf("fleetbench: API token for %s: %s %v", name, resp.Status, err)
	}
	c := *f.admin
	c.Token = tok.Secret
	return &person{name: name, client: &c, console: hc}, nil
}

// alertSink receives the fleet's webhook notifications and notes when
// the first one about each device arrived.
type alertSink struct {
	srv   *http.Server
	ln    net.Listener
	mu    sync.Mutex
	first map[string]sinkArrival // by device ID, since the last watch
	watch map[string]bool
}

// sinkArrival is the first alert about a watched device.
type sinkArrival struct {
	At   time.Time
	Rule string
}

func newAlertSink() (*alertSink, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("fleetbench: alert sink: %w", err)
	}
	s := &alertSink{ln: ln, first: map[string]sinkArrival{}, watch: map[string]bool{}}
	s.srv = &http.Server{Handler: http.HandlerFunc(s.receive), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = s.srv.Serve(ln) }()
	return s, nil
}

func (s *alertSink) url() string { return "http://" + s.ln.Addr().String() + "/alerts" }

func (s *alertSink) close() { s.srv.Close() }

func (s *alertSink) receive(w http.ResponseWriter, r *http.Request) {
	now := time.Now()
	var p sink.WebhookPayload
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&p); err != nil {
		http.Error(w, "bad payload", http.StatusBadRequest)
		return
	}
	s.mu.Lock()
	id := p.Alert.DeviceID
	if _, seen := s.first[id]; s.watch[id] && !seen && p.Transition == alert.TransitionFiring {
		s.first[id] = sinkArrival{At: now, Rule: p.Alert.RuleID}
	}
	s.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

// watchDevice starts noting the first firing alert about id.
func (s *alertSink) watchDevice(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.watch[id] = true
	delete(s.first, id)
}

// arrival returns the first firing alert about id since watchDevice.
func (s *alertSink) arrival(id string) (sinkArrival, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.first[id]
	return a, ok
}
