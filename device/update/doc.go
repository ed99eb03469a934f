// Package update is the device's firmware update engine: it takes an
// update the fleet announces through verification, download, A/B install,
// the switch, a health check and commit, or back to the previous slot, and
// survives kill -9 or power loss at any point.
//
// # Phases
//
//	announced -> downloading -> verifying -> installing -> switching -> rebooting
//	    -> health -> committing -> advancing_floor -> committed
//	                   \-> rolling_back -> rolled_back
//	any phase before switching -> failed
//
// Each phase is written to the state store (device/state, one synced bbolt
// transaction) before the engine acts on it, and every action is safe to
// repeat, so after a crash Resume repeats the recorded phase:
//
//   - announced: the manifest and its signature bundle are checked by the
//     Verifier (trusted keys and threshold, expiry, model); the security
//     version must not be below the anti-rollback floor (see below).
//     Refusals end in failed with ReasonFirmwareSignature, Expired, Model
//     or Rollback.
//   - downloading: the image is fetched over HTTPS with the injected
//     Fetcher (device/fetch, with the device's mTLS identity) into
//     Dir/<id>.part, resumed with an HTTP Range request from what earlier
//     attempts (or an earlier run) left there, and never past the
//     manifest's size. The resume carries If-Range with the validator
//     (ETag or Last-Modified) of the response the first bytes came from,
//     kept in Dir/<id>.validator, so that a changed image is taken whole
//     again. Repeated failures end in failed with ReasonFirmwareDownload.
//     A release that binds a block-hash index (Release.BlockSize and
//     IndexSHA256, from manifest.Blocks) is first tried adaptively (see
//     below) while no full download has begun.
//   - verifying: size and SHA-256 of the file are compared with the
//     manifest (streamed, never held in memory), and the counter is checked
//     again. A mismatch ends in failed with ReasonFirmwareDigest.
//   - installing: the image is written to the inactive slot; the slot is
//     recorded as holding no known image first, and as holding the release
//     once written.
//   - switching: the backend makes the new slot boot next, once.
//   - rebooting: the device restarts. A boot ID recorded before tells,
//     after a restart, whether the reboot happened: the same boot reboots
//     again; a new boot of the new slot goes on to health; a new boot of the
//     old slot means the boot loader fell back: rolled_back,
//     ReasonFirmwareHealth.
//   - health: the backend's health check. Failure goes to rolling_back.
//   - committing: the backend makes the new slot permanent; only then is
//     the release's security version recorded as the floor in the store
//     (so a rollback before this point still finds the old release
//     acceptable).
//   - advancing_floor: the anti-rollback counter is advanced to the
//     release's security version and read back; the image digest is
//     extended into the firmware PCR, and the update is committed only
//     once the counter holds at least that version. A failure stays in
//     this phase: it is reported to the fleet (the message says so) and
//     retried, MaxAttempts times in a row and then at every Resume (Run
//     backs off between them), never given up; the floor recorded in the
//     store holds meanwhile, and other announcements are refused as busy.
//   - rolling_back: the backend makes the previous slot boot next and the
//     device restarts into it: rolled_back with the reason recorded.
//
// Final phases (committed, rolled_back, failed) carry the version that
// actually runs (the booted slot's, not the intended one) and stay queued
// in the store until the Reporter accepts them: a final report not yet
// acknowledged is sent again after a restart. Progress reports are best
// effort.
//
// # Adaptive updates
//
// With a block index, downloading fetches URL + IndexSuffix (bounded by
// the size the manifest implies) and checks its SHA-256 and geometry
// against the verified release (kept as Dir/<id>.index for retries), then
// assembles the image in
// Dir/<id>.adaptive: blocks already there with their hash (an earlier
// attempt's) stay; the others are taken, by hash, from the booted slot when
// the backend is a SlotReader (FileBackend; HookBackend with
// HookConfig.SlotDevices), each hashed as it is read so that a corrupt
// local block matches nothing; what is still missing is fetched with
// bounded range requests and checked block by block against the index. The
// file is synced after each range (Config.AdaptiveStep names the steps),
// then renamed to Dir/<id>.part, and verifying checks the whole image as
// for a full download. Every step can be repeated after a crash: blocks
// on disk are re-hashed, never trusted. A refusal (no index, an index or
// block that does not match, a server that ignores ranges) falls back, in
// the same attempt, to the full download; a lost connection is retried
// like any download, keeping the blocks that came. The bytes
// fetched (index, ranges, full download) are counted in the update record
// and reported (Report.Fetched).
//
// # Anti-rollback and measurement
//
// Counter is the TPM NV counter of device/tpm (SecurityVersionIndex). The
// floor is the higher of the counter and the floor recorded in the state
// store when a release was committed: a release whose security version is
// below it is refused. The recorded floor covers an advance that failed,
// and a counter whose NV index a holder of the TPM's owner or platform
// authorization deleted (it reads 0 until incremented again); a counter
// that cannot be read (device/tpm refuses an NV index with attributes
// other than its own) stops updates at the check, retried by Run. The
// counter is advanced only after commit. Measurer extends the running image's SHA-256 into a
// PCR (DefaultPCR, 14, SHA-256 bank) after commit and at start-up, once per
// TPM boot: the engine records the PCR's value before and the value
// expected after each extension, so a crash between the two never extends
// twice. After a real reboot the PCR holds SHA-256(zeros || digest) of the
// running image, the value the fleet's policy expects from the manifest.
//
// # Backends
//
// FileBackend keeps two slot files and a boot record in a directory, for
// the simulator and tests. HookBackend runs a program for each step so that
// real boards plug in. The hook contract, HOOK being HookConfig.Path:
//
//	HOOK booted              print the booted slot, optionally followed by
//	                         a space and a boot ID (a string that changes at
//	                         every boot); without one, the engine reads
//	                         /proc/sys/kernel/random/boot_id
//	HOOK install SLOT PATH   write the image file PATH into SLOT, which is
//	                         never the booted slot
//	HOOK switch SLOT         make SLOT boot next, once: if the device
//	                         restarts without "commit", the boot loader boots
//	                         the previous slot (U-Boot: BOOT_ORDER with a
//	                         try counter; RAUC: "rauc status mark-active")
//	HOOK reboot              restart the device (may never return)
//	HOOK health              exit 0 if the running system is healthy
//	HOOK commit SLOT         make SLOT, the booted one, permanent (RAUC:
//	                         "rauc status mark-good")
//	HOOK rollback SLOT       make SLOT, the previous known-good slot, boot
//	                         next and forget a pending switch (RAUC:
//	                         "rauc status mark-bad booted" then mark-active)
//
// With HookConfig.SlotDevices the engine reads the booted slot's device
// for adaptive updates, and "HOOK install SLOT PATH" still receives a
// whole image file, verified against the manifest's digest: the hook does
// not need to know about blocks. RAUC's and SWUpdate's own delta
// mechanisms work on their own bundle formats and are not used by this
// path: RAUC's adaptive mode ("block-hash-index" in a verity bundle,
// streamed over HTTP by rauc itself) needs RAUC to download the bundle,
// while sigild downloads with its mTLS identity and verifies Sigil's
// signed manifest; a board that wants RAUC's mode instead lets the hook's
// install step call "rauc install" on a bundle URL and ships releases
// without a Sigil block index. SWUpdate's delta handler (zchunk) is the
// same choice. See docs/DEPLOY.md ("Adaptive updates with RAUC or SWUpdate").
//
// Every command exits 0 on success; anything else is a failure, and the
// start of its standard error is logged and kept in the error. Every
// command must be idempotent: after a crash the engine runs the same command
// again. Slot names are HookConfig.Slots ("a" and "b" unless set). Commands
// are bounded by HookConfig.Timeout (install by InstallTimeout); the hook
// runs with sigild's environment plus HookConfig.Env.
package update
