package auth

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/internal/testenv"
)

func TestPasswordRoundTrip(t *testing.T) {
	h1, err := HashPassword(alicePW, testParams, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(h1, "$argon2id$v=19$m=64,t=1,p=1$") {
		t.Fatalf("hash %q is not an argon2id PHC string with the parameters", h1)
	}
	ok, h, err := VerifyPassword(alicePW, h1)
	if err != nil || !ok {
		t.Fatalf("right password: ok=%v err=%v", ok, err)
	}
	if h.NeedsRehash(testParams) {
		t.Error("a hash made with the current parameters needs no rehash")
	}
	if !h.NeedsRehash(Params{Memory: 128, Time: 1, Threads: 1, SaltLen: 16, KeyLen: 32}) {
		t.Error("a hash made with other parameters needs a rehash")
	}
	for _, wrong := range []string{"", "correct horse batterY", alicePW + " ", alicePW[:len(alicePW)-1]} {
		if ok, _, err := VerifyPassword(wrong, h1); err != nil || ok {
			t.Errorf("wrong password %q: ok=%v err=%v", wrong, ok, err)
		}
	}
	h2, err := HashPassword(alicePW, testParams, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if h1 == h2 {
		t.Error("two hashes of one password are equal: the salt is not random")
	}
}

// TestHashMatchesReferenceCLI checks our PHC strings against the argon2
// reference implementation's command-line tool (Debian package argon2).
func TestHashMatchesReferenceCLI(t *testing.T) {
	testenv.RequireBinaries(t, "argon2")
	salt := "sigilsaltsigilsa" // the CLI takes the salt as an argument: keep it printable
	for _, p := range []Params{
		{Memory: 64, Time: 1, Threads: 1, SaltLen: 16, KeyLen: 32},
		{Memory: 256, Time: 3, Threads: 2, SaltLen: 16, KeyLen: 32},
		{Memory: 1024, Time: 2, Threads: 4, SaltLen: 16, KeyLen: 16},
	} {
		got, err := HashPassword(alicePW, p, strings.NewReader(salt))
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("argon2", salt, "-id", "-t", strconv.Itoa(int(p.Time)), "-k", strconv.Itoa(int(p.Memory)),
			"-p", strconv.Itoa(int(p.Threads)), "-l", strconv.Itoa(int(p.KeyLen)), "-e")
		cmd.Stdin = strings.NewReader(alicePW)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("argon2 CLI: %v", err)
		}
		want := string(bytes.TrimSpace(out))
		if got != want {
			t.Errorf("params %+v:\n ours      %s\n reference %s", p, got, want)
		}
		if ok, _, err := VerifyPassword(alicePW, want); !ok || err != nil {
			t.Errorf("the reference CLI's hash does not verify: ok=%v err=%v", ok, err)
		}
	}
}

func TestParseHashRefuses(t *testing.T) {
	good, err := HashPassword(alicePW, testParams, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(good, "$")
	salt, key := parts[4], parts[5]
	for name, s := range map[string]string{
		"empty":          "",
		"argon2i":        "$argon2i$v=19$m=64,t=1,p=1$" + salt + "$" + key,
		"version 16":     "$argon2id$v=16$m=64,t=1,p=1$" + salt + "$" + key,
		"order":          "$argon2id$v=19$t=1,m=64,p=1$" + salt + "$" + key,
		"leading zero":   "$argon2id$v=19$m=064,t=1,p=1$" + salt + "$" + key,
		"sign":           "$argon2id$v=19$m=+64,t=1,p=1$" + salt + "$" + key,
		"huge memory":    "$argon2id$v=19$m=4294967295,t=1,p=1$" + salt + "$" + key,
		"many passes":    "$argon2id$v=19$m=64,t=1000,p=1$" + salt + "$" + key,
		"p=0":            "$argon2id$v=19$m=64,t=1,p=0$" + salt + "$" + key,
		"p=256":          "$argon2id$v=19$m=4096,t=1,p=256$" + salt + "$" + key,
		"memory < 8p":    "$argon2id$v=19$m=8,t=1,p=2$" + salt + "$" + key,
		"short salt":     "$argon2id$v=19$m=64,t=1,p=1$c2FsdA$" + key,
		"short key":      "$argon2id$v=19$m=64,t=1,p=1$" + salt + "$a2V5",
		"padded base64":  "$argon2id$v=19$m=64,t=1,p=1$" + salt + "==$" + key,
		"missing key":    "$argon2id$v=19$m=64,t=1,p=1$" + salt,
		"extra field":    good + "$x",
		"no leading $":   strings.TrimPrefix(good, "$"),
		"bad base64":     "$argon2id$v=19$m=64,t=1,p=1$" + salt + "$" + key[:len(key)-1] + "!",
		"too long":       good + strings.Repeat("A", 600),
		"missing params": "$argon2id$v=19$m=64,t=1$" + salt + "$" + key,
	} {
		if _, err := ParseHash(s); !errors.Is(err, ErrBadHash) {
			t.Errorf("%s: ParseHash(%q) = %v, want ErrBadHash", name, s, err)
		}
		if ok, _, err := VerifyPassword(alicePW, s); ok || !errors.Is(err, ErrBadHash) {
			t.Errorf("%s: VerifyPassword ok=%v err=%v, want ErrBadHash", name, ok, err)
		}
	}
}

func TestRehashOnLogin(t *testing.T) {
	s, _ := newTestService(t, nil)
	path := s.cfg.Path
	mustCreate(t, s, "alice", alicePW, RoleOperator)
	s.Close()

	stronger := Params{Memory: 128, Time: 2, Threads: 1, SaltLen: 16, KeyLen: 32}
	s2, clk := newTestService(t, func(c *Config) { c.Path, c.Params = path, stronger })
	before, _ := s2.getUserRecord(t.Context(), "alice")
	if h, _ := ParseHash(before.Hash); !h.NeedsRehash(stronger) {
		t.Fatal("test set-up: the stored hash already has the new parameters")
	}
	if _, err := s2.Login(context.Background(), "alice", "wrong password here", "192.0.2.1"); !errors.Is(err, ErrInvalidCredentials) {
		t.Fatalf("wrong password: %v", err)
	}
	if rec, _ := s2.getUserRecord(t.Context(), "alice"); rec.Hash != before.Hash {
		t.Fatal("a failed login replaced the hash")
	}
	clk.Advance(time.Second) // the wait after one failure
	mustLogin(t, s2, "alice", alicePW)
	after, _ := s2.getUserRecord(t.Context(), "alice")
	h, err := ParseHash(after.Hash)
	if err != nil {
		t.Fatal(err)
	}
	if h.NeedsRehash(stronger) {
		t.Fatalf("after login the hash still has the old parameters: %+v", h.Params)
	}
	mustLogin(t, s2, "alice", alicePW) // the new hash verifies
}

func FuzzParseHash(f *testing.F) {
	good, _ := HashPassword(alicePW, testParams, strings.NewReader(strings.Repeat("s", 16)))
	f.Add(good)
	f.Add("$argon2id$v=19$m=65536,t=3,p=2$c29tZXNhbHRzb21lc2FsdA$yrdGtGIZk/3JHsUHh5gLQUqQppLwvGjf4Z+cJbPLqew")
	f.Add("$argon2id$v=19$m=,t=,p=$$")
	f.Add("$$$$$")
	f.Add("$argon2id$v=19$m=4294967296,t=1,p=1$AAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAA")
	f.Fuzz(func(t *testing.T, s string) {
		h, err := ParseHash(s)
		if err != nil {
			if !errors.Is(err, ErrBadHash) {
				t.Fatalf("error %v is not ErrBadHash", err)
			}
			return
		}
		if h.validate() != nil {
			t.Fatalf("accepted out-of-bounds parameters %+v", h.Params)
		}
		if got := h.String(); got != s {
			t.Fatalf("round trip: %q -> %q", s, got)
		}
	})
}
