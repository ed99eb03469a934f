package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/internal/wait"
)

// TestBrokerPoolRevocationPushed runs `sigil broker-sync` beside each
// device broker of a pool with an interval of an hour: a revocation made
// after the syncs' first round reaches every broker at once (the fleet
// answers the syncs' waiting GET /crl?after=N), so the revoked
// certificate is refused at the TLS handshake long before any interval
// could explain it. The first broker's sync presents an API token of
// scope broker-sync (the slots kept for the syncs): accepted, its push
// works the same.
func TestBrokerPoolRevocationPushed(t *testing.T) {
	p := startBrokerPool(t, nil)
	sigil := filepath.Join(t.TempDir(), "sigil")
	if out, err := exec.Command("go", "build", "-o", sigil, "github.com/sigil-iot/sigil/cmd/sigil").CombinedOutput(); err != nil {
		t.Fatalf("go build sigil: %v\n%s", err, out)
	}
	first, firstKey := p.fakeDevice(t, "feedface00000000feedface000000a1")
	second, secondKey := p.fakeDevice(t, "feedface00000000feedface000000a2")
	c, err := p.f.Client()
	if err != nil {
		t.Fatal(err)
	}
	// The first revocation is made before the syncs start: their first
	// round installs it, which tells that round is over.
	if _, err := c.Revoke(context.Background(), "feedface00000000feedface000000a1", "keyCompromise", "e2e: before the sync"); err != nil {
		t.Fatal(err)
	}
	secret, _, err := p.f.Auth.CreateToken(context.Background(), auth.BootstrapAdmin, "broker-sync", auth.RoleBrokerSync, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(t.TempDir(), "broker-sync.token")
	if err := os.WriteFile(tokenFile, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for i, br := range p.dev {
		args := []string{"broker-sync", "--fleet", p.f.APIURL(), "--dir", br.Dir, "--interval", "1h",
			"--reload", fmt.Sprintf("kill -HUP %d", br.Pid())}
		if i == 0 {
			args = append(args, "--token-file", tokenFile)
		}
		startProcess(t, sigil, args...)
	}
	refused := func(cert, key, id string) {
		t.Helper()
		for i, br := range p.dev {
			wait.Until(t, func() error {
				if ok, out := p.mqttConnects(t, br.Addr, cert, key, id); ok {
					return fmt.Errorf("broker %d still accepts the revoked certificate of %s:\n%s", i+1, id, out)
				}
				return nil
			})
		}
	}
	refused(first, firstKey, "feedface00000000feedface000000a1")
	for i, br := range p.dev {
		if ok, out := p.mqttConnects(t, br.Addr, second, secondKey, "feedface00000000feedface000000a2"); !ok {
			t.Fatalf("broker %d refused a current certificate:\n%s", i+1, out)
		}
	}
	// The syncs now wait for a newer CRL; their next interval is an hour
	// away.
	if _, err := c.Revoke(context.Background(), "feedface00000000feedface000000a2", "keyCompromise", "e2e: pushed"); err != nil {
		t.Fatal(err)
	}
	refused(second, secondKey, "feedface00000000feedface000000a2")
}
