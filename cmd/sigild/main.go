// Command sigild is Sigil's device daemon: it enrolls the device with the
// fleet from its TPM's endorsement key and keeps an MQTT session over mutual
// TLS whose private key never leaves the TPM.
//
//	sigild run --config /etc/sigild/config.json
//	sigild status [--config FILE]
//	sigild secret get NAME [--config FILE]
//	sigild secret list [--config FILE] [--json]
//	sigild version
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/sigil-iot/sigil/device/agent"
)

const usage = `usage:
  sigild run --config FILE      run the daemon
  sigild status [--config FILE] print identity, certificate expiry and connection
  sigild secret get NAME [--config FILE]
                                unseal a secret the fleet delivered (through the TPM) to stdout
  sigild secret list [--config FILE] [--json]
                                list the secrets held (names and versions, never values)
  sigild version                print the version
`

func main() {
	os.Exit(run(os.Args[1:]))
}

// Exit codes.
const (
	exitOK       = 0
	exitError    = 1
	exitUsage    = 2
	exitNotReady = 3 // status: not enrolled or not connected
)

func run(args []string) int {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, usage)
		return exitUsage
	}
	switch args[0] {
	case "run":
		return cmdRun(args[1:])
	case "status":
		return cmdStatus(args[1:], os.Stdout)
	case "secret":
		return cmdSecret(args[1:])
	case "version":
		fmt.Println("sigild", agent.Version)
		return exitOK
	case "-h", "--help", "help":
		fmt.Print(usage)
		return exitOK
	}
	fmt.Fprintf(os.Stderr, "sigild: unknown command %q\n%s", args[0], usage)
	return exitUsage
}

func loadConfig(fs *flag.FlagSet, args []string, required bool) (agent.Config, error) {
	path := fs.String("config", "/etc/sigild/config.json", "configuration file")
	if err := fs.Parse(args); err != nil {
		return agent.Config{}, err
	}
	cfg, err := agent.LoadConfig(*path)
	if err != nil && !required && errors.Is(err, os.ErrNotExist) {
		return agent.Config{}, nil
	}
	return cfg, err
}

func logger(level string) *slog.Logger {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil || level == "" {
		l = slog.LevelInfo
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l}))
}

func cmdRun(args []string) int {
	cfg, err := loadConfig(flag.NewFlagSet("run", flag.ContinueOnError), args, true)
	if err != nil {
		fmt.Fprintln(os.Stderr, "sigild:", err)
		return exitUsage
	}
	log := logger(cfg.LogLevel)
	a, err := agent.New(cfg, log)
	if err != nil {
		fmt.Fprintln(os.Stderr, "sigild:", err)
		return exitUsage
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := a.Run(ctx); err != nil {
		log.Error("sigild stopped", "err", err)
		return exitError
	}
	return exitOK
}

// cmdStatus prints the daemon's status to stdout.
func cmdStatus(args []string, stdout io.Writer) int {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print JSON")
	cfg, err := loadConfig(fs, args, false)
	if err != nil {
		fmt.Fprintln(os.Stderr, "sigild:", err)
		return exitUsage
	}
	st, err := agent.CurrentStatus(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "sigild:", err)
		return exitError
	}
	if *asJSON {
		b, err := st.JSON()
		if err != nil {
			fmt.Fprintln(os.Stderr, "sigild:", err)
			return exitError
		}
		_, _ = stdout.Write(b)
	} else {
		fmt.Fprint(stdout, st.Text())
	}
	if st.Enrollment != "enrolled" || !st.Connected {
		return exitNotReady
	}
	return exitOK
}
