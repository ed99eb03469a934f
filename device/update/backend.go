package update

import "context"

// Boot says which slot the device runs and which boot this is.
type Boot struct {
	Slot string
	// ID changes at every boot (Linux: /proc/sys/kernel/random/boot_id).
	// The engine compares it with the one it recorded to tell whether the
	// device has rebooted since.
	ID string
}

// Backend installs images into firmware slots and drives the boot loader.
// The engine calls it from one goroutine; every method must be idempotent
// (after a crash the engine repeats the step it had recorded), and none may
// touch the slot the device runs from, except Commit, which marks it good.
//
// The device has two slots, A/B: it runs from one and the engine installs
// into the other. Switch makes the other slot boot next, once (try-once):
// if the device restarts before Commit, the boot loader boots the old slot
// again.
type Backend interface {
	// Slots names the two slots.
	Slots() [2]string
	// Booted returns the slot the device runs now and the boot's ID.
	Booted(ctx context.Context) (Boot, error)
	// Install writes the image file at path into slot, which is not the
	// booted one.
	Install(ctx context.Context, slot, path string) error
	// Switch makes slot boot next, once.
	Switch(ctx context.Context, slot string) error
	// Reboot restarts the device. On a real board it may not return;
	// simulated backends return once the device "booted" again.
	Reboot(ctx context.Context) error
	// Health checks the running system; nil means healthy.
	Health(ctx context.Context) error
	// Commit makes the booted slot, slot, the one that boots from now on.
	Commit(ctx context.Context, slot string) error
	// Rollback makes slot, the previous known-good one, boot next and
	// forgets a pending switch. A reboot follows.
	Rollback(ctx context.Context, slot string) error
}

// other returns the slot of b's two that is not s, or "" when s is neither.
func other(slots [2]string, s string) string {
	switch s {
	case slots[0]:
		return slots[1]
	case slots[1]:
		return slots[0]
	}
	return ""
}
