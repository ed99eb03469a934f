package harness

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/sigil-iot/sigil/fleet/alert"
	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/server"
	"github.com/sigil-iot/sigil/pkg/config"
)

// DemoTelemetryInterval is how often the demo's devices sample telemetry:
// short, so that live values and an alert show up within seconds.
const DemoTelemetryInterval = time.Second

// DemoSyslog is a syslog receiver for the demo: it accepts RFC 5424
// messages over TCP with octet counting (as a SIEM's collector would) and
// keeps their text.
type DemoSyslog struct {
	ln   net.Listener
	wg   sync.WaitGroup
	mu   sync.Mutex
	msgs []string
	conn []net.Conn
	new  chan struct{}
}

// StartDemoSyslog listens on a free loopback port until Close.
func StartDemoSyslog() (*DemoSyslog, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("harness: syslog receiver: %w", err)
	}
	s := &DemoSyslog{ln: ln, new: make(chan struct{}, 1)}
	s.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conn = append(s.conn, c)
			s.mu.Unlock()
			s.wg.Go(func() { s.read(c) })
		}
	})
	return s, nil
}

// Sinks is the fleet's alert_sinks entry for this receiver.
func (s *DemoSyslog) Sinks() []server.AlertSink {
	return []server.AlertSink{{Name: "demo-siem", Type: server.SinkSyslog, Addr: s.ln.Addr().String()}}
}

// Close stops the receiver and waits for its goroutines.
func (s *DemoSyslog) Close() {
	s.ln.Close()
	s.mu.Lock()
	for _, c := range s.conn {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

func (s *DemoSyslog) read(c net.Conn) {
	defer c.Close()
	br := bufio.NewReader(c)
	for {
		head, err := br.ReadString(' ')
		if err != nil {
			return
		}
		n, err := strconv.Atoi(strings.TrimSpace(head))
		if err != nil || n <= 0 || n > 64<<10 {
			return
		}
		msg := make([]byte, n)
		if _, err := io.ReadFull(br, msg); err != nil {
			return
		}
		s.mu.Lock()
		s.msgs = append(s.msgs, string(msg))
		s.mu.Unlock()
		select {
		case s.new <- struct{}{}:
		default:
		}
	}
}

// wait returns the first message containing every one of parts.
func (s *DemoSyslog) wait(ctx context.Context, timeout time.Duration, parts ...string) (string, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		s.mu.Lock()
		for _, m := range s.msgs {
			ok := true
			for _, p := range parts {
				ok = ok && strings.Contains(m, p)
			}
			if ok {
				s.mu.Unlock()
				return m, nil
			}
		}
		s.mu.Unlock()
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-t.C:
			return "", errors.New("timed out")
		case <-s.new:
		}
	}
}

// demoTelemetry shows live telemetry (latest CPU, memory, load, processes
// and listening ports per device) and an alert reaching a sink: a rule
// learns each device's listening ports for a few seconds, the demo then
// opens a TCP port on this host (where the simulated devices run), every
// device reports it, and the receiver gets the alert as RFC 5424 + CEF;
// closing the port resolves it.
func demoTelemetry(ctx context.Context, sh demoShell, client *api.Client, devs []api.Device, siem *DemoSyslog) error {
	o := sh.o
	fmt.Fprintf(o.Out, "\nTelemetry (every %s into each device's durable outbox, sent in order, exactly once or counted as dropped):\n\n", DemoTelemetryInterval)
	type row struct {
		id                 string
		cpu, mem, load     string
		procs, ports, pnts string
	}
	var rows []row
	for _, d := range devs {
		var r row
		err := poll(ctx, 20*time.Second, func() bool {
			st, err := client.Telemetry(ctx, d.ID)
			if err != nil {
				return false
			}
			m := st.Metrics
			if _, ok := m["cpu.busy"]; !ok {
				return false // from the second point on
			}
			r = row{id: d.ID, cpu: fmt.Sprintf("%.1f%%", 100*m["cpu.busy"]), mem: fmt.Sprintf("%.1f%%", 100*m["mem.used_ratio"]),
				load: fmt.Sprintf("%.2f", m["load.1"]), procs: fmt.Sprintf("%.0f", m["proc.count"]),
				ports: fmt.Sprintf("%.0f", m["listen.tcp.count"]), pnts: strconv.FormatUint(st.Counts.Ingested, 10)}
			return true
		})
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			fmt.Fprintf(o.Out, "  %s: no telemetry yet (%v)\n", d.ID, err)
			continue
		}
		rows = append(rows, r)
	}
	tw := tabwriter.NewWriter(o.Out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DEVICE ID\tCPU\tMEMORY\tLOAD\tPROCESSES\tTCP PORTS\tPOINTS")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.id, r.cpu, r.mem, r.load, r.procs, r.ports, r.pnts)
	}
	tw.Flush()
	fmt.Fprintln(o.Out, "A device's telemetry, and the fleet's metrics as Prometheus scrapes them:")
	sh.sigil("telemetry", devs[0].ID, "--metric", "cpu.busy")
	sh.try(append(sh.curl, "-H", "Accept: text/plain;version=0.0.4", sh.api+"/metrics")...)

	learn := 3 * DemoTelemetryInterval
	rule, err := client.PutAlertRule(ctx, alert.Rule{ID: "demo-new-port", Name: "New listening port (demo)", Severity: alert.SeverityWarning,
		Description: "a TCP or UDP port the device never listened on", NewMember: &alert.NewMember{Set: alert.SetPorts, Learn: config.Duration(learn)}})
	if err != nil {
		return err
	}
	fmt.Fprintf(o.Out, "\nAlerting: rule %q learns each device's listening ports for %s; alerts go to a syslog receiver (RFC 5424 + CEF over TCP) at %s.\n",
		rule.ID, learn, siem.ln.Addr())
	select {
	case <-ctx.Done():
		return nil
	case <-time.After(learn + 2*DemoTelemetryInterval):
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	key := "tcp/" + strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	opened := time.Now()
	fmt.Fprintf(o.Out, "Opening %s on this host (every simulated device runs here, so each reports the new port)...\n", key)
	msg, err := siem.wait(ctx, 20*time.Second, " firing ", "cs3="+key)
	if err != nil {
		ln.Close()
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("sigil-sim demo: no alert for %s reached the syslog receiver: %w", key, err)
	}
	fmt.Fprintf(o.Out, "The syslog receiver got, %.1fs after the port opened:\n  %s\n", time.Since(opened).Seconds(), msg)
	ln.Close()
	if _, err := siem.wait(ctx, 20*time.Second, " resolved ", "cs3="+key); err == nil {
		fmt.Fprintf(o.Out, "Port closed: the alert resolved and the receiver got the \"resolved\" message too.\n")
	}
	list, err := client.Alerts(ctx, api.AlertQuery{RuleID: rule.ID})
	if err == nil {
		fmt.Fprintf(o.Out, "Alerts of the rule so far: %d (GET %s/api/v1/alerts):\n", len(list.Alerts), client.BaseURL)
		sh.sigil("alerts", "list", "--rule", rule.ID)
	}
	return nil
}
