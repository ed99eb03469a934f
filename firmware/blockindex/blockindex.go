// Package blockindex is the block-hash index of a firmware image: the
// SHA-256 of each fixed-size block, in order. A release binds its index
// into the signed manifest by the index file's SHA-256 and block size
// (manifest.Blocks), so a device that verified the manifest trusts every
// block hash as much as the image digest, and can build the new image from
// blocks it already holds, fetching only the others (device/update).
//
// # Encoding
//
// An index file is 20 bytes of header then one 32-byte SHA-256 per block:
//
//	magic "SGBLKIX1" (8 bytes)
//	block size, uint32 big-endian: a power of two, MinBlockSize to MaxBlockSize
//	image size, uint64 big-endian: 1 to manifest.MaxImageSize
//	ceil(image size / block size) SHA-256 digests, the last block short
//
// Parse accepts exactly that length and no other bytes. The index of a
// 1 GiB image in 64 KiB blocks is 512 KiB (0.05 % of the image).
//
// This package is used on devices: it imports the standard library only.
package blockindex

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Suffix names an image's index beside it: the image file or URL with
// Suffix appended (gw-os.img.blocks; the fleet serves the index of
// /firmware/{sha256} at /firmware/{sha256}.blocks).
const Suffix = ".blocks"

// Bounds of an index.
const (
	Magic        = "SGBLKIX1"
	HeaderSize   = 20
	MinBlockSize = 4 << 10  // 4 KiB
	MaxBlockSize = 16 << 20 // 16 MiB
	MaxBlocks    = 1 << 20  // 32 MiB of hashes
	// DefaultBlockSize is what `sigil firmware manifest --block-index`
	// uses unless told otherwise.
	DefaultBlockSize = 64 << 10
)

// ErrInvalid is wrapped by every error of Parse and Build.
var ErrInvalid = errors.New("blockindex: invalid")

// Index is a parsed block-hash index.
type Index struct {
	BlockSize int64
	ImageSize int64
	hashes    []byte // Len()*32 bytes
}

// CheckGeometry reports whether an image of imageSize bytes in blocks of
// blockSize bytes can have an index.
func CheckGeometry(blockSize, imageSize int64) error {
	switch {
	case blockSize < MinBlockSize || blockSize > MaxBlockSize || blockSize&(blockSize-1) != 0:
		return fmt.Errorf("%w: block size %d is not a power of two from %d to %d", ErrInvalid, blockSize, MinBlockSize, MaxBlockSize)
	case imageSize < 1 || imageSize > 1<<40:
		return fmt.Errorf("%w: image size %d", ErrInvalid, imageSize)
	case (imageSize+blockSize-1)/blockSize > MaxBlocks:
		return fmt.Errorf("%w: %d-byte image has more than %d blocks of %d bytes", ErrInvalid, imageSize, MaxBlocks, blockSize)
	}
	return nil
}

// Len returns the number of blocks.
func (ix *Index) Len() int { return len(ix.hashes) / sha256.Size }

// Hash returns block i's SHA-256 (0 <= i < Len()).
func (ix *Index) Hash(i int) [32]byte {
	return [32]byte(ix.hashes[i*sha256.Size : (i+1)*sha256.Size])
}

// Block returns the offset and length of block i in the image.
func (ix *Index) Block(i int) (off, n int64) {
	off = int64(i) * ix.BlockSize
	return off, min(ix.BlockSize, ix.ImageSize-off)
}

// Parse decodes an index and checks that it describes an image of
// imageSize bytes in blocks of blockSize bytes (the manifest's values).
// The caller has checked the file's SHA-256 against the manifest first.
func Parse(b []byte, blockSize, imageSize int64) (*Index, error) {
	if len(b) < HeaderSize || string(b[:8]) != Magic {
		return nil, fmt.Errorf("%w: not a block index", ErrInvalid)
	}
	bs := int64(binary.BigEndian.Uint32(b[8:12]))
	size := binary.BigEndian.Uint64(b[12:20])
	if size > 1<<40 {
		return nil, fmt.Errorf("%w: image size %d", ErrInvalid, size)
	}
	if err := CheckGeometry(bs, int64(size)); err != nil {
		return nil, err
	}
	if bs != blockSize || int64(size) != imageSize {
		return nil, fmt.Errorf("%w: index of %d bytes in %d-byte blocks, manifest says %d in %d", ErrInvalid, size, bs, imageSize, blockSize)
	}
	n := (int64(size) + bs - 1) / bs
	if int64(len(b)-HeaderSize) != n*sha256.Size {
		return nil, fmt.Errorf("%w: %d bytes of hashes, want %d", ErrInvalid, len(b)-HeaderSize, n*sha256.Size)
	}
	return &Index{BlockSize: bs, ImageSize: int64(size), hashes: b[HeaderSize:]}, nil
}

// EncodedSize is the length of the index file of an image of imageSize
// bytes in blocks of blockSize bytes.
func EncodedSize(blockSize, imageSize int64) int64 {
	return HeaderSize + (imageSize+blockSize-1)/blockSize*sha256.Size
}

// Build reads an image from r to its end and returns its index file.
func Build(r io.Reader, blockSize int64) ([]byte, error) {
	if err := CheckGeometry(blockSize, 1); err != nil {
		return nil, err
	}
	out := make([]byte, HeaderSize, HeaderSize+64*sha256.Size)
	copy(out, Magic)
	binary.BigEndian.PutUint32(out[8:12], uint32(blockSize))
	buf := make([]byte, blockSize)
	var size int64
	for {
		n, err := io.ReadFull(r, buf)
		if n > 0 {
			sum := sha256.Sum256(buf[:n])
			out = append(out, sum[:]...)
			size += int64(n)
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("blockindex: read image: %w", err)
		}
		if int64(len(out)-HeaderSize)/sha256.Size > MaxBlocks {
			return nil, fmt.Errorf("%w: more than %d blocks", ErrInvalid, MaxBlocks)
		}
	}
	if err := CheckGeometry(blockSize, size); err != nil {
		return nil, err
	}
	binary.BigEndian.PutUint64(out[12:20], uint64(size))
	return out, nil
}
