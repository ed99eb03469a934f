package telemetry

import (
	"errors"
	"fmt"
	"slices"
	"syscall"
)

const netlinkSockDiag = 4

// diagPorts dumps the sockets of one family and protocol in the given
// states through netlink and returns the local ports of those not
// connected, sorted and without repeats.
func diagPorts(family, protocol uint8, states uint32) ([]uint16, error) {
	fd, err := syscall.Socket(syscall.AF_NETLINK, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, netlinkSockDiag)
	if err != nil {
		return nil, fmt.Errorf("telemetry: sock_diag socket: %w", err)
	}
	defer syscall.Close(fd)
	tv := syscall.Timeval{Sec: 1}
	if err := syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv); err != nil {
		return nil, fmt.Errorf("telemetry: sock_diag timeout: %w", err)
	}
	const seq = 1
	if err := syscall.Sendto(fd, diagRequest(family, protocol, states, seq), 0, &syscall.SockaddrNetlink{Family: syscall.AF_NETLINK}); err != nil {
		return nil, fmt.Errorf("telemetry: sock_diag request: %w", err)
	}
	buf := make([]byte, 32<<10)
	var all []uint16
	for range 100000 { // a dump ends with NLMSG_DONE; the bound only guards a misbehaving kernel
		n, from, err := syscall.Recvfrom(fd, buf, 0)
		if err != nil {
			return nil, fmt.Errorf("telemetry: sock_diag read: %w", err)
		}
		if sa, ok := from.(*syscall.SockaddrNetlink); !ok || sa.Pid != 0 {
			continue // not from the kernel
		}
		ports, done, err := parseDiag(buf[:n], seq)
		if err != nil {
			return nil, err
		}
		all = append(all, ports...)
		if done {
			slices.Sort(all)
			return slices.Compact(all), nil
		}
	}
	return nil, errors.New("telemetry: sock_diag dump did not end")
}

// listeningPorts returns the listening TCP ports and the unconnected UDP
// ports over IPv4 and IPv6.
func listeningPorts() (tcp, udp []uint16, err error) {
	const (
		tcpStates = 1 << tcpListen
		udpStates = 1 << udpClose
	)
	for _, q := range []struct {
		proto  uint8
		states uint32
		out    *[]uint16
	}{{syscall.IPPROTO_TCP, tcpStates, &tcp}, {syscall.IPPROTO_UDP, udpStates, &udp}} {
		for _, fam := range []uint8{syscall.AF_INET, syscall.AF_INET6} {
			p, err := diagPorts(fam, q.proto, q.states)
			if err != nil && fam == syscall.AF_INET6 && errors.Is(err, syscall.ENOENT) {
				continue // no IPv6 in this kernel
			}
			if err != nil {
				return nil, nil, err
			}
			*q.out = append(*q.out, p...)
		}
		slices.Sort(*q.out)
		*q.out = slices.Compact(*q.out)
	}
	return tcp, udp, nil
}
