package agent

import (
	"fmt"
	"sort"
)

// IDRange is a block of host uids (and the same gids) that one container's
// user namespace maps to its ids 0..Size-1.
type IDRange struct {
	Base uint32 `json:"base"`
	Size uint32 `json:"size"`
}

// IDPool is where container ranges come from: host ids First..Last
// inclusive, handed out Size at a time.
type IDPool struct {
	First, Last, Size uint32
}

// DefaultIDPool keeps clear of the ids of host users and of the
// /etc/subuid ranges tools hand out at 100000 and up: it starts at 2^28
// and gives every container 65536 ids, room for 61,440 containers.
func DefaultIDPool() IDPool {
	return IDPool{First: 1 << 28, Last: 1<<32 - 2, Size: 65536}
}

// Allocate returns the lowest range of p.Size ids that overlaps none of
// used. Ranges in used may be of any size and need not lie in the pool.
func (p IDPool) Allocate(used []IDRange) (IDRange, error) {
	if p.Size == 0 || p.Last < p.First {
		return IDRange{}, fmt.Errorf("id pool %d-%d/%d is empty", p.First, p.Last, p.Size)
	}
	sorted := append([]IDRange(nil), used...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Base < sorted[j].Base })
	cand := uint64(p.First)
	for _, u := range sorted {
		if u.Size == 0 {
			continue
		}
		end := uint64(u.Base) + uint64(u.Size)
		if cand+uint64(p.Size) <= uint64(u.Base) {
			break
		}
		if end > cand {
			cand = end
		}
	}
	if cand+uint64(p.Size)-1 > uint64(p.Last) {
		return IDRange{}, fmt.Errorf("id pool %d-%d exhausted: %d ranges of %d in use", p.First, p.Last, len(used), p.Size)
	}
	return IDRange{Base: uint32(cand), Size: p.Size}, nil
}
