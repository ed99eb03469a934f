//go:build !linux

package main

import "errors"

// noEcho is not implemented outside Linux: pass --stdin.
func noEcho(int) (func() error, error) {
	return nil, errors.New("reading a password without echo is implemented on Linux only")
}
