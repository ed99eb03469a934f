// Package link is the device's MQTT session: one TLS connection to the
// fleet's broker, QoS 1 publishes and subscriptions whose refusal by the
// broker is reported, and a Done channel that closes when the connection is
// lost. Reconnection policy belongs to the caller (device/agent), so that a
// bootstrap session and an mTLS session are separate, explicit connections.
package link

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// Config describes one connection.
type Config struct {
	Broker    string      // host:port of the broker's TLS listener
	ClientID  string      // MQTT client ID; for an enrolled device, its device ID
	TLS       *tls.Config // server trust and, for an enrolled device, the TPM-backed client certificate
	KeepAlive time.Duration
	Timeout   time.Duration // connect, publish and subscribe timeout; 0 means 15s
	Logger    *slog.Logger
}

// ErrRefused reports a subscription the broker refused.
var ErrRefused = errors.New("link: refused by broker")

// Conn is a connected session.
type Conn struct {
	c       mqtt.Client
	timeout time.Duration
	done    chan struct{}
	once    sync.Once
	mu      sync.Mutex
	lostErr error
}

// Dial connects once; it does not retry.
func Dial(ctx context.Context, cfg Config) (*Conn, error) {
	if cfg.Timeout == 0 {
		cfg.Timeout = 15 * time.Second
	}
	if cfg.KeepAlive == 0 {
		cfg.KeepAlive = 60 * time.Second
	}
	conn := &Conn{timeout: cfg.Timeout, done: make(chan struct{})}
	opts := mqtt.NewClientOptions().
		AddBroker("tls://" + cfg.Broker).
		SetClientID(cfg.ClientID).
		SetTLSConfig(cfg.TLS).
		SetCleanSession(true).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetKeepAlive(cfg.KeepAlive).
		SetConnectTimeout(cfg.Timeout).
		SetWriteTimeout(cfg.Timeout).
		SetOrderMatters(false).
		SetProtocolVersion(4).
		SetConnectionLostHandler(func(_ mqtt.Client, err error) {
			conn.mu.Lock()
			conn.lostErr = err
			conn.mu.Unlock()
			conn.once.Do(func() { close(conn.done) })
		})
	conn.c = mqtt.NewClient(opts)
	tok := conn.c.Connect()
	if err := wait(ctx, tok, cfg.Timeout); err != nil {
		return nil, fmt.Errorf("link: connect %s: %w", cfg.Broker, err)
	}
	return conn, nil
}

func wait(ctx context.Context, tok mqtt.Token, timeout time.Duration) error {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-tok.Done():
		return tok.Error()
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return errors.New("timed out")
	}
}

// Publish sends payload with QoS 1 and waits for the broker's PUBACK.
func (c *Conn) Publish(ctx context.Context, topic string, payload []byte) error {
	if err := wait(ctx, c.c.Publish(topic, 1, false, payload), c.timeout); err != nil {
		return fmt.Errorf("link: publish %s: %w", topic, err)
	}
	return nil
}

// Subscribe subscribes with QoS 1; handler runs on paho's delivery goroutine
// and must not block for long.
func (c *Conn) Subscribe(ctx context.Context, filter string, handler func(topic string, payload []byte)) error {
	tok := c.c.Subscribe(filter, 1, func(_ mqtt.Client, m mqtt.Message) {
		handler(m.Topic(), m.Payload())
	})
	if err := wait(ctx, tok, c.timeout); err != nil {
		return fmt.Errorf("link: subscribe %s: %w", filter, err)
	}
	st, ok := tok.(*mqtt.SubscribeToken)
	if ok {
		for _, code := range st.Result() {
			if code >= 0x80 {
				return fmt.Errorf("%w: subscribe %s", ErrRefused, filter)
			}
		}
	}
	return nil
}

// Done is closed when the connection is lost.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Err returns why the connection was lost, once Done is closed.
func (c *Conn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lostErr
}

// Connected reports whether the session is up.
func (c *Conn) Connected() bool { return c.c.IsConnectionOpen() }

// Close disconnects cleanly.
func (c *Conn) Close() {
	c.c.Disconnect(250)
	c.once.Do(func() { close(c.done) })
}
