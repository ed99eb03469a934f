// Command sigil is Sigil's fleet manager and operator CLI.
//
//	sigil serve [--config FILE]         run the fleet manager
//	sigil devices list | show ID | approve ID | …
//	sigil help [COMMAND [SUBCOMMAND]]   every command, from the command table
//
// Every command is an entry of one table (commandTable, command.go),
// which drives dispatch, help, shell completion and the reference in
// docs/CLI.md.
//
// The demo, the benchmarks and the device simulator are another command,
// sigil-sim (cmd/sigil-sim): this one links no simulator and builds
// without cgo (fence_test.go).
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"

	"github.com/sigil-iot/sigil/fleet/server"
	"github.com/sigil-iot/sigil/pkg/config"
)

// Version is set at build time.
var Version = "dev"

// commandTable returns sigil's commands, in the order help lists them.
func commandTable() *command {
	return &command{name: "sigil", subs: []*command{
		serveCommand(),
		migrateCommand(),
		backupCommand(),
		restoreCommand(),
		brokerConfigCommand(),
		brokerSyncCommand(),
		devicesCommand(),
		rotationsCommand(),
		caCommand(),
		usersCommand(),
		apiTokensCommand(),
		approvalsCommand(),
		accessCommand(),
		auditCommand(),
		policiesCommand(),
		tokensCommand(),
		firmwareCommand(),
		campaignsCommand(),
		exposureCommand(),
		bridgeCommand(),
		secretsCommand(),
		workloadsCommand(),
		alertsCommand(),
		telemetryCommand(),
		ownersCommand(),
		triageCommand(),
		blocksCommand(),
		clonesCommand(),
		riskCommand(),
		governanceCommand(),
		completionCommand(),
		helpCommand(),
		versionCommand(),
	}}
}

func serveCommand() *command {
	return &command{name: "serve", args: "[--config FILE] [--data-dir DIR] [--mqtt-addr ADDR] [--api-addr ADDR]",
		summary: "run the fleet manager: CA, MQTT broker, verifier, API and console",
		note:    "The first start creates the fleet CA and an admin API token in the data directory.",
		setup: func(fs *flag.FlagSet) action {
			path := fs.String("config", "", "configuration file (JSON)")
			dataDir := fs.String("data-dir", "", "data directory (overrides the file)")
			mqttAddr := fs.String("mqtt-addr", "", "MQTT TLS listen address (overrides the file)")
			apiAddr := fs.String("api-addr", "", "HTTPS API listen address (overrides the file)")
			return func(ctx context.Context, x *call) error {
				var cfg server.Config
				if *path != "" {
					if err := config.Load(*path, &cfg); err != nil {
						return err
					}
				}
				for dst, v := range map[*string]string{&cfg.DataDir: *dataDir, &cfg.MQTTAddr: *mqttAddr, &cfg.APIAddr: *apiAddr} {
					if v != "" {
						*dst = v
					}
				}
				return serve(ctx, cfg, x.stderr)
			}
		}}
}

// serve runs the fleet manager until ctx ends.
func serve(ctx context.Context, cfg server.Config, stderr io.Writer) error {
	srv, err := server.New(cfg, newLogger(stderr, cfg.LogLevel))
	if err != nil {
		return err
	}
	go func() {
		select {
		case <-srv.Ready():
			fmt.Fprintf(stderr, "sigil serve: API %s  MQTT %s\n  fleet CA certificate: %s\n  admin API token file: %s\n",
				srv.APIURL(), srv.MQTTAddr(), srv.CACertPath(), srv.AdminTokenPath())
		case <-ctx.Done():
		}
	}()
	return srv.Run(ctx)
}

func newLogger(w io.Writer, level string) *slog.Logger {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil || level == "" {
		l = slog.LevelInfo
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l}))
}

func versionCommand() *command {
	return &command{name: "version", summary: "print sigil's version",
		run: func(_ context.Context, x *call) error {
			x.printf("sigil %s\n", Version)
			return nil
		}}
}
