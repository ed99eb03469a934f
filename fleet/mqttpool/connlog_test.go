package mqttpool

import (
	"slices"
	"testing"
	"time"
)

// TestParseLogLine: the connection log lines Mosquitto 2.0 publishes
// (copied from its $SYS/broker/log/N) and others.
func TestParseLogLine(t *testing.T) {
	for _, c := range []struct {
		line string
		want logLine
		ok   bool
	}{
		{"1796687602: New client connected from 127.0.0.2:51184 as dev-a (p2, c1, k30, u'dev-a').", logLine{logConnected, "dev-a", "127.0.0.2:51184"}, true},
		{"1796687602: New client connected from ::1:51184 as dev-a (p2, c1, k30, u'dev-a').", logLine{logConnected, "dev-a", "::1:51184"}, true},
		{"1796687602: New client connected from 127.0.0.1:51184 as sigil-fleet-0a1b (p2, c1, k30, u'sigil-fleet').", logLine{}, false},
		{"1796687602: New client connected from 127.0.0.1:51184 as dev-a (p2, c0, k60).", logLine{}, false},
		{"1796687603: Client dev-a disconnected.", logLine{kind: logClosed, clientID: "dev-a"}, true},
		{"1796687603: Client dev-a closed its connection.", logLine{kind: logClosed, clientID: "dev-a"}, true},
		{"1796687603: Client dev-a has exceeded timeout, disconnecting.", logLine{kind: logClosed, clientID: "dev-a"}, true},
		{"1796687603: Socket error on client dev-a, disconnecting.", logLine{kind: logClosed, clientID: "dev-a"}, true},
		{"1796687602: Client dev-a already connected, closing old connection.", logLine{}, false},
		{"1796687602: New connection from 127.0.0.1:51184 on port 8883.", logLine{}, false},
		{"New client connected from 127.0.0.2:1 as dev-a (u'dev-a').", logLine{}, false},
		{"", logLine{}, false},
	} {
		got, ok := parseLogLine([]byte(c.line))
		if ok != c.ok || got != c.want {
			t.Errorf("parseLogLine(%q) = %+v, %v; want %+v, %v", c.line, got, ok, c.want, c.ok)
		}
	}
}

// FuzzParseLogLine: any payload on the log topic is read without a
// panic, and what is taken for a line names a client.
func FuzzParseLogLine(f *testing.F) {
	f.Add([]byte("1796687602: New client connected from 127.0.0.2:51184 as dev-a (p2, c1, k30, u'dev-a')."))
	f.Add([]byte("1796687603: Client dev-a disconnected."))
	f.Fuzz(func(t *testing.T, b []byte) {
		l, ok := parseLogLine(b)
		if ok && (l.clientID == "" || l.kind == logConnected && l.remote == "") {
			t.Fatalf("parseLogLine(%q) = %+v", b, l)
		}
	})
}

// TestSessionLog: a connect opens a session; one with the same client ID
// from elsewhere (a takeover: Mosquitto logs no disconnect for the older
// connection) opens the new one first, then closes the old, so that the
// two are seen to overlap; a lost broker closes what it had open.
func TestSessionLog(t *testing.T) {
	var s sessionLog
	now := time.Unix(1796687602, 0)
	type ev struct {
		remote string
		opened bool
	}
	got := func(evs []SessionEvent) []ev {
		var out []ev
		for _, e := range evs {
			if e.DeviceID != "dev-a" || e.Broker != "b1" {
				t.Fatalf("event %+v", e)
			}
			out = append(out, ev{e.Remote, e.Opened})
		}
		return out
	}
	steps := []struct {
		line string
		want []ev
	}{
		{"1: New client connected from 10.0.0.1:1000 as dev-a (p2, c1, k30, u'dev-a').", []ev{{"10.0.0.1:1000", true}}},
		{"2: New client connected from 10.0.0.2:2000 as dev-a (p2, c1, k30, u'dev-a').", []ev{{"10.0.0.2:2000", true}, {"10.0.0.1:1000", false}}},
		{"3: Client dev-a disconnected.", []ev{{"10.0.0.2:2000", false}}},
		{"4: Client dev-a disconnected.", nil},
		{"5: New client connected from 10.0.0.1:1001 as dev-a (p2, c1, k30, u'dev-a').", []ev{{"10.0.0.1:1001", true}}},
	}
	for _, st := range steps {
		if g := got(s.line("b1", []byte(st.line), now)); !slices.Equal(g, st.want) {
			t.Fatalf("after %q: %+v, want %+v", st.line, g, st.want)
		}
	}
	if g := got(s.lost("b1", now)); !slices.Equal(g, []ev{{"10.0.0.1:1001", false}}) {
		t.Fatalf("broker lost: %+v", g)
	}
	if g := s.line("b1", []byte("6: Client dev-a disconnected."), now); len(g) != 0 {
		t.Fatalf("after the broker was lost: %+v", g)
	}
}
