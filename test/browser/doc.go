// Package browser drives the operators' console in a real Chromium (the
// system's, /usr/bin/chromium) with playwright-core from npm, against a
// real fleet with sigild agents on swtpm TPMs. The Go test starts the fleet
// and runs console.spec.js with node; the script's steps are the
// scenarios, its exit status the verdict. passwd.spec.js (run by
// TestPasswordChangeInChromium) changes a password with two browsers
// logged in as the same person. What the scripts share (settings from the
// environment, steps, pages that record errors, login, axe-core) is in
// scenario.js.
//
// Screenshots of the main pages are kept as test artifacts (go test
// -artifacts); SIGIL_UPDATE_SCREENSHOTS=1 also refreshes the copies
// committed under docs/screenshots.
package browser
