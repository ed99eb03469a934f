package bridge_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/bridge"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/pkg/envelope"
	"github.com/sigil-iot/sigil/pkg/envelope/envelopetest"
)

// devices is a one-device inventory.
type devices map[string]*inventory.Device

func (d devices) Device(_ context.Context, id string) (*inventory.Device, error) {
	if dev, ok := d[id]; ok {
		c := *dev
		return &c, nil
	}
	return nil, inventory.ErrNotFound
}

// TestVerifyDeviceUsesTheCurrentCertificateAndState: a bridged message
// signed with the key of the device's current certificate verifies; the
// same message is refused once that certificate is revoked or renewed
// away, when the device is decommissioned, for another device's topic,
// replayed, or signed with another key.
func TestVerifyDeviceUsesTheCurrentCertificateAndState(t *testing.T) {
	f := newFixture(t)
	now := f.clock()
	key := envelopetest.Key()
	cert, err := f.ca.IssueDevice("d1", key.Public(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	serial := hex.EncodeToString(cert.SerialNumber.Bytes())
	dev := func() *inventory.Device {
		return &inventory.Device{ID: "d1", State: inventory.StateActive, CertSerial: serial, CertDER: cert.Raw,
			Certs: []inventory.Cert{{Serial: serial, NotAfter: cert.NotAfter}}}
	}
	topic := "sigil/site/plant1/v1/dev/d1/up/telemetry"
	msg, err := envelope.Sign(rand.Reader, key, envelope.Header{KeyID: serial, Counter: 5, Topic: topic}, envelopetest.Payload())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	v, st, err := bridge.VerifyDevice(ctx, devices{"d1": dev()}, "fleet.test", "d1", topic, msg, 4, now)
	if err != nil || st != inventory.StateActive || v.Counter != 5 {
		t.Fatalf("VerifyDevice = %+v, %s, %v", v, st, err)
	}

	revoked := dev()
	revoked.Certs[0].Revoked = true
	renewed := dev()
	other, err := f.ca.IssueDevice("d1", newKey(t).Public(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	renewed.CertDER, renewed.CertSerial = other.Raw, hex.EncodeToString(other.SerialNumber.Bytes())
	renewed.Certs = append(renewed.Certs, inventory.Cert{Serial: renewed.CertSerial, NotAfter: other.NotAfter})
	gone := dev()
	gone.State = inventory.StateDecommissioned
	cases := []struct {
		name  string
		d     *inventory.Device
		id    string
		topic string
		after uint64
		at    time.Time
		want  error
	}{
		{"revoked", revoked, "d1", topic, 4, now, bridge.ErrNoCurrentCert},
		{"expired", dev(), "d1", topic, 4, now.Add(2 * time.Hour), bridge.ErrNoCurrentCert},
		{"renewed away", renewed, "d1", topic, 4, now, envelope.ErrKey},
		{"decommissioned", gone, "d1", topic, 4, now, bridge.ErrNoCurrentCert},
		{"replayed", dev(), "d1", topic, 5, now, envelope.ErrReplay},
		{"another topic", dev(), "d1", "sigil/site/plant2/v1/dev/d1/up/telemetry", 4, now, envelope.ErrTopic},
		{"another device's record", dev(), "d2", "sigil/site/plant1/v1/dev/d2/up/telemetry", 4, now, bridge.ErrNoCurrentCert},
	}
	for _, c := range cases {
		_, _, err := bridge.VerifyDevice(ctx, devices{c.id: c.d}, "fleet.test", c.id, c.topic, msg, c.after, c.at)
		if !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
	forged, err := envelope.Sign(rand.Reader, envelopetest.Other(), envelope.Header{KeyID: serial, Counter: 6, Topic: topic}, envelopetest.Payload())
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := bridge.VerifyDevice(ctx, devices{"d1": dev()}, "fleet.test", "d1", topic, forged, 5, now); !errors.Is(err, envelope.ErrSignature) {
		t.Errorf("forged: %v", err)
	}
	if _, _, err := bridge.VerifyDevice(ctx, devices{}, "fleet.test", "d1", topic, msg, 4, now); !errors.Is(err, inventory.ErrNotFound) {
		t.Errorf("unknown device: %v", err)
	}
}
