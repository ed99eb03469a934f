// Package pgtest starts a real PostgreSQL server for tests: initdb in a
// temporary directory, the server on a free loopback port, one fresh
// database per caller (Server.NewDatabase), everything removed when the
// test ends.
//
// The binaries (initdb, pg_ctl, postgres) are looked up in $SIGIL_PG_BIN,
// then the newest /usr/lib/postgresql/*/bin, then PATH. Without them a
// test is skipped with a message saying so; with CI=true it fails, so
// that a CI machine missing PostgreSQL cannot pass by skipping.
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
	dir  string // data directory (also the socket directory)
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
	bin := RequireBinaries(t)
	base, err := os.MkdirTemp("", "sigil-pgtest-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	s := &Server{bin: bin, dir: filepath.Join(base, "data")}
	// initdb refuses to run as root: as root, run the server as the
	// postgres user, which must reach and own the data directory.
	var uid, gid int = -1, -1
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatalf("pgtest: running as root needs a postgres user to run the server: %v", err)
		}
		uid, _ = strconv.Atoi(u.Uid)
		gid, _ = strconv.Atoi(u.Gid)
		if err := os.Chmod(base, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(s.dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if uid >= 0 {
		if err := os.Chown(s.dir, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	run := func(name string, args ...string) error {
		cmd := exec.Command(filepath.Join(bin, name), args...)
		if uid >= 0 {
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
		}
		cmd.Dir = s.dir
		cmd.Env = append(os.Environ(), "LC_ALL=C")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("%s: %w\n%s", name, err, out)
		}
		return nil
	}
	if err := run("initdb", "-D", s.dir, "-A", "trust", "-U", superuser, "--no-sync", "-E", "UTF8", "--locale=C"); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	// A port free now may be taken before the server binds it: try a
	// few.
	var startErr error
	for range 5 {
		s.port = freePort(t)
		opts := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200", s.port, s.dir)
		startErr = run("pg_ctl", "-D", s.dir, "-w", "-t", "60", "-l", filepath.Join(s.dir, "server.log"), "-o", opts, "start")
		if startErr == nil {
			break
		}
	}
	if startErr != nil {
		log, _ := os.ReadFile(filepath.Join(s.dir, "server.log"))
		t.Fatalf("pgtest: %v\n%s", startErr, log)
	}
	t.Cleanup(func() {
		if err := run("pg_ctl", "-D", s.dir, "-w", "-m", "immediate", "stop"); err != nil {
			t.Logf("pgtest: stop: %v", err)
		}
	})
	return s
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
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
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.URL("postgres"))
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("pgtest: create database: %v", err)
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
	return s.URL(name)
}
