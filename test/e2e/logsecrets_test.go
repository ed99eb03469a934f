package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// loggedProcess is a real program whose stdout and stderr go to a file.
type loggedProcess struct {
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

func startLogged(t testing.TB, name string, args ...string) *loggedProcess {
	t.Helper()
	p := &loggedProcess{cmd: exec.Command(name, args...), done: make(chan struct{})}
	p.log = filepath.Join(t.TempDir(), filepath.Base(name)+".log")
	f, err := os.Create(p.log)
	if err != nil {
		t.Fatal(err)
	}
	p.cmd.Stdout, p.cmd.Stderr = f, f
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.cmd.Wait(); f.Close(); close(p.done) }()
	t.Cleanup(p.stop)
	return p
}

// stop interrupts the program and waits for it, so that everything it
// logs on the way out is in the file.
func (p *loggedProcess) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// secretForms are the ways a secret may show up in a log line: as is, in
// hex and base64 (padded or not, standard or URL alphabet), and as the
// decimal byte list that fmt prints for a []byte (how the MQTT library
// once logged a packet's payload).
func secretForms(b []byte) []string {
	dec := make([]string, len(b))
	for i, c := range b {
		dec[i] = strconv.Itoa(int(c))
	}
	forms := []string{
		hex.EncodeToString(b), strings.ToUpper(hex.EncodeToString(b)),
		base64.StdEncoding.EncodeToString(b), base64.RawStdEncoding.EncodeToString(b),
		base64.URLEncoding.EncodeToString(b), base64.RawURLEncoding.EncodeToString(b),
		strings.Join(dec, " "), strings.Join(dec, ","), strings.Join(dec, ", "),
	}
	if isText(b) {
		forms = append(forms, string(b))
	}
	return forms
}

func isText(b []byte) bool {
	for _, c := range b {
		if c < 0x20 || c > 0x7e {
			return false
		}
	}
	return true
}

// TestNoSecretInLogs runs the real programs at debug level — `sigil serve`
// and two `sigild run` on swtpm — and uses every kind of secret the way
// operators, devices and attackers do: enrollment tokens (at enrollment,
// as the MQTT password, reused, and inside a forbidden and a malformed
// publish of real mosquitto clients), the admin password and a wrong one,
// the session cookie and CSRF token, password changes (a wrong current
// password, the new ones, the rotated session), the admin API token, a new
// API token and a bogus one, and a sealed secret delivered to the device
// and read back. Then it searches every log the run wrote (fleet with its broker,
// both devices, the CLI's error output, the exported audit log) for every
// one of those secrets and for the fleet's private keys, in every form:
// none may appear.
func TestNoSecretInLogs(t *testing.T) {
	requireTools(t)
	sigil, sigild := buildBinaries(t)
	data := t.TempDir()
	mqtt, apiAddr := freeAddr(t), freeAddr(t)
	serveCfg := filepath.Join(t.TempDir(), "serve.json")
	b, _ := json.Marshal(map[string]any{"data_dir": data, "mqtt_addr": mqtt, "api_addr": apiAddr, "ek_ca_dir": ekCADir(t, vendorCA(t)),
		"hostnames": []string{"localhost", "127.0.0.1"}, "log_level": "debug", "bootstrap_credential": true})
	if err := os.WriteFile(serveCfg, b, 0o600); err != nil {
		t.Fatal(err)
	}
	fleet := startLogged(t, sigil, "serve", "--config", serveCfg)
	caFile := filepath.Join(data, "ca", "ca.crt")
	waitFor(t, func() bool { _, err := os.Stat(filepath.Join(data, "admin.token")); return err == nil }, "sigil serve to write its admin token")
	base := "https://localhost" + apiAddr[strings.LastIndexByte(apiAddr, ':'):]
	read := func(name string) string {
		b, err := os.ReadFile(filepath.Join(data, name))
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	adminToken, adminPassword := read("admin.token"), read("admin.password")
	secrets := map[string][]byte{"admin API token": []byte(adminToken), "admin password": []byte(adminPassword)}
	use := func(name, value string) string { secrets[name] = []byte(value); return value }

	// The API, through curl as a script would use it.
	var cliErr bytes.Buffer // error output of every client command: a log too
	curl := func(bearer, method, path, body string, extra ...string) (int, []byte) {
		t.Helper()
		args := []string{"-s", "-o", "-", "-w", "\n%{http_code}", "--cacert", caFile, "-X", method}
		if bearer != "" {
			args = append(args, "-H", "Authorization: Bearer "+bearer)
		}
		if body != "" {
			args = append(args, "-H", "Content-Type: application/json", "-d", body)
		}
		args = append(append(args, extra...), base+path)
		cmd := exec.Command("curl", args...)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &cliErr
		if err := cmd.Run(); err != nil {
			t.Fatalf("curl %s %s: %v", method, path, err)
		}
		s := out.String()
		i := strings.LastIndexByte(s, '\n')
		code, _ := strconv.Atoi(s[i+1:])
		return code, []byte(s[:i])
	}
	waitFor(t, func() bool {
		return exec.Command("curl", "-sf", "-o", "/dev/null", "--cacert", caFile, base+"/healthz").Run() == nil
	}, "the API to answer")
	enrollmentToken := func() string {
		t.Helper()
		code, body := curl(adminToken, "POST", "/api/v1/enrollment-tokens", `{"model":"gw-1","owner":"ops","ttl":"1h"}`)
		var tok struct{ Token string }
		if code != http.StatusCreated || json.Unmarshal(body, &tok) != nil || tok.Token == "" {
			t.Fatalf("enrollment token: %d %s", code, body)
		}
		return tok.Token
	}

	// A device enrolls with a token, which is also its MQTT password.
	tok1 := use("enrollment token", enrollmentToken())
	devDir := t.TempDir()
	devCfg := filepath.Join(devDir, "sigild.json")
	tokFile := filepath.Join(devDir, "token")
	os.WriteFile(tokFile, []byte(tok1+"\n"), 0o600)
	b, _ = json.Marshal(map[string]any{
		"tpm": newTPM(t).URI(), "state": filepath.Join(devDir, "state.db"), "broker": mqtt, "server_name": "localhost",
		"fleet_ca": caFile, "model": "gw-1", "serial": "SN-LOGS", "control": filepath.Join(devDir, "sigild.sock"),
		"retry_min": "100ms", "retry_max": "1s", "event_log": "-", "token_file": tokFile, "log_level": "debug",
	})
	os.WriteFile(devCfg, b, 0o600)
	device := startLogged(t, sigild, "run", "--config", devCfg)
	var status struct {
		DeviceID  string `json:"device_id"`
		Connected bool
	}
	waitFor(t, func() bool {
		out, err := exec.Command(sigild, "status", "--config", devCfg, "--json").Output()
		return err == nil && json.Unmarshal(out, &status) == nil && status.Connected
	}, "the device to enroll and connect")

	// A second device presents the first one's (used) token: refused.
	dev2Dir := t.TempDir()
	dev2Cfg := filepath.Join(dev2Dir, "sigild.json")
	os.WriteFile(filepath.Join(dev2Dir, "token"), []byte(tok1+"\n"), 0o600)
	b, _ = json.Marshal(map[string]any{
		"tpm": newTPM(t).URI(), "state": filepath.Join(dev2Dir, "state.db"), "broker": mqtt, "server_name": "localhost",
		"fleet_ca": caFile, "model": "gw-1", "serial": "SN-LOGS-2", "control": filepath.Join(dev2Dir, "sigild.sock"),
		"retry_min": "100ms", "retry_max": "1s", "event_log": "-", "token_file": filepath.Join(dev2Dir, "token"), "log_level": "debug",
	})
	os.WriteFile(dev2Cfg, b, 0o600)
	device2 := startLogged(t, sigild, "run", "--config", dev2Cfg)

	// Operators: the admin logs in (and someone tries a wrong password),
	// uses the session, creates an API token and uses it; a bogus bearer
	// token is refused.
	jar, _ := cookiejar.New(nil)
	cookies := filepath.Join(t.TempDir(), "cookies")
	wrong := use("wrong password", "Wr0ng-"+randomText(t, 12))
	if code, _ := curl("", "POST", "/api/v1/login", fmt.Sprintf(`{"user":"admin","password":%q}`, wrong)); code != http.StatusUnauthorized {
		t.Fatalf("wrong password: %d", code)
	}
	var login struct {
		CSRF string `json:"csrf_token"`
	}
	var code int
	var body []byte
	waitFor(t, func() bool { // a failed login delays the next one
		code, body = curl("", "POST", "/api/v1/login", fmt.Sprintf(`{"user":"admin","password":%q}`, adminPassword), "-c", cookies)
		return code != http.StatusTooManyRequests
	}, "the login throttle to let the admin in")
	if code != http.StatusOK || json.Unmarshal(body, &login) != nil || login.CSRF == "" {
		t.Fatalf("login: %d %s", code, body)
	}
	use("CSRF token", login.CSRF)
	for _, c := range readCookies(t, cookies) {
		use("session cookie "+c.Name, c.Value)
		jar.SetCookies(&url.URL{Scheme: "https", Host: "localhost"}, []*http.Cookie{c})
	}
	if code, body := curl("", "GET", "/api/v1/devices", "", "-b", cookies); code != http.StatusOK {
		t.Fatalf("session request: %d %s", code, body)
	}
	code, body = curl(adminToken, "POST", "/api/v1/tokens", `{"name":"ci","role":"viewer","ttl":"1h"}`)
	var created struct{ Secret string }
	if code != http.StatusCreated || json.Unmarshal(body, &created) != nil || created.Secret == "" {
		t.Fatalf("API token: %d %s", code, body)
	}
	use("viewer API token", created.Secret)
	if code, body := curl(created.Secret, "GET", "/api/v1/devices", ""); code != http.StatusOK {
		t.Fatalf("viewer token: %d %s", code, body)
	}
	if code, _ := curl(created.Secret, "POST", "/api/v1/enrollment-tokens", `{"model":"gw-1","ttl":"1h"}`); code != http.StatusForbidden {
		t.Fatalf("viewer token minting an enrollment token: %d", code)
	}
	if code, _ := curl("", "POST", "/api/v1/enrollment-tokens", `{"model":"gw-1","ttl":"1h"}`, "-b", cookies); code != http.StatusForbidden {
		t.Fatalf("session request without its CSRF token: %d", code)
	}
	bogus := use("bogus API token", "sgk_"+randomText(t, 32))
	if code, _ := curl(bogus, "POST", "/api/v1/devices/"+status.DeviceID+"/revoke", `{"reason":"keyCompromise"}`); code != http.StatusUnauthorized {
		t.Fatalf("bogus token: %d", code)
	}

	// The admin changes the password: a wrong current one first, then
	// with the session (which is rotated), then again with the CLI.
	newPW := use("new admin password", "N3w-"+randomText(t, 16))
	wrongCur := use("wrong current password", "Cur-"+randomText(t, 16))
	change := func(cur string) (int, []byte) {
		return curl("", "POST", "/api/v1/users/me/password", fmt.Sprintf(`{"current_password":%q,"new_password":%q}`, cur, newPW),
			"-b", cookies, "-c", cookies, "-H", "X-CSRF-Token: "+login.CSRF)
	}
	if code, body := change(wrongCur); code != http.StatusForbidden {
		t.Fatalf("password change with a wrong current password: %d %s", code, body)
	}
	waitFor(t, func() bool { code, body = change(adminPassword); return code != http.StatusTooManyRequests },
		"the throttle after the wrong current password")
	var rotated struct {
		CSRF string `json:"csrf_token"`
	}
	if code != http.StatusOK || json.Unmarshal(body, &rotated) != nil || rotated.CSRF == "" {
		t.Fatalf("password change: %d %s", code, body)
	}
	use("rotated CSRF token", rotated.CSRF)
	for _, c := range readCookies(t, cookies) {
		use("rotated session cookie "+c.Name, c.Value)
	}
	third := use("third admin password", "Thr-"+randomText(t, 16))
	passwd := exec.Command(sigil, "users", "passwd", "--stdin", "--data-dir", data, "--server", base)
	passwd.Stdin, passwd.Stderr = strings.NewReader(newPW+"\n"+third+"\n"), &cliErr
	if out, err := passwd.Output(); err != nil {
		t.Fatalf("sigil users passwd: %v\n%s%s", err, out, cliErr.String())
	}

	// A sealed secret is delivered to the device and read back there.
	value := make([]byte, 48)
	rand.Read(value)
	secrets["sealed secret value"] = value
	code, body = curl(adminToken, "PUT", "/api/v1/secrets/db-password",
		fmt.Sprintf(`{"value_b64":%q,"target":{"device":%q}}`, base64.StdEncoding.EncodeToString(value), status.DeviceID))
	if code != http.StatusCreated {
		t.Fatalf("put secret: %d %s", code, body)
	}
	waitFor(t, func() bool {
		code, body := curl(adminToken, "GET", "/api/v1/devices/"+status.DeviceID+"/secrets", "")
		return code == http.StatusOK && bytes.Contains(body, []byte(`"acked":1`))
	}, "the device to import the secret")
	get := exec.Command(sigild, "secret", "get", "db-password", "--config", devCfg)
	get.Stderr = &cliErr
	if out, err := get.Output(); err != nil || !bytes.Equal(out, value) {
		t.Fatalf("sigild secret get: %v (%d bytes)", err, len(out))
	}

	// Attackers with real MQTT clients: a valid token as the password and
	// in the payload of a forbidden publish and of a malformed one.
	tok2 := use("second enrollment token", enrollmentToken())
	host, port := "127.0.0.1", mqtt[strings.LastIndexByte(mqtt, ':')+1:]
	mq := []string{"-h", host, "-p", port, "--cafile", caFile, "--insecure", "-V", "mqttv311", "-u", "token", "-P", tok2, "-q", "1"}
	for _, p := range []struct{ id, topic string }{
		{"e-thief", "sigil/v1/enroll/e-victim/up/enroll"},            // someone else's topic: refused
		{"e-thief", "sigil/v1/dev/" + status.DeviceID + "/up/hello"}, // a device's topic: refused
		{"e-junk", "sigil/v1/enroll/e-junk/up/enroll"},               // own topic, not an envelope
	} {
		cmd := exec.Command("mosquitto_pub", append(mq, "-i", p.id, "-t", p.topic, "-m", "token="+tok2)...)
		cmd.Stderr = &cliErr
		_ = cmd.Run() // refused publishes end in a disconnect
	}
	// A CONNECT with a made-up token as the password.
	made := use("made-up enrollment token", "sgt_"+randomText(t, 43))
	cmd := exec.Command("mosquitto_pub", "-h", host, "-p", port, "--cafile", caFile, "--insecure", "-V", "mqttv311",
		"-u", "token", "-P", made, "-i", "e-guess", "-t", "sigil/v1/enroll/e-guess/up/enroll", "-m", made)
	cmd.Stderr = &cliErr
	_ = cmd.Run()

	// Wait until the fleet has seen the refusals, then stop everything so
	// that every log is complete.
	waitFor(t, func() bool {
		b, _ := os.ReadFile(fleet.log)
		return bytes.Contains(b, []byte("publish refused")) && bytes.Contains(b, []byte("enrollment message refused"))
	}, "the fleet to log the refused publishes")
	device2.stop()
	device.stop()
	audit := filepath.Join(t.TempDir(), "audit.jsonl")
	exp := exec.Command(sigil, "audit", "export", "--out", audit, "--data-dir", data, "--server", base)
	exp.Stderr = &cliErr
	if out, err := exp.Output(); err != nil {
		t.Fatalf("sigil audit export: %v\n%s%s", err, out, cliErr.String())
	}
	fleet.stop()

	// The fleet's private keys are secrets too.
	keys, _ := filepath.Glob(filepath.Join(data, "*.key"))
	more, _ := filepath.Glob(filepath.Join(data, "*", "*.key"))
	for _, k := range append(keys, more...) {
		raw, err := os.ReadFile(k)
		if err != nil {
			t.Fatal(err)
		}
		if blk, _ := pem.Decode(raw); blk != nil {
			raw = blk.Bytes
		}
		secrets["private key "+filepath.Base(k)] = raw
	}
	if len(keys)+len(more) < 2 {
		t.Fatalf("found only %v: the fleet's key files moved?", append(keys, more...))
	}

	logs := map[string][]byte{"client error output": cliErr.Bytes()}
	for name, path := range map[string]string{"fleet": fleet.log, "device": device.log, "second device": device2.log, "audit export": audit} {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		logs[name] = b
	}
	// The logs are real: debug level, and the events happened.
	for name, want := range map[string]string{"fleet": "level=DEBUG", "device": "level=DEBUG", "second device": "level=DEBUG", "audit export": "api.secrets.put"} {
		if !bytes.Contains(logs[name], []byte(want)) {
			t.Fatalf("the %s log lacks %q: not the run this test meant", name, want)
		}
	}
	for what, secret := range secrets {
		for _, form := range secretForms(secret) {
			if len(form) < 12 {
				continue // too short to mean anything
			}
			for name, log := range logs {
				if i := bytes.Index(log, []byte(form)); i >= 0 {
					start := bytes.LastIndexByte(log[:i], '\n') + 1
					end := bytes.IndexByte(log[i:], '\n')
					if end < 0 {
						end = len(log) - i
					}
					t.Errorf("the %s log holds the %s (as %q):\n%s", name, what, form, log[start:i+end])
				}
			}
		}
	}
}

func randomText(t testing.TB, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)[:n]
}

// readCookies parses curl's cookie jar file (Netscape format).
func readCookies(t testing.TB, path string) []*http.Cookie {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []*http.Cookie
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimPrefix(line, "#HttpOnly_")
		f := strings.Split(line, "\t")
		if len(f) == 7 && !strings.HasPrefix(line, "#") {
			out = append(out, &http.Cookie{Name: f[5], Value: f[6]})
		}
	}
	if len(out) == 0 {
		t.Fatalf("no cookie in %s:\n%s", path, b)
	}
	return out
}

var _ = context.Background
