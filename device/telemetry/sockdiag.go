package telemetry

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// The kernel's socket diagnostics over netlink (sock_diag, what ss uses)
// list only the sockets in the states asked for. Reading /proc/net/tcp
// makes the kernel format every socket, including thousands of
// connections on a busy gateway: about 9 ms per thousand sockets, where
// the netlink dump of the listening ones takes well under a millisecond.
// The collector uses netlink on Linux when it reads the real /proc and
// falls back to the /proc files otherwise.

// Netlink and sock_diag constants (linux/netlink.h, linux/sock_diag.h,
// linux/inet_diag.h).
const (
	nlmsgError        = 2
	nlmsgDone         = 3
	sockDiagByFamily  = 20
	nlmHdrLen         = 16
	inetDiagReqLen    = 56 // inet_diag_req_v2
	inetDiagMsgMinLen = 72 // inet_diag_msg without attributes
)

// diagRequest builds a dump request for the sockets of one address family
// and protocol whose state is in the states bit mask.
func diagRequest(family, protocol uint8, states uint32, seq uint32) []byte {
	b := make([]byte, nlmHdrLen+inetDiagReqLen)
	binary.NativeEndian.PutUint32(b[0:], uint32(len(b)))
	binary.NativeEndian.PutUint16(b[4:], sockDiagByFamily)
	binary.NativeEndian.PutUint16(b[6:], 0x1|0x300) // NLM_F_REQUEST | NLM_F_DUMP
	binary.NativeEndian.PutUint32(b[8:], seq)
	b[16] = family
	b[17] = protocol
	binary.NativeEndian.PutUint32(b[20:], states)
	return b
}

// parseDiag reads one datagram of a sock_diag dump: the local ports of the
// sockets whose remote port is 0, and whether the dump is done. A
// message of another sequence number is ignored.
func parseDiag(b []byte, seq uint32) (ports []uint16, done bool, err error) {
	for len(b) >= nlmHdrLen {
		n := int(binary.NativeEndian.Uint32(b[0:]))
		typ := binary.NativeEndian.Uint16(b[4:])
		if n < nlmHdrLen || n > len(b) {
			return nil, false, errors.New("telemetry: sock_diag: message length out of range")
		}
		msg := b[nlmHdrLen:n]
		if binary.NativeEndian.Uint32(b[8:]) == seq {
			switch typ {
			case nlmsgDone:
				return ports, true, nil
			case nlmsgError:
				if len(msg) >= 4 {
					if code := int32(binary.NativeEndian.Uint32(msg)); code != 0 {
						return nil, false, fmt.Errorf("telemetry: sock_diag: error %d", -code)
					}
				}
				return nil, false, errors.New("telemetry: sock_diag: error message")
			case sockDiagByFamily:
				if len(msg) < inetDiagMsgMinLen {
					return nil, false, errors.New("telemetry: sock_diag: short message")
				}
				sport := binary.BigEndian.Uint16(msg[4:])
				dport := binary.BigEndian.Uint16(msg[6:])
				if dport == 0 && sport != 0 {
					ports = append(ports, sport)
				}
			}
		}
		n = (n + 3) &^ 3 // messages are 4-byte aligned
		if n > len(b) {
			break
		}
		b = b[n:]
	}
	return ports, false, nil
}
