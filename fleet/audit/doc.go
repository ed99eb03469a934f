// Package audit is the fleet's tamper-evident audit log: an append-only,
// hash-chained record of every operator and lifecycle action, with
// periodic checkpoints signed by the fleet's key, an export in JSON lines
// and an offline verifier that locates a tampered, deleted or reordered
// entry.
//
// # Entries
//
// An Entry says who acted (Actor: a user, an API token, a device or a
// component of the fleet), what they did (Action, dotted lowercase words
// such as "device.revoke"), on what (Target), how it ended (Outcome: ok,
// denied or failed, with a Reason), in which request (RequestID) and any
// small Details. Details and reasons are stored and exported in clear:
// never put secrets, tokens or key material in them.
//
// Log.Append (or Record, for the Recorder interface) assigns the entry
// the next sequence number (1, 2, 3, ...), the time (Config.Now, never
// before the previous entry's time, so that a clock stepping back does not
// make the log look reordered), the previous entry's hash (Prev; all zeros
// for entry 1) and its own Hash. Concurrent appends share one bbolt
// transaction and one fsync (group commit); each returns once its entry is
// durable.
//
// Record an action with its outcome once it is done; when an action must
// not happen without a trace, record the attempt first. A failed Record
// means the entry was not written: the caller reports it rather than
// carry on silently.
//
// # Canonical encoding
//
// An entry's Hash is SHA-256 over this byte string, where str(s) is the
// length of s in bytes as a 4-byte big-endian unsigned integer followed by
// the UTF-8 bytes of s, u32 and u64 a 4- and an 8-byte big-endian unsigned
// integer, and i64 an 8-byte big-endian two's-complement integer:
//
//	str("sigil-audit-entry-v1")
//	u64(Seq)
//	i64(Time as Unix nanoseconds)
//	str(Actor.Kind) str(Actor.ID)
//	str(Action) str(Target) str(Outcome) str(Reason) str(RequestID)
//	u32(number of Details), then for each detail in ascending bytewise
//	    order of keys: str(key) str(value)
//	Prev (the 32 bytes of the previous entry's hash)
//
// Absent optional fields (Target, Reason, RequestID) are empty strings.
// A checkpoint's signature covers
//
//	str("sigil-audit-checkpoint-v1") u64(Seq) Head (32 bytes) i64(Time as Unix nanoseconds)
//
// and is an ASN.1 DER ECDSA P-256 signature over the SHA-256 of those
// bytes, the form `openssl dgst -sha256 -sign` makes and
// `openssl dgst -sha256 -verify` checks. The domain strings keep a
// checkpoint signature from ever being valid as anything else the same key
// signs (a certificate's TBS starts with a DER SEQUENCE, 0x30).
//
// # Checkpoints
//
// A Checkpoint (Seq, Head, Time) is signed with Config.Signer: the fleet
// CA's key or a dedicated audit key. Head is the hash of entry Seq, which
// depends on every entry before it, so one signature vouches for the whole
// chain up to Seq. Run signs one every Config.CheckpointInterval when
// entries were appended since the last, and a last one when it stops;
// Log.Checkpoint signs one on demand (call it before an export).
// Checkpoints are stored in the log and exported right after the entry
// they cover. KeyID names the signing key (SHA-256 of its
// SubjectPublicKeyInfo) but is not signed; only the signature counts.
//
// # Export
//
// Export writes JSON lines: a header
//
//	{"header":{"format":"sigil-audit-export-v1","first":1,"last":3}}
//
// then one line per entry and per checkpoint, in order:
//
//	{"entry":{"seq":1,"time":"2026-05-01T10:00:00Z","actor":{"kind":"user","id":"alice"},"action":"device.revoke","target":"…","outcome":"ok","prev":"00…00","hash":"…"}}
//	{"checkpoint":{"seq":1,"head":"…","time":"…","key_id":"…","signature":"<base64 DER>"}}
//
// Times are RFC 3339 with nanoseconds in UTC, hashes 64 lowercase hex
// digits. Verify accepts a line only in exactly the form Export writes it
// (no added spaces, no duplicate or unknown keys), so that every tool
// reading the file sees the record that was verified.
//
// # What verification detects
//
// Verify (an export, offline) and Log.VerifyStore (the live file) detect
// and locate, naming the sequence number and the line:
//
//   - an entry whose fields were changed but whose hash was not
//     recomputed (ErrEdited, at that entry);
//   - an entry changed with its hash recomputed: the next entry no longer
//     links to it (ErrEdited, at the changed entry, which may have been
//     any one after the previous checkpoint if the forger recomputed the
//     hashes of the entries after it);
//   - a rewrite that recomputed the hashes of every entry up to a
//     checkpoint: the signed head differs (ErrEdited, at the checkpoint,
//     with the range of entries it could be in);
//   - a deleted entry: a sequence number is skipped (ErrMissing);
//   - a moved or repeated entry (ErrReordered, where it turns up);
//   - a forged or altered checkpoint, or one signed by a key other than
//     the one given (ErrBadSignature);
//   - entries deleted before a checkpoint that was kept (ErrMissing);
//   - an export that stops before its header's last entry, or mid-line
//     (ErrTruncated).
//
// What it cannot detect: anything done to the entries after the last
// checkpoint by someone who can write the file. They can change them and
// recompute the hashes, delete them (the header is not signed and can be
// edited to match), or append new ones; Report.Unsigned counts these
// entries. Dropping the tail including its checkpoints is detectable only
// against a checkpoint kept elsewhere: compare Report.Checkpoint and
// Report.Last with a checkpoint or head obtained independently (for
// example the live log's LastCheckpoint). An export that starts after
// entry 1 is verified from its first entry; the entries before it are not
// checked (Report.First says where verification began). Anyone holding the
// signing key can forge a whole log, checkpoints included.
package audit
