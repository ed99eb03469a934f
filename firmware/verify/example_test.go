package verify_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"time"

	"github.com/sigil-iot/sigil/firmware/manifest"
	"github.com/sigil-iot/sigil/firmware/sign"
	"github.com/sigil-iot/sigil/firmware/verify"
)

// The firmware flow end to end: the release owner signs a manifest that
// binds the image; the device checks the signature against the trust set
// it got at enrollment, the expiry, its model and its rollback floor, then
// the downloaded image.
func Example() {
	// Release side (sigil firmware sign, or cosign sign-blob).
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	signer, _ := sign.New(sign.Config{Key: key})
	image := bytes.Repeat([]byte("firmware"), 1000)
	m := &manifest.Manifest{
		Name: "gateway-os", Version: "2.4.1", SecurityVersion: 7, Models: []string{"gw-100"},
		Size: int64(len(image)), SHA256: sha256.Sum256(image),
		Expires: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC),
	}
	raw, _ := m.Marshal()
	bundle, _ := signer.Sign(raw)

	// Device side.
	trust, _ := verify.NewTrustSet(1, 1, key.Public())
	now := time.Date(2029, 6, 1, 0, 0, 0, 0, time.UTC)
	v, err := verify.Release(raw, [][]byte{bundle}, trust, now, "gw-100")
	if err != nil {
		fmt.Println("refused:", err)
		return
	}
	if err := v.CheckRollback(6); err != nil {
		fmt.Println("refused:", err)
		return
	}
	fmt.Println("release", v.Manifest.Name, v.Manifest.Version, "signed by", len(v.Signers), "trusted key")
	fmt.Println("image:", verify.Image(bytes.NewReader(image), v.Manifest))
	fmt.Println("truncated image:", verify.Image(bytes.NewReader(image[:100]), v.Manifest))
	// Output:
	// release gateway-os 2.4.1 signed by 1 trusted key
	// image: <nil>
	// truncated image: firmware_digest: image shorter than the manifest says
}
