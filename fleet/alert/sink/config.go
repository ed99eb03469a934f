package sink

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/sigil-iot/sigil/fleet/alert"
	"github.com/sigil-iot/sigil/pkg/config"
)

// Types of Config.Type.
const (
	TypeAlertmanager = "alertmanager"
	TypeSyslog       = "syslog"
	TypeWebhook      = "webhook"
)

// Config is one entry of the fleet's alert_sinks configuration: a receiver
// the alert engine delivers notifications to, with retries and dead
// letters (docs/CONFIG.md).
type Config struct {
	// Name identifies the sink in dead letters and logs. Required, unique.
	Name string `json:"name"`
	// Type is "alertmanager" (Prometheus Alertmanager API v2), "syslog"
	// (RFC 5424 with a CEF body over TCP or TLS) or "webhook" (signed
	// JSON POST).
	Type string `json:"type"`
	// URL is the Alertmanager's base URL or the webhook's URL (http or
	// https).
	URL string `json:"url"`
	// Addr is the syslog receiver's host:port.
	Addr string `json:"addr"`
	// TLS sends syslog over TLS (RFC 5425) verified with the system roots
	// or TLSCAFile. Default false: plain TCP, unless TLSCAFile is set.
	TLS bool `json:"tls"`
	// TLSCAFile is a PEM file of the CA certificates that verify the
	// receiver (syslog over TLS, https URLs). Default: the system roots.
	TLSCAFile string `json:"tls_ca_file"`
	// SecretFile holds the webhook's HMAC-SHA256 signing secret
	// (X-Sigil-Signature), or a bearer token sent to an Alertmanager (for
	// a proxy in front of it). Optional; keep it 0600.
	SecretFile string `json:"secret_file"`
	// MinSeverity selects alerts at least this severe: info, warning or
	// critical. Default: all.
	MinSeverity string `json:"min_severity"`
	// Attempts is the number of delivery attempts before a notification is
	// dead-lettered. Default 5.
	Attempts int `json:"attempts"`
	// Backoff is the wait before the first retry, doubling up to a minute.
	// Default 1s.
	Backoff config.Duration `json:"backoff"`
}

// Info describes a configured sink, without its secrets.
type Info struct {
	Name        string `json:"name"`
	Type        string `json:"type"`   // alertmanager, syslog or webhook
	Target      string `json:"target"` // URL or host:port
	MinSeverity string `json:"min_severity,omitempty"`
	Signed      bool   `json:"signed,omitempty"` // webhook bodies carry an HMAC signature
}

// Routes builds a route per configured sink (Build), refusing repeated
// names; the error names every bad entry by its index and name. close
// releases the sinks that hold connections (syslog); on error, Routes has
// released them already.
func Routes(cs []Config) (routes []alert.Route, infos []Info, close func(), err error) {
	var errs []error
	var closers []func() error
	names := map[string]bool{}
	for i, c := range cs {
		rt, info, closer, err := Build(c)
		if err == nil && names[c.Name] {
			err = errors.New("name used twice")
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("sink: alert_sinks[%d] %q: %w", i, c.Name, err))
			continue
		}
		names[c.Name] = true
		routes = append(routes, rt)
		infos = append(infos, info)
		if closer != nil {
			closers = append(closers, closer)
		}
	}
	close = func() {
		for _, c := range closers {
			_ = c()
		}
	}
	if err := errors.Join(errs...); err != nil {
		close()
		return nil, nil, nil, err
	}
	return routes, infos, close, nil
}

// Build makes the alert route of one configured sink: its notifier, its
// filters and its retry policy (an Alertmanager also gets repeated
// notifications of open alerts, which it needs to keep them open). closer
// is non-nil for a sink holding a connection. Errors name the problem,
// never a secret.
func Build(c Config) (rt alert.Route, info Info, closer func() error, err error) {
	rt = alert.Route{Name: c.Name, MinSeverity: alert.Severity(c.MinSeverity), Attempts: c.Attempts, Backoff: time.Duration(c.Backoff)}
	info = Info{Name: c.Name, Type: c.Type, MinSeverity: c.MinSeverity}
	switch {
	case c.Name == "":
		return rt, info, nil, errors.New("name is required")
	case c.MinSeverity != "" && !rt.MinSeverity.Valid():
		return rt, info, nil, errors.New("min_severity must be info, warning or critical")
	case c.Attempts < 0 || c.Backoff < 0:
		return rt, info, nil, errors.New("attempts and backoff may not be negative")
	}
	roots, err := loadRoots(c.TLSCAFile)
	if err != nil {
		return rt, info, nil, err
	}
	var secret []byte
	if c.SecretFile != "" {
		b, err := os.ReadFile(c.SecretFile)
		if err != nil {
			return rt, info, nil, fmt.Errorf("secret_file: %w", err)
		}
		if secret = []byte(strings.TrimSpace(string(b))); len(secret) == 0 {
			return rt, info, nil, errors.New("secret_file is empty")
		}
	}
	switch c.Type {
	case TypeAlertmanager:
		var header http.Header
		if secret != nil {
			header = http.Header{"Authorization": {"Bearer " + string(secret)}}
		}
		am, err := NewAlertmanager(AlertmanagerConfig{URL: c.URL, Client: httpClient(roots), Header: header})
		if err != nil {
			return rt, info, nil, err
		}
		rt.Notifier = am
		// Open alerts stay open in the Alertmanager only if re-sent.
		rt.Transitions = []alert.Transition{alert.TransitionFiring, alert.TransitionResolved, alert.TransitionRepeat}
		info.Target = c.URL
	case TypeWebhook:
		wh, err := NewWebhook(WebhookConfig{URL: c.URL, Client: httpClient(roots), Secret: secret})
		if err != nil {
			return rt, info, nil, err
		}
		rt.Notifier, info.Target, info.Signed = wh, c.URL, secret != nil
	case TypeSyslog:
		var tlsCfg *tls.Config
		if c.TLS || roots != nil {
			host, _, err := net.SplitHostPort(c.Addr)
			if err != nil {
				return rt, info, nil, fmt.Errorf("addr %q is not host:port", c.Addr)
			}
			tlsCfg = &tls.Config{RootCAs: roots, ServerName: host, MinVersion: tls.VersionTLS12}
		}
		sl, err := NewSyslog(SyslogConfig{Addr: c.Addr, TLS: tlsCfg})
		if err != nil {
			return rt, info, nil, err
		}
		rt.Notifier, info.Target = sl, c.Addr
		return rt, info, sl.Close, nil
	default:
		return rt, info, nil, fmt.Errorf("type %q is not alertmanager, syslog or webhook", c.Type)
	}
	return rt, info, nil, nil
}

// loadRoots reads a PEM CA file; "" means the system roots (nil).
func loadRoots(path string) (*x509.CertPool, error) {
	if path == "" {
		return nil, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("tls_ca_file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("tls_ca_file %s holds no PEM certificate", path)
	}
	return pool, nil
}

// httpClient returns nil (the sink's default client) for the system roots,
// else a client trusting roots that, like the default, does not follow
// redirects.
func httpClient(roots *x509.CertPool) *http.Client {
	if roots == nil {
		return nil
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	return &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}
