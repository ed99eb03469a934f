package verifier

// Test helpers for package verifier_test, whose tests judge verified event
// logs with package policy (which imports this package).
var (
	WindowsSecureBootLog = windowsSecureBootLog
	WindowsVariable      = windowsVariable
	InjectedDbx          = injectedDbx
	Digest               = digest
	WithValue            = withValue
)
