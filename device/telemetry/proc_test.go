package telemetry

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"
)

// Fixtures in the kernel's formats (Linux 6.x), trimmed.
const (
	statA = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 50 0 25 400 25 0 0 0 0 0\ncpu1 50 0 25 400 25 0 0 0 0 0\nintr 12345\nctxt 999\nprocesses 4242\n"
	statB = "cpu  160 0 70 900 70 0 0 0 0 0\ncpu0 80 0 35 450 35 0 0 0 0 0\ncpu1 80 0 35 450 35 0 0 0 0 0\nintr 12399\n"

	meminfoText = "MemTotal:        1000000 kB\nMemFree:          100000 kB\nMemAvailable:     250000 kB\nBuffers:           10000 kB\nCached:           200000 kB\nSwapTotal:        400000 kB\nSwapFree:         300000 kB\nHugePages_Total:       0\n"

	netDev = "Inter-|   Receive                                                |  Transmit\n" +
		" face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n" +
		"    lo: 5000 50 0 0 0 0 0 0 5000 50 0 0 0 0 0 0\n" +
		"  eth0: 1000 10 1 2 0 0 0 0 2000 20 3 4 0 0 0 0\n" +
		" wlan0: 100 1 0 0 0 0 0 0 200 2 0 0 0 0 0 0\n"

	netTCP = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n" +
		"   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 100 1 0000000000000000 100 0 0 10 0\n" +
		"   1: 0100007F:0277 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 101 1 0000000000000000 100 0 0 10 0\n" +
		"   2: 0100007F:94B4 0100007F:A837 01 00000000:00000000 00:00000000 00000000     0        0 0 3 0000000000000000\n" +
		"   3: 0A000002:0016 0A000001:D431 01 00000000:00000000 02:00000A3B 00000000     0        0 102 4 0000000000000000 20 4 29 10 -1\n"
	netTCP6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n" +
		"   0: 00000000000000000000000000000000:01BB 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 200 1 0000000000000000 100 0 0 10 0\n" +
		"   1: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 201 1 0000000000000000 100 0 0 10 0\n"
	netUDP = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n" +
		"  100: 00000000:0044 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 300 2 0000000000000000 0\n" +
		"  101: 3500007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000   101        0 301 2 0000000000000000 0\n" +
		"  102: 0A000002:C350 08080808:0035 01 00000000:00000000 00:00000000 00000000     0        0 302 2 0000000000000000 0\n"

	bootID = "57f13b68-e63a-4e3c-bb98-facf757ccbb9\n"
)

func TestParseStatAndBusy(t *testing.T) {
	a, cpus, err := parseStat([]byte(statA))
	if err != nil || cpus != 2 || a.total != 1000 || a.idle != 850 {
		t.Fatalf("statA: %+v %d %v", a, cpus, err)
	}
	b, _, _ := parseStat([]byte(statB))
	// 200 ticks passed, 120 of them idle (100 idle + 20 iowait): 40% busy.
	if v, ok := busy(a, b); !ok || math.Abs(v-0.4) > 1e-12 {
		t.Fatalf("busy = %v, %v", v, ok)
	}
	if _, ok := busy(b, a); ok {
		t.Fatal("counters going backwards gave a value")
	}
	if _, ok := busy(a, a); ok {
		t.Fatal("no time passing gave a value")
	}
	// Old kernels have fewer columns.
	if c, _, err := parseStat([]byte("cpu 1 2 3 4\n")); err != nil || c.total != 10 || c.idle != 4 {
		t.Fatalf("4 columns: %+v %v", c, err)
	}
	for _, bad := range []string{"", "intr 1\n", "cpu x y z w\n", "cpu 1 2\n", "cpu0 1 2 3 4\n"} {
		if _, _, err := parseStat([]byte(bad)); err == nil {
			t.Errorf("parseStat(%q) accepted", bad)
		}
	}
}

func TestParseMeminfo(t *testing.T) {
	m, err := parseMeminfo([]byte(meminfoText))
	if err != nil || m.total != 1000000*1024 || m.available != 250000*1024 || m.swapTotal != 400000*1024 || m.swapFree != 300000*1024 {
		t.Fatalf("%+v %v", m, err)
	}
	old := strings.Replace(meminfoText, "MemAvailable:     250000 kB\n", "", 1)
	if m, _ := parseMeminfo([]byte(old)); m.available != (100000+10000+200000)*1024 {
		t.Fatalf("without MemAvailable: %d", m.available)
	}
	for _, bad := range []string{"", "MemTotal: 0 kB\n", "MemTotal: 10 kB\nMemAvailable: 20 kB\n", "MemTotal: x kB\n", "MemTotal: 10 MB\n"} {
		if _, err := parseMeminfo([]byte(bad)); err == nil {
			t.Errorf("parseMeminfo(%q) accepted", bad)
		}
	}
}

func TestParseNetDev(t *testing.T) {
	n, err := parseNetDev([]byte(netDev))
	want := netCounters{rxBytes: 1100, rxPackets: 11, rxErrors: 1, rxDropped: 2, txBytes: 2200, txPackets: 22, txErrors: 3, txDropped: 4, interfaces: 2}
	if err != nil || n != want {
		t.Fatalf("%+v %v", n, err)
	}
	if n, err := parseNetDev([]byte("    lo: 1 1 0 0 0 0 0 0 1 1 0 0 0 0 0 0\n")); err != nil || n.interfaces != 0 {
		t.Fatalf("loopback only: %+v %v", n, err)
	}
	for _, bad := range []string{"", "eth0: 1 2 3\n", "eth0: a b c d e f g h i j k l m n o p\n"} {
		if _, err := parseNetDev([]byte(bad)); err == nil {
			t.Errorf("parseNetDev(%q) accepted", bad)
		}
	}
}

func TestParseSockets(t *testing.T) {
	if got := parseSockets([]byte(netTCP), tcpListen); fmt.Sprint(got) != "[22 631]" {
		t.Fatalf("tcp: %v", got)
	}
	if got := parseSockets([]byte(netTCP6), tcpListen); fmt.Sprint(got) != "[22 443]" {
		t.Fatalf("tcp6: %v", got)
	}
	if got := parseSockets([]byte(netUDP), udpClose); fmt.Sprint(got) != "[53 68]" {
		t.Fatalf("udp: %v", got)
	}
	bad := "   0: 00000000:0016 00000000:0000 0A\n" + // fine: 22
		"   1: 000000:0017 00000000:0000 0A\n" + // short address
		"   2: 00000000:00018 00000000:0000 0A\n" + // long port
		"   3: 0000000G:0019 00000000:0000 0A\n" + // not hex
		"   4: 00000000:001A 00000000:0000 ZZ\n" + // bad state
		"   5 00000000:001B 00000000:0000 0A\n" + // no colon after sl
		"   6: 00000000:0000 00000000:0000 0A\n" // port 0
	if got := parseSockets([]byte(bad), tcpListen); fmt.Sprint(got) != "[22]" {
		t.Fatalf("malformed lines: %v", got)
	}
}

func TestParseSmallFiles(t *testing.T) {
	if u, err := parseUptime([]byte("8156.27 10019.77\n")); err != nil || u != 8156.27 {
		t.Fatalf("uptime %v %v", u, err)
	}
	if l, err := parseLoadavg([]byte("6.10 2.27 1.43 4/105 13051\n")); err != nil || l != [3]float64{6.10, 2.27, 1.43} {
		t.Fatalf("loadavg %v %v", l, err)
	}
	if id, err := parseBootID([]byte(bootID)); err != nil || id != strings.TrimSpace(bootID) {
		t.Fatalf("boot id %q %v", id, err)
	}
	for _, bad := range []string{"", "x", "-1", "NaN", "1e300"} {
		if _, err := parseUptime([]byte(bad)); err == nil {
			t.Errorf("uptime %q accepted", bad)
		}
	}
	for _, bad := range []string{"", "1 2", "a b c", "1 -2 3"} {
		if _, err := parseLoadavg([]byte(bad)); err == nil {
			t.Errorf("loadavg %q accepted", bad)
		}
	}
	for _, bad := range []string{"", "57f13b68e63a4e3cbb98facf757ccbb9", "57f13b68-e63a-4e3c-bb98-facf757ccbbz", "57f13b68-e63a-4e3c-bb98-facf757ccbb9-", "57f13b68-e63a-4e3c-bb98\nfacf757ccbb9"} {
		if _, err := parseBootID([]byte(bad)); err == nil {
			t.Errorf("boot id %q accepted", bad)
		}
	}
}

func FuzzParseStat(f *testing.F) {
	f.Add([]byte(statA), []byte(statB))
	f.Add([]byte("cpu 1 2 3 4\n"), []byte("cpu 18446744073709551615 18446744073709551615 1 1\n"))
	f.Fuzz(func(t *testing.T, a, b []byte) {
		ta, _, errA := parseStat(a)
		tb, _, errB := parseStat(b)
		if errA != nil || errB != nil {
			return
		}
		if ta.idle > ta.total {
			t.Fatalf("idle %d > total %d", ta.idle, ta.total)
		}
		if v, ok := busy(ta, tb); ok && (v < 0 || v > 1 || math.IsNaN(v)) {
			t.Fatalf("busy %v", v)
		}
	})
}

func FuzzParseMeminfo(f *testing.F) {
	f.Add([]byte(meminfoText))
	f.Add([]byte("MemTotal: 18446744073709551615 kB\nMemFree: 18446744073709551615 kB\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := parseMeminfo(b)
		if err != nil {
			return
		}
		if m.total == 0 || m.available > m.total || m.swapFree > m.swapTotal {
			t.Fatalf("accepted inconsistent %+v", m)
		}
	})
}

func FuzzParseNetDev(f *testing.F) {
	f.Add([]byte(netDev))
	f.Fuzz(func(t *testing.T, b []byte) {
		n, err := parseNetDev(b)
		if err == nil && n.interfaces < 0 {
			t.Fatal("negative interfaces")
		}
	})
}

func FuzzParseSockets(f *testing.F) {
	f.Add([]byte(netTCP), uint8(tcpListen))
	f.Add([]byte(netTCP6), uint8(tcpListen))
	f.Add([]byte(netUDP), uint8(udpClose))
	f.Fuzz(func(t *testing.T, b []byte, state uint8) {
		ports := parseSockets(b, uint64(state))
		if !slices.IsSorted(ports) || len(slices.Compact(slices.Clone(ports))) != len(ports) || slices.Contains(ports, 0) {
			t.Fatalf("ports %v", ports)
		}
		if len(ports) > strings.Count(string(b), "\n")+1 {
			t.Fatalf("%d ports from %d lines", len(ports), strings.Count(string(b), "\n")+1)
		}
	})
}

func FuzzParseSmall(f *testing.F) {
	f.Add([]byte("8156.27 10019.77\n"))
	f.Add([]byte("6.10 2.27 1.43 4/105 13051\n"))
	f.Add([]byte(bootID))
	f.Add([]byte("Nov 22 sshd[1]: Failed password for root\nno\nInvalid user x"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if u, err := parseUptime(b); err == nil && (u < 0 || math.IsNaN(u) || math.IsInf(u, 0)) {
			t.Fatalf("uptime %v", u)
		}
		if l, err := parseLoadavg(b); err == nil {
			for _, v := range l {
				if v < 0 || math.IsNaN(v) || math.IsInf(v, 0) {
					t.Fatalf("load %v", l)
				}
			}
		}
		if id, err := parseBootID(b); err == nil && len(id) != 36 {
			t.Fatalf("boot id %q", id)
		}
		n, used := countLines(b, DefaultAuthPatterns())
		if used > len(b) || n > strings.Count(string(b[:used]), "\n") || (used > 0 && b[used-1] != '\n') {
			t.Fatalf("countLines: %d lines over %d of %d bytes", n, used, len(b))
		}
	})
}
