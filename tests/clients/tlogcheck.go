// tlogcheck: an independent C2SP tlog-tiles client for residency-proxy's
// tests, built on the Go checksum database's own packages
// (golang.org/x/mod/sumdb/note and sumdb/tlog, from Debian's
// golang-golang-x-mod-dev; built in GOPATH mode, GO111MODULE=off).
//
//	tlogcheck PREFIX VKEY ORIGIN [OLD_SIZE OLD_ROOT_BASE64]
//
// It opens PREFIX/checkpoint with the verifier key, recomputes the root
// from hash tiles with tlog.TileHashReader (which authenticates every tile
// it reads against the checkpoint), hashes every entry of every entry
// bundle into its level-0 hash, checks inclusion proofs (Go's own, from
// the tiles, and the log's /proof/inclusion) for up to 256 indexes, and,
// given an older tree, the consistency proof from it (Go's own and the
// log's /proof/consistency). Prints "ok size=…" and exits 0, or names what
// failed on stderr and exits 1.
package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

var client = &http.Client{Timeout: 20 * time.Second}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "tlogcheck: "+format+"\n", args...)
	os.Exit(1)
}

func get(url string, wantType string) []byte {
	resp, err := client.Get(url)
	if err != nil {
		fail("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		fail("GET %s: reading the body: %v", url, err)
	}
	if resp.StatusCode != 200 {
		fail("GET %s: status %d", url, resp.StatusCode)
	}
	if got := resp.Header.Get("Content-Type"); got != wantType {
		fail("GET %s: Content-Type %q, want %q", url, got, wantType)
	}
	return body
}

type checkpoint struct {
	text   string
	origin string
	tree   tlog.Tree
}

func fetchCheckpoint(prefix string, verifiers note.Verifiers) checkpoint {
	raw := get(prefix+"/checkpoint", "text/plain; charset=utf-8")
	n, err := note.Open(raw, verifiers)
	if err != nil {
		fail("checkpoint does not open with the log's key: %v\n%s", err, raw)
	}
	lines := strings.SplitAfter(n.Text, "\n")
	if len(lines) < 4 || lines[len(lines)-1] != "" {
		fail("checkpoint body is not origin, size, root: %q", n.Text)
	}
	size, err := strconv.ParseInt(strings.TrimSuffix(lines[1], "\n"), 10, 64)
	if err != nil || size < 0 || strconv.FormatInt(size, 10)+"\n" != lines[1] {
		fail("checkpoint size line %q", lines[1])
	}
	root, err := base64.StdEncoding.DecodeString(strings.TrimSuffix(lines[2], "\n"))
	if err != nil || len(root) != tlog.HashSize {
		fail("checkpoint root line %q", lines[2])
	}
	var hash tlog.Hash
	copy(hash[:], root)
	return checkpoint{text: n.Text, origin: strings.TrimSuffix(lines[0], "\n"), tree: tlog.Tree{N: size, Hash: hash}}
}

// tiles reads C2SP tlog-tiles hash tiles: Go's tile/8/L/N paths without
// the height.
type tiles struct {
	prefix  string
	fetched int
	cache   map[string][]byte
}

func (t *tiles) Height() int { return 8 }

func (t *tiles) ReadTiles(want []tlog.Tile) ([][]byte, error) {
	out := make([][]byte, len(want))
	for i, tile := range want {
		path := strings.Replace(tile.Path(), "tile/8/", "tile/", 1)
		data, ok := t.cache[path]
		if !ok {
			data = get(t.prefix+"/"+path, "application/octet-stream")
			t.cache[path] = data
			t.fetched++
		}
		if len(data) != tile.W*tlog.HashSize {
			return nil, fmt.Errorf("%s: %d bytes, want %d", path, len(data), tile.W*tlog.HashSize)
		}
		out[i] = data
	}
	return out, nil
}

func (t *tiles) SaveTiles([]tlog.Tile, [][]byte) {}

// entries reads every entry bundle of a tree of size n and checks each
// entry's record hash against the level-0 hashes read through r.
func entries(prefix string, n int64, r tlog.HashReader) int64 {
	var count int64
	for start := int64(0); start < n; start += 256 {
		w := n - start
		if w > 256 {
			w = 256
		}
		tile := tlog.Tile{H: 8, L: -1, N: start / 256, W: int(w)}
		path := strings.Replace(tile.Path(), "tile/8/data/", "tile/entries/", 1)
		bundle := get(prefix+"/"+path, "application/octet-stream")
		var indexes []int64
		var hashes []tlog.Hash
		for len(bundle) > 0 {
			if len(bundle) < 2 {
				fail("%s: a trailing byte", path)
			}
			size := int(binary.BigEndian.Uint16(bundle))
			if len(bundle) < 2+size {
				fail("%s: an entry of %d bytes cut short", path, size)
			}
			hashes = append(hashes, tlog.RecordHash(bundle[2:2+size]))
			indexes = append(indexes, tlog.StoredHashIndex(0, start+int64(len(indexes))))
			bundle = bundle[2+size:]
		}
		if int64(len(indexes)) != w {
			fail("%s: %d entries, want %d", path, len(indexes), w)
		}
		stored, err := r.ReadHashes(indexes)
		if err != nil {
			fail("reading level-0 hashes of %s: %v", path, err)
		}
		for i := range hashes {
			if hashes[i] != stored[i] {
				fail("entry %d does not hash to its level-0 tile's hash", start+int64(i))
			}
		}
		count += w
	}
	return count
}

func decode(url string, v interface{}) {
	if err := json.Unmarshal(get(url, "application/json"), v); err != nil {
		fail("GET %s: %v", url, err)
	}
}

func hashes(hexes []string) []tlog.Hash {
	out := make([]tlog.Hash, len(hexes))
	for i, x := range hexes {
		b, err := hex.DecodeString(x)
		if err != nil || len(b) != tlog.HashSize {
			fail("proof hash %q", x)
		}
		copy(out[i][:], b)
	}
	return out
}

func main() {
	if len(os.Args) != 4 && len(os.Args) != 6 {
		fail("usage: tlogcheck PREFIX VKEY ORIGIN [OLD_SIZE OLD_ROOT_BASE64]")
	}
	prefix, vkey, origin := strings.TrimSuffix(os.Args[1], "/"), os.Args[2], os.Args[3]
	verifier, err := note.NewVerifier(vkey)
	if err != nil {
		fail("verifier key: %v", err)
	}
	c := fetchCheckpoint(prefix, note.VerifierList(verifier))
	if c.origin != origin {
		fail("checkpoint origin %q, want %q", c.origin, origin)
	}
	tr := &tiles{prefix: prefix, cache: map[string][]byte{}}
	r := tlog.TileHashReader(c.tree, tr)
	root, err := tlog.TreeHash(c.tree.N, r)
	if err != nil {
		fail("tree hash from tiles: %v", err)
	}
	if root != c.tree.Hash {
		fail("tiles hash to %v, the checkpoint says %v", root, c.tree.Hash)
	}
	n := entries(prefix, c.tree.N, r)
	// TileHashReader re-authenticates its tiles on every read: a sample of
	// indexes (both ends and every stride-th) keeps a large tree quick.
	stride := (c.tree.N + 255) / 256
	for i := int64(0); i < c.tree.N; i += stride {
		if i+stride >= c.tree.N {
			i = c.tree.N - 1
		}
		p, err := tlog.ProveRecord(c.tree.N, i, r)
		if err != nil {
			fail("inclusion proof of %d: %v", i, err)
		}
		h, err := r.ReadHashes([]int64{tlog.StoredHashIndex(0, i)})
		if err != nil {
			fail("leaf %d: %v", i, err)
		}
		if err := tlog.CheckRecord(p, c.tree.N, c.tree.Hash, i, h[0]); err != nil {
			fail("inclusion of %d: %v", i, err)
		}
		var served struct {
			Index    int64    `json:"index"`
			Size     int64    `json:"size"`
			LeafHash string   `json:"leaf_hash"`
			Hashes   []string `json:"hashes"`
		}
		decode(fmt.Sprintf("%s/proof/inclusion?index=%d&size=%d", prefix, i, c.tree.N), &served)
		if served.Index != i || served.Size != c.tree.N || served.LeafHash != hex.EncodeToString(h[0][:]) {
			fail("/proof/inclusion for %d in %d: index %d, size %d, leaf %s", i, c.tree.N, served.Index, served.Size, served.LeafHash)
		}
		if err := tlog.CheckRecord(hashes(served.Hashes), c.tree.N, c.tree.Hash, i, h[0]); err != nil {
			fail("/proof/inclusion for %d in %d does not verify: %v", i, c.tree.N, err)
		}
	}
	if len(os.Args) == 6 {
		old, err := strconv.ParseInt(os.Args[4], 10, 64)
		if err != nil {
			fail("old size: %v", err)
		}
		raw, err := base64.StdEncoding.DecodeString(os.Args[5])
		if err != nil || len(raw) != tlog.HashSize {
			fail("old root: %v", err)
		}
		var oldRoot tlog.Hash
		copy(oldRoot[:], raw)
		if old == 0 {
			// Every tree grew from the empty one, whose root is SHA-256 of
			// nothing (RFC 6962, 2.1); there is no proof to ask for.
			if oldRoot != tlog.Hash(sha256.Sum256(nil)) {
				fail("an empty tree's root is SHA-256 of nothing, not %v", oldRoot)
			}
		} else {
			consistent(prefix, c, old, oldRoot, r)
		}
	}
	var out bytes.Buffer
	fmt.Fprintf(&out, "ok size=%d entries=%d tiles=%d root=%s\n", c.tree.N, n, tr.fetched, base64.StdEncoding.EncodeToString(c.tree.Hash[:]))
	os.Stdout.Write(out.Bytes())
}

// consistent checks that the tree of c grew from the tree (old, oldRoot):
// Go's proof from the tiles, and the log's /proof/consistency.
func consistent(prefix string, c checkpoint, old int64, oldRoot tlog.Hash, r tlog.HashReader) {
	p, err := tlog.ProveTree(c.tree.N, old, r)
	if err != nil {
		fail("consistency proof %d -> %d: %v", old, c.tree.N, err)
	}
	if err := tlog.CheckTree(p, c.tree.N, c.tree.Hash, old, oldRoot); err != nil {
		fail("consistency %d -> %d: %v", old, c.tree.N, err)
	}
	var served struct {
		From   int64    `json:"from"`
		To     int64    `json:"to"`
		Hashes []string `json:"hashes"`
	}
	decode(fmt.Sprintf("%s/proof/consistency?from=%d&to=%d", prefix, old, c.tree.N), &served)
	if served.From != old || served.To != c.tree.N {
		fail("/proof/consistency from %d to %d answered from %d to %d", old, c.tree.N, served.From, served.To)
	}
	if err := tlog.CheckTree(hashes(served.Hashes), c.tree.N, c.tree.Hash, old, oldRoot); err != nil {
		fail("/proof/consistency %d -> %d does not verify: %v", old, c.tree.N, err)
	}
}
