package mqttpool

import (
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"path"
	"strconv"
	"strings"

	"github.com/sigil-iot/sigil/pkg/wire"
)

// Roles of a broker of the pool.
const (
	// RoleDevice serves enrolled devices: a client certificate of the
	// fleet CA is required, its CN becomes the user name and the client
	// ID, and the ACL limits each device to its own topics.
	RoleDevice = "device"
	// RoleBootstrap serves bootstrap (enrollment) clients, which have no
	// certificate: each is limited to the enroll topics of its own client
	// ID. It is a broker of its own because Mosquitto's client IDs are
	// shared by all the listeners of an instance: an anonymous client
	// there could take a device's.
	RoleBootstrap = "bootstrap"
)

// Files of a pool member's configuration, relative to Member.Dir.
const (
	ConfFile      = "mosquitto.conf"
	CAFile        = "ca.pem"
	CertFile      = "server.pem"
	KeyFile       = "server.key"
	CRLFile       = "crl.pem"
	DynsecFile    = "dynsec.json"
	PasswordFile  = "passwd"
	ACLFile       = "acl"
	FleetACLFile  = "fleet.acl"
	DefaultQueued = 1000
	// DefaultBootstrapConnections bounds a bootstrap broker's anonymous
	// listener when Member.MaxConnections is 0: the embedded broker's
	// bootstrap_clients.
	DefaultBootstrapConnections = 1000
)

// Member describes one Mosquitto 2.0 broker of the pool.
type Member struct {
	Role string
	// Dir is where the files are on the broker's host: mosquitto.conf
	// names them by absolute path there.
	Dir string
	// Listen is the listener devices (RoleDevice) or bootstrap clients
	// (RoleBootstrap) connect to; FleetListen the fleet's own listener
	// (user name and password, no client certificate), best bound to the
	// fleet's network only. "host:port"; an empty host binds every
	// address.
	Listen, FleetListen string
	Topics              wire.Topics
	// Username and Password are the fleet's credentials; only the
	// password's hash is written.
	Username, Password string
	// CAPEM (the fleet CA's trust bundle), CertPEM and KeyPEM (the
	// broker's server certificate and key) and CRLPEM (the fleet's CRL,
	// RoleDevice only).
	CAPEM, CertPEM, KeyPEM, CRLPEM []byte
	// MaxQueued bounds the QoS 1 messages queued per client (Mosquitto's
	// max_queued_messages; default 1000). Beyond it Mosquitto drops
	// messages silently.
	MaxQueued int
	// MaxConnections bounds the connections of the devices' or bootstrap
	// clients' listener (Mosquitto's max_connections); 0: unbounded for a
	// device broker, DefaultBootstrapConnections for a bootstrap broker
	// (its clients are anonymous: it is always bounded).
	MaxConnections int
	// DynsecPlugin is the path of Mosquitto's dynamic security plugin
	// (RoleDevice): with it the fleet can end a device's session
	// (Pool.Kick). Empty: no plugin, and no kick.
	DynsecPlugin string
	// StateDir is where Mosquitto keeps the plugin's state, dynsec.json,
	// which it rewrites (default Dir).
	StateDir string
	// Rand is the salt's entropy (nil: crypto/rand).
	Rand io.Reader
}

// Files returns the member's files by name (relative to Dir) and their
// modes (the key and the password file are for root and the mosquitto
// group: chown them root:mosquitto).
func (m Member) Files() (map[string][]byte, map[string]uint32, error) {
	if m.Role != RoleDevice && m.Role != RoleBootstrap {
		return nil, nil, fmt.Errorf("%w: role %q (want %s or %s)", ErrConfig, m.Role, RoleDevice, RoleBootstrap)
	}
	if !path.IsAbs(m.Dir) || strings.ContainsAny(m.Dir, " \t\r\n#") {
		return nil, nil, fmt.Errorf("%w: directory %q must be absolute, without spaces", ErrConfig, m.Dir)
	}
	listen, err := listenLine(m.Listen)
	if err != nil {
		return nil, nil, err
	}
	fleetListen, err := listenLine(m.FleetListen)
	if err != nil {
		return nil, nil, err
	}
	if m.Listen == m.FleetListen {
		return nil, nil, fmt.Errorf("%w: the fleet needs a listener of its own", ErrConfig)
	}
	if !wire.ValidID(m.Username) || m.Password == "" {
		return nil, nil, fmt.Errorf("%w: the fleet's user name or password", ErrConfig)
	}
	if len(m.CAPEM) == 0 || len(m.CertPEM) == 0 || len(m.KeyPEM) == 0 || (m.Role == RoleDevice && len(m.CRLPEM) == 0) {
		return nil, nil, fmt.Errorf("%w: CA, server certificate and key, and (devices) CRL are required", ErrConfig)
	}
	if m.StateDir == "" {
		m.StateDir = m.Dir
	}
	if !path.IsAbs(m.StateDir) || strings.ContainsAny(m.StateDir+m.DynsecPlugin, " \t\r\n#") {
		return nil, nil, fmt.Errorf("%w: state directory %q or plugin %q", ErrConfig, m.StateDir, m.DynsecPlugin)
	}
	if m.MaxQueued <= 0 {
		m.MaxQueued = DefaultQueued
	}
	hash, err := passwordHash(m.Password, m.Rand)
	if err != nil {
		return nil, nil, err
	}
	p := func(name string) string { return path.Join(m.Dir, name) }
	prefix := m.Topics.Prefix
	if prefix == "" {
		prefix = wire.DefaultPrefix
	}
	if strings.ContainsAny(prefix, "+# \t\r\n") {
		return nil, nil, fmt.Errorf("%w: topic prefix %q", ErrConfig, prefix)
	}
	tls := fmt.Sprintf("certfile %s\nkeyfile %s\n", p(CertFile), p(KeyFile))

	var conf, acl, fleetACL strings.Builder
	fmt.Fprintf(&conf, "# Generated by `sigil broker-config --role %s`: a %s broker of Sigil's pool (docs/BROKERS.md).\n", m.Role, m.Role)
	// A packet as large as the embedded broker takes (fleet/broker), no
	// larger: a protocol message and its envelope.
	fmt.Fprintf(&conf, "persistence false\nmax_queued_messages %d\nmax_packet_size %d\nconnection_messages true\n", m.MaxQueued, wire.MaxMessageSize+4<<10)
	if m.MaxConnections < 0 {
		return nil, nil, fmt.Errorf("%w: max connections %d", ErrConfig, m.MaxConnections)
	}
	if m.MaxConnections == 0 && m.Role == RoleBootstrap {
		m.MaxConnections = DefaultBootstrapConnections
	}
	if m.MaxConnections > 0 {
		listen += fmt.Sprintf("max_connections %d\n", m.MaxConnections)
	}
	files := map[string][]byte{CAFile: m.CAPEM, CertFile: m.CertPEM, KeyFile: m.KeyPEM,
		PasswordFile: []byte(m.Username + ":" + hash + "\n")}
	modes := map[string]uint32{CAFile: 0o644, CertFile: 0o644, KeyFile: 0o640, PasswordFile: 0o640, ConfFile: 0o644, ACLFile: 0o644}
	switch m.Role {
	case RoleDevice:
		// One set of security settings: device certificates identify on
		// the device listener, the fleet's password on its own.
		fmt.Fprintf(&conf, "per_listener_settings false\nallow_anonymous false\npassword_file %s\nacl_file %s\n", p(PasswordFile), p(ACLFile))
		// The connection log also on $SYS/broker/log/N, for the fleet
		// alone: the device sessions its clone detection follows
		// (Config.OnSession).
		conf.WriteString("log_dest stderr\nlog_dest topic\n")
		if m.DynsecPlugin != "" {
			// Devices are unknown to it (it defers to the ACL file); the
			// fleet is its administrator, to end sessions.
			fmt.Fprintf(&conf, "plugin %s\nplugin_opt_config_file %s\n", m.DynsecPlugin, path.Join(m.StateDir, DynsecFile))
			d, err := dynsecConfig(m, prefix)
			if err != nil {
				return nil, nil, err
			}
			files[DynsecFile], modes[DynsecFile] = d, 0o640
		}
		conf.WriteString("\n")
		fmt.Fprintf(&conf, "# Devices: a certificate of the fleet CA, its CN is the user name and the client ID.\n%s%scafile %s\ncrlfile %s\n"+
			"require_certificate true\nuse_identity_as_username true\nuse_username_as_clientid true\n\n", listen, tls, p(CAFile), p(CRLFile))
		fmt.Fprintf(&conf, "# The fleet: user name and password.\n%s%s", fleetListen, tls)
		fmt.Fprintf(&acl, "# Each device reads and writes its own topics only.\npattern write %s/v1/dev/%%u/up/+\npattern read %s/v1/dev/%%u/down/+\n\n", prefix, prefix)
		fmt.Fprintf(&acl, "user %s\ntopic read %s/v1/dev/+/up/+\ntopic write %s/v1/dev/+/down/+\ntopic read %s\n", m.Username, prefix, prefix, logNotice)
		if m.DynsecPlugin != "" {
			fmt.Fprintf(&acl, "topic readwrite %s/#\n", dynsecTopic)
		}
		files[CRLFile] = m.CRLPEM
		modes[CRLFile] = 0o644
	case RoleBootstrap:
		// Settings per listener: anonymous clients on one, the fleet's
		// password on the other, each with its own ACL.
		fmt.Fprintf(&conf, "per_listener_settings true\n\n")
		fmt.Fprintf(&conf, "# Bootstrap clients: no certificate, the enroll topics of their own client ID only.\n%s%sallow_anonymous true\nacl_file %s\n\n", listen, tls, p(ACLFile))
		fmt.Fprintf(&conf, "# The fleet: user name and password.\n%s%sallow_anonymous false\npassword_file %s\nacl_file %s\n", fleetListen, tls, p(PasswordFile), p(FleetACLFile))
		fmt.Fprintf(&acl, "# Each bootstrap client reads and writes the enroll topics of its client ID only.\npattern write %s/v1/enroll/%%c/up/+\npattern read %s/v1/enroll/%%c/down/+\n", prefix, prefix)
		fmt.Fprintf(&fleetACL, "user %s\ntopic read %s/v1/enroll/+/up/+\ntopic write %s/v1/enroll/+/down/+\n", m.Username, prefix, prefix)
		files[FleetACLFile] = []byte(fleetACL.String())
		modes[FleetACLFile] = 0o644
	}
	files[ConfFile] = []byte(conf.String())
	files[ACLFile] = []byte(acl.String())
	return files, modes, nil
}

// dynsecTopic is the dynamic security plugin's control topic.
const dynsecTopic = "$CONTROL/dynamic-security/v1"

// dynsecConfig is the plugin's initial state: the fleet, by its password,
// administers it; nobody else is known to it.
func dynsecConfig(m Member, prefix string) ([]byte, error) {
	salt, key, iterations, err := pbkdf(m.Password, m.Rand)
	if err != nil {
		return nil, err
	}
	type acl struct {
		Type  string `json:"acltype"`
		Topic string `json:"topic"`
		Allow bool   `json:"allow"`
	}
	type roleRef struct {
		Name string `json:"rolename"`
	}
	cfg := map[string]any{
		"defaultACLAccess": map[string]bool{"publishClientSend": false, "publishClientReceive": false, "subscribe": false, "unsubscribe": true},
		"clients": []map[string]any{{"username": m.Username, "password": base64.StdEncoding.EncodeToString(key),
			"salt": base64.StdEncoding.EncodeToString(salt), "iterations": iterations, "roles": []roleRef{{"sigil-fleet"}}}},
		"groups": []any{},
		"roles": []map[string]any{{"rolename": "sigil-fleet", "acls": []acl{
			{"publishClientSend", dynsecTopic + "/#", true}, {"publishClientReceive", dynsecTopic + "/#", true}, {"subscribePattern", dynsecTopic + "/#", true},
			{"publishClientReceive", prefix + "/v1/dev/+/up/+", true}, {"subscribePattern", "$share/+/" + prefix + "/v1/dev/+/up/#", true},
			{"subscribePattern", prefix + "/v1/dev/+/up/#", true}, {"publishClientSend", prefix + "/v1/dev/+/down/+", true},
			{"subscribePattern", logNotice, true}, {"publishClientReceive", logNotice, true},
		}}},
	}
	return json.MarshalIndent(cfg, "", "  ")
}

// listenLine is the `listener` line of a "host:port" address.
func listenLine(addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("%w: listener %q: %w", ErrConfig, addr, err)
	}
	if n, err := strconv.Atoi(port); err != nil || n <= 0 || n > 65535 {
		return "", fmt.Errorf("%w: listener %q: bad port", ErrConfig, addr)
	}
	if strings.ContainsAny(host, " \t\r\n#") {
		return "", fmt.Errorf("%w: listener %q: bad host", ErrConfig, addr)
	}
	if host == "" {
		return "listener " + port + "\n", nil
	}
	return "listener " + port + " " + host + "\n", nil
}

// pbkdf derives a password's key as Mosquitto 2.0 does (PBKDF2-SHA512,
// 101 iterations, a 12-byte salt).
func pbkdf(password string, r io.Reader) (salt, key []byte, iterations int, err error) {
	if r == nil {
		r = rand.Reader
	}
	iterations = 101
	salt = make([]byte, 12)
	if _, err := io.ReadFull(r, salt); err != nil {
		return nil, nil, 0, fmt.Errorf("mqttpool: salt: %w", err)
	}
	if key, err = pbkdf2.Key(sha512.New, password, salt, iterations, sha512.Size); err != nil {
		return nil, nil, 0, fmt.Errorf("mqttpool: password hash: %w", err)
	}
	return salt, key, iterations, nil
}

// passwordHash is a Mosquitto 2.0 password file hash: PBKDF2-SHA512,
// "$7$<iterations>$<salt>$<hash>" in base64.
func passwordHash(password string, r io.Reader) (string, error) {
	salt, key, iterations, err := pbkdf(password, r)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("$7$%d$%s$%s", iterations, base64.StdEncoding.EncodeToString(salt), base64.StdEncoding.EncodeToString(key)), nil
}
