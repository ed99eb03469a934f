package state

import (
	"bytes"
	"path/filepath"
	"testing"
	"time"
)

func TestIdentityRoundTripAndReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	id, err := s.Identity()
	if err != nil || id.Status != StatusNew {
		t.Fatalf("fresh identity = %+v, %v", id, err)
	}
	want := &Identity{Status: StatusEnrolled, DeviceID: "abc", AK: KeyBlob{Public: []byte{1}, Private: []byte{2}},
		Cert: []byte{3}, EnrolledAt: time.Unix(1700000000, 0).UTC()}
	if err := s.SaveIdentity(want); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(path, Options{Timeout: 50 * time.Millisecond}); err != ErrLocked {
		t.Fatalf("second open: got %v, want ErrLocked", err)
	}
	s.Close()
	s, err = Open(path, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, err := s.Identity()
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != want.Status || got.DeviceID != want.DeviceID || !bytes.Equal(got.AK.Private, want.AK.Private) ||
		!bytes.Equal(got.Cert, want.Cert) || !got.EnrolledAt.Equal(want.EnrolledAt) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
}
