package e2e

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/sim/harness"
)

// TestUsersPasswd: `sigil users passwd` changes the caller's own password
// through the API with the current one, from stdin with --stdin and from a
// terminal (a pseudo-terminal from script(1)) without echoing what is
// typed; it refuses passwords on the command line and a wrong current
// password; the user's console sessions end and the API token it used
// keeps working.
func TestUsersPasswd(t *testing.T) {
	requireTools(t)
	scriptBin, err := exec.LookPath("script")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("script (util-linux) not found")
		}
		t.Skip("script (util-linux) not installed")
	}
	sigil, _ := buildBinaries(t)
	f := startFleet(t, nil)
	ctx := context.Background()
	const pw1, pw2, pw3 = "carol's first long password", "carol's second long password", "carol's third long password"
	if _, err := f.Auth.CreateUser(ctx, "carol", pw1, auth.RoleOperator); err != nil {
		t.Fatal(err)
	}
	token, _, err := f.Auth.CreateToken(ctx, "carol", "laptop", auth.RoleViewer, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	var sessions []auth.Session
	for range 2 {
		s, err := f.Auth.Login(ctx, "carol", pw1, "192.0.2.7")
		if err != nil {
			t.Fatal(err)
		}
		sessions = append(sessions, s)
	}
	env := append(os.Environ(), "SIGIL_SERVER="+f.APIURL(), "SIGIL_TOKEN="+token, "SIGIL_CA="+f.CACertPath())
	passwd := func(stdin string, args ...string) (stdout, stderr string, code int) {
		t.Helper()
		cmd := exec.Command(sigil, append([]string{"users", "passwd"}, args...)...)
		cmd.Env, cmd.Stdin = env, strings.NewReader(stdin)
		var o, e bytes.Buffer
		cmd.Stdout, cmd.Stderr = &o, &e
		err := cmd.Run()
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatal(err)
		}
		return o.String(), e.String(), cmd.ProcessState.ExitCode()
	}

	if _, stderr, code := passwd("", pw1, pw2); code != 2 || !strings.Contains(stderr, "never read from the command line") {
		t.Fatalf("passwords as arguments: exit %d, %s", code, stderr)
	}
	if _, stderr, code := passwd("not her password at all\n"+pw2+"\n", "--stdin"); code != 5 || !strings.Contains(stderr, "current password is wrong") {
		t.Fatalf("a wrong current password: exit %d, %s", code, stderr)
	}
	for i, s := range sessions {
		if _, err := f.Auth.Authenticate(withSession(f, s)); err != nil {
			t.Fatalf("session %d after a refused change: %v", i, err)
		}
	}
	// The throttle waits a second after the wrong password, as for logins.
	var stdout, stderr string
	var code int
	waitFor(t, func() bool {
		stdout, stderr, code = passwd(pw1+"\n"+pw2+"\n", "--stdin")
		return !strings.Contains(stderr, "429")
	}, "the throttle's wait after a wrong password")
	if code != 0 || !strings.Contains(stdout, "password of carol changed; 2 console sessions ended; API tokens are not affected") {
		t.Fatalf("--stdin: exit %d\n%s%s", code, stdout, stderr)
	}
	for i, s := range sessions {
		if _, err := f.Auth.Authenticate(withSession(f, s)); !errors.Is(err, auth.ErrSessionInvalid) {
			t.Errorf("session %d after the change: %v, want ended", i, err)
		}
	}
	if _, err := f.Auth.Login(ctx, "carol", pw2, "192.0.2.8"); err != nil {
		t.Fatalf("login with the new password: %v", err)
	}

	// On a terminal: prompts on it, nothing typed echoed back.
	term := startOnTerminal(t, scriptBin, env, sigil+" users passwd")
	for _, step := range []struct{ prompt, typed string }{
		{"Current password: ", pw2}, {"New password: ", pw3}, {"New password again: ", pw3},
	} {
		term.waitFor(t, step.prompt)
		term.typeLine(t, step.typed)
	}
	out := term.wait(t)
	if !strings.Contains(out, "password of carol changed; 1 console session ended") {
		t.Fatalf("on a terminal:\n%s", out)
	}
	for _, p := range []string{pw2, pw3} {
		if strings.Contains(out, p) {
			t.Fatalf("the terminal echoed a password:\n%q", out)
		}
	}
	if _, err := f.Auth.Login(ctx, "carol", pw3, "192.0.2.9"); err != nil {
		t.Fatalf("login with the password typed on the terminal: %v", err)
	}
}

// withSession is a request to the fleet's console carrying a session
// cookie.
func withSession(f *harness.Fleet, s auth.Session) *http.Request {
	r := httptest.NewRequest("GET", f.APIURL()+"/api/v1/me", nil)
	r.AddCookie(f.Auth.Cookie(s))
	return r
}

// terminal is a command running on a pseudo-terminal (script(1)): what it
// shows, and a way to type.
type terminal struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	mu    sync.Mutex
	out   bytes.Buffer
	done  chan error
}

func startOnTerminal(t *testing.T, scriptBin string, env []string, command string) *terminal {
	t.Helper()
	tm := &terminal{done: make(chan error, 1)}
	tm.cmd = exec.Command(scriptBin, "-qefc", command, "/dev/null")
	tm.cmd.Env = env
	var err error
	if tm.stdin, err = tm.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	tm.cmd.Stdout = writerFunc(func(p []byte) (int, error) {
		tm.mu.Lock()
		defer tm.mu.Unlock()
		return tm.out.Write(p)
	})
	if err := tm.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { tm.done <- tm.cmd.Wait() }()
	t.Cleanup(func() {
		tm.stdin.Close()
		tm.cmd.Process.Kill()
	})
	return tm
}

func (tm *terminal) shown() string {
	tm.mu.Lock()
	defer tm.mu.Unlock()
	return tm.out.String()
}

// waitFor waits until the terminal shows s (a prompt).
func (tm *terminal) waitFor(t *testing.T, s string) {
	t.Helper()
	waitFor(t, func() bool { return strings.Contains(tm.shown(), s) }, "the prompt "+s)
}

func (tm *terminal) typeLine(t *testing.T, s string) {
	t.Helper()
	if _, err := io.WriteString(tm.stdin, s+"\n"); err != nil {
		t.Fatal(err)
	}
}

// wait waits for the command to end successfully and returns what the
// terminal showed.
func (tm *terminal) wait(t *testing.T) string {
	t.Helper()
	select {
	case err := <-tm.done:
		if err != nil {
			t.Fatalf("%v\n%s", err, tm.shown())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("the command did not end:\n%s", tm.shown())
	}
	return tm.shown()
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
