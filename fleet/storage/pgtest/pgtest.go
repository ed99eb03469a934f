// Package pgtest starts a real PostgreSQL server for tests: initdb in a
// temporary directory, the server on a free loopback port, one fresh
// database per caller (Server.NewDatabase), everything removed when the
// test ends.
//
// The binaries (initdb, pg_ctl, postgres) are looked up in $SIGIL_PG_BIN,
// then the newest /usr/lib/postgresql/*/bin, then PATH. Without them a
// test is skipped with a message saying so; with CI=true it fails, so
// that a CI machine missing PostgreSQL cannot pass by skipping.
//
// Launch starts the same server outside a test, for a benchmark
// (`sigil-sim bench fleet --postgres`), optionally durable (fsync and
// synchronous commit on, as a production server runs).
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Server is a PostgreSQL server a test started.
type Server struct {
	bin  string // directory of the binaries
	base string // the temporary directory holding dir
	dir  string // data directory (also the socket directory)
	uid  int    // the postgres user's, when run as root; else -1
	gid  int
	port int
	n    atomic.Int64 // databases created
}

// superuser is the role initdb creates (trust authentication on loopback).
const superuser = "sigil"

// Binaries returns the directory holding initdb, pg_ctl and postgres, or
// an error naming where it looked.
func Binaries() (string, error) {
	var dirs []string
	if d := os.Getenv("SIGIL_PG_BIN"); d != "" {
		dirs = append(dirs, d)
	}
	found, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(found, func(a, b string) int { return version(b) - version(a) })
	dirs = append(dirs, found...)
	if p, err := exec.LookPath("initdb"); err == nil {
		dirs = append(dirs, filepath.Dir(p))
	}
	for _, d := range dirs {
		ok := true
		for _, b := range []string{"initdb", "pg_ctl", "postgres"} {
			if fi, err := os.Stat(filepath.Join(d, b)); err != nil || fi.IsDir() {
				ok = false
			}
		}
		if ok {
			return d, nil
		}
	}
	return "", fmt.Errorf("pgtest: no PostgreSQL binaries (initdb, pg_ctl, postgres) in $SIGIL_PG_BIN, /usr/lib/postgresql/*/bin or PATH (Debian: apt-get install postgresql)")
}

// version is the major version in a /usr/lib/postgresql/N/bin path.
func version(dir string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(dir)))
	return n
}

// RequireBinaries returns the binaries' directory, or skips t (fails it
// with CI=true) when there are none.
func RequireBinaries(t testing.TB) string {
	t.Helper()
	bin, err := Binaries()
	if err == nil {
		return bin
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%v; CI=true: a missing PostgreSQL fails the test", err)
	}
	t.Skipf("%v; skipping (set CI=true to fail instead)", err)
	return ""
}

// Start starts a server for t and stops it, removing its files, when t
// ends. It takes about a second.
func Start(t testing.TB) *Server {
	t.Helper()
	RequireBinaries(t)
	s, err := Launch(LaunchOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Logf("%v", err)
		}
	})
	return s
}

// LaunchOptions are Launch's choices.
type LaunchOptions struct {
	// Durable keeps PostgreSQL's fsync, synchronous commit and full page
	// writes on (a benchmark's figures then include them); tests turn
	// them off.
	Durable bool
	// Settings are more "name=value" server settings (-c).
	Settings []string
}

// Launch starts a server in a new temporary directory, outside any test
// (a benchmark's): Stop stops it and removes its files. It fails, naming
// where it looked, when the binaries are missing (Binaries).
func Launch(o LaunchOptions) (*Server, error) {
	bin, err := Binaries()
	if err != nil {
		return nil, err
	}
	base, err := os.MkdirTemp("", "sigil-pgtest-")
	if err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	s := &Server{bin: bin, base: base, dir: filepath.Join(base, "data"), uid: -1, gid: -1}
	if err := s.launch(o); err != nil {
		os.RemoveAll(base)
		return nil, err
	}
	return s, nil
}

func (s *Server) launch(o LaunchOptions) error {
	// initdb refuses to run as root: as root, run the server as the
	// postgres user, which must reach and own the data directory.
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return fmt.Errorf("pgtest: running as root needs a postgres user to run the server: %w", err)
		}
		s.uid, _ = strconv.Atoi(u.Uid)
		s.gid, _ = strconv.Atoi(u.Gid)
		if err := os.Chmod(s.base, 0o711); err != nil {
			return fmt.Errorf("pgtest: %w", err)
		}
	}
	if err := os.Mkdir(s.dir, 0o700); err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	if s.uid >= 0 {
		if err := os.Chown(s.dir, s.uid, s.gid); err != nil {
			return fmt.Errorf("pgtest: %w", err)
		}
	}
	if err := s.run("initdb", "-D", s.dir, "-A", "trust", "-U", superuser, "--no-sync", "-E", "UTF8", "--locale=C"); err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	settings := []string{"listen_addresses=127.0.0.1", "max_connections=200"}
	if !o.Durable {
		settings = append(settings, "fsync=off", "synchronous_commit=off", "full_page_writes=off")
	}
	settings = append(settings, o.Settings...)
	// A port free now may be taken before the server binds it: try a
	// few.
	var startErr error
	for range 5 {
		if s.port, startErr = freePort(); startErr != nil {
			return startErr
		}
		opts := fmt.Sprintf("-p %d -k %s", s.port, s.dir)
		for _, kv := range settings {
			opts += " -c " + kv
		}
		startErr = s.run("pg_ctl", "-D", s.dir, "-w", "-t", "60", "-l", filepath.Join(s.dir, "server.log"), "-o", opts, "start")
		if startErr == nil {
			return nil
		}
	}
	log, _ := os.ReadFile(filepath.Join(s.dir, "server.log"))
	return fmt.Errorf("pgtest: %w\n%s", startErr, log)
}

// run runs one of the server's binaries (as the postgres user when this
// process is root).
func (s *Server) run(name string, args ...string) error {
	cmd := exec.Command(filepath.Join(s.bin, name), args...)
	if s.uid >= 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(s.uid), Gid: uint32(s.gid)}}
	}
	cmd.Dir = s.dir
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %w\n%s", name, err, out)
	}
	return nil
}

// Stop stops the server at once and removes its files.
func (s *Server) Stop() error {
	err := s.run("pg_ctl", "-D", s.dir, "-w", "-m", "immediate", "stop")
	os.RemoveAll(s.base)
	if err != nil {
		return fmt.Errorf("pgtest: stop: %w", err)
	}
	return nil
}

// Pid is the server's main process (postmaster) ID, 0 when unknown.
func (s *Server) Pid() int {
	b, err := os.ReadFile(filepath.Join(s.dir, "postmaster.pid"))
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, _ := strconv.Atoi(strings.TrimSpace(line))
	return pid
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pgtest: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// URL returns the URL of database name on s.
func (s *Server) URL(name string) string {
	return fmt.Sprintf("postgres://%s@127.0.0.1:%d/%s?sslmode=disable", superuser, s.port, name)
}

// NewDatabase creates an empty database for t and returns its URL. The
// database is dropped when t ends.
func (s *Server) NewDatabase(t testing.TB) string {
	t.Helper()
	name := fmt.Sprintf("t%d", s.n.Add(1))
	url, err := s.CreateDatabase(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		conn, err := pgx.Connect(ctx, s.URL("postgres"))
		if err != nil {
			return // the server is gone: nothing to drop
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil && !errors.Is(err, context.Canceled) {
			t.Logf("pgtest: drop database %s: %v", name, strings.TrimSpace(err.Error()))
		}
	})
	return url
}

// CreateDatabase creates an empty database name (a plain identifier) and
// returns its URL.
func (s *Server) CreateDatabase(ctx context.Context, name string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.URL("postgres"))
	if err != nil {
		return "", fmt.Errorf("pgtest: %w", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return "", fmt.Errorf("pgtest: create database: %w", err)
	}
	return s.URL(name), nil
}
