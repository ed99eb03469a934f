package auth

import (
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"golang.org/x/crypto/argon2"
)

// Params are the argon2id cost parameters of a password hash.
type Params struct {
	Memory  uint32 // memory in KiB
	Time    uint32 // passes over the memory
	Threads uint8  // lanes
	SaltLen uint32 // salt bytes
	KeyLen  uint32 // derived key bytes
}

// DefaultParams returns the parameters used when Config.Params is zero:
// 46 MiB, 1 pass, 1 lane, a 16-byte salt and a 32-byte key (the first
// argon2id setting OWASP's password storage guidance recommends). On a
// loaded 2-core server one hash takes about 0.1 s.
func DefaultParams() Params {
	return Params{Memory: 46 << 10, Time: 1, Threads: 1, SaltLen: 16, KeyLen: 32}
}

// Bounds on parameters, both for new hashes and for stored ones: a hash
// whose parameters ask for more is refused rather than computed.
const (
	maxMemory   = 4 << 20 // KiB (4 GiB)
	maxTime     = 100
	minSaltLen  = 8
	maxSaltLen  = 64
	minKeyLen   = 16
	maxKeyLen   = 64
	maxHashLen  = 512 // characters of a PHC string
	maxPassword = 1024
	// MinPasswordLen is the shortest password CreateUser and SetPassword
	// accept.
	MinPasswordLen = 12
)

// ErrBadHash reports a password hash that is not a supported argon2id PHC
// string.
var ErrBadHash = errors.New("auth: malformed password hash")

func (p Params) validate() error {
	var errs []error
	if p.Time < 1 || p.Time > maxTime {
		errs = append(errs, fmt.Errorf("time %d is not in 1..%d", p.Time, maxTime))
	}
	if p.Threads < 1 {
		errs = append(errs, errors.New("threads must be at least 1"))
	}
	if p.Memory < 8*uint32(p.Threads) || p.Memory > maxMemory {
		errs = append(errs, fmt.Errorf("memory %d KiB is not in %d..%d", p.Memory, 8*uint32(p.Threads), maxMemory))
	}
	if p.SaltLen < minSaltLen || p.SaltLen > maxSaltLen {
		errs = append(errs, fmt.Errorf("salt length %d is not in %d..%d", p.SaltLen, minSaltLen, maxSaltLen))
	}
	if p.KeyLen < minKeyLen || p.KeyLen > maxKeyLen {
		errs = append(errs, fmt.Errorf("key length %d is not in %d..%d", p.KeyLen, minKeyLen, maxKeyLen))
	}
	return errors.Join(errs...)
}

// Hash is a parsed argon2id password hash.
type Hash struct {
	Params
	Salt []byte
	Key  []byte
}

// String returns the PHC string:
// $argon2id$v=19$m=<KiB>,t=<passes>,p=<lanes>$<salt>$<key>, with salt and
// key in unpadded standard base64.
func (h Hash) String() string {
	b64 := base64.RawStdEncoding
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s",
		argon2.Version, h.Memory, h.Time, h.Threads, b64.EncodeToString(h.Salt), b64.EncodeToString(h.Key))
}

// HashPassword hashes password with argon2id under p, with a fresh salt
// from rand, and returns the PHC string.
func HashPassword(password string, p Params, rand io.Reader) (string, error) {
	if err := p.validate(); err != nil {
		return "", fmt.Errorf("auth: argon2id parameters: %w", err)
	}
	if len(password) > maxPassword {
		return "", fmt.Errorf("%w: password longer than %d bytes", ErrInvalid, maxPassword)
	}
	salt := make([]byte, p.SaltLen)
	if _, err := io.ReadFull(rand, salt); err != nil {
		return "", fmt.Errorf("auth: salt entropy: %w", err)
	}
	key := argon2.IDKey([]byte(password), salt, p.Time, p.Memory, p.Threads, p.KeyLen)
	return Hash{Params: p, Salt: salt, Key: key}.String(), nil
}

// VerifyPassword reports whether password matches the PHC string encoded,
// comparing in constant time, and returns the parsed hash so that the caller
// can tell whether it was made with other parameters (NeedsRehash). A
// malformed hash fails with ErrBadHash.
func VerifyPassword(password, encoded string) (bool, Hash, error) {
	h, err := ParseHash(encoded)
	if err != nil {
		return false, Hash{}, err
	}
	if len(password) > maxPassword {
		return false, h, nil
	}
	key := argon2.IDKey([]byte(password), h.Salt, h.Time, h.Memory, h.Threads, h.KeyLen)
	return subtle.ConstantTimeCompare(key, h.Key) == 1, h, nil
}

// NeedsRehash reports whether h was made with parameters other than p.
func (h Hash) NeedsRehash(p Params) bool {
	return h.Memory != p.Memory || h.Time != p.Time || h.Threads != p.Threads ||
		uint32(len(h.Salt)) != p.SaltLen || uint32(len(h.Key)) != p.KeyLen
}

// ParseHash parses an argon2id PHC string as String writes it. Parameters
// outside the bounds HashPassword accepts fail, so that a tampered hash
// cannot make the server allocate gigabytes.
func ParseHash(encoded string) (Hash, error) {
	bad := func(why string) (Hash, error) { return Hash{}, fmt.Errorf("%w: %s", ErrBadHash, why) }
	if len(encoded) > maxHashLen {
		return bad("too long")
	}
	if strings.ContainsAny(encoded, "\r\n") { // base64 decoding would skip them
		return bad("line break")
	}
	parts := strings.Split(encoded, "$")
	if len(parts) != 6 || parts[0] != "" {
		return bad("want $argon2id$v=..$m=..,t=..,p=..$salt$key")
	}
	if parts[1] != "argon2id" {
		return bad("algorithm is not argon2id")
	}
	if parts[2] != "v="+strconv.Itoa(argon2.Version) {
		return bad("unsupported version")
	}
	kv := strings.Split(parts[3], ",")
	if len(kv) != 3 {
		return bad("want parameters m, t and p")
	}
	var vals [3]uint64
	for i, name := range []string{"m", "t", "p"} {
		s, ok := strings.CutPrefix(kv[i], name+"=")
		if !ok || !decimal(s) {
			return bad("parameter " + name)
		}
		v, err := strconv.ParseUint(s, 10, 32)
		if err != nil {
			return bad("parameter " + name)
		}
		vals[i] = v
	}
	if vals[2] > 255 {
		return bad("parameter p")
	}
	b64 := base64.RawStdEncoding.Strict()
	salt, err := b64.DecodeString(parts[4])
	if err != nil {
		return bad("salt encoding")
	}
	key, err := b64.DecodeString(parts[5])
	if err != nil {
		return bad("key encoding")
	}
	h := Hash{
		Params: Params{Memory: uint32(vals[0]), Time: uint32(vals[1]), Threads: uint8(vals[2]),
			SaltLen: uint32(len(salt)), KeyLen: uint32(len(key))},
		Salt: salt,
		Key:  key,
	}
	if err := h.validate(); err != nil {
		return Hash{}, fmt.Errorf("%w: %w", ErrBadHash, err)
	}
	return h, nil
}

// decimal reports whether s is a decimal number without sign or leading
// zeros, as PHC strings write them.
func decimal(s string) bool {
	if s == "" || len(s) > 10 || (len(s) > 1 && s[0] == '0') {
		return false
	}
	for _, c := range []byte(s) {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}
