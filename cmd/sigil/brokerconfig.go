package main

import (
	"context"
	"crypto/x509"
	"flag"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/mqttpool"
	"github.com/sigil-iot/sigil/fleet/server"
	"github.com/sigil-iot/sigil/pkg/config"
)

// brokerConfigCommand is `sigil broker-config`: the configuration of one
// Mosquitto broker of the fleet's pool (docs/BROKERS.md), written from
// the fleet's data directory on the fleet's host.
func brokerConfigCommand() *command {
	return &command{name: "broker-config",
		args:    "--role device|bootstrap --name NAME[,NAME…] [--listen ADDR] [--fleet-listen ADDR] [--dir DIR] [--out DIR] [--crl FILE] [--dynsec-plugin PATH] [--state-dir DIR] [--max-queued N] [--max-connections N] [--config FILE] [--data-dir DIR]",
		summary: "write the Mosquitto configuration of a broker of the fleet's pool",
		note: "Run it on the fleet's host (it reads the fleet CA and creates the fleet's broker password in the data directory), " +
			"then copy --out to --dir on the broker's host and chown its key and password file root:sigil-mosquitto (the unit's user).",
		setup: func(fs *flag.FlagSet) action {
			role := fs.String("role", "", "device (enrolled devices) or bootstrap (enrollment clients)")
			names := fs.String("name", "", "comma-separated DNS names or IP addresses of the broker (its certificate's names)")
			listen := fs.String("listen", ":8883", "listener of the devices or bootstrap clients, HOST:PORT")
			fleetListen := fs.String("fleet-listen", ":8884", "listener of the fleet's replicas, HOST:PORT (bind it to the fleet's network)")
			dir := fs.String("dir", "/etc/mosquitto/sigil", "directory of the files on the broker's host")
			out := fs.String("out", "", "directory to write the files to (default --dir)")
			crl := fs.String("crl", "", "the fleet's current CRL (DER or PEM, as GET /crl serves it); default an empty one")
			dynsec := fs.String("dynsec-plugin", "", "path of Mosquitto's dynamic security plugin (device brokers; e.g. /usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so): lets the fleet end a device's session")
			stateDir := fs.String("state-dir", "", "directory where Mosquitto keeps the plugin's state, dynsec.json (default --dir)")
			maxConns := fs.Int("max-connections", 0, "connections the devices' or bootstrap clients' listener takes at most (0: no bound for a device broker, 1000 for a bootstrap broker, whose clients are anonymous)")
			queued := fs.Int("max-queued", mqttpool.DefaultQueued, "QoS 1 messages queued per client before Mosquitto drops them")
			path := fs.String("config", "", "sigil serve's configuration file (JSON): data directory, trust domain, topic prefix")
			dataDir := fs.String("data-dir", "", "data directory (overrides the file)")
			return func(_ context.Context, x *call) error {
				var cfg server.Config
				if *path != "" {
					if err := config.Load(*path, &cfg); err != nil {
						return err
					}
				}
				if *dataDir != "" {
					cfg.DataDir = *dataDir
				}
				if *role != mqttpool.RoleDevice && *role != mqttpool.RoleBootstrap {
					return usageError{"--role must be device or bootstrap"}
				}
				if *names == "" {
					return usageError{"--name is required: the broker's DNS names or IP addresses"}
				}
				var crlBytes []byte
				if *crl != "" {
					b, err := os.ReadFile(*crl)
					if err != nil {
						return err
					}
					crlBytes = b
				}
				if *out == "" {
					*out = *dir
				}
				m := mqttpool.Member{Role: *role, Dir: *dir, Listen: *listen, FleetListen: *fleetListen, MaxQueued: *queued, MaxConnections: *maxConns, DynsecPlugin: *dynsec, StateDir: *stateDir}
				files, err := server.BrokerConfig(cfg, m, strings.Split(*names, ","), crlBytes, *out)
				for _, f := range files {
					x.printf("wrote %s\n", f)
				}
				return err
			}
		}}
}

// brokerSyncCommand is `sigil broker-sync`: beside a device broker of the
// pool, it keeps the broker's CRL the fleet's (mqttpool.CRLSync).
func brokerSyncCommand() *command {
	return &command{name: "broker-sync",
		args:    "--fleet URL [--reload COMMAND] [--token-file FILE] [--dir DIR] [--interval D] [--once]",
		summary: "keep a device broker's CRLs and trusted CAs the fleet's, and have it reread them",
		note: "Run it on the broker's host (deploy/systemd/sigil-broker-sync@.service): it keeps a request waiting for a CRL newer than " +
			"the broker's (GET /crl?after=N, answered as soon as a revocation is recorded) and fetches the fleet's CRL every --interval " +
			"as the fallback; it takes the fleet's CRL set (its trusted CA generations and a CRL of each): a new generation's root joins ca.pem when its cross certificate " +
			"chains to a root ca.pem holds, a retired one leaves it; each CRL is checked against ca.pem and that it is newer, written to crl.pem (after ca.pem), and --reload run. " +
			"Without --reload something else has the broker reread crl.pem when it changes (the unit sigil-mosquitto-reload@.path, " +
			"so that the sync itself runs unprivileged). " +
			"With --token-file (an API token of scope broker-sync) its request waits in the slots the fleet keeps for the brokers' syncs.",
		setup: func(fs *flag.FlagSet) action {
			fleet := fs.String("fleet", "", "the fleet's API base URL, https://HOST:8443")
			reload := fs.String("reload", "", "command that has the broker reread its CRL, e.g. \"systemctl reload sigil-mosquitto@device1\" (default none: a path unit reloads it)")
			dir := fs.String("dir", "/etc/mosquitto/sigil", "the broker's configuration directory (sigil broker-config --dir)")
			tokenFile := fs.String("token-file", "", "file holding an API token of scope broker-sync: the push waits in the slots kept for brokers' syncs")
			interval := fs.Duration("interval", 10*time.Second, "time between fetches of the CRL, the fallback of the fleet's push")
			once := fs.Bool("once", false, "sync once and exit")
			return func(ctx context.Context, x *call) error {
				if *fleet == "" {
					return usageError{"--fleet is required"}
				}
				argv := strings.Fields(*reload)
				caPEM, err := os.ReadFile(filepath.Join(*dir, mqttpool.CAFile))
				if err != nil {
					return err
				}
				roots := x509.NewCertPool()
				if !roots.AppendCertsFromPEM(caPEM) {
					return fmt.Errorf("broker-sync: no certificate in %s", filepath.Join(*dir, mqttpool.CAFile))
				}
				token := ""
				if *tokenFile != "" {
					b, err := os.ReadFile(*tokenFile)
					if err != nil {
						return err
					}
					if token = strings.TrimSpace(string(b)); token == "" {
						return fmt.Errorf("broker-sync: %s holds no token", *tokenFile)
					}
				}
				client := api.NewClient(strings.TrimRight(*fleet, "/"), token, roots)
				s := &mqttpool.CRLSync{Dir: *dir, Interval: *interval, Logger: newLogger(x.stderr, ""),
					// The CRL set: the fleet's trust bundle and a CRL of each
					// trusted CA generation (a CA rotation reaches the broker).
					Fetch: func(ctx context.Context) ([]byte, error) {
						ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
						defer cancel()
						return client.CRLSetAfter(ctx, nil)
					},
					Watch: func(ctx context.Context, after *big.Int) ([]byte, error) {
						// The fleet holds the request for up to a minute.
						ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
						defer cancel()
						return client.CRLSetAfter(ctx, after)
					},
					Reload: func() error {
						if len(argv) == 0 {
							return nil // the path unit reloads the broker
						}
						out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
						if err != nil {
							return fmt.Errorf("%s: %w: %s", argv[0], err, strings.TrimSpace(string(out)))
						}
						return nil
					}}
				if !*once {
					return s.Run(ctx)
				}
				changed, err := s.Once(ctx)
				if err == nil {
					done := "updated and reloaded"
					if len(argv) == 0 {
						done = "updated (no --reload: a path unit reloads the broker)"
					}
					x.printf("CRL %s\n", map[bool]string{true: done, false: "already current"}[changed])
				}
				return err
			}
		}}
}
