package record

import (
	"errors"
	"testing"
)

func TestRoundTripAndVersions(t *testing.T) {
	type thing struct{ Name string }
	b, err := Encode(2, &thing{Name: "a"})
	if err != nil || string(b) != `{"v":2,"data":{"Name":"a"}}` {
		t.Fatalf("%s %v", b, err)
	}
	if got, err := Decode[thing](2, b); err != nil || got.Name != "a" {
		t.Fatalf("%+v %v", got, err)
	}
	if _, err := Decode[thing](1, b); !errors.Is(err, ErrVersion) {
		t.Fatalf("newer version: %v", err)
	}
	for _, bad := range []string{`{"v":0,"data":{}}`, `{"v":1}`, `{`, `[]`} {
		if _, err := Decode[thing](2, []byte(bad)); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}
