package telemetry

import (
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"runtime"
	"slices"
	"testing"
)

// diagMsg builds one netlink message of a sock_diag dump.
func diagMsg(typ uint16, seq uint32, body []byte) []byte {
	n := nlmHdrLen + len(body)
	b := make([]byte, (n+3)&^3)
	binary.NativeEndian.PutUint32(b[0:], uint32(n))
	binary.NativeEndian.PutUint16(b[4:], typ)
	binary.NativeEndian.PutUint32(b[8:], seq)
	copy(b[nlmHdrLen:], body)
	return b
}

func diagSocket(sport, dport uint16) []byte {
	m := make([]byte, inetDiagMsgMinLen)
	m[0], m[1] = 2, tcpListen
	binary.BigEndian.PutUint16(m[4:], sport)
	binary.BigEndian.PutUint16(m[6:], dport)
	return m
}

func TestParseDiag(t *testing.T) {
	dgram := slices.Concat(
		diagMsg(sockDiagByFamily, 1, diagSocket(22, 0)),
		diagMsg(sockDiagByFamily, 1, diagSocket(443, 0)),
		diagMsg(sockDiagByFamily, 1, diagSocket(50000, 443)), // connected: not listening
		diagMsg(sockDiagByFamily, 9, diagSocket(8080, 0)),    // another request's answer
	)
	ports, done, err := parseDiag(dgram, 1)
	if err != nil || done || fmt.Sprint(ports) != "[22 443]" {
		t.Fatalf("ports %v, done %v, %v", ports, done, err)
	}
	if _, done, err := parseDiag(diagMsg(nlmsgDone, 1, make([]byte, 4)), 1); !done || err != nil {
		t.Fatalf("done: %v %v", done, err)
	}
	errno := make([]byte, 4)
	binary.NativeEndian.PutUint32(errno, uint32(0xfffffffe)) // -ENOENT
	if _, _, err := parseDiag(diagMsg(nlmsgError, 1, errno), 1); err == nil {
		t.Fatal("error message accepted")
	}
	for name, b := range map[string][]byte{
		"short socket":  diagMsg(sockDiagByFamily, 1, make([]byte, 10)),
		"length beyond": func() []byte { b := diagMsg(sockDiagByFamily, 1, diagSocket(1, 0)); b[0] = 0xff; return b }(),
		"length short":  func() []byte { b := diagMsg(sockDiagByFamily, 1, diagSocket(1, 0)); b[0] = 4; return b }(),
	} {
		if _, _, err := parseDiag(b, 1); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestSockDiagMatchesProc checks the netlink dump against the /proc files
// on this machine, with a listener of the test's own.
func TestSockDiagMatchesProc(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("netlink sock_diag is Linux only")
	}
	if _, err := os.Stat("/proc/net/tcp"); err != nil {
		t.Skip("no /proc/net here")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	fromProc := func() (tcp []uint16) {
		for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
			if b, err := os.ReadFile(f); err == nil {
				tcp = append(tcp, parseSockets(b, tcpListen)...)
			}
		}
		slices.Sort(tcp)
		return slices.Compact(tcp)
	}
	for attempt := 0; ; attempt++ {
		before := fromProc()
		tcp, _, err := listeningPorts()
		if err != nil {
			t.Fatal(err)
		}
		after := fromProc()
		if !slices.Equal(before, after) {
			if attempt < 5 {
				continue
			}
			t.Skip("listening ports keep changing on this machine")
		}
		if !slices.Equal(tcp, before) {
			t.Fatalf("netlink %v, /proc %v", tcp, before)
		}
		if !slices.Contains(tcp, uint16(ln.Addr().(*net.TCPAddr).Port)) {
			t.Fatalf("own listener missing from %v", tcp)
		}
		return
	}
}

func FuzzParseDiag(f *testing.F) {
	f.Add(slices.Concat(diagMsg(sockDiagByFamily, 1, diagSocket(22, 0)), diagMsg(nlmsgDone, 1, make([]byte, 4))))
	f.Add(diagMsg(nlmsgError, 1, []byte{0xfe, 0xff, 0xff, 0xff}))
	f.Fuzz(func(t *testing.T, b []byte) {
		ports, _, err := parseDiag(b, 1)
		if err == nil && len(ports) > len(b)/(nlmHdrLen+inetDiagMsgMinLen) {
			t.Fatalf("%d ports from %d bytes", len(ports), len(b))
		}
		if slices.Contains(ports, 0) {
			t.Fatal("port 0 reported")
		}
	})
}
