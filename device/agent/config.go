package agent

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/sigil-iot/sigil/pkg/config"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// Config is sigild's configuration. The JSON field names are the
// configuration file's keys (see docs/CONFIG.md).
type Config struct {
	// TPM selects the TPM: a device path (default /dev/tpmrm0),
	// swtpm://HOST:PORT, or sim:// when the simulator is linked (never in
	// the device binary).
	TPM string `json:"tpm"`
	// State is the state store file. Default /var/lib/sigild/state.db.
	State string `json:"state"`
	// Broker is HOST:PORT of the fleet's MQTT TLS listener. Required.
	Broker string `json:"broker"`
	// ServerName is the TLS name expected on the broker's certificate.
	// Default: the host part of Broker.
	ServerName string `json:"server_name"`
	// BootstrapBroker is HOST:PORT of the listener the device enrolls
	// through, when the fleet's bootstrap clients have brokers of their
	// own (a pool of Mosquitto brokers, docs/BROKERS.md). Default: Broker.
	BootstrapBroker string `json:"bootstrap_broker"`
	// BootstrapServerName is the TLS name expected on BootstrapBroker's
	// certificate. Default: ServerName when BootstrapBroker is unset,
	// else the host part of BootstrapBroker.
	BootstrapServerName string `json:"bootstrap_server_name"`
	// FleetCA is a PEM file with the fleet CA certificate trusted for the
	// first enrollment's bootstrap connection. Once enrolled the device
	// trusts the bundle the fleet delivered (and updates it through CA
	// rotations), for its mTLS session and for re-enrollment alike; a
	// FleetCA file that still exists is trusted beside it. Required until
	// enrolled.
	FleetCA string `json:"fleet_ca"`
	// Model and Firmware describe the device to the fleet. Model is required.
	Model    string `json:"model"`
	Firmware string `json:"firmware"`
	// Serial is the identity the device claims (hardware serial number).
	// Default: the contents of /etc/machine-id, else empty.
	Serial string `json:"serial"`
	// Token is an enrollment token; TokenFile reads it from a file instead
	// (preferred: keep it out of the config). Optional when the fleet trusts
	// the EK by manufacturer CA, allow-list or operator approval.
	Token     string `json:"token"`
	TokenFile string `json:"token_file"`
	// ClaimCert and ClaimKey are PEM files of a claim credential: a batch
	// certificate from the device maker that lets the device open its
	// bootstrap session when the fleet requires a credential at connect.
	// It is not the device's identity (that is born in the TPM). Optional.
	ClaimCert string `json:"claim_cert"`
	ClaimKey  string `json:"claim_key"`
	// TopicPrefix is the first MQTT topic level. Default "sigil".
	TopicPrefix string `json:"topic_prefix"`
	// RetryMin and RetryMax bound the jittered exponential backoff between
	// attempts to enroll, connect or renew (a refused renewal waits at
	// least the RetryAfter of the fleet's answer too, a refused enrollment
	// that long plus jitter instead of the backoff; an unanswered one is
	// asked again after RetryMax, at least 2m). Defaults 1s and 5m.
	RetryMin Duration `json:"retry_min"`
	RetryMax Duration `json:"retry_max"`
	// PendingRetry is how often a device waiting for approval asks again
	// (it also asks at once when the fleet says it was approved). Default 30s.
	PendingRetry Duration `json:"pending_retry"`
	// AttestInterval is how often the device attests on its own schedule
	// (jittered ±10%), each time with a nonce it asks the fleet for. It also
	// attests on every connect and whenever the fleet challenges it.
	// Default 10m; a negative value disables the schedule.
	AttestInterval Duration `json:"attest_interval"`
	// EventLog is the measured-boot event log sent with quotes when the
	// fleet asks for it. Default
	// /sys/kernel/security/tpm0/binary_bios_measurements; "-" disables it.
	// A missing file means the platform has none.
	EventLog string `json:"event_log"`
	// IMALog is the IMA runtime measurement log, sent when the fleet asks.
	// Default "" (not sent).
	IMALog string `json:"ima_log"`
	// RenewAt is the fraction of the certificate lifetime after which the
	// device renews it (new TPM key, certified by the AK, fresh quote).
	// Default 0.667.
	RenewAt float64 `json:"renew_at"`
	// Control is the Unix socket `sigild status` reads. Default
	// /run/sigild/sigild.sock; "-" disables it.
	Control string `json:"control"`
	// SSHHostKeys are OpenSSH host public key files (e.g.
	// /etc/ssh/ssh_host_ecdsa_key.pub) the fleet certifies after each
	// passing attestation of a session. Default none: the feature is off.
	SSHHostKeys []string `json:"ssh_host_keys"`
	// SSHCertDir is where the host certificates are written, named as
	// OpenSSH expects ("<key>-cert.pub"); created if missing. Default the
	// directory of State + "/ssh" (/var/lib/sigild/ssh), which the shipped
	// systemd unit keeps writable (StateDirectory) while the rest of the
	// system, /etc/ssh included, is read-only to sigild.
	SSHCertDir string `json:"ssh_cert_dir"`
	// SSHTPMHostKey, when set, is the path of an OpenSSH public key file
	// sigild writes for an SSH host key it creates in the TPM (the private
	// key never leaves it); its directory is created if missing. sshd uses
	// it through SSHAgentSocket (HostKeyAgent). The key is certified like
	// SSHHostKeys. Under the shipped systemd unit it must be under the
	// state directory (e.g. /var/lib/sigild/ssh/ssh_host_tpm_key.pub).
	// Default "" (off).
	SSHTPMHostKey string `json:"ssh_tpm_host_key"`
	// SSHAgentSocket is the ssh-agent socket sigild serves the TPM host key
	// on, mode 0600. Default /run/sigild/ssh-agent.sock.
	SSHAgentSocket string `json:"ssh_agent_socket"`
	// WorkloadAPISocket, when set, is the unix socket on which sigild
	// serves the SPIFFE Workload API to local processes (a sigild built
	// with the workloadapi tag; others refuse the setting). Default ""
	// (off).
	WorkloadAPISocket string `json:"workload_api_socket"`
	// SSHReloadPIDFile names a PID file (e.g. /run/sshd.pid) whose process
	// gets SIGHUP after new certificates are written. Default "" (none).
	SSHReloadPIDFile string `json:"ssh_reload_pid_file"`
	// SSHAccessDir, when set, is where sigild keeps sshd's just-in-time
	// operator access files from the fleet: user_ca.pub
	// (TrustedUserCAKeys), revoked_keys (RevokedKeys, an OpenSSH KRL) and
	// principals/<login> (AuthorizedPrincipalsFile <dir>/principals/%u).
	// Default "" (off). Under the shipped systemd unit it must be under
	// the state directory (e.g. /var/lib/sigild/ssh/access).
	SSHAccessDir string `json:"ssh_access_dir"`
	// SSHAccessLog is sshd's log file (e.g. /var/log/auth.log) whose
	// certificate logins and disconnects sigild reports to the fleet.
	// Default "" (none reported).
	SSHAccessLog string `json:"ssh_access_log"`
	// UpdateBackend installs firmware updates: "file:DIR" keeps two slot
	// files and a boot record in DIR (simulators and tests; it changes no
	// real firmware), "hook:PATH" runs a program for each step (real
	// boards; the contract is in device/update's documentation), "-"
	// turns updates off. Default "file:" + the directory of State +
	// "/slots".
	UpdateBackend string `json:"update_backend"`
	// UpdateDir holds downloaded images and partial downloads. Default
	// the directory of State + "/update".
	UpdateDir string `json:"update_dir"`
	// UpdateServer is HOST:PORT of the fleet's HTTPS listener images are
	// downloaded from (with the device's mTLS identity). Default the host
	// of Broker, port 8443.
	UpdateServer string `json:"update_server"`
	// UpdateHealth is a program the file backend runs as its health check
	// after switching, as PROG SLOT IMAGE (exit status 0: healthy).
	// Default: the new slot's image exists and is not empty.
	UpdateHealth string `json:"update_health"`
	// UpdateSlotDevices maps each slot of the hook backend to the file or
	// block device holding its image (e.g. {"a": "/dev/mmcblk0p2", "b":
	// "/dev/mmcblk0p3"}), read for adaptive updates: blocks of the booted
	// slot the new release shares are not downloaded. Default none: an
	// adaptive update then fetches every block it does not hold.
	UpdateSlotDevices map[string]string `json:"update_slot_devices"`
	// TelemetryInterval is how often a telemetry point (CPU, memory,
	// disk, network, processes, listening ports, TPM health, certificate
	// expiry, the daemon's counters) is stored in the durable outbox and
	// sent to the fleet. Default 60s; a negative value disables telemetry.
	TelemetryInterval Duration `json:"telemetry_interval"`
	// TelemetryOutboxPoints and TelemetryOutboxBytes bound the outbox that
	// holds points until the fleet acknowledges them; beyond either bound
	// the oldest are dropped, counted and reported. Defaults 20000 points
	// and 8 MiB.
	TelemetryOutboxPoints int   `json:"telemetry_outbox_points"`
	TelemetryOutboxBytes  int64 `json:"telemetry_outbox_bytes"`
	// TelemetryAuthLog is a log file whose failed-login lines (sshd, PAM,
	// login, su) are counted as auth.failures. Default /var/log/auth.log
	// when it exists; "-" disables it.
	TelemetryAuthLog string `json:"telemetry_auth_log"`
	// LogLevel is debug, info, warn or error. Default info.
	LogLevel string `json:"log_level"`
}

// Duration is a duration written as "30s".
type Duration = config.Duration

// LoadConfig reads a JSON configuration file. Unknown keys are an error, so a
// typo is not silently ignored.
func LoadConfig(path string) (Config, error) {
	var c Config
	err := config.Load(path, &c)
	return c, err
}

func (c *Config) setDefaults() {
	if c.TPM == "" {
		c.TPM = "/dev/tpmrm0"
	}
	if c.State == "" {
		c.State = "/var/lib/sigild/state.db"
	}
	if c.ServerName == "" {
		if h, _, err := net.SplitHostPort(c.Broker); err == nil {
			c.ServerName = h
		}
	}
	if c.BootstrapBroker == "" {
		c.BootstrapBroker = c.Broker
		if c.BootstrapServerName == "" {
			c.BootstrapServerName = c.ServerName
		}
	} else if c.BootstrapServerName == "" {
		if h, _, err := net.SplitHostPort(c.BootstrapBroker); err == nil {
			c.BootstrapServerName = h
		}
	}
	if c.TopicPrefix == "" {
		c.TopicPrefix = wire.DefaultPrefix
	}
	if c.RetryMin == 0 {
		c.RetryMin = Duration(time.Second)
	}
	if c.RetryMax == 0 {
		c.RetryMax = Duration(5 * time.Minute)
	}
	if c.PendingRetry == 0 {
		c.PendingRetry = Duration(30 * time.Second)
	}
	if c.SSHCertDir == "" {
		c.SSHCertDir = filepath.Join(filepath.Dir(c.State), "ssh")
	}
	if c.SSHTPMHostKey != "" && c.SSHAgentSocket == "" {
		c.SSHAgentSocket = "/run/sigild/ssh-agent.sock"
	}
	if c.RenewAt == 0 {
		c.RenewAt = 0.667
	}
	if c.AttestInterval == 0 {
		c.AttestInterval = Duration(10 * time.Minute)
	}
	if c.EventLog == "" {
		c.EventLog = "/sys/kernel/security/tpm0/binary_bios_measurements"
	}
	if c.Control == "" {
		c.Control = "/run/sigild/sigild.sock"
	}
	if c.TelemetryInterval == 0 {
		c.TelemetryInterval = Duration(DefaultTelemetryInterval)
	}
	c.setUpdateDefaults()
	if c.Serial == "" {
		if b, err := os.ReadFile("/etc/machine-id"); err == nil {
			c.Serial = strings.TrimSpace(string(b))
		}
	}
}

// Validate reports every problem with the configuration at once.
func (c *Config) Validate() error {
	var errs []error
	if c.Broker == "" {
		errs = append(errs, errors.New("broker is required"))
	} else if _, _, err := net.SplitHostPort(c.Broker); err != nil {
		errs = append(errs, fmt.Errorf("broker: %w", err))
	}
	if c.BootstrapBroker != "" {
		if _, _, err := net.SplitHostPort(c.BootstrapBroker); err != nil {
			errs = append(errs, fmt.Errorf("bootstrap_broker: %w", err))
		}
	}
	if c.Model == "" {
		errs = append(errs, errors.New("model is required"))
	}
	if (c.ClaimCert == "") != (c.ClaimKey == "") {
		errs = append(errs, errors.New("claim_cert and claim_key go together"))
	}
	if c.Token != "" && c.TokenFile != "" {
		errs = append(errs, errors.New("set token or token_file, not both"))
	}
	if c.RenewAt < 0.1 || c.RenewAt > 0.95 {
		errs = append(errs, errors.New("renew_at must be between 0.1 and 0.95"))
	}
	if c.RetryMin > c.RetryMax {
		errs = append(errs, errors.New("retry_min exceeds retry_max"))
	}
	if !validTopicLevel(c.TopicPrefix) {
		errs = append(errs, errors.New("topic_prefix must be one topic level without wildcards"))
	}
	if err := c.validateSSH(); err != nil {
		errs = append(errs, err)
	}
	if err := c.validateAccess(); err != nil {
		errs = append(errs, err)
	}
	if c.TelemetryOutboxPoints < 0 || c.TelemetryOutboxBytes < 0 {
		errs = append(errs, errors.New("telemetry_outbox_points and telemetry_outbox_bytes may not be negative"))
	}
	if err := c.validateUpdate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func validTopicLevel(s string) bool {
	return s != "" && !strings.ContainsAny(s, "+#/\x00")
}
