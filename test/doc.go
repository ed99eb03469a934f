// Package test holds repository-wide checks (every package documented); the
// end-to-end suites live in its subdirectories.
package test
