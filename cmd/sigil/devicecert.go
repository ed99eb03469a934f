package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/sigil-iot/sigil/fleet/api"
)

// deviceCert is `sigil devices cert ID [--pem] [-o json]`: the device's
// current certificate (an X509-SVID) with its SPIFFE ID, or with --pem its
// chain as PEM (the certificate, then its issuing CA root), for openssl and
// other tools.
func deviceCert(ctx context.Context, c *api.Client, af apiFlags, id string, asPEM bool, stdout io.Writer) error {
	v, err := c.DeviceCertificate(ctx, id)
	if err != nil {
		return err
	}
	if asPEM {
		_, err := io.WriteString(stdout, v.ChainPEM)
		return err
	}
	return af.table(stdout, v, "SPIFFE ID\tSERIAL\tNOT BEFORE\tNOT AFTER\tISSUER\tREVOKED", func(tw io.Writer) {
		issuer := fmt.Sprintf("%s (%s)", v.Issuer.Subject, v.Issuer.State)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%v\n", v.SPIFFEID, v.Serial, v.NotBefore.Format(time.RFC3339), v.NotAfter.Format(time.RFC3339), issuer, v.Revoked)
	})
}
