package agent

import (
	"bufio"
	"context"
	"crypto/hmac"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sigil-iot/sigil/device/state"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// SSH host certificates (config ssh_host_keys): after the first passing
// attestation of each mTLS session — so after every connect, and after
// every renewal, which reconnects — the device sends its host public keys
// (ssh.request; never a private key) and writes the OpenSSH host
// certificates the fleet returns (ssh.certs) next to them, atomically, mode
// 0644. A refusal (quarantined, no passing attestation yet, rate limit) is
// retried after the next passing attestation, and certificates are fetched
// again after RenewAt of their validity. The device only reads and writes
// text lines here: it links no SSH library.

// sshState hands fleet messages from the connection's reader to the
// session's SSH worker. Its zero value has no session.
type sshState struct {
	mu  sync.Mutex
	cur *sshRun
}

// sshRun is one session's SSH certificate worker.
type sshRun struct {
	pass    chan struct{}
	answers chan *wire.Envelope
}

// sshAnswerTimeout is how long a request waits for its answer before a
// passing attestation may send another.
const sshAnswerTimeout = 30 * time.Second

// sshSession starts the SSH certificate worker for one session when
// ssh_host_keys is configured; the returned stop ends it and waits.
func (a *Agent) sshSession(ctx context.Context, conn publisher, id *state.Identity) (stop func()) {
	if len(a.sshKeys()) == 0 {
		return func() {}
	}
	r := &sshRun{pass: make(chan struct{}, 1), answers: make(chan *wire.Envelope, 2)}
	a.ssh.mu.Lock()
	a.ssh.cur = r
	a.ssh.mu.Unlock()
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { a.sshLoop(ctx, conn, id.DeviceID, r) })
	return func() {
		cancel()
		wg.Wait()
		a.ssh.mu.Lock()
		if a.ssh.cur == r {
			a.ssh.cur = nil
		}
		a.ssh.mu.Unlock()
	}
}

// sshAttested tells the session's worker that an attestation passed. It
// runs on the connection's reader and never blocks.
func (a *Agent) sshAttested() {
	a.ssh.mu.Lock()
	defer a.ssh.mu.Unlock()
	if a.ssh.cur != nil {
		select {
		case a.ssh.cur.pass <- struct{}{}:
		default:
		}
	}
}

// sshCerts hands an ssh.certs message to the session's worker. It runs on
// the connection's reader and never blocks.
func (a *Agent) sshCerts(env *wire.Envelope) {
	a.ssh.mu.Lock()
	defer a.ssh.mu.Unlock()
	if a.ssh.cur == nil {
		return
	}
	select {
	case a.ssh.cur.answers <- env:
	default:
		a.log.Warn("dropping an SSH certificate answer: one is still being written")
	}
}

// sshKey is a configured host key read for a request.
type sshKey struct {
	pubPath, certPath, line string
}

func (a *Agent) sshLoop(ctx context.Context, conn publisher, deviceID string, r *sshRun) {
	var (
		pendingID []byte
		pending   []sshKey
		sentAt    time.Time
		refresh   time.Time // zero: no certificates yet in this session
	)
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.pass:
			now := a.now()
			if pendingID != nil && now.Sub(sentAt) < sshAnswerTimeout {
				continue // an answer is on its way
			}
			if !refresh.IsZero() && now.Before(refresh) {
				continue
			}
			keys := a.readHostKeys()
			if len(keys) == 0 {
				continue
			}
			req := &wire.SSHRequest{}
			for _, k := range keys {
				req.HostKeys = append(req.HostKeys, k.line)
			}
			b, err := wire.Encode(wire.TypeSSHRequest, nil, now, req)
			if err != nil {
				a.log.Warn("ssh: encoding the request failed", "err", err)
				continue
			}
			env, _ := wire.Decode(b)
			if err := conn.Publish(ctx, a.topics.DeviceUp(deviceID, "ssh"), b); err != nil {
				if ctx.Err() == nil {
					a.log.Warn("ssh: sending the request failed", "err", err)
				}
				continue
			}
			pendingID, pending, sentAt = env.ID, keys, now
			a.log.Info("asked the fleet for SSH host certificates", "keys", len(keys))
		case env := <-r.answers:
			if pendingID == nil || !hmac.Equal(env.Corr, pendingID) {
				continue // an answer to an earlier request
			}
			keys := pending
			pendingID, pending = nil, nil
			var res wire.SSHCerts
			if err := wire.DecodeBody(env, wire.TypeSSHCerts, &res); err != nil {
				a.log.Warn("ssh: dropping a malformed answer", "err", err)
				continue
			}
			if res.Status != wire.StatusActive {
				a.log.Warn("ssh: the fleet refused SSH host certificates; asking again after the next passing attestation",
					"reason", res.Reason.String(), "message", res.Message)
				continue
			}
			if res.Message != "" {
				a.log.Warn("ssh: some host keys were not certified", "message", res.Message)
			}
			if a.writeHostCerts(keys, res.Certs) > 0 {
				validity := time.Duration(res.Validity) * time.Second
				refresh = a.now().Add(time.Duration(float64(validity) * a.cfg.RenewAt))
				a.reloadSSHD()
			}
		}
	}
}

// readHostKeys reads the first key line of each configured public key
// file; unreadable or malformed files are logged and left out.
func (a *Agent) readHostKeys() []sshKey {
	var out []sshKey
	for _, p := range a.sshKeys() {
		line, err := firstKeyLine(p)
		if err != nil {
			a.log.Warn("ssh: host key unusable", "path", p, "err", err)
			continue
		}
		out = append(out, sshKey{pubPath: p, certPath: a.cfg.sshCertPath(p), line: line})
	}
	return out
}

// firstKeyLine returns the first non-empty, non-comment line of a public
// key file (at most 16 KiB), checked as an authorized_keys line.
func firstKeyLine(path string) (string, error) {
	b, err := readBounded(path, 16<<10)
	if err != nil {
		return "", err
	}
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	sc.Buffer(make([]byte, 0, 4096), 16<<10)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.Contains(line, "PRIVATE KEY") {
			return "", errors.New("this is a private key; configure the .pub file")
		}
		if err := wire.SSHLine(line, wire.MaxSSHKeyLine); err != nil {
			return "", err
		}
		return line, nil
	}
	return "", errors.New("no public key line")
}

// writeHostCerts writes each certificate for the key it names and returns
// how many were written.
func (a *Agent) writeHostCerts(keys []sshKey, certs []wire.SSHCert) int {
	n := 0
	for _, c := range certs {
		if c.Index < 0 || c.Index >= len(keys) {
			a.log.Warn("ssh: certificate for a key that was not sent", "index", c.Index)
			continue
		}
		k := keys[c.Index]
		if want := wire.SSHKeyType(k.line) + "-cert-v01@openssh.com"; wire.SSHKeyType(c.Cert) != want {
			a.log.Warn("ssh: certificate type does not match the host key", "path", k.pubPath, "type", wire.SSHKeyType(c.Cert), "want", want)
			continue
		}
		err := os.MkdirAll(filepath.Dir(k.certPath), 0o755)
		if err == nil {
			err = writeFileAtomic(k.certPath, []byte(c.Cert+"\n"), 0o644)
		}
		if err != nil {
			a.log.Warn("ssh: writing the host certificate failed", "path", k.certPath, "err", err)
			continue
		}
		a.log.Info("SSH host certificate written", "path", k.certPath)
		n++
	}
	return n
}

// reloadSSHD sends SIGHUP to the process in ssh_reload_pid_file, so that
// sshd serves the new certificates.
func (a *Agent) reloadSSHD() {
	if a.cfg.SSHReloadPIDFile == "" {
		return
	}
	b, err := readBounded(a.cfg.SSHReloadPIDFile, 64)
	if err == nil {
		var pid int
		pid, err = strconv.Atoi(strings.TrimSpace(string(b)))
		if err == nil && pid <= 1 {
			err = fmt.Errorf("pid %d", pid)
		}
		if err == nil {
			err = syscall.Kill(pid, syscall.SIGHUP)
		}
	}
	if err != nil {
		a.log.Warn("ssh: reloading sshd failed", "pid_file", a.cfg.SSHReloadPIDFile, "err", err)
	}
}

// sshCertPath is where the certificate for the public key file pub goes:
// OpenSSH's name for it, "<private key>-cert.pub" (the .pub suffix
// replaced), in ssh_cert_dir (set by setDefaults), or next to the key
// when that is empty.
func (c *Config) sshCertPath(pub string) string {
	name := strings.TrimSuffix(pub, ".pub") + "-cert.pub"
	if c.SSHCertDir != "" {
		return filepath.Join(c.SSHCertDir, filepath.Base(name))
	}
	return name
}

// sshKeys are the host public key files to certify: the configured ones
// and the TPM-born key's.
func (a *Agent) sshKeys() []string {
	if a.cfg.SSHTPMHostKey == "" {
		return a.cfg.SSHHostKeys
	}
	return append(slices.Clone(a.cfg.SSHHostKeys), a.cfg.SSHTPMHostKey)
}

// validateSSH checks the SSH settings.
func (c *Config) validateSSH() error {
	if c.SSHTPMHostKey != "" {
		if !filepath.IsAbs(c.SSHTPMHostKey) || !strings.HasSuffix(c.SSHTPMHostKey, ".pub") {
			return errors.New("ssh_tpm_host_key must be an absolute path ending in .pub")
		}
		if !filepath.IsAbs(c.SSHAgentSocket) {
			return errors.New("ssh_agent_socket must be an absolute path")
		}
	}
	if len(c.SSHHostKeys) > wire.MaxSSHHostKeys {
		return fmt.Errorf("ssh_host_keys: at most %d", wire.MaxSSHHostKeys)
	}
	seen := map[string]bool{}
	for _, p := range c.SSHHostKeys {
		if p == "" || !filepath.IsAbs(p) {
			return fmt.Errorf("ssh_host_keys: %q is not an absolute path", p)
		}
		cp := c.sshCertPath(p)
		if seen[cp] {
			return fmt.Errorf("ssh_host_keys: two keys would share the certificate %s", cp)
		}
		seen[cp] = true
	}
	if c.SSHCertDir != "" && !filepath.IsAbs(c.SSHCertDir) {
		return errors.New("ssh_cert_dir (default: the directory of state + /ssh) must be an absolute path")
	}
	return nil
}

// writeFileAtomic replaces path with data: a temporary file in the same
// directory is written, synced and renamed over it, so sshd never reads a
// partial certificate.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after the rename
	err = f.Chmod(mode)
	if err == nil {
		_, err = f.Write(data)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}
