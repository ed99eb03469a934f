package agent

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestConfigValidate(t *testing.T) {
	c := Config{}
	c.setDefaults()
	err := c.Validate()
	for _, want := range []string{"broker is required", "model is required"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() = %v, want %q", err, want)
		}
	}
	c = Config{Broker: "fleet:8883", Model: "gw", Token: "a", TokenFile: "b", TopicPrefix: "a/b"}
	c.setDefaults()
	err = c.Validate()
	for _, want := range []string{"token or token_file", "topic_prefix"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() = %v, want %q", err, want)
		}
	}
	c = Config{Broker: "fleet.example:8883", Model: "gw"}
	c.setDefaults()
	if err := c.Validate(); err != nil || c.ServerName != "fleet.example" || c.TPM != "/dev/tpmrm0" {
		t.Fatalf("defaults: %+v %v", c, err)
	}
}

func TestLoadConfigRefusesUnknownKeys(t *testing.T) {
	p := filepath.Join(t.TempDir(), "c.json")
	os.WriteFile(p, []byte(`{"broker":"x:1","modle":"typo"}`), 0o600)
	if _, err := LoadConfig(p); err == nil || !strings.Contains(err.Error(), "modle") {
		t.Fatalf("LoadConfig = %v", err)
	}
	os.WriteFile(p, []byte(`{"broker":"x:1","model":"m","retry_max":"2m","attest_interval":"30s"}`), 0o600)
	c, err := LoadConfig(p)
	if err != nil || time.Duration(c.RetryMax) != 2*time.Minute || time.Duration(c.AttestInterval) != 30*time.Second {
		t.Fatalf("LoadConfig = %+v, %v", c, err)
	}
}

// The shipped example configuration must stay loadable.
func TestExampleConfig(t *testing.T) {
	c, err := LoadConfig("../../deploy/sigild.example.json")
	if err != nil {
		t.Fatal(err)
	}
	c.setDefaults()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
}

// TestStatusPrintsUntrustedTextSafely: values with control characters are
// quoted in Text and \u-escaped in JSON, which still decodes to the same
// values; printable text (accents, emoji) is left as it is.
func TestStatusPrintsUntrustedTextSafely(t *testing.T) {
	st := Status{LastError: "bad \x1b[31m\u009b\u202e\U000E0001 end", CertIssuer: "Flotte Süd 🚚", LastReason: "bad utf-8 \xff\x9b"}
	text := st.Text()
	for _, want := range []string{`last error:   "bad \x1b[31m\u009b\u202e\U000e0001 end"`, "cert issuer:  Flotte Süd 🚚\n", `last reason:  "bad utf-8 \xff\x9b"`} {
		if !strings.Contains(text, want) {
			t.Errorf("Text lacks %s:\n%s", want, text)
		}
	}
	b, err := st.JSON()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `\u009b\u202e\udb40\udc01`) || !strings.Contains(string(b), "Süd 🚚") {
		t.Errorf("JSON escapes:\n%s", b)
	}
	var back Status
	if err := json.Unmarshal(b, &back); err != nil || back.LastError != st.LastError || back.CertIssuer != st.CertIssuer {
		t.Fatalf("JSON round trip: %+v, %v", back, err)
	}
}
