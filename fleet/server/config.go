package server

import (
	"os"
	"time"

	"github.com/sigil-iot/sigil/fleet/access"
	"github.com/sigil-iot/sigil/fleet/alert"
	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/broker"
	"github.com/sigil-iot/sigil/fleet/crl"
	"github.com/sigil-iot/sigil/fleet/governance"
	"github.com/sigil-iot/sigil/fleet/sso"
	"github.com/sigil-iot/sigil/fleet/workload"
	"github.com/sigil-iot/sigil/pkg/config"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// Config is sigil serve's configuration; JSON keys are the file's keys
// (docs/CONFIG.md).
type Config struct {
	// DataDir holds the CA, the inventory and the admin token. Default
	// /var/lib/sigil.
	DataDir string `json:"data_dir"`
	// DatabaseURL, when set, keeps the stores that support it in this
	// PostgreSQL database (postgres://USER@HOST:PORT/DB?sslmode=…; the
	// password is better given by PGPASSWORD or a .pgpass file than in
	// the URL), migrated at start. So far: the inventory, the audit log,
	// operators (users, sessions, API tokens, login throttling), the
	// attestation history, the reference policies and approvals. The other stores stay in DataDir. Default "": everything
	// in bbolt files in DataDir.
	DatabaseURL string `json:"database_url"`
	// MQTTAddr is the broker's TLS listener. Default ":8883".
	MQTTAddr string `json:"mqtt_addr"`
	// BrokerPool, when set, replaces the embedded broker (and MQTTAddr)
	// with a pool of Mosquitto brokers the fleet connects to
	// (docs/BROKERS.md). Default: the embedded broker.
	BrokerPool *BrokerPool `json:"broker_pool"`
	// APIAddr is the HTTPS API listener. Default ":8443".
	APIAddr string `json:"api_addr"`
	// Hostnames are the DNS names and IP addresses on the server
	// certificate. Default: localhost, 127.0.0.1, ::1 and the host name.
	Hostnames []string `json:"hostnames"`
	// TrustDomain is the SPIFFE trust domain of device IDs. Default
	// "sigil.local".
	TrustDomain string `json:"trust_domain"`
	// EKCADir is a directory of trusted TPM manufacturer CA certificates
	// (PEM or DER, roots and intermediates). Optional.
	EKCADir string `json:"ek_ca_dir"`
	// EKAllowList is a file of EK fingerprints (SHA-256 of the PKIX public
	// key, hex), one per line, '#' comments. Optional.
	EKAllowList string `json:"ek_allowlist"`
	// ManualApproval holds EKs no other path trusts as pending until an
	// operator approves them. Default false (they are refused).
	ManualApproval bool `json:"manual_approval"`
	// ReleaseTrust is the release trust set file (`sigil firmware trust`
	// writes it): the keys, and how many of them must sign, that firmware
	// releases need. Enrolled devices get it. Unset, firmware releases and
	// campaigns are off and their routes answer 501.
	ReleaseTrust string `json:"release_trust"`
	// ReleaseTrustRotations are the signed rotations from ReleaseTrust to
	// the current set, in order; devices get them after each hello.
	ReleaseTrustRotations []ReleaseRotation `json:"release_trust_rotations"`
	// FirmwareApprovals is how many people other than the uploader must
	// approve a release. Default 1.
	FirmwareApprovals int `json:"firmware_approvals"`
	// TwoPersonRule holds dangerous changes (CA rotation, policy and secret
	// changes, fleet-wide rotation jobs; user creation, role changes and
	// API tokens that may approve) for a second person's approval
	// (GET /api/v1/approvals). Default false; turn it on once a second
	// operator with security.approve exists.
	TwoPersonRule bool `json:"two_person_rule"`
	// APIRateLimit is the API requests per second each client address may
	// make, in bursts of APIRateBurst; 0 means 50 (bursts of 200), negative
	// means no limit.
	APIRateLimit float64 `json:"api_rate_limit"`
	APIRateBurst int     `json:"api_rate_burst"`
	// DeviceLifetime is the device certificate lifetime. Default 24h.
	DeviceLifetime config.Duration `json:"device_lifetime"`
	// TopicPrefix is the first MQTT topic level. Default "sigil".
	TopicPrefix string `json:"topic_prefix"`
	// AllowBootstrap lets clients without a device certificate connect to
	// their own enrollment topics. Default true; set false once every
	// device is enrolled.
	AllowBootstrap *bool `json:"allow_bootstrap"`
	// BootstrapCredential requires a credential at CONNECT from bootstrap
	// clients: a claim certificate (ClaimCADir) or an enrollment token as
	// the MQTT password (valid, or already used by this device, which is
	// how a known device re-enrolls). Default false: bootstrap clients are
	// anonymous but limited to their own enrollment topics.
	BootstrapCredential bool `json:"bootstrap_credential"`
	// ClaimCADir is a directory of claim CA certificates (PEM): batch
	// credentials a device maker installs for the bootstrap connection.
	ClaimCADir string `json:"claim_ca_dir"`
	// BootstrapLimits bound the broker's connections without a device
	// certificate (fleet/broker bootstrap.go); zero values take the
	// broker's defaults.
	BootstrapLimits
	// AttestInterval is the devices' expected attestation interval (their
	// attest_interval); StaleAfter missed intervals or unanswered challenges
	// flag a device stale. Defaults 10m and 3.
	AttestInterval config.Duration `json:"attest_interval"`
	StaleAfter     int             `json:"stale_after"`
	// VerdictMaxAge bounds the age of the passing attestation on which
	// SSH host certificates and secrets go out; the pass must also be on
	// a nonce of the device's current session. Default StaleAfter ×
	// AttestInterval (30m).
	VerdictMaxAge config.Duration `json:"verdict_max_age"`
	// AttestPCRs are the PCRs quoted in each bank. Default 0-9 and 14.
	AttestPCRs []int `json:"attest_pcrs"`
	// AttestBanks are the PCR banks quoted, one quote each: "sha256"
	// (default), "sha1", "sha384". Every device must have them.
	AttestBanks []string `json:"attest_banks"`
	// SSHPrincipals are the names on devices' SSH host certificates,
	// templates with "{id}" (device ID) and "{domain}" (trust domain).
	// Default ["{id}", "{id}.{domain}"].
	SSHPrincipals []string      `json:"ssh_principals"`
	Access        access.Policy `json:"access"` // bounds just-in-time operator SSH access (access.Policy: 8h, logins ["root"] by default)
	// AlertSinks are where alert notifications go (AlertSink,
	// sink.Config). Default none: alerts are kept and served by the API only.
	AlertSinks []AlertSink `json:"alert_sinks"`
	// AlertFlood limits how many new alerts open per window
	// (alert.FloodConfig); the rest are held back and summarized. Default 20 per
	// rule and 100 fleet-wide per 10 minutes.
	AlertFlood AlertFlood `json:"alert_flood"`
	// LoginThrottle tunes the operators' login throttle; zero fields keep
	// its defaults.
	LoginThrottle auth.ThrottleConfig `json:"login_throttle"`
	SSO           sso.Config          `json:"sso"` // the operators' single sign-on (sso.Config)
	crl.Settings                      // crl_min_interval: the CRL's publication (crl.Settings)
	// LogLevel is debug, info, warn or error.
	LogLevel string `json:"log_level"`
	// DebugAddr, if set, is a loopback address serving Go's profiles
	// (net/http/pprof, /debug/pprof/) without authentication. Default
	// off; any other address is refused (fleet/profile).
	DebugAddr string `json:"debug_addr"`
	// GovernanceConfig: dormant_after, dormant_revoke, silent_after,
	// governance_interval (governance.Settings).
	GovernanceConfig
	workload.Options // workload_issuer, workload_*_ttl, workload_key_rotation, workload_max_risk
}

func (c *Config) setDefaults() {
	if c.DataDir == "" {
		c.DataDir = "/var/lib/sigil"
	}
	if c.MQTTAddr == "" {
		c.MQTTAddr = ":8883"
	}
	if c.APIAddr == "" {
		c.APIAddr = ":8443"
	}
	if len(c.Hostnames) == 0 {
		c.Hostnames = []string{"localhost", "127.0.0.1", "::1"}
		if h, err := os.Hostname(); err == nil && h != "" {
			c.Hostnames = append(c.Hostnames, h)
		}
	}
	if c.TrustDomain == "" {
		c.TrustDomain = "sigil.local"
	}
	if c.DeviceLifetime == 0 {
		c.DeviceLifetime = config.Duration(24 * time.Hour)
	}
	if c.TopicPrefix == "" {
		c.TopicPrefix = wire.DefaultPrefix
	}
	if c.AllowBootstrap == nil {
		t := true
		c.AllowBootstrap = &t
	}
}

// BootstrapLimits are the bootstrap connection bounds of Config
// (broker.BootstrapLimits).
type BootstrapLimits = broker.BootstrapLimits

// GovernanceConfig is the identity-governance part of Config
// (governance.Settings). It is embedded, so its keys sit at the top level
// of the configuration file (docs/CONFIG.md).
type GovernanceConfig = governance.Settings

// AlertFlood is the alert_flood configuration (alert.FloodConfig).
type AlertFlood = alert.FloodConfig
