package mqttpool

import (
	"bytes"
	"strings"
	"sync"
	"time"

	"github.com/sigil-iot/sigil/pkg/wire"
)

// Device sessions from the brokers' connection log.
//
// Mosquitto tells no client when another one connects, but it logs each
// connection (connection_messages), and a device broker configured by
// Member publishes its log on $SYS/broker/log/<level> (log_dest topic),
// which only the fleet's user may read. The pool reads the lines about
// clients of the device brokers and reports each device session opened
// and closed (Config.OnSession) with the address the broker saw: what the
// embedded broker's connection events give the fleet's clone detection
// (fleet/governance), without the certificate, which the log does not
// name. Mosquitto binds a device's client ID to its certificate's CN, the
// device ID, and closes the older of two connections with one client ID
// (a takeover): two holders of one identity on one broker take it from
// each other, again and again, from their two addresses; on two brokers
// both sessions stay open at once.

// logNotice is the connection log's topic: Mosquitto's notice level (a
// client connected or disconnected).
const logNotice = "$SYS/broker/log/N"

// SessionEvent is a device session a broker of the pool opened or closed.
type SessionEvent struct {
	Broker   string // the broker's address in the pool
	DeviceID string // the client ID, which the broker bound to the certificate
	Remote   string // the device's address as the broker saw it ("host:port")
	Opened   bool   // false: closed (disconnected, taken over, or the broker lost)
	Time     time.Time
}

// logLine is what a connection log line says.
type logLine struct {
	kind     logKind
	clientID string
	remote   string // for logConnected
}

type logKind int

const (
	logConnected logKind = iota + 1 // "New client connected from ADDR as ID (…)."
	logClosed                       // "Client ID disconnected.", "Client ID closed its connection.", …
)

// parseLogLine reads a Mosquitto 2.0 connection log line ("<unix time>:
// <message>", as published on $SYS/broker/log/…). ok is false for any
// other line, and for a connection whose user name is not its client ID
// (not a device's). Client IDs are returned as logged: the caller keeps
// only valid device IDs.
func parseLogLine(payload []byte) (l logLine, ok bool) {
	_, msg, found := bytes.Cut(payload, []byte(": "))
	if !found || len(msg) > 1024 {
		return logLine{}, false
	}
	s := string(msg)
	if rest, ok := strings.CutPrefix(s, "New client connected from "); ok {
		remote, rest, ok := strings.Cut(rest, " as ")
		if !ok {
			return logLine{}, false
		}
		id, params, ok := strings.Cut(rest, " (")
		if !ok || id == "" || remote == "" {
			return logLine{}, false
		}
		// A device's user name is its certificate's name, which the
		// broker made its client ID too (use_username_as_clientid): the
		// fleet's own connections log another user name, or none.
		_, user, ok := strings.Cut(params, "u'")
		if !ok {
			return logLine{}, false
		}
		if user, _, ok = strings.Cut(user, "'"); !ok || user != id {
			return logLine{}, false
		}
		return logLine{kind: logConnected, clientID: id, remote: remote}, true
	}
	for _, p := range []struct {
		prefix, suffix string
		kind           logKind
	}{
		{"Client ", " closed its connection.", logClosed},
		{"Client ", " disconnected.", logClosed},
		{"Client ", " disconnected, not authorised.", logClosed},
		{"Client ", " has exceeded timeout, disconnecting.", logClosed},
		{"Socket error on client ", ", disconnecting.", logClosed},
	} {
		if id, ok := strings.CutPrefix(s, p.prefix); ok {
			if id, ok = strings.CutSuffix(id, p.suffix); ok && id != "" && !strings.ContainsAny(id, " ") {
				return logLine{kind: p.kind, clientID: id}, true
			}
		}
	}
	return logLine{}, false
}

// sessionLog follows the device sessions each broker's log reported open,
// so that a takeover or a lost broker closes them.
type sessionLog struct {
	mu   sync.Mutex
	open map[string]map[string]string // broker -> device ID -> remote
}

// line applies a log line of broker to the open sessions and returns the
// events it makes: a connect opens a session, and then closes the one it
// took over (Mosquitto logs no disconnect for it), so that the clone
// detection sees the two overlap as the embedded broker's events show a
// takeover; a disconnect closes one. Lines about other clients than
// devices (the fleet's own) are ignored.
func (s *sessionLog) line(broker string, payload []byte, now time.Time) []SessionEvent {
	l, ok := parseLogLine(payload)
	if !ok || !wire.ValidID(l.clientID) {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.open == nil {
		s.open = map[string]map[string]string{}
	}
	devs := s.open[broker]
	if devs == nil {
		devs = map[string]string{}
		s.open[broker] = devs
	}
	old, had := devs[l.clientID]
	var out []SessionEvent
	if l.kind == logConnected {
		devs[l.clientID] = l.remote
		out = append(out, SessionEvent{Broker: broker, DeviceID: l.clientID, Remote: l.remote, Opened: true, Time: now})
		if had && old != l.remote {
			out = append(out, SessionEvent{Broker: broker, DeviceID: l.clientID, Remote: old, Time: now})
		}
		return out
	}
	if had {
		delete(devs, l.clientID)
		out = append(out, SessionEvent{Broker: broker, DeviceID: l.clientID, Remote: old, Time: now})
	}
	return out
}

// lost closes every session broker reported open: the fleet no longer
// hears about them (its connection to the broker, or the broker, is gone).
func (s *sessionLog) lost(broker string, now time.Time) []SessionEvent {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []SessionEvent
	for id, remote := range s.open[broker] {
		out = append(out, SessionEvent{Broker: broker, DeviceID: id, Remote: remote, Time: now})
	}
	delete(s.open, broker)
	return out
}
