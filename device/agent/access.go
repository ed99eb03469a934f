package agent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sigil-iot/sigil/pkg/wire"
)

// Just-in-time operator access (config ssh_access_dir): at the start of
// each session sigild asks for access.trust (an empty access.sessions),
// and the fleet sends it again at once when a grant is revoked;
// sigild writes, atomically and in this order, the KRL (revoked_keys,
// sshd's RevokedKeys), the user CA keys (user_ca.pub, TrustedUserCAKeys)
// and one principals file per account (principals/<login>,
// AuthorizedPrincipalsFile principals/%u), removing the files of accounts
// no longer listed. sshd reads these files at every login, so a revocation
// ends new logins as soon as the file is renamed; no reload is needed.
// With ssh_access_log, sigild reads sshd's log (auth.log, or a file sshd
// -E or the journal writes) for certificate logins and disconnects and
// reports them (access.sessions). It links no SSH library: it writes the
// bytes the fleet sent and parses text lines.

// File names in ssh_access_dir.
const (
	accessCAFile      = "user_ca.pub"
	accessKRLFile     = "revoked_keys"
	accessPrincipals  = "principals"
	accessLogInterval = 2 * time.Second
	accessLogMaxRead  = 1 << 20
	accessMaxOpen     = 64
)

// accessState is the session log reader's position and what it saw, kept
// across sessions so that lines read while disconnected are reported
// after the next connect.
type accessState struct {
	mu      sync.Mutex
	gen     uint64
	started bool
	offset  int64
	file    os.FileInfo
	open    map[string]wire.AccessSession // "<addr> <port>" -> its start
	pending []wire.AccessSession
	cursor  string // the journal's cursor after the last entry read (journal mode)
}

// accessTrust writes the files of an access.trust message. It runs on the
// connection's reader.
func (a *Agent) accessTrust(env *wire.Envelope) {
	if a.cfg.SSHAccessDir == "" {
		return
	}
	var t wire.AccessTrust
	if err := wire.DecodeBody(env, wire.TypeAccessTrust, &t); err != nil {
		a.log.Warn("access: dropping a malformed trust message", "err", err)
		return
	}
	a.access.mu.Lock()
	defer a.access.mu.Unlock()
	if t.Generation < a.access.gen {
		return // an older message delivered late
	}
	if err := writeAccessFiles(a.cfg.SSHAccessDir, &t); err != nil {
		a.log.Warn("access: writing sshd's access files failed", "dir", a.cfg.SSHAccessDir, "err", err)
		return
	}
	a.access.gen = t.Generation
	a.log.Info("access: sshd's user CA, principals and revocation list written", "generation", t.Generation, "logins", len(t.Logins))
}

// writeAccessFiles writes the KRL first, so that a revocation is in force
// before anything else changes.
func writeAccessFiles(dir string, t *wire.AccessTrust) error {
	pdir := filepath.Join(dir, accessPrincipals)
	if err := os.MkdirAll(pdir, 0o755); err != nil {
		return err
	}
	if err := writeFileAtomic(filepath.Join(dir, accessKRLFile), t.RevokedKeys, 0o644); err != nil {
		return err
	}
	if err := writeFileAtomic(filepath.Join(dir, accessCAFile), []byte(strings.Join(t.UserCAKeys, "\n")+"\n"), 0o644); err != nil {
		return err
	}
	keep := map[string]bool{}
	for _, l := range t.Logins {
		keep[l.Login] = true
		if err := writeFileAtomic(filepath.Join(pdir, l.Login), []byte(strings.Join(l.Principals, "\n")+"\n"), 0o644); err != nil {
			return err
		}
	}
	ents, err := os.ReadDir(pdir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if !keep[e.Name()] && e.Type().IsRegular() && !strings.HasPrefix(e.Name(), ".") {
			if err := os.Remove(filepath.Join(pdir, e.Name())); err != nil {
				return err
			}
		}
	}
	return nil
}

// accessSession asks for the access trust and reports sshd's certificate
// logins while a session is up; the returned stop ends it and waits.
func (a *Agent) accessSession(ctx context.Context, conn publisher, deviceID string) (stop func()) {
	if a.cfg.SSHAccessDir == "" && a.cfg.SSHAccessLog == "" {
		return func() {}
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		if a.cfg.SSHAccessDir != "" {
			a.publishSessions(ctx, conn, deviceID, nil) // asks for access.trust
		}
		if a.cfg.SSHAccessLog == "" {
			return
		}
		if prog, ok := journalProgram(a.cfg.SSHAccessLog); ok {
			wg.Go(func() { a.followJournal(ctx, prog) })
		}
		t := time.NewTicker(accessLogInterval)
		defer t.Stop()
		for {
			a.reportSessions(ctx, conn, deviceID)
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	})
	return func() { cancel(); wg.Wait() }
}

// reportSessions reads new log lines and publishes what they say; events
// stay pending until a publish succeeds.
func (a *Agent) reportSessions(ctx context.Context, conn publisher, deviceID string) {
	s := &a.access
	s.mu.Lock()
	if _, journal := journalProgram(a.cfg.SSHAccessLog); !journal {
		if err := s.read(a.cfg.SSHAccessLog, a.now()); err != nil {
			a.log.Debug("access: reading sshd's log failed", "path", a.cfg.SSHAccessLog, "err", err)
		}
	}
	n := min(len(s.pending), wire.MaxAccessEvents)
	batch := append([]wire.AccessSession(nil), s.pending[:n]...)
	s.mu.Unlock()
	if n == 0 {
		return
	}
	if !a.publishSessions(ctx, conn, deviceID, batch) {
		return
	}
	s.mu.Lock()
	s.pending = s.pending[n:]
	s.mu.Unlock()
}

// publishSessions sends an access.sessions message and reports whether it
// went out.
func (a *Agent) publishSessions(ctx context.Context, conn publisher, deviceID string, events []wire.AccessSession) bool {
	b, err := wire.Encode(wire.TypeAccessSessions, nil, a.now(), &wire.AccessSessions{Events: events})
	if err == nil {
		err = conn.Publish(ctx, a.topics.DeviceUp(deviceID, wire.KindAccess), b)
	}
	if err != nil && ctx.Err() == nil {
		a.log.Warn("access: sending to the fleet failed", "err", err)
	}
	return err == nil
}

// read consumes the log's new complete lines. History before the first
// read is not reported; a rotated or truncated file is read from its
// start. At most a thousand events wait unreported: older ones are
// dropped first.
func (s *accessState) read(path string, now time.Time) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if !s.started {
		s.started, s.offset, s.file = true, fi.Size(), fi
		return nil
	}
	if !os.SameFile(s.file, fi) || fi.Size() < s.offset {
		s.offset = 0
	}
	s.file = fi
	buf := make([]byte, min(fi.Size()-s.offset, accessLogMaxRead))
	n, err := f.ReadAt(buf, s.offset)
	if err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	buf = buf[:n]
	used := 0
	for {
		i := bytes.IndexByte(buf[used:], '\n')
		if i < 0 {
			break
		}
		if e, ok := ParseSSHDLine(string(buf[used : used+i])); ok {
			s.add(e, now)
		}
		used += i + 1
	}
	if used == 0 && n == accessLogMaxRead {
		used = n // one line longer than a read: skip it
	}
	s.offset += int64(used)
	return nil
}

func (s *accessState) add(e wire.AccessSession, now time.Time) {
	e.Time = now.Unix()
	key := e.From + " " + strconv.Itoa(e.Port)
	if s.open == nil {
		s.open = map[string]wire.AccessSession{}
	}
	switch e.Event {
	case wire.AccessSessionStart:
		if e.Serial == 0 {
			return // not a certificate login
		}
		if len(s.open) >= accessMaxOpen {
			clear(s.open)
		}
		s.open[key] = e
	case wire.AccessSessionEnd:
		st, ok := s.open[key]
		if !ok || st.User != e.User {
			return // not a certificate session sigild saw start
		}
		delete(s.open, key)
		e.KeyID, e.Serial, e.CA = st.KeyID, st.Serial, st.CA
	}
	if len(s.pending) >= 1000 {
		s.pending = s.pending[1:]
	}
	s.pending = append(s.pending, e)
}

// ParseSSHDLine reads one line of sshd's log (any prefix: syslog,
// journal or sshd -E) for a certificate login,
//
//	Accepted publickey for USER from ADDR port PORT ssh2: TYPE SHA256:FP ID KEYID (serial N) CA TYPE SHA256:FP
//
// or the end of an authenticated session,
//
//	Disconnected from user USER ADDR port PORT
//
// and returns it as an event without Time. Anything else, or a line whose
// fields are malformed or out of wire.AccessSessions' bounds, is not an
// event.
func ParseSSHDLine(line string) (wire.AccessSession, bool) {
	var e wire.AccessSession
	if _, rest, ok := strings.Cut(line, "Accepted publickey for "); ok {
		f := strings.Fields(rest)
		// USER from ADDR port PORT ssh2: TYPE FP ID KEYID (serial N) CA TYPE FP
		if len(f) < 15 || f[1] != "from" || f[3] != "port" || f[5] != "ssh2:" || f[8] != "ID" {
			return e, false
		}
		i := 10 // KEYID may not hold a space in Sigil's grants
		if f[i] != "(serial" || !strings.HasSuffix(f[i+1], ")") || f[i+2] != "CA" {
			return e, false
		}
		serial, err := strconv.ParseUint(strings.TrimSuffix(f[i+1], ")"), 10, 64)
		if err != nil || serial == 0 {
			return e, false
		}
		e = wire.AccessSession{Event: wire.AccessSessionStart, User: f[0], From: f[2], KeyID: f[9], Serial: serial, CA: f[i+4]}
		e.Port, err = strconv.Atoi(f[4])
		if err != nil || !strings.HasPrefix(e.CA, "SHA256:") {
			return wire.AccessSession{}, false
		}
	} else if _, rest, ok := strings.Cut(line, "Disconnected from user "); ok {
		f := strings.Fields(rest)
		if len(f) < 4 || f[2] != "port" {
			return e, false
		}
		port, err := strconv.Atoi(f[3])
		if err != nil {
			return e, false
		}
		e = wire.AccessSession{Event: wire.AccessSessionEnd, User: f[0], From: f[1], Port: port}
	} else {
		return e, false
	}
	if err := (&wire.AccessSessions{Events: []wire.AccessSession{e}}).Validate(); err != nil {
		return wire.AccessSession{}, false
	}
	return e, true
}

// journalProgram reports whether ssh_access_log reads the journal
// ("journal", or "journal:PATH" naming journalctl) and with which program.
func journalProgram(v string) (string, bool) {
	if v == "journal" {
		return "/usr/bin/journalctl", true
	}
	p, ok := strings.CutPrefix(v, "journal:")
	return p, ok
}

// journalRetry is how long the journal reader waits before it starts
// journalctl again after it ended.
const journalRetry = 10 * time.Second

// followJournal reads sshd's journal entries (journalctl --follow,
// identifiers sshd and sshd-session, JSON) until ctx ends: after the last
// entry read in an earlier session (its cursor), or from now on at the
// first. journalctl runs in its own process group, started with
// os.StartProcess rather than os/exec (as runHealth), and is killed when
// ctx ends.
func (a *Agent) followJournal(ctx context.Context, prog string) {
	for {
		a.access.mu.Lock()
		from := "--lines=0"
		if a.access.cursor != "" {
			from = "--after-cursor=" + a.access.cursor
		}
		a.access.mu.Unlock()
		err := a.readJournal(ctx, prog, from)
		if ctx.Err() != nil {
			return
		}
		a.log.Warn("access: reading sshd's journal stopped; starting again soon", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(journalRetry):
		}
	}
}

func (a *Agent) readJournal(ctx context.Context, prog, from string) error {
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	args := []string{prog, "--follow", "--output=json", "--identifier=sshd", "--identifier=sshd-session", "--no-pager", from}
	p, err := os.StartProcess(prog, args, &os.ProcAttr{Env: os.Environ(), Files: []*os.File{nil, w, nil},
		Sys: &syscall.SysProcAttr{Setpgid: true}})
	w.Close()
	if err != nil {
		r.Close()
		return err
	}
	stop := context.AfterFunc(ctx, func() { _ = syscall.Kill(-p.Pid, syscall.SIGKILL) })
	defer stop()
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 16<<10), 1<<20)
	for sc.Scan() {
		var e struct {
			Cursor  string `json:"__CURSOR"`
			Message any    `json:"MESSAGE"` // a string, or bytes as numbers when not UTF-8
		}
		if json.Unmarshal(sc.Bytes(), &e) != nil {
			continue
		}
		msg, _ := e.Message.(string)
		a.access.mu.Lock()
		if ev, ok := ParseSSHDLine(msg); ok {
			a.access.add(ev, a.now())
		}
		if e.Cursor != "" && len(e.Cursor) < 1024 {
			a.access.cursor = e.Cursor
		}
		a.access.mu.Unlock()
	}
	err = sc.Err()
	r.Close()
	st, werr := p.Wait()
	if err == nil && werr == nil && !st.Success() {
		err = errors.New(st.String())
	}
	return errors.Join(err, werr)
}

// validateAccess checks the access settings.
func (c *Config) validateAccess() error {
	if c.SSHAccessDir != "" && !filepath.IsAbs(c.SSHAccessDir) {
		return fmt.Errorf("ssh_access_dir %q is not an absolute path", c.SSHAccessDir)
	}
	if prog, ok := journalProgram(c.SSHAccessLog); ok {
		if !filepath.IsAbs(prog) {
			return fmt.Errorf("ssh_access_log: journalctl %q is not an absolute path", prog)
		}
	} else if c.SSHAccessLog != "" && !filepath.IsAbs(c.SSHAccessLog) {
		return fmt.Errorf("ssh_access_log %q is neither an absolute path nor journal[:PATH]", c.SSHAccessLog)
	}
	return nil
}
