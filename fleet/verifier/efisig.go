package verifier

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
)

// This file reads UEFI signature databases (the data of the PK, KEK, db and
// dbx variables) as the UEFI Specification (2.10, section 32.4.1
// "Signature Database") lays them out, for the Secure Boot state. It
// exists because go-attestation's reading of them cannot be trusted on its
// own (GO-2026-5298, no fixed version): VerifyEventLog establishes the
// Secure Boot state only when go-attestation and this parser read the
// same signatures from the same verified bytes (secureboot.go).

// efiGUID is an EFI_GUID as laid out in memory: Data1, Data2 and Data3
// little-endian, then the eight bytes of Data4.
type efiGUID [16]byte

// String is the registry form of the GUID, "c1c41626-504c-4092-aca9-41f936934328".
func (g efiGUID) String() string {
	var b [16]byte
	binary.BigEndian.PutUint32(b[0:4], binary.LittleEndian.Uint32(g[0:4]))
	binary.BigEndian.PutUint16(b[4:6], binary.LittleEndian.Uint16(g[4:6]))
	binary.BigEndian.PutUint16(b[6:8], binary.LittleEndian.Uint16(g[6:8]))
	copy(b[8:], g[8:])
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// Signature types of UEFI 2.10 section 32.4.1.1, in registry form.
const (
	efiCertSHA256        = "c1c41626-504c-4092-aca9-41f936934328"
	efiCertRSA2048       = "3c5766e8-269c-4e34-aa14-ed776e85b3b6"
	efiCertRSA2048SHA256 = "e2b36190-879b-4a3d-ad8d-f2e7bba32784"
	efiCertSHA1          = "826ca512-cf10-4ac9-b187-be01496631bd"
	efiCertRSA2048SHA1   = "67f8444f-8743-48f1-a328-1eaab8736080"
	efiCertX509          = "a5c059a1-94e4-4aa7-87b5-ab155c2bf072"
	efiCertSHA224        = "0b6e5233-a65c-44c9-9407-d9ab83bfc8bd"
	efiCertSHA384        = "ff3e5307-9fd0-48c9-85f1-8ad56c701e01"
	efiCertSHA512        = "093e0fae-a6c4-4f50-9f1b-d41e2b89c19a"
	efiCertX509SHA256    = "3bd2a492-96c0-4079-b420-fcf98ef103ed"
	efiCertX509SHA384    = "7076876e-80c2-4ee6-aad2-28b349a6865b"
	efiCertX509SHA512    = "446dbf63-2502-4cda-bcfa-2465d2b0fe9d"
)

// signatureDataSize returns the size the specification fixes for the
// SignatureData of an entry of signature type t (the entry's SignatureSize
// less the 16-byte owner GUID), or 0 when it does not fix one (X.509
// certificates, types it does not define).
func signatureDataSize(t string) int {
	switch t {
	case efiCertSHA256:
		return 32
	case efiCertSHA1:
		return 20
	case efiCertSHA224:
		return 28
	case efiCertSHA384:
		return 48
	case efiCertSHA512:
		return 64
	case efiCertRSA2048, efiCertRSA2048SHA256, efiCertRSA2048SHA1:
		return 256
	case efiCertX509SHA256: // the certificate's TBS hash, then an EFI_TIME
		return 32 + 16
	case efiCertX509SHA384:
		return 48 + 16
	case efiCertX509SHA512:
		return 64 + 16
	}
	return 0
}

// Sizes of the fixed parts of a signature list (EFI_SIGNATURE_LIST:
// SignatureType, SignatureListSize, SignatureHeaderSize, SignatureSize)
// and of a signature (EFI_SIGNATURE_DATA: SignatureOwner, then the data).
const (
	signatureListHeaderSize = 16 + 4 + 4 + 4
	signatureOwnerSize      = 16
)

// signatureList is one EFI_SIGNATURE_LIST of a signature database.
type signatureList struct {
	Offset     int     // where the list starts in the database
	Type       efiGUID // SignatureType
	Header     []byte  // the SignatureHeaderSize bytes of type-specific header that precede the signatures
	Size       int     // SignatureSize: of each signature, owner GUID included
	Signatures []signatureData
}

// signatureData is one EFI_SIGNATURE_DATA.
type signatureData struct {
	Owner efiGUID // SignatureOwner
	Data  []byte  // SignatureData: a hash, a key or a certificate, by the list's type
}

// signatureListError says why a signature database does not have the
// layout the UEFI specification gives it.
type signatureListError struct {
	List   int    // position of the list in the database, the first being 0
	Offset int    // where the list starts in the database
	Reason string // what is inconsistent
}

func (e *signatureListError) Error() string {
	return fmt.Sprintf("verifier: EFI signature list %d (at byte %d): %s", e.List, e.Offset, e.Reason)
}

// parseSignatureDatabase reads b, the data of a signature database
// variable: EFI_SIGNATURE_LISTs back to back, each a 28-byte header, then
// SignatureHeaderSize bytes of header for its type, then signatures of
// SignatureSize bytes each (a 16-byte owner GUID and the signature data),
// filling SignatureListSize exactly. An empty b is an empty database.
//
// It refuses, with a *signatureListError, any b that is not exactly such
// a sequence: a list header cut short; a SignatureListSize smaller than
// the list header or running past the end of b; a SignatureHeaderSize
// running past the end of the list; a SignatureSize with no room for
// data after the owner GUID; a list without signatures, or whose
// signatures do not fill it exactly; a signature whose size is not the
// one the specification fixes for the list's type. Signature data is not
// interpreted (an X.509 entry is not parsed here); the lists returned
// point into b.
func parseSignatureDatabase(b []byte) ([]signatureList, error) {
	var lists []signatureList
	for off := 0; off < len(b); {
		bad := func(format string, args ...any) error {
			return &signatureListError{List: len(lists), Offset: off, Reason: fmt.Sprintf(format, args...)}
		}
		rest := b[off:]
		if len(rest) < signatureListHeaderSize {
			return nil, bad("%d bytes left, short of the %d-byte list header", len(rest), signatureListHeaderSize)
		}
		var l signatureList
		l.Offset = off
		copy(l.Type[:], rest[:16])
		// uint64 arithmetic: the three sizes are 32-bit and chosen by whoever wrote the variable.
		listSize := uint64(binary.LittleEndian.Uint32(rest[16:20]))
		headerSize := uint64(binary.LittleEndian.Uint32(rest[20:24]))
		sigSize := uint64(binary.LittleEndian.Uint32(rest[24:28]))
		switch {
		case listSize < signatureListHeaderSize:
			return nil, bad("SignatureListSize %d is smaller than the %d-byte list header", listSize, signatureListHeaderSize)
		case listSize > uint64(len(rest)):
			return nil, bad("SignatureListSize %d runs past the %d bytes left", listSize, len(rest))
		case headerSize > listSize-signatureListHeaderSize:
			return nil, bad("SignatureHeaderSize %d runs past the %d bytes the list has after its header", headerSize, listSize-signatureListHeaderSize)
		case sigSize <= signatureOwnerSize:
			return nil, bad("SignatureSize %d leaves no room for data after the %d-byte owner GUID", sigSize, signatureOwnerSize)
		}
		body := listSize - signatureListHeaderSize - headerSize
		switch want := signatureDataSize(l.Type.String()); {
		case body == 0:
			return nil, bad("the list has no signatures")
		case body%sigSize != 0:
			return nil, bad("its %d bytes of signatures are not a whole number of %d-byte signatures", body, sigSize)
		case want != 0 && sigSize != uint64(signatureOwnerSize+want):
			return nil, bad("SignatureSize %d is not the %d bytes of a signature of type %s", sigSize, signatureOwnerSize+want, l.Type)
		}
		l.Size = int(sigSize)
		p := signatureListHeaderSize + int(headerSize)
		l.Header = rest[signatureListHeaderSize:p:p]
		for ; p < int(listSize); p += l.Size {
			var s signatureData
			copy(s.Owner[:], rest[p:p+signatureOwnerSize])
			s.Data = rest[p+signatureOwnerSize : p+l.Size : p+l.Size]
			l.Signatures = append(l.Signatures, s)
		}
		lists = append(lists, l)
		off += int(listSize)
	}
	return lists, nil
}
