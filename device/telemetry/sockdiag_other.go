//go:build !linux

package telemetry

import "errors"

// listeningPorts is only available through netlink on Linux; the
// collector reads the /proc files instead.
func listeningPorts() (tcp, udp []uint16, err error) {
	return nil, nil, errors.New("telemetry: sock_diag is Linux only")
}
