package image_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	"github.com/berth-dev/berth/image"
)

// How the node agent starts a container's root filesystem: make sure the
// image is present (pulling with progress if not), take a snapshot, turn the
// image config into the runtime's process, and drop the snapshot when the
// container is removed.
func Example() {
	ctx := context.Background()
	store, err := image.Open("/var/lib/berth/image", slog.Default())
	if err != nil {
		panic(err)
	}
	progress := image.NewProgressPrinter(os.Stderr, false, nil)
	img, err := store.Ensure(ctx, "busybox", image.PullOptions{Progress: progress.Update})
	if err != nil {
		panic(err)
	}
	rootfs, err := store.Snapshot(ctx, img, "web-1")
	if err != nil {
		panic(err)
	}
	defer store.RemoveSnapshot("web-1")
	proc, err := image.ContainerProcess(rootfs, img.Config.Config, nil)
	if err != nil {
		panic(err)
	}
	fmt.Println(rootfs, proc.Args, proc.User.UID)
}
