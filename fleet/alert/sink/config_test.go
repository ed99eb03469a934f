package sink

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sigil-iot/sigil/fleet/alert"
)

// TestBuildSink: every sink type is built with its transport, and bad
// entries are refused with a message that names the problem but never a
// secret.
func TestBuildSink(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "secret")
	os.WriteFile(secret, []byte("s3cr3t-value\n"), 0o600)
	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, []byte("\n"), 0o600)
	notPEM := filepath.Join(dir, "ca.pem")
	os.WriteFile(notPEM, []byte("not a certificate"), 0o600)

	rt, info, closer, err := Build(Config{Name: "am", Type: TypeAlertmanager, URL: "http://am:9093", SecretFile: secret, MinSeverity: "warning"})
	if err != nil || !slices.Contains(rt.Transitions, alert.TransitionRepeat) || rt.MinSeverity != alert.SeverityWarning || closer != nil || info.Target != "http://am:9093" {
		t.Fatalf("alertmanager: %+v %+v %v", rt, info, err)
	}
	rt, info, _, err = Build(Config{Name: "hook", Type: TypeWebhook, URL: "https://hooks.example/x", SecretFile: secret, Attempts: 2})
	if err != nil || !info.Signed || rt.Attempts != 2 || slices.Contains(rt.Transitions, alert.TransitionRepeat) {
		t.Fatalf("webhook: %+v %+v %v", rt, info, err)
	}
	_, info, closer, err = Build(Config{Name: "siem", Type: TypeSyslog, Addr: "127.0.0.1:6514", TLS: true})
	if err != nil || closer == nil || info.Target != "127.0.0.1:6514" {
		t.Fatalf("syslog: %+v %v", info, err)
	}
	closer()

	for _, c := range []struct {
		sink Config
		want string
	}{
		{Config{Type: TypeWebhook, URL: "http://x"}, "name is required"},
		{Config{Name: "x", Type: "pagerduty"}, "not alertmanager, syslog or webhook"},
		{Config{Name: "x", Type: TypeWebhook, URL: "ftp://x"}, "http or https"},
		{Config{Name: "x", Type: TypeSyslog, Addr: "no-port"}, "host:port"},
		{Config{Name: "x", Type: TypeWebhook, URL: "http://x", MinSeverity: "urgent"}, "min_severity"},
		{Config{Name: "x", Type: TypeWebhook, URL: "http://x", Attempts: -1}, "negative"},
		{Config{Name: "x", Type: TypeWebhook, URL: "http://x", SecretFile: filepath.Join(dir, "missing")}, "secret_file"},
		{Config{Name: "x", Type: TypeWebhook, URL: "http://x", SecretFile: empty}, "secret_file is empty"},
		{Config{Name: "x", Type: TypeSyslog, Addr: "h:1", TLSCAFile: notPEM}, "no PEM certificate"},
	} {
		_, _, _, err := Build(c.sink)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %q", c.sink, err, c.want)
		}
		if err != nil && strings.Contains(err.Error(), "s3cr3t") {
			t.Errorf("error reveals the secret: %v", err)
		}
	}
}
