package governance

import (
	"context"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/sigil-iot/sigil/fleet/storage/kv"
	"github.com/sigil-iot/sigil/fleet/storage/notify"
)

// BlockKind says what a block entry matches.
type BlockKind string

// Block kinds.
const (
	BlockClientID BlockKind = "client-id" // an MQTT client ID (bootstrap or device)
	BlockAddress  BlockKind = "address"   // a source IP address or CIDR prefix
	BlockEK       BlockKind = "ek"        // an EK fingerprint (64 hex digits)
)

// Block is an entry of the block list.
type Block struct {
	Kind   BlockKind `json:"kind"`
	Value  string    `json:"value"` // normalized: lowercase EK, canonical address or prefix
	Reason string    `json:"reason,omitempty"`
	By     string    `json:"by,omitempty"`
	At     time.Time `json:"at"`
	Source string    `json:"source,omitempty"` // triage key it was decided from
}

// normalizeBlock checks and canonicalizes b.Value.
func normalizeBlock(b *Block) error {
	switch b.Kind {
	case BlockClientID:
		if b.Value == "" || len(b.Value) > maxText || clean(b.Value) != b.Value {
			return fmt.Errorf("%w: client ID to block must be 1-%d printable characters", ErrInvalid, maxText)
		}
	case BlockEK:
		v := strings.ToLower(b.Value)
		if raw, err := hex.DecodeString(v); err != nil || len(raw) != 32 {
			return fmt.Errorf("%w: EK fingerprint to block must be 64 hex digits", ErrInvalid)
		}
		b.Value = v
	case BlockAddress:
		if p, err := netip.ParsePrefix(b.Value); err == nil {
			if p.Addr().Is4In6() {
				if p.Bits() < 96 {
					return fmt.Errorf("%w: IPv4-mapped prefix shorter than /96", ErrInvalid)
				}
				p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
			}
			p = p.Masked()
			if p.IsSingleIP() {
				b.Value = p.Addr().String()
			} else {
				b.Value = p.String()
			}
			return nil
		}
		a, err := netip.ParseAddr(b.Value)
		if err != nil {
			return fmt.Errorf("%w: address to block must be an IP address or CIDR prefix", ErrInvalid)
		}
		b.Value = a.Unmap().WithZone("").String() // peers are matched without zone
	default:
		return fmt.Errorf("%w: block kind %q", ErrInvalid, clean(string(b.Kind)))
	}
	return nil
}

func blockKey(kind BlockKind, value string) []byte {
	return []byte(string(kind) + "\x00" + value)
}

// blockSet is the block list in memory, for IsBlocked on the broker's hot
// path.
type blockSet struct {
	mu       sync.RWMutex
	exact    map[string]Block // blockKey -> entry (client IDs, EKs, single addresses)
	prefixes []Block          // address prefixes
	prefix   []netip.Prefix   // parsed, same order
}

func (bs *blockSet) add(b Block) {
	if b.Kind == BlockAddress && strings.Contains(b.Value, "/") {
		p := netip.MustParsePrefix(b.Value) // normalized before
		for i, x := range bs.prefixes {
			if x.Value == b.Value {
				bs.prefixes[i] = b
				return
			}
		}
		bs.prefixes = append(bs.prefixes, b)
		bs.prefix = append(bs.prefix, p)
		return
	}
	bs.exact[string(blockKey(b.Kind, b.Value))] = b
}

func (bs *blockSet) remove(kind BlockKind, value string) {
	delete(bs.exact, string(blockKey(kind, value)))
	for i, x := range bs.prefixes {
		if x.Kind == kind && x.Value == value {
			bs.prefixes = append(bs.prefixes[:i], bs.prefixes[i+1:]...)
			bs.prefix = append(bs.prefix[:i], bs.prefix[i+1:]...)
			return
		}
	}
}

// loadBlocks replaces the block list in memory with the stored one.
func (s *Service) loadBlocks() error {
	fresh := &blockSet{exact: map[string]Block{}}
	err := s.db.View(context.TODO(), func(tx kv.Tx) error {
		return tx.Bucket(bucketBlocks).ForEach(func(_, v []byte) error {
			b, err := decode[Block](v)
			if err != nil {
				return err
			}
			if err := normalizeBlock(b); err != nil {
				return fmt.Errorf("stored block: %w", err)
			}
			fresh.add(*b)
			return nil
		})
	})
	if err != nil {
		return err
	}
	s.blocks.mu.Lock()
	s.blocks.exact, s.blocks.prefixes, s.blocks.prefix = fresh.exact, fresh.prefixes, fresh.prefix
	s.blocks.mu.Unlock()
	return nil
}

// blocksChanged reads the block list again on a notification (another
// replica changed it) or a resync.
func (s *Service) blocksChanged(ev notify.Event) {
	s.blockW.Lock()
	defer s.blockW.Unlock()
	if err := s.loadBlocks(); err != nil {
		s.log.Error("governance: reading the block list again failed", "kind", ev.Payload, "resync", ev.Resync, "err", err)
	}
}

// tellBlocks sends TopicBlocks once a change of the block list is stored.
// A failure is logged: the other replicas then see the change at their
// next resync.
func (s *Service) tellBlocks(kind BlockKind) {
	if s.cfg.Bus == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.cfg.Bus.Notify(ctx, TopicBlocks, string(kind)); err != nil {
		s.log.Error("governance: telling the other replicas of a block list change failed", "kind", kind, "err", err)
	}
}

// Block adds an entry to the block list (replacing one with the same kind
// and value). The list holds at most Config.MaxBlocks entries (ErrFull).
// With Config.Bus the other replicas are told (TopicBlocks).
func (s *Service) Block(b Block) error {
	if err := normalizeBlock(&b); err != nil {
		return err
	}
	if err := s.block(b); err != nil {
		return err
	}
	s.tellBlocks(b.Kind)
	return nil
}

func (s *Service) block(b Block) error {
	b.Reason, b.By, b.Source = clean(b.Reason), clean(b.By), clean(b.Source)
	if b.At.IsZero() {
		b.At = s.cfg.Now().UTC()
	}
	s.blockW.Lock()
	defer s.blockW.Unlock()
	key := blockKey(b.Kind, b.Value)
	err := s.db.Update(context.TODO(), func(tx kv.Tx) error {
		bk := tx.Bucket(bucketBlocks)
		if bk.Get(key) == nil && bk.Len() >= s.cfg.MaxBlocks {
			return fmt.Errorf("%w (%d entries)", ErrFull, s.cfg.MaxBlocks)
		}
		return put(tx, bucketBlocks, key, &b)
	})
	if err != nil {
		return fmt.Errorf("governance: block: %w", err)
	}
	s.blocks.mu.Lock()
	s.blocks.add(b)
	s.blocks.mu.Unlock()
	s.log.Info("governance: blocked", "kind", b.Kind, "value", b.Value, "by", b.By)
	return nil
}

// Unblock removes an entry; value is normalized as Block does. With
// Config.Bus the other replicas are told (TopicBlocks).
func (s *Service) Unblock(kind BlockKind, value string) error {
	b := Block{Kind: kind, Value: value}
	if err := normalizeBlock(&b); err != nil {
		return err
	}
	if err := s.unblock(b); err != nil {
		return err
	}
	s.tellBlocks(b.Kind)
	return nil
}

func (s *Service) unblock(b Block) error {
	s.blockW.Lock()
	defer s.blockW.Unlock()
	key := blockKey(b.Kind, b.Value)
	err := s.db.Update(context.TODO(), func(tx kv.Tx) error {
		bk := tx.Bucket(bucketBlocks)
		if bk.Get(key) == nil {
			return fmt.Errorf("%w: block %s %q", ErrNotFound, b.Kind, b.Value)
		}
		return bk.Delete(key)
	})
	if err != nil {
		return err
	}
	s.blocks.mu.Lock()
	s.blocks.remove(b.Kind, b.Value)
	s.blocks.mu.Unlock()
	return nil
}

// Blocks pages through the block list in (kind, value) order, with the
// (opaque) cursor of the next page ("" when there is none).
func (s *Service) Blocks(after string, limit int) ([]Block, string, error) {
	raw, err := hex.DecodeString(after)
	if err != nil {
		return nil, "", fmt.Errorf("%w: block list cursor", ErrInvalid)
	}
	var out []Block
	next, err := s.page(bucketBlocks, string(raw), pageLimit(limit), func(_, v []byte) error {
		b, err := decode[Block](v)
		if err == nil {
			out = append(out, *b)
		}
		return err
	})
	return out, hex.EncodeToString([]byte(next)), err
}

// IsBlocked reports whether a connection from addr ("host:port" or
// "host"), with MQTT client ID clientID and (at enrollment) EK fingerprint
// ek, is on the block list. Empty arguments match nothing. It reads memory
// only: the broker may call it for every CONNECT.
func (s *Service) IsBlocked(clientID, addr, ek string) bool {
	_, ok := s.Blocked(clientID, addr, ek)
	return ok
}

// Blocked is IsBlocked returning the matching entry.
func (s *Service) Blocked(clientID, addr, ek string) (Block, bool) {
	s.blocks.mu.RLock()
	defer s.blocks.mu.RUnlock()
	if clientID != "" {
		if b, ok := s.blocks.exact[string(blockKey(BlockClientID, clientID))]; ok {
			return b, true
		}
	}
	if ek != "" {
		if b, ok := s.blocks.exact[string(blockKey(BlockEK, strings.ToLower(ek)))]; ok {
			return b, true
		}
	}
	if addr != "" {
		a, ok := parseHost(addr)
		if !ok {
			return Block{}, false
		}
		if b, ok := s.blocks.exact[string(blockKey(BlockAddress, a.String()))]; ok {
			return b, true
		}
		for i, p := range s.blocks.prefix {
			if p.Contains(a) {
				return s.blocks.prefixes[i], true
			}
		}
	}
	return Block{}, false
}

// parseHost parses the IP address of "host:port", "[v6]:port" or "host".
func parseHost(addr string) (netip.Addr, bool) {
	if h, _, err := net.SplitHostPort(addr); err == nil {
		addr = h
	}
	a, err := netip.ParseAddr(addr)
	if err != nil {
		return netip.Addr{}, false
	}
	return a.Unmap().WithZone(""), true
}

// hostOf returns the host part of a remote address, for grouping.
func hostOf(remote string) string {
	if a, ok := parseHost(remote); ok {
		return a.String()
	}
	if h, _, err := net.SplitHostPort(remote); err == nil {
		return clean(h)
	}
	return clean(remote)
}
