package sink

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"unicode"

	"github.com/sigil-iot/sigil/fleet/alert"
)

// defaultClient does not follow redirects: a receiver that moved is a
// configuration problem, and following could send the body elsewhere.
func defaultClient() *http.Client {
	return &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

// checkURL accepts absolute http and https URLs.
func checkURL(name, raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("sink: %s: URL does not parse", name)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("sink: %s: URL must be absolute http or https", name)
	}
	return nil
}

// post sends body and classifies the outcome: nil for 2xx, an error
// wrapping alert.ErrPermanent when retrying cannot help. Errors name
// neither the URL nor header values.
func post(ctx context.Context, name string, client *http.Client, target string, header http.Header, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("%w: sink: %s: bad request", alert.ErrPermanent, name)
	}
	for k, vs := range header {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // its text repeats the URL, which may hold a token
		}
		return fmt.Errorf("sink: %s: POST: %w", name, err)
	}
	snippet, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	code := resp.StatusCode
	switch {
	case code >= 200 && code < 300:
		return nil
	case code == http.StatusRequestTimeout || code == http.StatusTooManyRequests || code >= 500:
		return fmt.Errorf("sink: %s: HTTP %d%s", name, code, quote(snippet))
	default:
		return fmt.Errorf("%w: sink: %s: HTTP %d%s", alert.ErrPermanent, name, code, quote(snippet))
	}
}

// quote returns ": <first line of the response body>" with unprintable
// characters removed, or "" for an empty body.
func quote(b []byte) string {
	s := strings.TrimSpace(strings.ToValidUTF8(string(b), ""))
	if i := strings.IndexAny(s, "\r\n"); i >= 0 {
		s = s[:i]
	}
	s = strings.Map(func(r rune) rune {
		if unicode.IsPrint(r) {
			return r
		}
		return -1
	}, s)
	if len(s) > 200 {
		s = strings.ToValidUTF8(s[:200], "")
	}
	if s == "" {
		return ""
	}
	return ": " + s
}
