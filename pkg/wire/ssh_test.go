package wire

import (
	"strings"
	"testing"
	"time"
)

const (
	sampleHostKey  = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBAWb/8I+5Nozxg0gTPUVDgSfh9weMM+dZXw4Vr/pTooW5Ss2UfMJuDOawV9IIIFkRDXS2UyVVLR7zX3mTO0hymg= root@gw"
	sampleHostCert = "ecdsa-sha2-nistp256-cert-v01@openssh.com AAAAKGVjZHNhLXNoYTItbmlzdHAyNTYtY2VydC12MDFAb3BlbnNzaC5jb20= dev1"
)

func TestSSHRoundTrip(t *testing.T) {
	req := &SSHRequest{HostKeys: []string{sampleHostKey, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"}}
	b, err := Encode(TypeSSHRequest, nil, time.Now(), req)
	if err != nil {
		t.Fatal(err)
	}
	env, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	var got SSHRequest
	if err := DecodeBody(env, TypeSSHRequest, &got); err != nil {
		t.Fatal(err)
	}
	if len(got.HostKeys) != 2 || got.HostKeys[0] != sampleHostKey {
		t.Fatalf("request = %+v", got)
	}
	res := &SSHCerts{Status: StatusActive, Certs: []SSHCert{{Index: 1, Cert: sampleHostCert}}, Validity: 86400}
	b, err = Encode(TypeSSHCerts, env.ID, time.Now(), res)
	if err != nil {
		t.Fatal(err)
	}
	env2, _ := Decode(b)
	var gotRes SSHCerts
	if err := DecodeBody(env2, TypeSSHCerts, &gotRes); err != nil {
		t.Fatal(err)
	}
	if gotRes.Certs[0].Index != 1 || gotRes.Certs[0].Cert != sampleHostCert || string(env2.Corr) != string(env.ID) {
		t.Fatalf("certs = %+v", gotRes)
	}
}

func TestSSHValidateRefusals(t *testing.T) {
	many := make([]string, MaxSSHHostKeys+1)
	for i := range many {
		many[i] = sampleHostKey
	}
	for name, r := range map[string]*SSHRequest{
		"none":          {},
		"too many":      {HostKeys: many},
		"newline":       {HostKeys: []string{sampleHostKey + "\nssh-rsa AAAAB3NzaC1yc2EAAAADAQAB"}},
		"no data":       {HostKeys: []string{"ssh-ed25519"}},
		"bad type":      {HostKeys: []string{"SSH ED AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"}},
		"not base64":    {HostKeys: []string{"ssh-ed25519 AAAA*3NzaC1lZDI1NTE5AAAA"}},
		"too long":      {HostKeys: []string{"ssh-rsa " + strings.Repeat("A", MaxSSHKeyLine)}},
		"non-ASCII":     {HostKeys: []string{sampleHostKey + " \u00e9"}},
		"private key??": {HostKeys: []string{"-----BEGIN OPENSSH PRIVATE KEY-----"}},
	} {
		if err := r.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	for name, c := range map[string]*SSHCerts{
		"status":          {Status: "maybe"},
		"active, none":    {Status: StatusActive, Validity: 60},
		"no validity":     {Status: StatusActive, Certs: []SSHCert{{Cert: sampleHostCert}}},
		"refused + certs": {Status: StatusRefused, Certs: []SSHCert{{Cert: sampleHostCert}}},
		"dup index":       {Status: StatusActive, Validity: 60, Certs: []SSHCert{{Cert: sampleHostCert}, {Cert: sampleHostCert}}},
		"bad index":       {Status: StatusActive, Validity: 60, Certs: []SSHCert{{Index: -1, Cert: sampleHostCert}}},
		"plain key":       {Status: StatusActive, Validity: 60, Certs: []SSHCert{{Cert: sampleHostKey}}},
	} {
		if err := c.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if err := (&SSHCerts{Status: StatusRefused, Reason: ReasonQuarantined}).Validate(); err != nil {
		t.Errorf("plain refusal: %v", err)
	}
}
