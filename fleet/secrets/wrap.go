package secrets

import (
	"bytes"
	cryptorand "crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/google/go-tpm/tpm2"

	"github.com/sigil-iot/sigil/pkg/wire"
)

// MaxValue is the largest secret Wrap seals and Store keeps: the size of a
// TPM2B_SENSITIVE_DATA (MAX_SYM_DATA).
const MaxValue = 128

// Blob is a secret wrapped to one TPM's endorsement key, as
// wire.SecretDeliver carries it.
type Blob struct {
	Public    []byte             // TPMT_PUBLIC of the sealed data object
	Duplicate []byte             // TPM2B_PRIVATE contents: the object's sensitive area wrapped to the EK
	Seed      []byte             // TPM2B_ENCRYPTED_SECRET contents: the wrapping seed encrypted to the EK
	PCRs      *wire.PCRSelection // the PCRs the object's policy checks, nil if none
}

// Deliver returns the message that delivers b as version of the secret
// name.
func (b *Blob) Deliver(name string, version int) *wire.SecretDeliver {
	d := &wire.SecretDeliver{
		Name:      name,
		Version:   version,
		Public:    bytes.Clone(b.Public),
		Duplicate: bytes.Clone(b.Duplicate),
		Seed:      bytes.Clone(b.Seed),
	}
	if b.PCRs != nil {
		d.PCRs = &wire.PCRSelection{Hash: b.PCRs.Hash, PCRs: slices.Clone(b.PCRs.PCRs)}
	}
	return d
}

// Wrap seals secret (1 to MaxValue bytes) into a TPM sealed data object and
// duplicates it to the endorsement key whose TPMT_PUBLIC is ekPublic (RSA
// or ECC; its symmetric algorithm must be AES-CFB, as every TCG EK
// template's is). rand supplies the object's obfuscation seed and the
// wrapping seed; nil means crypto/rand.
//
// When pcrs is not nil, the object can be unsealed only while the PCRs of
// pcrs hold values: values[i] is the expected value of PCR pcrs.PCRs[i] in
// bank pcrs.Hash (the order tpm.ReadPCRs returns them in; they are sorted
// by PCR index here). See the package documentation for the policy.
//
// Wrap does not check that ekPublic is trusted: pass only an EK the fleet
// verified at enrollment.
func Wrap(rand io.Reader, ekPublic []byte, secret []byte, pcrs *wire.PCRSelection, values [][]byte) (*Blob, error) {
	if len(secret) == 0 || len(secret) > MaxValue {
		return nil, fmt.Errorf("secrets: wrap: secret of %d bytes, want 1 to %d", len(secret), MaxValue)
	}
	ek, err := tpm2.Unmarshal[tpm2.TPMTPublic](ekPublic)
	if err != nil {
		return nil, fmt.Errorf("secrets: wrap: EK public area: %w", err)
	}
	if a := ek.ObjectAttributes; !a.Restricted || !a.Decrypt || a.SignEncrypt {
		return nil, errors.New("secrets: wrap: EK is not a restricted decryption key")
	}
	key, err := tpm2.ImportEncapsulationKey(ek)
	if err != nil {
		return nil, fmt.Errorf("secrets: wrap: EK: %w", err)
	}
	policy, err := unsealPolicy(pcrs, values)
	if err != nil {
		return nil, fmt.Errorf("secrets: wrap: %w", err)
	}
	if rand == nil {
		rand = cryptorand.Reader
	}

	// The obfuscation value binds the public area to the sensitive one:
	// unique = H(seedValue || data), checked by the TPM on import.
	obfuscate := make([]byte, sha256.Size)
	if _, err := io.ReadFull(rand, obfuscate); err != nil {
		return nil, fmt.Errorf("secrets: wrap: random: %w", err)
	}
	unique := sha256.Sum256(append(bytes.Clone(obfuscate), secret...))
	pub := sealedTemplate(policy, unique[:])
	name, err := tpm2.ObjectName(&pub)
	if err != nil {
		return nil, fmt.Errorf("secrets: wrap: object name: %w", err)
	}
	sensitive := tpm2.Marshal(tpm2.TPMTSensitive{
		SensitiveType: tpm2.TPMAlgKeyedHash,
		SeedValue:     tpm2.TPM2BDigest{Buffer: obfuscate},
		Sensitive:     tpm2.NewTPMUSensitiveComposite(tpm2.TPMAlgKeyedHash, &tpm2.TPM2BSensitiveData{Buffer: secret}),
	})
	dup, seed, err := tpm2.CreateDuplicate(rand, key, name.Buffer, sensitive)
	clear(sensitive)
	if err != nil {
		return nil, fmt.Errorf("secrets: wrap: duplicate: %w", err)
	}
	b := &Blob{Public: tpm2.Marshal(pub), Duplicate: dup, Seed: seed}
	if pcrs != nil {
		b.PCRs = &wire.PCRSelection{Hash: pcrs.Hash, PCRs: slices.Clone(pcrs.PCRs)}
	}
	return b, nil
}

// sealedTemplate is the public area of a sealed data object for import:
// see the package documentation.
func sealedTemplate(authPolicy, unique []byte) tpm2.TPMTPublic {
	return tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgKeyedHash,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			NoDA: true,
		},
		AuthPolicy: tpm2.TPM2BDigest{Buffer: authPolicy},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgKeyedHash, &tpm2.TPMSKeyedHashParms{
			Scheme: tpm2.TPMTKeyedHashScheme{Scheme: tpm2.TPMAlgNull},
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgKeyedHash, &tpm2.TPM2BDigest{Buffer: unique}),
	}
}

// unsealPolicy computes the object's authPolicy.
func unsealPolicy(pcrs *wire.PCRSelection, values [][]byte) ([]byte, error) {
	calc, err := tpm2.NewPolicyCalculator(tpm2.TPMAlgSHA256)
	if err != nil {
		return nil, err
	}
	if pcrs != nil {
		sel, digest, err := pcrDigest(pcrs, values)
		if err != nil {
			return nil, err
		}
		if err := (tpm2.PolicyPCR{PcrDigest: tpm2.TPM2BDigest{Buffer: digest}, Pcrs: sel}).Update(calc); err != nil {
			return nil, err
		}
	} else if len(values) != 0 {
		return nil, errors.New("PCR values without a selection")
	}
	if err := (tpm2.PolicyCommandCode{Code: tpm2.TPMCCUnseal}).Update(calc); err != nil {
		return nil, err
	}
	return calc.Hash().Digest, nil
}

// pcrDigest checks the selection and values and returns the selection as
// TPM2_PolicyPCR takes it and the SHA-256 digest of the values in ascending
// PCR order.
func pcrDigest(pcrs *wire.PCRSelection, values [][]byte) (tpm2.TPMLPCRSelection, []byte, error) {
	if err := pcrs.Validate(); err != nil {
		return tpm2.TPMLPCRSelection{}, nil, fmt.Errorf("PCR selection: %w", err)
	}
	bank := tpm2.TPMIAlgHash(pcrs.Hash)
	h, err := bank.Hash()
	if err != nil || !h.Available() {
		return tpm2.TPMLPCRSelection{}, nil, fmt.Errorf("PCR bank 0x%04x not supported", pcrs.Hash)
	}
	if len(values) != len(pcrs.PCRs) {
		return tpm2.TPMLPCRSelection{}, nil, fmt.Errorf("%d PCR values for %d PCRs", len(values), len(pcrs.PCRs))
	}
	order := make([]int, len(pcrs.PCRs))
	for i := range order {
		order[i] = i
		if len(values[i]) != h.Size() {
			return tpm2.TPMLPCRSelection{}, nil, fmt.Errorf("PCR %d value of %d bytes, want %d", pcrs.PCRs[i], len(values[i]), h.Size())
		}
	}
	slices.SortFunc(order, func(a, b int) int { return pcrs.PCRs[a] - pcrs.PCRs[b] })
	bits := make([]byte, 3)
	d := sha256.New()
	for _, i := range order {
		p := pcrs.PCRs[i]
		bits[p/8] |= 1 << (p % 8)
		d.Write(values[i])
	}
	sel := tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{Hash: bank, PCRSelect: bits}}}
	return sel, d.Sum(nil), nil
}
