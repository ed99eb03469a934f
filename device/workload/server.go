package workload

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/url"
	"os"
	"slices"
	"strings"
	"syscall"
	"time"

	pb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/sigil-iot/sigil/pkg/wire"
)

// Server is the SPIFFE Workload API over a Manager.
type Server struct {
	pb.UnimplementedSpiffeWorkloadAPIServer
	m       *Manager
	log     *slog.Logger
	procDir string
}

// NewServer returns the API over m; procDir "" is /proc.
func NewServer(m *Manager, logger *slog.Logger, procDir string) *Server {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if procDir == "" {
		procDir = "/proc"
	}
	return &Server{m: m, log: logger, procDir: procDir}
}

// Serve serves the API on the unix socket path (created, mode 0666:
// registrations, not the socket's mode, decide who gets what) until ctx
// ends.
func (s *Server) Serve(ctx context.Context, path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("workload: %w", err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("workload: %w", err)
	}
	if err := os.Chmod(path, 0o666); err != nil {
		ln.Close()
		return fmt.Errorf("workload: %w", err)
	}
	g := grpc.NewServer(grpc.Creds(peerCreds{}))
	pb.RegisterSpiffeWorkloadAPIServer(g, s)
	done := make(chan struct{})
	go func() {
		defer close(done)
		<-ctx.Done()
		g.Stop()
	}()
	s.log.Info("serving the SPIFFE Workload API", "socket", path)
	err = g.Serve(ln)
	<-done
	if errors.Is(err, grpc.ErrServerStopped) {
		err = nil
	}
	return err
}

// peerCreds are transport credentials that read the peer's kernel
// credentials (SO_PEERCRED) at connection time: the socket carries no TLS.
type peerCreds struct{}

// peerInfo is the AuthInfo of a connection: the peer's PID, user, group.
type peerInfo struct {
	pid      int32
	uid, gid uint32
}

func (peerInfo) AuthType() string { return "peercred" }

func (peerCreds) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("workload: server-side credentials only")
}

func (peerCreds) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	cred, err := peerCred(c)
	if err != nil {
		return nil, nil, err
	}
	return c, peerInfo{pid: cred.Pid, uid: cred.Uid, gid: cred.Gid}, nil
}

func (peerCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "peercred"}
}
func (p peerCreds) Clone() credentials.TransportCredentials { return p }
func (peerCreds) OverrideServerName(string) error           { return nil }

// caller checks the security header and returns the calling process and
// the entries it matches; none is PermissionDenied.
func (s *Server) caller(ctx context.Context) (Caller, []wire.WorkloadEntry, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get("workload.spiffe.io"); len(v) != 1 || v[0] != "true" {
		return Caller{}, nil, status.Error(codes.InvalidArgument, "security header missing from request")
	}
	p, ok := peer.FromContext(ctx)
	info, ok2 := p.AuthInfo.(peerInfo)
	if !ok || !ok2 {
		return Caller{}, nil, status.Error(codes.Internal, "no peer credentials")
	}
	c, err := inspect(s.procDir, &syscall.Ucred{Pid: info.pid, Uid: info.uid, Gid: info.gid})
	if err != nil {
		s.log.Warn("workload: caller unidentified", "pid", info.pid, "err", err)
		return Caller{}, nil, status.Error(codes.PermissionDenied, "no identity issued")
	}
	entries, err := s.m.Match(ctx, c)
	if err != nil {
		s.log.Warn("workload: registrations unavailable", "err", err)
		return c, nil, status.Error(codes.Unavailable, "registrations unavailable")
	}
	if len(entries) == 0 {
		s.log.Info("workload: no registration matches the caller", "pid", c.PID, "uid", c.UID, "exe", c.ExePath)
		return c, nil, status.Error(codes.PermissionDenied, "no identity issued")
	}
	return c, entries, nil
}

// FetchX509SVID streams the caller's X.509-SVIDs, again whenever one is
// renewed (at half its lifetime) or the registrations change.
func (s *Server) FetchX509SVID(_ *pb.X509SVIDRequest, stream grpc.ServerStreamingServer[pb.X509SVIDResponse]) error {
	ctx := stream.Context()
	c, entries, err := s.caller(ctx)
	if err != nil {
		return err
	}
	var last *pb.X509SVIDResponse
	for {
		_, _, changed := s.m.Bundles()
		res := &pb.X509SVIDResponse{}
		next := time.Time{}
		for _, e := range entries {
			svid, err := s.m.X509SVID(ctx, e)
			if err != nil {
				s.log.Warn("workload: no X.509-SVID", "workload", e.Name, "err", err)
				continue
			}
			roots, _, _ := s.m.Bundles()
			res.Svids = append(res.Svids, &pb.X509SVID{SpiffeId: svid.id, X509Svid: bytes.Join(svid.chain, nil), X509SvidKey: svid.key, Bundle: bytes.Join(roots, nil)})
			if next.IsZero() || svid.renew.Before(next) {
				next = svid.renew
			}
		}
		if len(res.Svids) == 0 {
			return status.Error(codes.PermissionDenied, "no identity issued")
		}
		if last == nil || !sameX509(last, res) {
			if err := stream.Send(res); err != nil {
				return err
			}
			last = res
		}
		wait := time.Until(next)
		if wait < time.Second {
			wait = time.Second
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-changed:
		case <-t.C:
		}
		t.Stop()
		if entries, err = s.m.Match(ctx, c); err != nil || len(entries) == 0 {
			return status.Error(codes.PermissionDenied, "no identity issued")
		}
	}
}

func sameX509(a, b *pb.X509SVIDResponse) bool {
	return slices.EqualFunc(a.Svids, b.Svids, func(x, y *pb.X509SVID) bool {
		return x.SpiffeId == y.SpiffeId && bytes.Equal(x.X509Svid, y.X509Svid) && bytes.Equal(x.Bundle, y.Bundle)
	})
}

// trustDomain returns "spiffe://<td>" of the entries.
func trustDomain(entries []wire.WorkloadEntry) string {
	u, err := url.Parse(entries[0].SPIFFEID)
	if err != nil {
		return ""
	}
	return "spiffe://" + u.Host
}

// FetchX509Bundles streams the trust domain's X.509 roots.
func (s *Server) FetchX509Bundles(_ *pb.X509BundlesRequest, stream grpc.ServerStreamingServer[pb.X509BundlesResponse]) error {
	_, entries, err := s.caller(stream.Context())
	if err != nil {
		return err
	}
	var last []byte
	for {
		roots, _, changed := s.m.Bundles()
		b := bytes.Join(roots, nil)
		if len(b) > 0 && !bytes.Equal(b, last) {
			if err := stream.Send(&pb.X509BundlesResponse{Bundles: map[string][]byte{trustDomain(entries): b}}); err != nil {
				return err
			}
			last = b
		}
		select {
		case <-stream.Context().Done():
			return nil
		case <-changed:
		}
	}
}

// FetchJWTBundles streams the trust domain's JWT signing keys (JWKS).
func (s *Server) FetchJWTBundles(_ *pb.JWTBundlesRequest, stream grpc.ServerStreamingServer[pb.JWTBundlesResponse]) error {
	_, entries, err := s.caller(stream.Context())
	if err != nil {
		return err
	}
	var last []byte
	for {
		_, jwks, changed := s.m.Bundles()
		if len(jwks) > 0 && !bytes.Equal(jwks, last) {
			if err := stream.Send(&pb.JWTBundlesResponse{Bundles: map[string][]byte{trustDomain(entries): jwks}}); err != nil {
				return err
			}
			last = jwks
		}
		select {
		case <-stream.Context().Done():
			return nil
		case <-changed:
		}
	}
}

// FetchJWTSVID returns the caller's JWT-SVIDs for the audience (only that
// of SpiffeId when it names one).
func (s *Server) FetchJWTSVID(ctx context.Context, req *pb.JWTSVIDRequest) (*pb.JWTSVIDResponse, error) {
	if len(req.Audience) == 0 {
		return nil, status.Error(codes.InvalidArgument, "audience must be specified")
	}
	_, entries, err := s.caller(ctx)
	if err != nil {
		return nil, err
	}
	res := &pb.JWTSVIDResponse{}
	for _, e := range entries {
		if req.SpiffeId != "" && req.SpiffeId != e.SPIFFEID {
			continue
		}
		tok, err := s.m.JWTSVID(ctx, e, req.Audience)
		if err != nil {
			s.log.Warn("workload: no JWT-SVID", "workload", e.Name, "err", err)
			continue
		}
		res.Svids = append(res.Svids, &pb.JWTSVID{SpiffeId: e.SPIFFEID, Svid: tok})
	}
	if len(res.Svids) == 0 {
		return nil, status.Error(codes.PermissionDenied, "no identity issued")
	}
	return res, nil
}

// ValidateJWTSVID checks a JWT-SVID against the trust domain's JWKS (RS256
// signature by a published key), its expiry and the audience, and returns
// its SPIFFE ID and claims.
func (s *Server) ValidateJWTSVID(ctx context.Context, req *pb.ValidateJWTSVIDRequest) (*pb.ValidateJWTSVIDResponse, error) {
	if req.Audience == "" || req.Svid == "" {
		return nil, status.Error(codes.InvalidArgument, "audience and svid must be specified")
	}
	_, entries, err := s.caller(ctx)
	if err != nil {
		return nil, err
	}
	_, jwks, _ := s.m.Bundles()
	claims, err := verifyJWT(req.Svid, jwks, req.Audience, s.m.now())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	sub, _ := claims["sub"].(string)
	if !strings.HasPrefix(sub, trustDomain(entries)+"/") {
		return nil, status.Error(codes.InvalidArgument, "subject is not of this trust domain")
	}
	st, err := structpb.NewStruct(claims)
	if err != nil {
		return nil, status.Error(codes.Internal, "claims")
	}
	return &pb.ValidateJWTSVIDResponse{SpiffeId: sub, Claims: st}, nil
}

// verifyJWT verifies a compact RS256 JWS with the key of its kid in jwks
// and checks exp and aud; it returns the claims.
func verifyJWT(tok string, jwks []byte, audience string, now time.Time) (map[string]any, error) {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return nil, errors.New("malformed JWT")
	}
	hb, err1 := base64.RawURLEncoding.DecodeString(parts[0])
	payload, err2 := base64.RawURLEncoding.DecodeString(parts[1])
	sig, err3 := base64.RawURLEncoding.DecodeString(parts[2])
	if err := errors.Join(err1, err2, err3); err != nil {
		return nil, errors.New("malformed JWT")
	}
	var hdr struct{ Alg, Kid string }
	if err := json.Unmarshal(hb, &hdr); err != nil || hdr.Alg != "RS256" {
		return nil, errors.New("unsupported JWT header")
	}
	var set struct {
		Keys []struct{ Kid, Kty, N, E string }
	}
	if err := json.Unmarshal(jwks, &set); err != nil {
		return nil, errors.New("no JWT bundle")
	}
	var pub *rsa.PublicKey
	for _, k := range set.Keys {
		if k.Kid == hdr.Kid && k.Kty == "RSA" {
			n, errN := base64.RawURLEncoding.DecodeString(k.N)
			e, errE := base64.RawURLEncoding.DecodeString(k.E)
			if errN != nil || errE != nil || len(e) > 4 {
				return nil, errors.New("bad key in the JWT bundle")
			}
			pub = &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(new(big.Int).SetBytes(e).Int64())}
		}
	}
	if pub == nil {
		return nil, errors.New("the JWT's key is not in the bundle")
	}
	sum := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	if err := rsa.VerifyPKCS1v15(pub, crypto.SHA256, sum[:], sig); err != nil {
		return nil, errors.New("bad JWT signature")
	}
	var claims map[string]any
	if err := json.Unmarshal(payload, &claims); err != nil {
		return nil, errors.New("malformed JWT claims")
	}
	exp, _ := claims["exp"].(float64)
	if exp == 0 || now.Unix() >= int64(exp) {
		return nil, errors.New("the JWT has expired")
	}
	var auds []string
	switch a := claims["aud"].(type) {
	case string:
		auds = []string{a}
	case []any:
		for _, v := range a {
			if s, ok := v.(string); ok {
				auds = append(auds, s)
			}
		}
	}
	if !slices.Contains(auds, audience) {
		return nil, errors.New("the JWT is not for this audience")
	}
	return claims, nil
}
