package agent

import (
	"archive/tar"
	"path"
	"strings"
)

// archiveCheck vets the entries of a tar bound for a container before
// anything of it is written: no absolute names, no "..", no entry reached
// through a symlink the same archive made, only file types a container
// may hold, owners inside the container's id range.
type archiveCheck struct {
	// ids is the size of the container's id range.
	ids   uint32
	links map[string]bool
}

// check returns h's name cleaned and relative ("" for the destination
// itself, which is left alone), or why h is refused.
func (c *archiveCheck) check(h *tar.Header) (string, error) {
	name, err := c.relName(h.Name, "entry")
	if err != nil {
		return "", err
	}
	switch h.Typeflag {
	case tar.TypeReg, tar.TypeDir, tar.TypeSymlink, tar.TypeFifo:
	case tar.TypeLink:
		if _, err := c.relName(h.Linkname, "hard link "+h.Name+" to"); err != nil {
			return "", err
		}
	default:
		return "", invalidf("archive: entry %q: type %q is not supported (files, directories, links and fifos are)", h.Name, h.Typeflag)
	}
	if h.Uid < 0 || h.Gid < 0 || uint64(h.Uid) >= uint64(c.ids) || uint64(h.Gid) >= uint64(c.ids) {
		return "", invalidf("archive: entry %q: owner %d:%d is outside the container's %d ids", h.Name, h.Uid, h.Gid, c.ids)
	}
	if name == "" {
		return "", nil
	}
	if c.links == nil {
		c.links = map[string]bool{}
	}
	c.links[name] = h.Typeflag == tar.TypeSymlink
	return name, nil
}

// relName cleans an entry's name or a hard link's target.
func (c *archiveCheck) relName(n, what string) (string, error) {
	if strings.HasPrefix(n, "/") {
		return "", invalidf("archive: %s %q: absolute path", what, n)
	}
	for _, el := range strings.Split(n, "/") {
		if el == ".." {
			return "", invalidf("archive: %s %q: contains ..", what, n)
		}
	}
	clean := path.Clean(n)
	if clean == "." {
		return "", nil
	}
	for d := path.Dir(clean); d != "."; d = path.Dir(d) {
		if c.links[d] {
			return "", invalidf("archive: %s %q: goes through %q, a symlink made by the same archive", what, n, d)
		}
	}
	return clean, nil
}
