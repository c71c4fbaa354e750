// Package statedir names the directory where a node keeps what does not
// outlive a boot (the runtime's state, containers' mount points), apart
// from its data directory, which does.
package statedir

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
)

// Base is where state directories go by default: a tmpfs on every
// systemd host, where a directory costs microseconds to make and remove
// instead of a disk's metadata writes.
const Base = "/run/berth"

// Default is the state directory of the node whose data directory is
// dataDir: Base/<the first 12 hex digits of the SHA-256 of dataDir's
// absolute path>, so that nodes with different data directories (tests
// run many at once) never share one, and the same data directory finds
// its state again.
func Default(dataDir string) (string, error) {
	abs, err := filepath.Abs(dataDir)
	if err != nil {
		return "", err
	}
	h := sha256.Sum256([]byte(abs))
	return filepath.Join(Base, hex.EncodeToString(h[:6])), nil
}

// HasOldLayout reports whether dataDir holds the runtime state of
// containers made before nodes had a state directory (DATA/runtime, one
// directory per container): such a node must go on with its state where
// it is.
func HasOldLayout(dataDir string) bool {
	ents, err := os.ReadDir(filepath.Join(dataDir, "runtime"))
	if err != nil {
		return false
	}
	for _, e := range ents {
		if e.IsDir() && !strings.HasPrefix(e.Name(), ".") {
			return true
		}
	}
	return false
}
