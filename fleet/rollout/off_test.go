package rollout

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/pkg/wire"
)

// TestNilServiceIsOff: without release_trust the fleet holds a nil
// *Service, which answers as firmware off: no store, no campaigns, no
// trust, ErrOff for a campaign, and the API listener and handler as they
// were (no client certificate asked for, no download endpoint).
func TestNilServiceIsOff(t *testing.T) {
	var s *Service
	if s.Releases() != nil || s.Campaigns() != nil {
		t.Error("a nil service has a release store or campaigns")
	}
	s.Report("d1", &wire.Envelope{Type: wire.TypeFirmwareReport}) // ignored, no panic
	s.Hello("d1")
	if trust, rots := s.Trust(); trust != nil || rots != nil {
		t.Errorf("a nil service hands out trust: %v %v", trust, rots)
	}
	if err := s.StartCampaign("c1", time.Now(), "alice", "why"); !errors.Is(err, ErrOff) {
		t.Errorf("StartCampaign: %v, want ErrOff", err)
	}
	base := &tls.Config{MinVersion: tls.VersionTLS12}
	if c := s.ListenerTLS(base, func() *x509.CertPool { return nil }); c != base || c.ClientAuth != tls.NoClientCert {
		t.Errorf("ListenerTLS changed the listener: %+v", c)
	}
	var next http.Handler = apiOnly{}
	if h := s.WithDownloads(next); h != next {
		t.Errorf("WithDownloads mounted something: %T", h)
	}
}

// apiOnly stands for the API's handler.
type apiOnly struct{}

func (apiOnly) ServeHTTP(http.ResponseWriter, *http.Request) {}
