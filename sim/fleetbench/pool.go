package fleetbench

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/sigil-iot/sigil/fleet/ca"
	"github.com/sigil-iot/sigil/fleet/mqttpool"
	"github.com/sigil-iot/sigil/fleet/server"
	"github.com/sigil-iot/sigil/fleet/storage/pgtest"
)

// The scale-out mode (issue 14, docs/BROKERS.md): the fleet is M
// `sigil serve` replicas sharing a PostgreSQL (fleet/storage/pgtest, with
// fsync and synchronous commit on) and a pool of N Mosquitto device
// brokers and one bootstrap broker, configured by `sigil broker-config`;
// the devices are spread over the device brokers. Every process is a
// child of this run, so that the replicas', the brokers' and the
// database's CPU and memory are each their own (the replicas' from their
// /metrics, the others' from /proc).

// MaxBrokerDevices is the most devices one Mosquitto broker of the pool
// may hold: each connection is an open file, every process here may open
// 20,000, and the broker keeps some for itself, its listeners and the
// fleet's connections.
const MaxBrokerDevices = 17000

// brokerProc is a Mosquitto broker this run started.
type brokerProc struct {
	role            string
	addr, fleetAddr string // the devices' (or bootstrap clients') listener, the fleet's
	dir             string
	cmd             *exec.Cmd
	exited          chan struct{}
}

// poolDeployment is what a pool-mode run started besides the replicas.
type poolDeployment struct {
	pg      *pgtest.Server
	dbURL   string
	devices []*brokerProc
	boot    *brokerProc
	base    string // the brokers' directories' parent
}

// startPostgres starts the run's PostgreSQL and creates its database.
func startPostgres(ctx context.Context) (*pgtest.Server, string, error) {
	pg, err := pgtest.Launch(pgtest.LaunchOptions{Durable: true, Settings: []string{"shared_buffers=256MB"}})
	if err != nil {
		return nil, "", fmt.Errorf("fleetbench: --postgres needs PostgreSQL's binaries (initdb, pg_ctl, postgres): %w", err)
	}
	url, err := pg.CreateDatabase(ctx, "sigil")
	if err != nil {
		pg.Stop()
		return nil, "", err
	}
	return pg, url, nil
}

// startPool makes the fleet CA in dataDir (as the first `sigil serve`
// would), writes each broker's files with `sigil broker-config` and
// starts Mosquitto on them: n device brokers (with the dynamic security
// plugin, when installed) and one bootstrap broker.
func startPool(ctx context.Context, sigil, dataDir, logDir string, n, maxQueued int) (*poolDeployment, error) {
	mosq, err := exec.LookPath("mosquitto")
	if err != nil {
		return nil, fmt.Errorf("fleetbench: --brokers needs Mosquitto 2.0 (Debian: apt-get install mosquitto): %w", err)
	}
	if _, err := ca.Open(ca.Config{Dir: filepath.Join(dataDir, "ca"), TrustDomain: "sigil.local"}); err != nil {
		return nil, err
	}
	// Mosquitto started as root drops to its own user, which must reach
	// and read its files: a directory of their own, open to it.
	base, err := os.MkdirTemp("", "sigil-bench-brokers-")
	if err != nil {
		return nil, fmt.Errorf("fleetbench: %w", err)
	}
	p := &poolDeployment{base: base}
	if err := os.Chmod(base, 0o755); err != nil {
		p.stop()
		return nil, fmt.Errorf("fleetbench: %w", err)
	}
	dynsec := dynsecPlugin()
	for i := range n + 1 {
		role, name := mqttpool.RoleDevice, fmt.Sprintf("device-%d", i+1)
		if i == n {
			role, name = mqttpool.RoleBootstrap, "bootstrap"
		}
		b, err := startBroker(ctx, sigil, mosq, dataDir, filepath.Join(base, name), filepath.Join(logDir, "mosquitto-"+name+".log"), role, dynsec, maxQueued)
		if err != nil {
			p.stop()
			return nil, err
		}
		if role == mqttpool.RoleBootstrap {
			p.boot = b
		} else {
			p.devices = append(p.devices, b)
		}
	}
	return p, nil
}

// dynsecPlugin is the path of Mosquitto's dynamic security plugin, ""
// when it is not installed (the fleet then cannot end a device's session
// on a broker: quarantine is enforced at the fleet only).
func dynsecPlugin() string {
	for _, g := range []string{"/usr/lib/*/mosquitto_dynamic_security.so", "/usr/lib/mosquitto_dynamic_security.so", "/usr/local/lib/mosquitto_dynamic_security.so"} {
		if m, _ := filepath.Glob(g); len(m) > 0 {
			return m[0]
		}
	}
	return ""
}

// startBroker writes one broker's files with `sigil broker-config` into
// dir and starts mosquitto on them.
func startBroker(ctx context.Context, sigil, mosq, dataDir, dir, logPath, role, dynsec string, maxQueued int) (*brokerProc, error) {
	ports, err := freePorts(2)
	if err != nil {
		return nil, err
	}
	b := &brokerProc{role: role, dir: dir, addr: fmt.Sprintf("127.0.0.1:%d", ports[0]), fleetAddr: fmt.Sprintf("127.0.0.1:%d", ports[1])}
	args := []string{"broker-config", "--data-dir", dataDir, "--role", role, "--name", "localhost,127.0.0.1",
		"--listen", b.addr, "--fleet-listen", b.fleetAddr, "--dir", dir, "--out", dir, "--max-queued", strconv.Itoa(maxQueued)}
	if role == mqttpool.RoleDevice && dynsec != "" {
		args = append(args, "--dynsec-plugin", dynsec, "--state-dir", filepath.Join(dir, "state"))
		if err := os.MkdirAll(filepath.Join(dir, "state"), 0o755); err != nil {
			return nil, fmt.Errorf("fleetbench: %w", err)
		}
	}
	if out, err := exec.CommandContext(ctx, sigil, args...).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("fleetbench: sigil broker-config: %w\n%s", err, out)
	}
	if err := ownForMosquitto(dir); err != nil {
		return nil, err
	}
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("fleetbench: %w", err)
	}
	b.cmd = exec.Command(mosq, "-c", filepath.Join(dir, mqttpool.ConfFile))
	b.cmd.Stdout, b.cmd.Stderr = logf, logf
	if err := b.cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("fleetbench: start mosquitto: %w", err)
	}
	b.exited = make(chan struct{})
	go func() { _ = b.cmd.Wait(); logf.Close(); close(b.exited) }()
	deadline := time.Now().Add(30 * time.Second)
	for _, a := range []string{b.addr, b.fleetAddr} {
		for {
			c, err := net.DialTimeout("tcp", a, time.Second)
			if err == nil {
				c.Close()
				break
			}
			select {
			case <-b.exited:
				return nil, fmt.Errorf("fleetbench: mosquitto (%s) exited (log: %s)", role, logPath)
			case <-time.After(50 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				b.kill()
				return nil, fmt.Errorf("fleetbench: mosquitto (%s) not listening on %s (log: %s)", role, a, logPath)
			}
		}
	}
	return b, nil
}

// ownForMosquitto hands dir's files to the mosquitto user when this
// process is root (Mosquitto drops to that user and must read its key and
// rewrite the plugin's state).
func ownForMosquitto(dir string) error {
	if os.Geteuid() != 0 {
		return nil
	}
	u, err := user.Lookup("mosquitto")
	if err != nil {
		return nil // mosquitto then keeps root's rights
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return filepath.WalkDir(dir, func(path string, _ os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Chown(path, uid, gid)
	})
}

func (b *brokerProc) kill() {
	if b.cmd != nil && b.cmd.Process != nil {
		_ = b.cmd.Process.Kill()
		<-b.exited
	}
}

// stop ends the brokers and the database and removes their files.
func (p *poolDeployment) stop() {
	if p == nil {
		return
	}
	for _, b := range append(p.devices, p.boot) {
		if b != nil {
			b.kill()
		}
	}
	if p.base != "" {
		os.RemoveAll(p.base)
	}
	if p.pg != nil {
		_ = p.pg.Stop()
	}
}

// brokerPool is the replicas' broker_pool setting.
func (p *poolDeployment) brokerPool() *server.BrokerPool {
	bp := &server.BrokerPool{ServerName: "localhost", Bootstrap: []string{p.boot.fleetAddr}}
	for _, b := range p.devices {
		bp.Devices = append(bp.Devices, b.fleetAddr)
	}
	return bp
}

// replicaKeyFiles are the files of the first replica's data directory
// every other replica holds a copy of (docs/CONFIG.md, "Several
// replicas").
var replicaKeyFiles = []string{"ca", "audit.key", "ssh_ca.key", "secrets.key", mqttpool.SecretFile}

// prepareReplica gives a replica's data directory copies of the first
// replica's key files and a link to its firmware images (shared, as a
// network file system would share them between machines).
func prepareReplica(first, dataDir string) error {
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return fmt.Errorf("fleetbench: %w", err)
	}
	for _, name := range replicaKeyFiles {
		if err := copyTree(filepath.Join(first, name), filepath.Join(dataDir, name)); err != nil {
			return fmt.Errorf("fleetbench: replica key files: %w", err)
		}
	}
	if err := os.Symlink(filepath.Join(first, server.FirmwareDir), filepath.Join(dataDir, server.FirmwareDir)); err != nil {
		return fmt.Errorf("fleetbench: %w", err)
	}
	return nil
}

// copyTree copies a file or a directory tree, keeping the modes.
func copyTree(from, to string) error {
	return filepath.WalkDir(from, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(from, path)
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		dst := filepath.Join(to, rel)
		if d.IsDir() {
			return os.MkdirAll(dst, info.Mode().Perm())
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(dst, b, info.Mode().Perm())
	})
}

// procStat is a process's CPU time (its own, and its reaped children's)
// and resident memory, from /proc.
type procStat struct {
	cpu, childCPU float64 // seconds
	ppid          int
	rss           float64 // bytes
}

// clockTicks is the kernel's USER_HZ, the unit of /proc/PID/stat's times
// (100 on every Linux this runs on).
const clockTicks = 100

// readProc reads /proc/PID/stat and the RSS in /proc/PID/status.
func readProc(pid int) (procStat, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, err
	}
	// The command name, in parentheses, may hold spaces: the fields
	// after it start at the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return procStat{}, errors.New("fleetbench: /proc stat without a command")
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 15 {
		return procStat{}, errors.New("fleetbench: short /proc stat")
	}
	num := func(k int) float64 { v, _ := strconv.ParseFloat(f[k], 64); return v }
	// f[0] is field 3 (state): ppid is field 4, utime 14, stime 15,
	// cutime 16, cstime 17.
	st := procStat{ppid: int(num(1)), cpu: (num(11) + num(12)) / clockTicks, childCPU: (num(13) + num(14)) / clockTicks}
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid)); err == nil {
		for line := range strings.Lines(string(b)) {
			if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
				st.rss = kb * 1024
			}
		}
	}
	return st, nil
}

// pss is a process's proportional set size (its resident memory, with
// each page it shares divided among the processes sharing it), from
// /proc/PID/smaps_rollup; 0 when unknown.
func pss(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "Pss:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			return kb * 1024
		}
	}
	return 0
}

// treeStat adds up a process and its children now running (PostgreSQL's
// backends), with the CPU of the children it has reaped; their memory
// is the sum of their proportional set sizes (the backends share the
// server's buffers, which their RSS would each count).
func treeStat(pid int) (cpu, mem float64) {
	root, err := readProc(pid)
	if err != nil {
		return 0, 0
	}
	cpu, mem = root.cpu+root.childCPU, pss(pid)
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err != nil || child == pid {
			continue
		}
		if st, err := readProc(child); err == nil && st.ppid == pid {
			cpu += st.cpu + st.childCPU
			mem += pss(child)
		}
	}
	return cpu, mem
}

// Keys a pool-mode scrape adds to the replicas' summed samples.
const (
	keyReplicas    = "fleetbench_replicas"
	keyBrokerRSS   = "fleetbench_brokers_resident_memory_bytes"
	keyBrokerCPU   = "fleetbench_brokers_cpu_seconds_total"
	keyBrokerConns = "fleetbench_brokers"
	keyDBRSS       = "fleetbench_postgres_resident_memory_bytes"
	keyDBCPU       = "fleetbench_postgres_cpu_seconds_total"
)

// brokerFilesKey is the key of device broker i's open files (a
// connection each, and a few of its own).
func brokerFilesKey(i int) string { return fmt.Sprintf("fleetbench_broker_open_files_%d", i) }

// addProcesses adds the device brokers' and the database's CPU and memory
// to m (the bootstrap broker is left out: it holds no device).
func (p *poolDeployment) addProcesses(m sample) {
	if p == nil {
		return
	}
	for i, b := range p.devices {
		pid := b.cmd.Process.Pid
		if st, err := readProc(pid); err == nil {
			m[keyBrokerRSS] += st.rss
			m[keyBrokerCPU] += st.cpu
			m[keyBrokerConns]++
		}
		if fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid)); err == nil {
			m[brokerFilesKey(i)] = float64(len(fds))
		}
	}
	if p.pg != nil {
		if pid := p.pg.Pid(); pid > 0 {
			cpu, rss := treeStat(pid)
			m[keyDBCPU], m[keyDBRSS] = cpu, rss
		}
	}
}

// scaleOut starts the scale-out deployment: PostgreSQL (Options.Postgres),
// the brokers (Options.Brokers), the first replica, then the others with
// copies of its key files. Without brokers it is one `sigil serve` with
// its embedded broker on PostgreSQL (the stores' figures against bbolt).
func (r *run) scaleOut(ctx context.Context) (f *fleet, err error) {
	o := r.o
	p := &poolDeployment{}
	defer func() {
		if err != nil {
			if f != nil {
				f.stop()
			} else {
				p.stop()
			}
		}
	}()
	extra := map[string]any{}
	maps.Copy(extra, o.FleetConfig)
	if o.Postgres {
		r.progress("starting PostgreSQL (fsync and synchronous commit on)")
		pg, url, err := startPostgres(ctx)
		if err != nil {
			return nil, err
		}
		p.pg, p.dbURL = pg, url
		extra["database_url"] = url
	}
	first := filepath.Join(o.Dir, "fleet")
	if o.Brokers > 0 {
		if err := os.MkdirAll(first, 0o700); err != nil {
			return nil, fmt.Errorf("fleetbench: %w", err)
		}
		r.progress("starting %d Mosquitto device brokers and a bootstrap broker (sigil broker-config)", o.Brokers)
		bp, err := startPool(ctx, o.Sigil, first, o.Dir, o.Brokers, o.BrokerMaxQueued)
		if err != nil {
			return nil, err
		}
		bp.pg, bp.dbURL = p.pg, p.dbURL
		p = bp
		extra["broker_pool"] = p.brokerPool()
	}
	r.progress("starting sigil serve replica 1 of %d (%s)", max(o.Replicas, 1), o.Sigil)
	f, err = prepareChild(o.Sigil, o.Dir, o.EKCADir, r.trust, o.AttestInterval, r.sink, extra, o.FleetEnv)
	if err != nil {
		return nil, err
	}
	f.pool = p
	if o.Brokers > 0 {
		f.brokers, f.bootstrap, f.broker = nil, p.boot.addr, p.devices[0].addr
		for _, b := range p.devices {
			f.brokers = append(f.brokers, b.addr)
		}
	}
	if err := f.start(ctx); err != nil {
		return f, err
	}
	for i := 1; i < o.Replicas; i++ {
		work := filepath.Join(o.Dir, fmt.Sprintf("replica-%d", i+1))
		if err := prepareReplica(f.dataDir, filepath.Join(work, "fleet")); err != nil {
			return f, err
		}
		r.progress("starting sigil serve replica %d of %d", i+1, o.Replicas)
		rf, err := prepareChild(o.Sigil, work, o.EKCADir, r.trust, o.AttestInterval, r.sink, extra, o.FleetEnv)
		if err != nil {
			return f, err
		}
		// The operators are shared: the first replica's admin token.
		if err := rf.connect(f.admin.Token); err != nil {
			return f, err
		}
		if err := rf.start(ctx); err != nil {
			return f, err
		}
		f.replicas = append(f.replicas, rf)
	}
	return f, nil
}
