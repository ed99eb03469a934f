package verifier

import (
	"bytes"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"unicode/utf16"

	"github.com/google/go-attestation/attest"
)

// Vendor GUIDs of the Secure Boot variables (UEFI 2.10, sections 3.3 and
// 32.6), in registry form.
const (
	efiGlobalVariable        = "8be4df61-93ca-11d2-aa0d-00e098032b8c" // PK, KEK
	efiImageSecurityDatabase = "d719b2cb-3d3a-4596-a3bc-dad00e67656f" // db, dbx
)

// signatureDatabase is one Secure Boot variable whose data is a signature
// database, and what go-attestation read from it.
type signatureDatabase struct {
	name, vendor string
	certs        func(*attest.SecurebootState) []x509.Certificate
	hashes       func(*attest.SecurebootState) [][]byte
}

// signatureDatabases are the variables whose signatures go-attestation
// reads (its ParseSecurebootState takes all four to decide that Secure
// Boot is enabled: keys in PK, KEK and db).
func signatureDatabases() []signatureDatabase {
	return []signatureDatabase{
		{"PK", efiGlobalVariable,
			func(s *attest.SecurebootState) []x509.Certificate { return s.PlatformKeys },
			func(s *attest.SecurebootState) [][]byte { return s.PlatformKeyHashes }},
		{"KEK", efiGlobalVariable,
			func(s *attest.SecurebootState) []x509.Certificate { return s.ExchangeKeys },
			func(s *attest.SecurebootState) [][]byte { return s.ExchangeKeyHashes }},
		{"db", efiImageSecurityDatabase,
			func(s *attest.SecurebootState) []x509.Certificate { return s.PermittedKeys },
			func(s *attest.SecurebootState) [][]byte { return s.PermittedHashes }},
		{"dbx", efiImageSecurityDatabase,
			func(s *attest.SecurebootState) []x509.Certificate { return s.ForbiddenKeys },
			func(s *attest.SecurebootState) [][]byte { return s.ForbiddenHashes }},
	}
}

// secureBootState establishes the Secure Boot state from sb, what
// go-attestation's ParseSecurebootState read from the verified events, or
// says why it cannot. go-attestation's reading of signature databases is
// not trusted on its own (GO-2026-5298: signatures read from bytes the
// firmware does not take as signatures). So for each of PK, KEK, db and
// dbx that a verified PCR 7 EV_EFI_VARIABLE_DRIVER_CONFIG event carries,
// it checks, in order:
//
//  1. the variable is measured once, under its vendor GUID (the global
//     variable GUID for PK and KEK, the image security database GUID for
//     db and dbx);
//  2. its data has the layout of the UEFI specification
//     (parseSignatureDatabase);
//  3. its signatures are all X.509 certificates or SHA-256 hashes (the
//     types go-attestation reads), and go-attestation read exactly these
//     certificates and hashes, in order.
//
// Any failure leaves the state unknown ("fail closed"), with the event and
// the reason. Otherwise the state's fields come from sb, but
// ForbiddenHashes, which counts the SHA-256 hashes of dbx as read here.
func secureBootState(events []Event, sb *attest.SecurebootState) (*SecureBootState, string) {
	s := &SecureBootState{Enabled: sb.Enabled, DMAProtectionDisabled: sb.DMAProtectionDisabled}
	for _, c := range slices.Concat(sb.PreSeparatorAuthority, sb.PostSeparatorAuthority) {
		s.Authorities = append(s.Authorities, c.Subject.String())
	}
	seen := map[string]bool{}
	for i := range events {
		e := &events[i]
		if e.PCR != 7 || uint32(e.typ) != 0x80000001 { // EV_EFI_VARIABLE_DRIVER_CONFIG
			continue
		}
		fail := func(format string, args ...any) (*SecureBootState, string) {
			return nil, fmt.Sprintf("%s: ", e.Label()) + fmt.Sprintf(format, args...) +
				"; the Secure Boot databases are judged only as the UEFI specification lays them out"
		}
		vendor, name, data, ok := uefiVariable(e.full)
		if !ok { // go-attestation refuses such an event: unreachable with a state
			return fail("the event data is not a UEFI variable")
		}
		var db *signatureDatabase
		for _, d := range signatureDatabases() {
			if d.name == name {
				db = &d
				break
			}
		}
		switch {
		case db == nil:
			continue
		case seen[name]:
			return fail("variable %s measured twice", name)
		case vendor.String() != db.vendor:
			return fail("variable %s has vendor GUID %s, not %s", name, vendor, db.vendor)
		}
		seen[name] = true
		lists, err := parseSignatureDatabase(data)
		if err != nil {
			var le *signatureListError
			if errors.As(err, &le) {
				return fail("signature list %d (at byte %d of %s): %s", le.List, le.Offset, name, le.Reason)
			}
			return fail("%v", err)
		}
		var certs, hashes [][]byte
		for li, l := range lists {
			var to *[][]byte
			switch l.Type.String() {
			case efiCertX509:
				to = &certs
			case efiCertSHA256:
				to = &hashes
			default:
				return fail("signature list %d (at byte %d of %s) has signatures of type %s, which are not judged", li, l.Offset, name, l.Type)
			}
			for _, sig := range l.Signatures {
				*to = append(*to, sig.Data)
			}
		}
		theirCerts, theirHashes := db.certs(sb), db.hashes(sb)
		same := len(theirCerts) == len(certs) && len(theirHashes) == len(hashes)
		for k := 0; same && k < len(certs); k++ {
			same = bytes.Equal(theirCerts[k].Raw, certs[k])
		}
		for k := 0; same && k < len(hashes); k++ {
			same = bytes.Equal(theirHashes[k], hashes[k])
		}
		if !same {
			return fail("%s holds %d certificates and %d SHA-256 hashes, but go-attestation read %d and %d, or others",
				name, len(certs), len(hashes), len(theirCerts), len(theirHashes))
		}
		if name == "dbx" {
			s.ForbiddenHashes = len(hashes)
		}
	}
	// go-attestation reads only variables it saw, with the same names: one
	// it read that has no event here would be a difference.
	for _, d := range signatureDatabases() {
		if !seen[d.name] && (len(d.certs(sb)) > 0 || len(d.hashes(sb)) > 0) {
			return nil, fmt.Sprintf("go-attestation read signatures of %s from no verified PCR 7 event", d.name)
		}
	}
	return s, ""
}

// uefiVariable parses UEFI_VARIABLE_DATA as go-attestation does: vendor
// GUID, name length in characters, data length, the UTF-16 name (every
// code unit, as go-attestation's VarName decodes it), the data; bytes after
// the data are ignored.
func uefiVariable(b []byte) (vendor efiGUID, name string, data []byte, ok bool) {
	if len(b) < 32 {
		return vendor, "", nil, false
	}
	copy(vendor[:], b[:16])
	nameLen, dataLen := binary.LittleEndian.Uint64(b[16:24]), binary.LittleEndian.Uint64(b[24:32])
	rest := b[32:]
	if nameLen > uint64(len(rest))/2 || dataLen > uint64(len(rest))-nameLen*2 {
		return vendor, "", nil, false
	}
	units := make([]uint16, nameLen)
	for i := range units {
		units[i] = binary.LittleEndian.Uint16(rest[2*i:])
	}
	return vendor, string(utf16.Decode(units)), rest[nameLen*2 : nameLen*2+dataLen], true
}
