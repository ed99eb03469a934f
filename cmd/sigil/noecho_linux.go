package main

import (
	"golang.org/x/sys/unix"
)

// noEcho turns the echo of the terminal fd off, keeping line editing and
// signals, and returns the function that restores it; it fails when fd is
// not a terminal. The echo is off before the caller prompts, so nothing
// typed after the prompt shows.
func noEcho(fd int) (restore func() error, err error) {
	old, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return nil, err
	}
	t := *old
	t.Lflag &^= unix.ECHO
	t.Lflag |= unix.ICANON | unix.ISIG
	t.Iflag |= unix.ICRNL
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, &t); err != nil {
		return nil, err
	}
	return func() error { return unix.IoctlSetTermios(fd, unix.TCSETS, old) }, nil
}
