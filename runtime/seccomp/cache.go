package seccomp

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// cacheKey hashes what decides the BPF: the seccomp section (in its JSON
// form, which encoding/json writes deterministically for these structs) and
// the compiler version. The listener path and metadata are left out: they
// are used after loading, never compiled in, and may differ per container.
func cacheKey(s *specs.LinuxSeccomp, compiler string) ([sha256.Size]byte, error) {
	c := *s
	c.ListenerPath, c.ListenerMetadata = "", ""
	b, err := json.Marshal(&c)
	if err != nil {
		return [sha256.Size]byte{}, fmt.Errorf("seccomp cache key: %w", err)
	}
	h := sha256.New()
	h.Write([]byte(compiler))
	h.Write([]byte{0})
	h.Write(b)
	var k [sha256.Size]byte
	h.Sum(k[:0])
	return k, nil
}
