package mqttpool

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/sigil-iot/sigil/pkg/wire"
)

// ErrDynsec: a device broker's dynamic security plugin did not answer a
// request, or refused it (no plugin: Member.DynsecPlugin unset).
var ErrDynsec = errors.New("mqttpool: the broker's dynamic security plugin did not answer")

// dynsecResponseTopic is where the plugin answers its commands.
const dynsecResponseTopic = dynsecTopic + "/response"

// dynsecTimeout bounds the wait for the plugin's answer.
const dynsecTimeout = 10 * time.Second

// dynsecResponse is one answer of the plugin.
type dynsecResponse struct {
	Command     string          `json:"command"`
	Error       string          `json:"error"`
	Data        json.RawMessage `json:"data"`
	Correlation string          `json:"correlationData"`
}

// QuarantinedAt lists the devices the device broker at broker holds
// quarantined: the quarantine roles of its dynamic security plugin
// (Quarantine), which may be more than the fleet's (a release the broker
// missed while it was down) or fewer (a quarantine it missed, or its
// state lost). It fails with ErrDynsec when the plugin does not answer.
func (p *Pool) QuarantinedAt(ctx context.Context, broker string) ([]string, error) {
	if !contains(p.cfg.Devices, broker) {
		return nil, fmt.Errorf("mqttpool: %q is not a device broker of the pool", broker)
	}
	p.mu.Lock()
	c := p.clients[broker]
	p.mu.Unlock()
	if c == nil || !c.IsConnectionOpen() {
		return nil, ErrNotConnected
	}
	p.dynsec.Lock()
	defer p.dynsec.Unlock()
	id := randomID()
	answer := make(chan dynsecResponse, 1)
	// At QoS 0: nothing to acknowledge. Every replica subscribed gets
	// every answer; the correlation picks this request's.
	tok := c.Subscribe(dynsecResponseTopic, 0, func(_ mqtt.Client, m mqtt.Message) {
		var r struct {
			Responses []dynsecResponse `json:"responses"`
		}
		if json.Unmarshal(m.Payload(), &r) != nil {
			return
		}
		for _, x := range r.Responses {
			if x.Correlation == id {
				select {
				case answer <- x:
				default:
				}
			}
		}
	})
	if !tok.WaitTimeout(dynsecTimeout) || tok.Error() != nil {
		return nil, fmt.Errorf("%w: subscribing to its answers: %v", ErrDynsec, tok.Error())
	}
	defer c.Unsubscribe(dynsecResponseTopic)
	cmd, err := json.Marshal(map[string]any{"commands": []map[string]any{
		{"command": "listRoles", "verbose": false, "count": -1, "offset": 0, "correlationData": id},
	}})
	if err != nil {
		return nil, err
	}
	if err := p.publishAt([]string{broker}, dynsecTopic, cmd); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, dynsecTimeout)
	defer cancel()
	var r dynsecResponse
	select {
	case r = <-answer:
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: %v", ErrDynsec, ctx.Err())
	}
	if r.Error != "" {
		return nil, fmt.Errorf("%w: listRoles: %s", ErrDynsec, r.Error)
	}
	var data struct {
		Roles []json.RawMessage `json:"roles"`
	}
	if err := json.Unmarshal(r.Data, &data); err != nil {
		return nil, fmt.Errorf("%w: listRoles: %v", ErrDynsec, err)
	}
	var out []string
	for _, raw := range data.Roles {
		// A name, or with verbose an object with one.
		var name string
		if json.Unmarshal(raw, &name) != nil {
			var v struct {
				Name string `json:"rolename"`
			}
			if json.Unmarshal(raw, &v) != nil {
				continue
			}
			name = v.Name
		}
		if id, ok := strings.CutPrefix(name, quarantineRolePrefix); ok && wire.ValidID(id) {
			out = append(out, id)
		}
	}
	return out, nil
}

// ReleaseAt is Release on one device broker, by its address in
// Config.Devices: to undo there a quarantine the fleet released while
// the broker was down.
func (p *Pool) ReleaseAt(broker, deviceID string) error {
	cmd, err := kickCommand(deviceID)
	if err != nil {
		return err
	}
	if !contains(p.cfg.Devices, broker) {
		return fmt.Errorf("mqttpool: %q is not a device broker of the pool", broker)
	}
	return p.publishAt([]string{broker}, dynsecTopic, cmd)
}
