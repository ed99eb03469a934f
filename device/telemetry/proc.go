package telemetry

import (
	"bytes"
	"errors"
	"slices"
	"strconv"
)

// Parsers of /proc text. They take the file's bytes and never panic: a
// line they cannot read is skipped, and a file without what they need is
// an error.

var errNoData = errors.New("telemetry: nothing readable in the file")

// cpuTimes are the aggregate CPU counters of /proc/stat, in clock ticks.
type cpuTimes struct {
	total, idle uint64
}

// parseStat reads the "cpu" line of /proc/stat: user nice system idle
// iowait irq softirq steal (guest time is already counted in user). Idle
// time includes iowait. It also returns the number of "cpuN" lines.
func parseStat(b []byte) (cpuTimes, int, error) {
	var t cpuTimes
	found, cpus := false, 0
	for line := range bytes.Lines(b) {
		f := bytes.Fields(line)
		if len(f) == 0 {
			continue
		}
		if bytes.HasPrefix(f[0], []byte("cpu")) && len(f[0]) > 3 {
			cpus++
			continue
		}
		if string(f[0]) != "cpu" || found || len(f) < 5 {
			continue
		}
		var v [8]uint64
		ok := true
		for i := 0; i < 8 && i+1 < len(f); i++ {
			n, err := strconv.ParseUint(string(f[i+1]), 10, 64)
			if err != nil {
				ok = false
				break
			}
			v[i] = n
		}
		if !ok {
			continue
		}
		for _, n := range v {
			t.total += n
		}
		t.idle = v[3] + v[4]
		if t.total < t.idle { // wrapped sums: unusable
			continue
		}
		found = true
	}
	if !found {
		return cpuTimes{}, 0, errNoData
	}
	return t, cpus, nil
}

// busy returns the share of non-idle time between two readings, in
// [0, 1], and false when the counters did not advance or went backwards.
func busy(prev, cur cpuTimes) (float64, bool) {
	if cur.total <= prev.total || cur.idle < prev.idle {
		return 0, false
	}
	dt, di := cur.total-prev.total, cur.idle-prev.idle
	if di > dt {
		return 0, false
	}
	return 1 - float64(di)/float64(dt), true
}

// meminfo holds the /proc/meminfo fields collected, in bytes.
type meminfo struct {
	total, available, swapTotal, swapFree uint64
}

// parseMeminfo reads MemTotal, MemAvailable (or, on kernels before 3.14,
// MemFree + Buffers + Cached), SwapTotal and SwapFree.
func parseMeminfo(b []byte) (meminfo, error) {
	vals := map[string]uint64{}
	for line := range bytes.Lines(b) {
		k, rest, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		f := bytes.Fields(rest)
		if len(f) == 0 || len(f) > 2 {
			continue
		}
		n, err := strconv.ParseUint(string(f[0]), 10, 64)
		if err != nil {
			continue
		}
		if len(f) == 2 {
			if string(f[1]) != "kB" || n > 1<<53 {
				continue
			}
			n *= 1024
		}
		vals[string(k)] = n
	}
	m := meminfo{total: vals["MemTotal"], swapTotal: vals["SwapTotal"], swapFree: vals["SwapFree"]}
	if v, ok := vals["MemAvailable"]; ok {
		m.available = v
	} else {
		m.available = vals["MemFree"] + vals["Buffers"] + vals["Cached"]
	}
	if m.total == 0 || m.available > m.total || m.swapFree > m.swapTotal {
		return meminfo{}, errNoData
	}
	return m, nil
}

// netCounters are the sums over interfaces of /proc/net/dev.
type netCounters struct {
	rxBytes, rxPackets, rxErrors, rxDropped uint64
	txBytes, txPackets, txErrors, txDropped uint64
	interfaces                              int
}

// parseNetDev sums the counters of every interface but loopback.
func parseNetDev(b []byte) (netCounters, error) {
	var c netCounters
	seen := false
	for line := range bytes.Lines(b) {
		name, rest, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		name = bytes.TrimSpace(name)
		if len(name) == 0 || bytes.ContainsAny(name, " |") {
			continue
		}
		f := bytes.Fields(rest)
		if len(f) < 16 {
			continue
		}
		var v [16]uint64
		ok = true
		for i := range v {
			n, err := strconv.ParseUint(string(f[i]), 10, 64)
			if err != nil {
				ok = false
				break
			}
			v[i] = n
		}
		if !ok {
			continue
		}
		seen = true
		if string(name) == "lo" {
			continue
		}
		c.interfaces++
		c.rxBytes += v[0]
		c.rxPackets += v[1]
		c.rxErrors += v[2]
		c.rxDropped += v[3]
		c.txBytes += v[8]
		c.txPackets += v[9]
		c.txErrors += v[10]
		c.txDropped += v[11]
	}
	if !seen {
		return netCounters{}, errNoData
	}
	return c, nil
}

// Socket states in /proc/net/{tcp,tcp6,udp,udp6}.
const (
	tcpListen = 0x0A
	udpClose  = 0x07 // an unconnected UDP socket: bound, receiving from anyone
)

// parseSockets returns the local ports of the sockets in state want whose
// remote port is 0 (not connected), from /proc/net/{tcp,tcp6,udp,udp6},
// sorted and without repeats.
func parseSockets(b []byte, want uint64) []uint16 {
	var ports []uint16
	header := true
	for line := range bytes.Lines(b) {
		f := bytes.Fields(line)
		if header {
			header = false
			if len(f) > 0 && string(f[0]) == "sl" {
				continue
			}
		}
		if len(f) < 4 || !bytes.HasSuffix(f[0], []byte(":")) {
			continue
		}
		_, lport, ok1 := hexAddr(f[1])
		_, rport, ok2 := hexAddr(f[2])
		st, err := strconv.ParseUint(string(f[3]), 16, 8)
		if !ok1 || !ok2 || err != nil || st != want || rport != 0 || lport == 0 {
			continue
		}
		ports = append(ports, lport)
	}
	slices.Sort(ports)
	return slices.Compact(ports)
}

// hexAddr splits "0100007F:0016" (IPv4) or a 32-digit IPv6 address and a
// port, checking both are hex of the right length.
func hexAddr(s []byte) (addr []byte, port uint16, ok bool) {
	a, p, found := bytes.Cut(s, []byte(":"))
	if !found || (len(a) != 8 && len(a) != 32) || len(p) != 4 {
		return nil, 0, false
	}
	for _, c := range a {
		if !isHex(c) {
			return nil, 0, false
		}
	}
	n, err := strconv.ParseUint(string(p), 16, 16)
	if err != nil {
		return nil, 0, false
	}
	return a, uint16(n), true
}

func isHex(c byte) bool { return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' }

// parseUptime reads the first field of /proc/uptime, in seconds.
func parseUptime(b []byte) (float64, error) {
	f := bytes.Fields(b)
	if len(f) == 0 {
		return 0, errNoData
	}
	v, err := strconv.ParseFloat(string(f[0]), 64)
	if err != nil || !(v >= 0 && v <= 1e12) {
		return 0, errNoData
	}
	return v, nil
}

// parseLoadavg reads the 1, 5 and 15 minute load averages.
func parseLoadavg(b []byte) ([3]float64, error) {
	var out [3]float64
	f := bytes.Fields(b)
	if len(f) < 3 {
		return out, errNoData
	}
	for i := range out {
		v, err := strconv.ParseFloat(string(f[i]), 64)
		if err != nil || !(v >= 0 && v <= 1e9) {
			return out, errNoData
		}
		out[i] = v
	}
	return out, nil
}

// parseBootID checks /proc/sys/kernel/random/boot_id: a UUID in text.
func parseBootID(b []byte) (string, error) {
	s := bytes.TrimSpace(b)
	if len(s) != 36 {
		return "", errNoData
	}
	for i, c := range s {
		if i == 8 || i == 13 || i == 18 || i == 23 {
			if c != '-' {
				return "", errNoData
			}
		} else if !isHex(c) {
			return "", errNoData
		}
	}
	return string(s), nil
}
