package e2e

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/coreos/go-oidc/v3/oidc"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	grpcstatus "google.golang.org/grpc/status"

	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/server"
	"github.com/sigil-iot/sigil/fleet/workload"
	"github.com/sigil-iot/sigil/internal/wait"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// TestWorkloadAPI runs a real sigild built with the workloadapi tag on an
// swtpm, enrolled to a fleet, and asks its SPIFFE Workload API with
// go-spiffe's client, as this test process: a registration whose
// executable hash is not this binary's gives it nothing; one that matches
// gives it an X.509-SVID that verifies against the bundle from the same
// API and JWT-SVIDs that go-spiffe and an independent OIDC verifier
// (coreos/go-oidc, from the fleet's discovery document and JWKS) accept;
// once the device is quarantined its workloads get no new SVID.
func TestWorkloadAPI(t *testing.T) {
	requireTools(t)
	dir := t.TempDir()
	sigild := filepath.Join(dir, "sigild")
	if out, err := exec.Command("go", "build", "-tags", "workloadapi", "-o", sigild, "github.com/sigil-iot/sigil/cmd/sigild").CombinedOutput(); err != nil {
		t.Fatalf("go build -tags workloadapi sigild: %v\n%s", err, out)
	}
	apiAddr := freeAddr(t)
	_, port, _ := net.SplitHostPort(apiAddr)
	issuer := "https://localhost:" + port
	f := startFleet(t, func(c *server.Config) {
		c.APIAddr, c.EKCADir, c.WorkloadIssuer, c.TrustDomain = apiAddr, ekCADir(t, vendorCA(t)), issuer, "fleet.test"
	})
	inst := newTPM(t)
	sock := filepath.Join(dir, "workload.sock")
	devCfg := filepath.Join(dir, "sigild.json")
	b, _ := json.Marshal(map[string]any{
		"tpm": inst.URI(), "state": filepath.Join(dir, "state.db"), "broker": f.MQTTAddr(), "server_name": "localhost",
		"fleet_ca": f.CACertPath(), "model": "gw-1", "firmware": "1.0.0", "serial": "SN-WL", "control": filepath.Join(dir, "sigild.sock"),
		"retry_min": "100ms", "retry_max": "2s", "event_log": "-", "workload_api_socket": sock,
	})
	if err := os.WriteFile(devCfg, b, 0o600); err != nil {
		t.Fatal(err)
	}
	startProcess(t, sigild, "run", "--config", devCfg)

	ctx := context.Background()
	var dev inventory.Device
	waitFor(t, func() bool {
		devs, _, err := f.Inv.ListDevices(ctx, inventory.Filter{})
		if err != nil || len(devs) != 1 || devs[0].State != inventory.StateActive || devs[0].Attestation != wire.VerdictPass {
			return false
		}
		dev = devs[0]
		return true
	}, "the device to enroll and pass attestation")

	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	sum := fileSHA256(t, exe)
	other := sha256.Sum256([]byte("another program"))
	cl, err := f.Client()
	if err != nil {
		t.Fatal(err)
	}
	uid := uint32(os.Getuid())
	if _, err := cl.RegisterWorkload(ctx, workload.Registration{Name: "other", Scope: workload.ScopeDevice, Target: dev.ID, UID: &uid, ExeSHA256: hex.EncodeToString(other[:])}); err != nil {
		t.Fatal(err)
	}
	wl, err := workloadapi.New(ctx, workloadapi.WithAddr("unix://"+sock))
	if err != nil {
		t.Fatal(err)
	}
	defer wl.Close()

	// The only registration is for another binary: nothing, for X.509
	// and JWT alike.
	denied := func(err error) error {
		if grpcstatus.Code(errors.Unwrap(err)) == codes.PermissionDenied || grpcstatus.Code(err) == codes.PermissionDenied {
			return nil
		}
		return fmt.Errorf("want PermissionDenied, got %v", err)
	}
	wait.Until(t, func() error {
		_, err := wl.FetchX509SVID(ctx)
		return denied(err)
	})
	if _, err := wl.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "sts.amazonaws.com"}); denied(err) != nil {
		t.Fatalf("JWT-SVID for a caller of no registration: %v", err)
	}

	// A registration of this binary (by its hash and user) on this device.
	if _, err := cl.RegisterWorkload(ctx, workload.Registration{Name: "agent", Scope: workload.ScopeDevice, Target: dev.ID, UID: &uid, ExeSHA256: sum}); err != nil {
		t.Fatal(err)
	}
	var svid *x509svid.SVID
	wait.Until(t, func() error {
		svid, err = wl.FetchX509SVID(ctx)
		return err
	})
	want := "spiffe://fleet.test/device/" + dev.ID + "/workload/agent"
	if svid.ID.String() != want {
		t.Fatalf("X.509-SVID for %s, want %s", svid.ID, want)
	}
	bundles, err := wl.FetchX509Bundles(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, bundles); err != nil {
		t.Fatalf("the X.509-SVID does not verify against the API's bundle: %v", err)
	}
	if lifetime := svid.Certificates[0].NotAfter.Sub(svid.Certificates[0].NotBefore); lifetime > workload.DefaultX509TTL+2*60e9 {
		t.Fatalf("X.509-SVID lifetime %s", lifetime)
	}

	jwt, err := wl.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "sts.amazonaws.com"})
	if err != nil {
		t.Fatal(err)
	}
	if jwt.ID.String() != want {
		t.Fatalf("JWT-SVID for %s, want %s", jwt.ID, want)
	}
	jwtBundles, err := wl.FetchJWTBundles(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := jwtsvid.ParseAndValidate(jwt.Marshal(), jwtBundles, []string{"sts.amazonaws.com"}); err != nil {
		t.Fatalf("the JWT-SVID does not validate against the API's JWT bundle: %v", err)
	}
	if _, err := jwtsvid.ParseAndValidate(jwt.Marshal(), jwtBundles, []string{"storage.googleapis.com"}); err == nil {
		t.Fatal("go-spiffe accepts the JWT-SVID for another audience")
	}
	if v, err := wl.ValidateJWTSVID(ctx, jwt.Marshal(), "sts.amazonaws.com"); err != nil || v.ID.String() != want {
		t.Fatalf("ValidateJWTSVID: %v, %v", v, err)
	}
	if _, err := wl.ValidateJWTSVID(ctx, jwt.Marshal(), "storage.googleapis.com"); err == nil {
		t.Fatal("ValidateJWTSVID accepts another audience")
	}

	// The fleet's own discovery document and JWKS, over HTTPS.
	roots := x509.NewCertPool()
	caPEM, err := os.ReadFile(f.CACertPath())
	if err != nil || !roots.AppendCertsFromPEM(caPEM) {
		t.Fatalf("fleet CA: %v", err)
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
	octx := oidc.ClientContext(ctx, hc)
	provider, err := oidc.NewProvider(octx, issuer)
	if err != nil {
		t.Fatal(err)
	}
	idt, err := provider.Verifier(&oidc.Config{ClientID: "sts.amazonaws.com"}).Verify(octx, jwt.Marshal())
	if err != nil || idt.Subject != want {
		t.Fatalf("the OIDC verifier: %v, %v", idt, err)
	}

	// Quarantined: no new SVID.
	if err := cl.Do(ctx, http.MethodPost, "/api/v1/devices/"+dev.ID+"/quarantine", api.QuarantineRequest{Justification: "workload test"}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := wl.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "sts.amazonaws.com"}); err == nil {
		t.Fatal("a quarantined device's workload got a new JWT-SVID")
	}
	again, err := wl.FetchX509SVID(ctx)
	if err == nil && !again.Certificates[0].Equal(svid.Certificates[0]) {
		t.Fatal("a quarantined device's workload got a new X.509-SVID")
	}
}

func fileSHA256(t testing.TB, path string) string {
	t.Helper()
	fh, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	h := sha256.New()
	if _, err := io.Copy(h, fh); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}
