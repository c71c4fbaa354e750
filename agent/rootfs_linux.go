package agent

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/berth-dev/berth/image"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// mountRootfs mounts the container's root filesystem at bundle/rootfs in
// its state directory: an overlay of the image's shared, unpacked layers,
// each seen through an idmapped mount (at layers/N) so that the
// container's root owns what the image's root owns, under the snapshot's
// upper directory. Nothing is copied. Mount points missing (after a
// reboot emptied the state directory) are made again. fresh, when not
// nil, is a snapshot just prepared, never mounted: its work directory is
// empty.
func (a *Agent) mountRootfs(id string, ids IDRange, volatile bool, fresh *image.SnapshotParts) error {
	target := a.rootfs(id)
	var parts image.SnapshotParts
	if fresh != nil {
		parts = *fresh
	} else {
		if isMountPoint(target) {
			return nil
		}
		var err error
		if parts, err = a.cfg.Images.DetachSnapshot(id); err != nil {
			return err
		}
	}
	layersDir := filepath.Join(a.stateDir(id), "layers")
	for _, d := range []string{layersDir, target} {
		if err := os.MkdirAll(d, 0o711); err != nil {
			return err
		}
	}
	ns, err := a.userns.get(ids)
	if err != nil {
		return err
	}
	defer ns.Close()
	var lowers []string
	for i := len(parts.Layers) - 1; i >= 0; i-- {
		dst := filepath.Join(layersDir, strconv.Itoa(i))
		if err := os.MkdirAll(dst, 0o755); err != nil {
			return err
		}
		if !isMountPoint(dst) {
			if err := idmapMount(parts.Layers[i], dst, ns); err != nil {
				return fmt.Errorf("layer %d of %s: %w", i, id, err)
			}
		}
		lowers = append(lowers, dst)
	}
	if len(lowers) == 0 {
		empty := filepath.Join(layersDir, "empty")
		if err := os.MkdirAll(empty, 0o755); err != nil {
			return err
		}
		lowers = append(lowers, empty)
	}
	upper, work := parts.Upper, parts.Work
	// The root directory of the container is the upper directory's: the
	// container's root must own it.
	if err := os.Chown(upper, int(ids.Base), int(ids.Base)); err != nil {
		return err
	}
	if fresh == nil {
		// What an earlier mount left in the work directory goes.
		if err := os.RemoveAll(work); err != nil {
			return err
		}
		if err := os.Mkdir(work, 0o700); err != nil {
			return err
		}
	}
	return image.MountOverlay(lowers, upper, work, target, volatile)
}

// removeState unmounts what the agent mounted in container id's state
// directory (its rootfs first, then its layers and volumes), then anything
// else mounted below it, and removes the directory when it is not the
// container's own (destroy removes that last). Nothing is removed while a
// mount is left in it: that would reach into an image layer or a volume.
func (a *Agent) removeState(id string) error {
	sd := a.stateDir(id)
	known := []string{a.rootfs(id)}
	for _, sub := range []string{"layers", "mounts"} {
		ents, _ := os.ReadDir(filepath.Join(sd, sub))
		for _, e := range ents {
			known = append(known, filepath.Join(sd, sub, e.Name()))
		}
	}
	for _, m := range known {
		_ = unix.Unmount(m, unix.MNT_DETACH)
	}
	if err := unmountAll(sd); err != nil {
		return err
	}
	if sd == a.dir(id) {
		return nil
	}
	return os.RemoveAll(sd)
}

// prepareMounts turns volumes and binds into OCI mounts. A named volume's
// data is stored with unshifted ids and seen through an idmapped mount,
// so containers with different id ranges share it across replacement.
func (a *Agent) prepareMounts(id string, ms []Mount, ids IDRange) ([]specs.Mount, error) {
	var out []specs.Mount
	var ns *os.File
	defer func() {
		if ns != nil {
			ns.Close()
		}
	}()
	for i, m := range ms {
		opts := []string{"rbind", "rprivate", "nosuid", "nodev"}
		if m.ReadOnly {
			opts = append(opts, "ro")
		} else {
			opts = append(opts, "rw")
		}
		src := m.Source
		if m.Type == "volume" {
			data, err := a.ensureVolume(m.Source)
			if err != nil {
				return nil, err
			}
			if ns == nil {
				if ns, err = a.userns.get(ids); err != nil {
					return nil, err
				}
			}
			src = filepath.Join(a.stateDir(id), "mounts", strconv.Itoa(i))
			if err := os.MkdirAll(src, 0o755); err != nil {
				return nil, err
			}
			if !isMountPoint(src) {
				if err := idmapMount(data, src, ns); err != nil {
					return nil, fmt.Errorf("volume %s: %w", m.Source, err)
				}
			}
		} else if _, err := os.Stat(src); err != nil {
			return nil, fmt.Errorf("bind mount source: %w", err)
		}
		out = append(out, specs.Mount{Destination: m.Target, Type: "bind", Source: src, Options: opts})
	}
	return out, nil
}

// ensureVolume returns the data directory of a named volume, made on first use.
func (a *Agent) ensureVolume(name string) (string, error) {
	data := filepath.Join(a.cfg.Root, "volumes", name, "_data")
	if err := os.MkdirAll(data, 0o755); err != nil {
		return "", fmt.Errorf("volume %s: %w", name, err)
	}
	return data, nil
}

// Volumes lists the named volumes.
func (a *Agent) Volumes() ([]string, error) {
	ents, err := os.ReadDir(filepath.Join(a.cfg.Root, "volumes"))
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out, nil
}

// RemoveVolume deletes a named volume no container uses.
func (a *Agent) RemoveVolume(name string) error {
	if !validName(name, 128, "_.-") {
		return fmt.Errorf("volume %q: invalid name", name)
	}
	a.mu.Lock()
	for _, c := range a.containers {
		for _, m := range c.meta.Spec.Mounts {
			if m.Type == "volume" && m.Source == name {
				a.mu.Unlock()
				return fmt.Errorf("volume %s: in use by container %s", name, c.meta.ID)
			}
		}
	}
	a.mu.Unlock()
	return os.RemoveAll(filepath.Join(a.cfg.Root, "volumes", name))
}
