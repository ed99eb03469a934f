package broker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/sigil-iot/sigil/pkg/identity"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// hook enforces the rules of the package doc inside mochi.
type hook struct {
	mqtt.HookBase
	b *Broker
}

func (h *hook) ID() string { return "sigil-acl" }

func (h *hook) Provides(x byte) bool {
	return bytes.Contains([]byte{
		mqtt.OnConnectAuthenticate,
		mqtt.OnACLCheck,
		mqtt.OnSessionEstablish,
		mqtt.OnPublish,
	}, []byte{x})
}

// OnConnectAuthenticate admits or refuses a CONNECT. mochi answers a refusal
// with CONNACK "bad username or password" (0x04; 0x86 in MQTT 5).
func (h *hook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	b := h.b
	c, ok := cl.Net.Conn.(*conn)
	if !ok {
		return h.refuse(cl, Identity{ClientID: cl.ID}, errors.New("connection not from the sigil listener"))
	}
	var gen uint64
	if c.site != "" {
		gen = b.generation(bridgeKey(c.site))
	} else if c.cert != nil {
		gen = b.generation(c.deviceID)
	}
	id, err := h.authenticate(cl, c, pk)
	if err != nil {
		return h.refuse(cl, id, err)
	}
	if id.Bootstrap() {
		// Bootstrap sessions never outlive their connection.
		cl.Properties.Clean = true
		cl.Properties.Props.SessionExpiryInterval = 0
		cl.Properties.Props.SessionExpiryIntervalFlag = false
	}
	if id.Bootstrap() && !b.placeBootstrap(c, id.ClientID) {
		// Admitted by every check but without a slot (bootstrap.go): not
		// a refusal of who it is.
		b.overCap.Add(1)
		b.logAnon(slog.LevelInfo, c.src, "broker: bootstrap connection closed: no slot", "client_id", id.ClientID, "remote", cl.Net.Remote)
		_ = c.Close()
		return false
	}
	if !b.admit(c, cl, id, gen) {
		return h.refuse(cl, id, errors.New("disconnected by the fleet during admission"))
	}
	if id.Bootstrap() {
		b.logAnon(slog.LevelDebug, hostPart(cl.Net.Remote), "broker: bootstrap client admitted", "client_id", id.ClientID, "remote", cl.Net.Remote)
		b.bootstrapAdmitted(c)
	} else {
		b.log.Debug("broker: client admitted", "client_id", id.ClientID, "device_id", id.DeviceID, "remote", cl.Net.Remote)
	}
	return true
}

func (h *hook) authenticate(cl *mqtt.Client, c *conn, pk packets.Packet) (Identity, error) {
	b := h.b
	clientID := pk.Connect.ClientIdentifier
	id := Identity{ClientID: clientID}
	if clientID == mqtt.InlineClientId {
		return id, fmt.Errorf("reserved client ID %q", clientID)
	}
	if c.cert != nil {
		id.DeviceID, id.Cert = c.deviceID, c.cert
	}
	if b.cfg.Screen != nil {
		if err := b.cfg.Screen(clientID, id.DeviceID, c.RemoteAddr().String()); err != nil {
			return id, fmt.Errorf("screened out: %w", err)
		}
	}
	if c.site != "" {
		return h.authenticateBridge(cl, c, clientID)
	}
	if c.cert != nil {
		if c.idErr != nil {
			return id, fmt.Errorf("certificate identity: %w", c.idErr)
		}
		if clientID != c.deviceID {
			return id, fmt.Errorf("client ID %q differs from certificate identity %q", clientID, c.deviceID)
		}
		if b.cfg.Gate != nil {
			acc, err := b.cfg.Gate.AdmitDevice(c.deviceID, c.cert)
			if err != nil {
				return id, fmt.Errorf("gate: %w", err)
			}
			id.UpKinds = acc.UpKinds
		}
	} else {
		if !b.cfg.AllowBootstrap {
			return id, errors.New("client certificate required")
		}
		if !wire.ValidID(clientID) {
			return id, fmt.Errorf("invalid bootstrap client ID %q", clientID)
		}
		if ka := time.Duration(pk.Connect.Keepalive) * time.Second; ka == 0 || ka > b.cfg.MaxBootstrapKeepalive {
			return id, fmt.Errorf("keepalive %v: a bootstrap client needs one of 1s to %v", ka, b.cfg.MaxBootstrapKeepalive)
		}
		if ex, ok := b.srv.Clients.Get(clientID); ok && !ex.Closed() {
			if eid, ok := identityOf(ex); !ok || !eid.Bootstrap() {
				return id, fmt.Errorf("client ID %q is held by a connected device", clientID)
			}
		}
		if b.cfg.BootstrapAuth != nil {
			user, pass := "", []byte(nil)
			if pk.Connect.UsernameFlag {
				user = string(pk.Connect.Username)
			}
			if pk.Connect.PasswordFlag {
				pass = pk.Connect.Password
			}
			if err := b.cfg.BootstrapAuth(clientID, user, pass, c.claim); err != nil {
				return id, fmt.Errorf("bootstrap credential: %w", err)
			}
		}
	}
	if cl.ID != clientID {
		return id, errors.New("client ID assigned by the broker")
	}
	if w := cl.Properties.Will; w.Flag != 0 {
		if w.Retain {
			return id, errors.New("retained will")
		}
		if !b.allowed(id, w.TopicName, true) {
			return id, fmt.Errorf("will topic %q not allowed", w.TopicName)
		}
	}
	return id, nil
}

// authenticateBridge admits a bridge (bridge.go): its client ID is the
// one its certificate names, Config.Bridges admits it, and a will, if
// any, is allowed by its topic rule and not retained.
func (h *hook) authenticateBridge(cl *mqtt.Client, c *conn, clientID string) (Identity, error) {
	b := h.b
	id := Identity{ClientID: clientID, Site: c.site, Cert: c.cert}
	if want := identity.BridgeClientID(c.site); clientID != want || cl.ID != clientID {
		return id, fmt.Errorf("bridge client ID %q differs from certificate identity %q", clientID, want)
	}
	if b.cfg.Bridges == nil {
		return id, errors.New("bridges are not admitted on this broker")
	}
	if err := b.cfg.Bridges.AdmitBridge(c.site, c.cert); err != nil {
		return id, fmt.Errorf("bridge gate: %w", err)
	}
	if w := cl.Properties.Will; w.Flag != 0 && (w.Retain || !b.allowed(id, w.TopicName, true)) {
		return id, fmt.Errorf("will topic %q not allowed", w.TopicName)
	}
	return id, nil
}

func (h *hook) refuse(cl *mqtt.Client, id Identity, err error) bool {
	h.b.authRefusals.Add(1)
	if id.DeviceID == "" {
		h.b.logAnon(slog.LevelWarn, hostPart(cl.Net.Remote), "broker: connection refused", "client_id", id.ClientID, "remote", cl.Net.Remote, "err", err)
	} else {
		h.b.log.Warn("broker: connection refused", "client_id", id.ClientID, "device_id", id.DeviceID, "remote", cl.Net.Remote, "err", err)
	}
	h.b.emit(Refused, id, err.Error(), cl.Net.Remote)
	return false
}

// OnSessionEstablish runs just before mochi hands an existing session with
// the same client ID to the new client: a session of another identity is
// emptied so that nothing crosses between identities. Then the existing
// connection is closed, and the new one waits until mochi is done with it:
// mochi's own takeover races the old connection's end (when that
// connection ends by itself while being taken over, it can delete the new
// client from mochi's client table by their shared ID, and the new session
// then neither receives nor delivers to the fleet). With the old
// connection gone first, mochi finds no live client to take over: a clean
// session starts afresh, a persistent one is inherited from the detached
// session as usual.
func (h *hook) OnSessionEstablish(cl *mqtt.Client, _ packets.Packet) {
	ex, ok := h.b.srv.Clients.Get(cl.ID)
	if !ok || ex == cl {
		return
	}
	nid, _ := identityOf(cl)
	eid, ok := identityOf(ex)
	if !ok || eid.DeviceID != nid.DeviceID || eid.Site != nid.Site || eid.Bootstrap() != nid.Bootstrap() {
		h.b.srv.UnsubscribeClient(ex)
		ex.ClearInflights()
		h.b.log.Info("broker: dropped session of another identity", "client_id", cl.ID)
	}
	old, ok := ex.Net.Conn.(*conn)
	if !ok || old.finished == nil {
		return
	}
	_ = h.b.srv.DisconnectClient(ex, packets.ErrSessionTakenOver)
	_ = old.Close()
	t := time.NewTimer(h.b.cfg.HandshakeTimeout)
	defer t.Stop()
	select {
	case <-old.finished:
	case <-t.C:
		h.b.log.Warn("broker: a taken-over connection did not end in time; mochi takes it over", "client_id", cl.ID)
	}
}

// OnACLCheck applies the topic rules. A refused publish disconnects the
// client (see the package doc).
func (h *hook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	id, ok := identityOf(cl)
	if ok && h.b.allowed(id, topic, write) {
		if c, isConn := cl.Net.Conn.(*conn); isConn && c.boot && write {
			c.bootstrapPublished()
		}
		return true
	}
	h.b.aclDenials.Add(1)
	log := h.b.log.Log
	if id.DeviceID == "" {
		// A client without certificate may repeat this at will.
		src := hostPart(cl.Net.Remote)
		log = func(_ context.Context, level slog.Level, msg string, args ...any) {
			h.b.logAnon(level, src, msg, args...)
		}
	}
	if write {
		log(context.Background(), slog.LevelWarn, "broker: publish refused, disconnecting", "client_id", cl.ID, "device_id", id.DeviceID, "topic", topic)
		_ = h.b.srv.DisconnectClient(cl, packets.ErrNotAuthorized)
	} else {
		log(context.Background(), slog.LevelInfo, "broker: subscription refused", "client_id", cl.ID, "device_id", id.DeviceID, "filter", topic)
	}
	return false
}

// OnPublish strips the retain flag from clients' messages.
func (h *hook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if !cl.Net.Inline {
		pk.FixedHeader.Retain = false
	}
	return pk, nil
}

// hostPart is the host of a "host:port" address (the address itself if it
// has no port).
func hostPart(remote string) string {
	if h, _, err := net.SplitHostPort(remote); err == nil {
		return h
	}
	return remote
}
