package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/berth-dev/berth/image"
	"github.com/berth-dev/berth/image/reference"
)

const defaultRoot = "/var/lib/berth"

// storeFlags are the flags every image command shares.
type storeFlags struct {
	root string
}

func (f *storeFlags) register(cmd *cobra.Command) {
	cmd.PersistentFlags().StringVar(&f.root, "root", defaultRoot, "Berth's state directory (the image store lives in ROOT/image)")
}

func (f *storeFlags) open() (*image.Store, error) {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	return image.Open(filepath.Join(f.root, "image"), log)
}

func newImageCmd() *cobra.Command {
	var sf storeFlags
	cmd := &cobra.Command{Use: "image", Short: "Pull, push, build archives of and manage images"}
	sf.register(cmd)
	var insecure []string
	cmd.PersistentFlags().StringSliceVar(&insecure, "insecure-registry", nil, "registry host[:port] to reach over plain HTTP (loopback always may)")
	regOpts := func() image.RegistryOptions { return image.RegistryOptions{Insecure: insecure} }

	var quiet bool
	var platform string
	pull := &cobra.Command{
		Use: "pull REF", Short: "Pull an image from a registry", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := sf.open()
			if err != nil {
				return err
			}
			opt := image.PullOptions{RegistryOptions: regOpts()}
			if platform != "" {
				if opt.Platform, err = image.ParsePlatform(platform); err != nil {
					return err
				}
			}
			out := cmd.OutOrStdout()
			var pr *image.ProgressPrinter
			if !quiet {
				pr = image.NewProgressPrinter(out, isTerminal(out), time.Now)
				opt.Progress = pr.Update
			}
			img, err := s.Pull(cmd.Context(), args[0], opt)
			if pr != nil {
				pr.Finish()
			}
			if err != nil {
				return err
			}
			if quiet {
				fmt.Fprintln(out, img.Digest)
				return nil
			}
			r, err := reference.Parse(args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "Digest: %s\n%s\n", img.Digest, r)
			return nil
		},
	}
	pull.Flags().BoolVarP(&quiet, "quiet", "q", false, "print only the digest")
	pull.Flags().StringVar(&platform, "platform", "", "os/arch[/variant] to pick from an image index (default linux/this machine)")

	push := &cobra.Command{
		Use: "push REF [DEST]", Short: "Push an image to a registry", Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := sf.open()
			if err != nil {
				return err
			}
			dst := ""
			if len(args) == 2 {
				dst = args[1]
			}
			d, err := s.Push(cmd.Context(), args[0], dst, regOpts())
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), d)
			return nil
		},
	}

	tag := &cobra.Command{
		Use: "tag SOURCE TARGET", Short: "Give an image another name", Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := sf.open()
			if err != nil {
				return err
			}
			return s.Tag(args[0], args[1])
		},
	}

	var lsQuiet bool
	ls := &cobra.Command{
		Use: "ls", Aliases: []string{"list"}, Short: "List images", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := sf.open()
			if err != nil {
				return err
			}
			imgs, err := s.List()
			if err != nil {
				return err
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 8, 3, ' ', 0)
			if !lsQuiet {
				fmt.Fprintln(w, "REPOSITORY\tTAG\tIMAGE ID\tCREATED\tSIZE")
			}
			for _, img := range imgs {
				if lsQuiet {
					fmt.Fprintln(w, img.ConfigDigest.Encoded()[:12])
					continue
				}
				for _, n := range img.Names {
					r, _ := reference.Parse(n)
					repo := strings.TrimSuffix(r.Familiar(), ":"+r.Tag)
					if r.Digest != "" {
						repo = strings.TrimSuffix(repo, "@"+r.Digest.String())
					}
					created := ""
					if img.Config.Created != nil {
						created = img.Config.Created.Format(time.DateTime)
					}
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", repo, orNone(r.Tag), img.ConfigDigest.Encoded()[:12], created, image.HumanSize(img.ContentSize()))
				}
			}
			return w.Flush()
		},
	}
	ls.Flags().BoolVarP(&lsQuiet, "quiet", "q", false, "print image IDs only")

	rm := &cobra.Command{
		Use: "rm REF...", Aliases: []string{"remove"}, Short: "Remove image names; content no longer used is freed", Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := sf.open()
			if err != nil {
				return err
			}
			removed, err := s.Untag(args...)
			if err != nil {
				return err
			}
			for _, a := range args {
				fmt.Fprintln(cmd.OutOrStdout(), "Untagged:", a)
			}
			if len(removed) > 0 {
				rep, err := s.Prune(image.PruneOptions{})
				if err != nil {
					return err
				}
				for _, d := range removed {
					fmt.Fprintln(cmd.OutOrStdout(), "Deleted:", d)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "Freed %s\n", image.HumanSize(rep.BytesFreed))
			}
			return nil
		},
	}

	inspect := &cobra.Command{
		Use: "inspect REF...", Short: "Show images' manifests and configs as JSON", Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := sf.open()
			if err != nil {
				return err
			}
			var out []any
			for _, a := range args {
				img, err := s.Get(a)
				if err != nil {
					return err
				}
				out = append(out, map[string]any{
					"Id": img.ConfigDigest, "Digest": img.Digest, "RepoTags": img.Names, "MediaType": img.MediaType,
					"Created": img.Config.Created, "Os": img.Config.OS, "Architecture": img.Config.Architecture,
					"Config": img.Config.Config, "RootFS": img.Config.RootFS, "Layers": img.Manifest.Layers,
					"Size": img.ContentSize(),
				})
			}
			enc := json.NewEncoder(cmd.OutOrStdout())
			enc.SetIndent("", "  ")
			return enc.Encode(out)
		},
	}

	history := &cobra.Command{
		Use: "history REF", Short: "Show how an image's layers were made", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := sf.open()
			if err != nil {
				return err
			}
			img, err := s.Get(args[0])
			if err != nil {
				return err
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 8, 3, ' ', 0)
			fmt.Fprintln(w, "CREATED\tCREATED BY\tSIZE\tCOMMENT")
			layer := len(img.Manifest.Layers) - 1
			for i := len(img.Config.History) - 1; i >= 0; i-- {
				h := img.Config.History[i]
				size := "0B"
				if !h.EmptyLayer && layer >= 0 {
					size = image.HumanSize(img.Manifest.Layers[layer].Size)
					layer--
				}
				created := ""
				if h.Created != nil {
					created = h.Created.Format(time.DateTime)
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", created, h.CreatedBy, size, h.Comment)
			}
			return w.Flush()
		},
	}

	var pruneAll bool
	prune := &cobra.Command{
		Use: "prune", Short: "Remove unused image content", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := sf.open()
			if err != nil {
				return err
			}
			rep, err := s.Prune(image.PruneOptions{All: pruneAll})
			if err != nil {
				return err
			}
			for _, d := range rep.Images {
				fmt.Fprintln(cmd.OutOrStdout(), "Deleted:", d)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Removed %d blobs and %d layers; freed %s\n", rep.Blobs, rep.Layers, image.HumanSize(rep.BytesFreed))
			return nil
		},
	}
	prune.Flags().BoolVarP(&pruneAll, "all", "a", false, "also remove images no container uses")

	var changes []string
	importCmd := &cobra.Command{
		Use: "import FILE|- [REF]", Short: "Create an image from a root filesystem tarball", Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := sf.open()
			if err != nil {
				return err
			}
			var in io.Reader = cmd.InOrStdin()
			if args[0] != "-" {
				f, err := os.Open(args[0])
				if err != nil {
					return err
				}
				defer f.Close()
				in = f
			}
			ref := ""
			if len(args) == 2 {
				ref = args[1]
			}
			img, err := s.Import(cmd.Context(), bufio.NewReaderSize(in, 1<<20), ref, changes)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), img.ConfigDigest)
			return nil
		},
	}
	importCmd.Flags().StringArrayVarP(&changes, "change", "c", nil, "Dockerfile instruction to apply (CMD, ENTRYPOINT, ENV, LABEL, WORKDIR, USER, EXPOSE, VOLUME, STOPSIGNAL)")

	var input string
	load := &cobra.Command{
		Use: "load", Short: "Load images from a docker save archive or an OCI layout (tar or directory)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := sf.open()
			if err != nil {
				return err
			}
			var p image.Platform
			if platform != "" {
				if p, err = image.ParsePlatform(platform); err != nil {
					return err
				}
			}
			var imgs []*image.Image
			if input == "" || input == "-" {
				imgs, err = s.LoadStream(cmd.Context(), bufio.NewReaderSize(cmd.InOrStdin(), 1<<20), p)
			} else {
				imgs, err = s.Load(cmd.Context(), input, p)
			}
			if err != nil {
				return err
			}
			for _, img := range imgs {
				fmt.Fprintln(cmd.OutOrStdout(), "Loaded image:", strings.Join(img.Names, ", "))
			}
			return nil
		},
	}
	load.Flags().StringVarP(&input, "input", "i", "", "archive file or OCI layout directory (default stdin)")
	load.Flags().StringVar(&platform, "platform", "", "os/arch to pick from an image index")

	var output string
	var asDir bool
	save := &cobra.Command{
		Use: "save REF...", Short: "Write images as an archive Docker and OCI tools read", Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := sf.open()
			if err != nil {
				return err
			}
			if asDir {
				if output == "" {
					return fmt.Errorf("save --dir needs --output DIR")
				}
				return s.Save(args, nil, output)
			}
			if output == "" || output == "-" {
				if isTerminal(cmd.OutOrStdout()) {
					return fmt.Errorf("save: refusing to write an archive to a terminal; use -o FILE")
				}
				return s.Save(args, cmd.OutOrStdout(), "")
			}
			tmp := output + ".partial"
			f, err := os.Create(tmp)
			if err != nil {
				return err
			}
			bw := bufio.NewWriterSize(f, 1<<20)
			if err := s.Save(args, bw, ""); err != nil {
				f.Close()
				os.Remove(tmp)
				return err
			}
			if err := bw.Flush(); err != nil {
				f.Close()
				os.Remove(tmp)
				return err
			}
			if err := f.Close(); err != nil {
				os.Remove(tmp)
				return err
			}
			return os.Rename(tmp, output)
		},
	}
	save.Flags().StringVarP(&output, "output", "o", "", "file to write (default stdout)")
	save.Flags().BoolVar(&asDir, "dir", false, "write an OCI layout directory at --output instead of a tar")

	cmd.AddCommand(pull, push, tag, ls, rm, inspect, history, prune, importCmd, load, save)
	return cmd
}

func newSystemCmd() *cobra.Command {
	var sf storeFlags
	cmd := &cobra.Command{Use: "system", Short: "Disk usage and clean-up"}
	sf.register(cmd)
	df := &cobra.Command{
		Use: "df", Short: "Show what Berth's data uses on disk", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := sf.open()
			if err != nil {
				return err
			}
			usage, err := s.DiskUsage()
			if err != nil {
				return err
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 8, 3, ' ', 0)
			fmt.Fprintln(w, "TYPE\tCOUNT\tSIZE\tRECLAIMABLE")
			var total int64
			for _, u := range usage {
				fmt.Fprintf(w, "%s\t%d\t%s\t%s\n", u.Kind, u.Count, image.HumanSize(u.Bytes), image.HumanSize(u.Reclaimable))
				total += u.Bytes
			}
			fmt.Fprintf(w, "total\t\t%s\t\n", image.HumanSize(total))
			return w.Flush()
		},
	}
	var all bool
	prune := &cobra.Command{
		Use: "prune", Short: "Remove unused images and their content", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := sf.open()
			if err != nil {
				return err
			}
			rep, err := s.Prune(image.PruneOptions{All: all})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Total reclaimed space: %s\n", image.HumanSize(rep.BytesFreed))
			return nil
		},
	}
	prune.Flags().BoolVarP(&all, "all", "a", false, "also remove images no container uses")
	cmd.AddCommand(df, prune)
	return cmd
}

func newLoginCmd() *cobra.Command {
	var user, configDir string
	var passwordStdin bool
	var insecure []string
	cmd := &cobra.Command{
		Use: "login [-u USER --password-stdin] [SERVER]", Short: "Check registry credentials and store them in ~/.docker/config.json", Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if user == "" || !passwordStdin {
				return fmt.Errorf("login: give --username and --password-stdin (a password on the command line would leak into the shell history)")
			}
			pw, err := io.ReadAll(io.LimitReader(cmd.InOrStdin(), 64<<10))
			if err != nil {
				return fmt.Errorf("login: read password: %w", err)
			}
			server := ""
			if len(args) == 1 {
				server = args[0]
			}
			opt := image.RegistryOptions{Insecure: insecure}
			if err := image.Login(cmd.Context(), server, user, strings.TrimRight(string(pw), "\r\n"), configDir, opt); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), "Login Succeeded")
			fmt.Fprintln(cmd.ErrOrStderr(), "Note: without a credential helper in the Docker config, the password is stored unencrypted in config.json.")
			return nil
		},
	}
	cmd.Flags().StringVarP(&user, "username", "u", "", "user name")
	cmd.Flags().BoolVar(&passwordStdin, "password-stdin", false, "read the password from stdin")
	cmd.Flags().StringVar(&configDir, "config", "", "Docker client config directory (default $DOCKER_CONFIG or ~/.docker)")
	cmd.Flags().StringSliceVar(&insecure, "insecure-registry", nil, "reach this registry over plain HTTP")
	return cmd
}

func orNone(s string) string {
	if s == "" {
		return "<none>"
	}
	return s
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}
