// The container init's fast path. When the runtime starts its child with
// _BERTH_INIT=plan, the Go parent has already turned the spec into a plan: a
// list of steps, each one system call or a few, with every decision taken
// (see runtime/plan_linux.go). This constructor runs the plan and execs the
// container's process before the Go runtime would have started, which is
// most of what a container start costs in its init. Specs the plan does not
// cover (hooks, consoles, preserved fds, seccomp notify, ...) get the Go
// init, which does the same steps with the same checks.
//
// berth-init (cmd/berth-init) links this file too: a small static
// executable starts far faster than the runtime's (see
// Native.PlanInitPath).
//
// The plan arrives on fd 4 until EOF: per step a little-endian u32 field
// count, then each field as a u32 length, its bytes and a NUL. Field 0 is
// the step, field 1 says where in config.json it came from (for errors).
// Errors go to the parent over the sync socket (fd 3) in the runtime's
// message form while it waits; after that, to stderr.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/openat2.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <signal.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sys/ioctl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <sys/syscall.h>
#include <unistd.h>

#define SYNC_FD 3
#define PLAN_FD 4
#define FIFO_FD 5

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

struct step {
	int n;
	char **f;
	uint32_t *len;
};

struct run {
	int sync_open;
	int root; // O_PATH fd of the rootfs, once opened
	const char *ctx;
};

static struct run R = {.sync_open = 1, .root = -1};

static void json_escape(char *out, size_t size, const char *in) {
	size_t o = 0;
	for (; *in && o + 7 < size; in++) {
		unsigned char c = (unsigned char)*in;
		if (c == '"' || c == '\\') {
			out[o++] = '\\';
			out[o++] = (char)c;
		} else if (c < 0x20) {
			o += (size_t)snprintf(out + o, size - o, "\\u%04x", c);
		} else
			out[o++] = (char)c;
	}
	out[o] = '\0';
}

__attribute__((noreturn, format(printf, 1, 2))) static void fail(const char *fmt, ...) {
	char msg[4096], esc[8192], pkt[8300];
	int n = 0;
	if (R.ctx && *R.ctx)
		n = snprintf(msg, sizeof msg, "%s: ", R.ctx);
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg + n, sizeof msg - (size_t)n, fmt, ap);
	va_end(ap);
	if (R.sync_open) {
		json_escape(esc, sizeof esc, msg);
		int k = snprintf(pkt, sizeof pkt, "{\"t\":\"error\",\"e\":\"%s\"}", esc);
		if (send(SYNC_FD, pkt, (size_t)k, MSG_NOSIGNAL) >= 0)
			_exit(127);
	}
	dprintf(2, "berth-runtime init: %s\n", msg);
	_exit(127);
}

static void send_msg(const char *type) {
	char pkt[64];
	int k = snprintf(pkt, sizeof pkt, "{\"t\":\"%s\"}", type);
	if (send(SYNC_FD, pkt, (size_t)k, MSG_NOSIGNAL) < 0)
		fail("send %s: %s", type, strerror(errno));
}

static unsigned long long num(const struct step *s, int i) {
	if (i >= s->n)
		fail("plan step %s: missing field %d", s->f[0], i);
	return strtoull(s->f[i], NULL, 0);
}

static const char *str(const struct step *s, int i) {
	if (i >= s->n)
		fail("plan step %s: missing field %d", s->f[0], i);
	return s->f[i];
}

// ---- paths inside the root ----

static int in_root(const char *path, int flags) {
	struct open_how how = {.flags = (uint64_t)(flags | O_CLOEXEC), .resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS};
	return (int)syscall(SYS_openat2, R.root, path, &how, sizeof how);
}

// clean makes in an absolute path without ".", ".." or repeated slashes
// (".." at the top stays at the top), as Go's path.Clean("/"+in).
static void clean(const char *in, char *out) {
	size_t o = 0;
	out[o++] = '/';
	const char *p = in;
	while (*p) {
		while (*p == '/')
			p++;
		const char *e = p;
		while (*e && *e != '/')
			e++;
		size_t n = (size_t)(e - p);
		if (n == 0)
			break;
		if (n == 1 && p[0] == '.') {
		} else if (n == 2 && p[0] == '.' && p[1] == '.') {
			while (o > 1 && out[o - 1] != '/')
				o--;
			if (o > 1)
				o--;
		} else if (o + n + 2 < PATH_MAX) {
			if (o > 1)
				out[o++] = '/';
			memcpy(out + o, p, n);
			o += n;
		}
		p = e;
	}
	out[o] = '\0';
}

// open_target resolves dest inside the root, symlinks included and never
// leaving it, creating missing directories (and the last component as a
// file when file is set); it returns an O_PATH fd.
static int open_target(const char *dest, int file, int depth) {
	char clean_dest[PATH_MAX], cur[PATH_MAX], next[PATH_MAX];
	clean(dest, clean_dest);
	int fd = in_root(clean_dest, O_PATH);
	if (fd >= 0)
		return fd;
	strcpy(cur, "/");
	const char *p = clean_dest + 1;
	while (*p) {
		const char *e = strchr(p, '/');
		size_t n = e ? (size_t)(e - p) : strlen(p);
		char part[NAME_MAX + 1];
		if (n > NAME_MAX)
			fail("resolve %s: %s", clean_dest, strerror(ENAMETOOLONG));
		memcpy(part, p, n);
		part[n] = '\0';
		int last = e == NULL;
		snprintf(next, sizeof next, "%s%s%s", cur, strcmp(cur, "/") == 0 ? "" : "/", part);
		fd = in_root(next, O_PATH);
		if (fd >= 0) {
			close(fd);
		} else {
			if (errno != ENOENT)
				fail("resolve %s: %s", next, strerror(errno));
			int dfd = in_root(cur, O_PATH | O_DIRECTORY);
			if (dfd < 0)
				fail("resolve %s: %s", cur, strerror(errno));
			char link[PATH_MAX];
			ssize_t k = readlinkat(dfd, part, link, sizeof link - 1);
			if (k >= 0) {
				// A dangling symlink: create what it points at, inside
				// the root, and go on from there.
				close(dfd);
				if (depth >= 40)
					fail("resolve %s: %s", next, strerror(ELOOP));
				link[k] = '\0';
				char rest[PATH_MAX];
				int m;
				if (link[0] == '/')
					m = snprintf(rest, sizeof rest, "%s%s%s", link, last ? "" : "/", last ? "" : e + 1);
				else
					m = snprintf(rest, sizeof rest, "%s/%s%s%s", cur, link, last ? "" : "/", last ? "" : e + 1);
				if (m >= (int)sizeof rest)
					fail("resolve %s: %s", next, strerror(ENAMETOOLONG));
				return open_target(rest, file, depth + 1);
			}
			int err;
			if (last && file) {
				int f = openat(dfd, part, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC | O_NOFOLLOW, 0644);
				err = f < 0 ? errno : 0;
				if (f >= 0)
					close(f);
			} else
				err = mkdirat(dfd, part, 0755) < 0 ? errno : 0;
			close(dfd);
			if (err != 0 && err != EEXIST)
				fail("create %s: %s", next, strerror(err));
		}
		strcpy(cur, next);
		if (last)
			break;
		p = e + 1;
	}
	fd = in_root(clean_dest, O_PATH);
	if (fd < 0)
		fail("resolve %s: %s", clean_dest, strerror(errno));
	return fd;
}

static void fd_path(char *buf, size_t size, int fd) { snprintf(buf, size, "/proc/self/fd/%d", fd); }

// remount_bind applies flags to a bind mount, keeping those the kernel
// locks when the mount came from a more privileged namespace.
static int remount_bind(const char *target, unsigned long flags) {
	struct statfs st;
	if (statfs(target, &st) == 0) {
		static const unsigned long pairs[][2] = {
		    {ST_NOSUID, MS_NOSUID}, {ST_NODEV, MS_NODEV}, {ST_NOEXEC, MS_NOEXEC},
		    {ST_NOATIME, MS_NOATIME}, {ST_NODIRATIME, MS_NODIRATIME}, {ST_RELATIME, MS_RELATIME}};
		for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++)
			if ((unsigned long)st.f_flags & pairs[i][0])
				flags |= pairs[i][1];
	}
	return mount("", target, NULL, MS_BIND | MS_REMOUNT | flags, NULL);
}

// on_mounted reopens dest (now the mount on top) and remounts or changes
// its propagation.
static void remount_at(const char *dest, unsigned long flags, int propagation) {
	char c[PATH_MAX], p[64];
	clean(dest, c);
	int fd = in_root(c, O_PATH);
	if (fd < 0)
		fail("reopen %s: %s", dest, strerror(errno));
	fd_path(p, sizeof p, fd);
	int err = propagation ? mount("", p, NULL, flags, NULL) : remount_bind(p, flags);
	if (err < 0)
		fail("%s%s", propagation ? "propagation: " : "", strerror(errno));
	close(fd);
}

// ---- steps ----

// step_mount is one of the spec's mounts: mount DEST SRC TYPE FLAGS DATA
// BIND WANTFILE REMOUNT REMOUNTFLAGS FALLBACK PROPAGATION...
static void step_mount(const struct step *s) {
	const char *dest = str(s, 2), *src = str(s, 3), *type = str(s, 4), *data = str(s, 6);
	unsigned long flags = num(s, 5);
	int bind = (int)num(s, 7), wantfile = (int)num(s, 8), remount = (int)num(s, 9);
	unsigned long rflags = num(s, 10);
	const char *fallback = str(s, 11);
	int t = open_target(dest, wantfile, 0);
	char p[64];
	fd_path(p, sizeof p, t);
	if (bind) {
		if (mount(src, p, NULL, flags & (MS_BIND | MS_REC), NULL) < 0)
			fail("%s", strerror(errno));
		if (remount)
			remount_at(dest, rflags, 0);
	} else {
		int err = mount(src, p, type, flags & ~(unsigned long)MS_REMOUNT, *data ? data : NULL) < 0 ? errno : 0;
		if (err == EPERM && *fallback) {
			// sysfs needs the network namespace's owner, mqueue the ipc
			// one's: share the host's instead.
			unsigned long bflags = strcmp(fallback, "/sys") == 0 ? MS_BIND | MS_REC : MS_BIND;
			err = mount(fallback, p, NULL, bflags, NULL) < 0 ? errno : 0;
			if (err == 0)
				remount_at(dest, rflags, 0);
		}
		if (err != 0)
			fail("%s", strerror(err));
	}
	close(t);
	for (int i = 12; i < s->n; i++)
		remount_at(dest, num(s, i), 1);
}

// step_cgroup gives the container a cgroup filesystem in its own cgroup
// namespace: cgroup DEST FLAGS then, per hierarchy, NAME FSTYPE OPTIONS
// (one cgroup2 hierarchy alone: mounted directly).
static void step_cgroup(const struct step *s) {
	const char *dest = str(s, 2);
	unsigned long flags = num(s, 3);
	int t = open_target(dest, 0, 0);
	char p[64];
	fd_path(p, sizeof p, t);
	if (s->n == 7 && strcmp(s->f[5], "cgroup2") == 0) {
		if (mount("cgroup2", p, "cgroup2", flags, NULL) < 0)
			fail("%s", strerror(errno));
		close(t);
		return;
	}
	if (mount("tmpfs", p, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=755") < 0)
		fail("tmpfs: %s", strerror(errno));
	close(t);
	for (int i = 4; i + 2 < s->n; i += 3) {
		char sub[PATH_MAX], sp[64];
		snprintf(sub, sizeof sub, "%s/%s", dest, s->f[i]);
		int st = open_target(sub, 0, 0);
		fd_path(sp, sizeof sp, st);
		const char *opts = s->f[i + 2];
		if (mount("cgroup", sp, s->f[i + 1], flags, *opts ? opts : NULL) < 0)
			fail("cgroup hierarchy %s: %s", s->f[i], strerror(errno));
		close(st);
	}
	if (flags & MS_RDONLY)
		remount_at(dest, flags, 0);
}

static int open_dir_in_root(const char *dir) {
	int d = open_target(dir, 0, 0);
	char p[64];
	fd_path(p, sizeof p, d);
	int fd = open(p, O_DIRECTORY | O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		fail("open %s: %s", dir, strerror(errno));
	close(d);
	return fd;
}

// step_device: device DIR NAME MODE MAJOR MINOR UID GID HOSTPATH USERNS
static void step_device(const struct step *s) {
	int dir = open_dir_in_root(str(s, 2));
	const char *name = str(s, 3);
	if (!num(s, 10)) {
		unlinkat(dir, name, 0);
		if (mknodat(dir, name, (mode_t)num(s, 4), makedev(num(s, 5), num(s, 6))) < 0)
			fail("mknod: %s", strerror(errno));
		if (fchownat(dir, name, (uid_t)num(s, 7), (gid_t)num(s, 8), AT_SYMLINK_NOFOLLOW) < 0)
			fail("chown: %s", strerror(errno));
	} else {
		// In a user namespace mknod is refused: bind the host's node.
		int f = openat(dir, name, O_CREAT | O_WRONLY | O_CLOEXEC | O_NOFOLLOW, 0644);
		if (f < 0 && errno != EEXIST)
			fail("create bind target: %s", strerror(errno));
		if (f >= 0)
			close(f);
		int t = openat(dir, name, O_PATH | O_CLOEXEC | O_NOFOLLOW);
		if (t < 0)
			fail("%s", strerror(errno));
		char p[64];
		fd_path(p, sizeof p, t);
		if (mount(str(s, 9), p, NULL, MS_BIND, NULL) < 0)
			fail("%s", strerror(errno));
		close(t);
	}
	close(dir);
}

// step_symlink: symlink DIR TARGET NAME
static void step_symlink(const struct step *s) {
	int dir = open_dir_in_root(str(s, 2));
	if (symlinkat(str(s, 3), dir, str(s, 4)) < 0 && errno != EEXIST)
		fail("symlink %s: %s", str(s, 4), strerror(errno));
	close(dir);
}

static void step_pivot(const struct step *s) {
	int oldroot = open("/", O_DIRECTORY | O_RDONLY | O_CLOEXEC);
	int newroot = open(str(s, 2), O_DIRECTORY | O_RDONLY | O_CLOEXEC);
	if (oldroot < 0 || newroot < 0 || fchdir(newroot) < 0)
		fail("%s", strerror(errno));
	if (syscall(SYS_pivot_root, ".", ".") < 0)
		fail("pivot_root %s: %s (use --no-pivot for a rootfs on ramfs)", str(s, 2), strerror(errno));
	if (fchdir(oldroot) < 0)
		fail("%s", strerror(errno));
	// Keep the unmount from propagating to the host.
	if (mount("", ".", NULL, MS_SLAVE | MS_REC, NULL) < 0)
		fail("make old root a slave: %s", strerror(errno));
	if (umount2(".", MNT_DETACH) < 0)
		fail("detach old root: %s", strerror(errno));
	if (chdir("/") < 0)
		fail("%s", strerror(errno));
	close(oldroot);
	close(newroot);
	close(R.root);
	R.root = -1;
}

static void step_write(const struct step *s) {
	int fd = open(str(s, 2), O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		fail("%s", strerror(errno));
	const char *v = str(s, 3);
	if (write(fd, v, s->len[3]) < 0)
		fail("%s", strerror(errno));
	close(fd);
}

static void step_readonly(const struct step *s) {
	const char *p = str(s, 2);
	if (mount(p, p, NULL, MS_BIND | MS_REC, NULL) < 0) {
		if (errno == ENOENT)
			return;
		fail("%s: %s", p, strerror(errno));
	}
	if (remount_bind(p, MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC) < 0)
		fail("%s: %s", p, strerror(errno));
}

static void step_mask(const struct step *s) {
	const char *p = str(s, 2);
	struct stat st;
	if (stat(p, &st) < 0) {
		if (errno == ENOENT)
			return;
		fail("%s: %s", p, strerror(errno));
	}
	int err = S_ISDIR(st.st_mode) ? mount("tmpfs", p, "tmpfs", MS_RDONLY, "size=0") : mount("/dev/null", p, NULL, MS_BIND, NULL);
	if (err < 0)
		fail("%s: %s", p, strerror(errno));
}

static int executable(const char *p) {
	struct stat st;
	if (stat(p, &st) < 0)
		return errno;
	if (S_ISDIR(st.st_mode))
		return EISDIR;
	if ((st.st_mode & 0111) == 0)
		return EACCES;
	return 0;
}

// look_path resolves the program as execvp would, against the process's
// own PATH (field path), inside the container.
static void look_path(const char *file, const char *path, char *out) {
	if (strchr(file, '/')) {
		int err = executable(file);
		if (err == EISDIR)
			fail("%s: is a directory", file);
		if (err == EACCES)
			fail("%s: permission denied (not executable)", file);
		if (err)
			fail("%s: %s", file, strerror(err));
		snprintf(out, PATH_MAX, "%s", file);
		return;
	}
	const char *p = path;
	for (;;) {
		const char *e = strchr(p, ':');
		size_t n = e ? (size_t)(e - p) : strlen(p);
		if (n == 0)
			snprintf(out, PATH_MAX, "./%s", file);
		else
			snprintf(out, PATH_MAX, "%.*s/%s", (int)n, p, file);
		if (executable(out) == 0)
			return;
		if (!e)
			break;
		p = e + 1;
	}
	fail("\"%s\" not found in PATH %s", file, path);
}

static void step_exec(const struct step *s, int run) {
	// exec PATH ARGC ARGS... ENV...
	const char *path = str(s, 2);
	int argc = (int)num(s, 3);
	if (argc < 1 || 4 + argc > s->n)
		fail("plan step exec: bad argument count");
	char argv0[PATH_MAX];
	look_path(s->f[4], path, argv0);
	if (!run)
		return;
	char **argv = calloc((size_t)argc + 1, sizeof *argv);
	char **envp = calloc((size_t)(s->n - 4 - argc) + 1, sizeof *envp);
	if (!argv || !envp)
		fail("%s", strerror(ENOMEM));
	for (int i = 0; i < argc; i++)
		argv[i] = s->f[4 + i];
	for (int i = 4 + argc; i < s->n; i++)
		envp[i - 4 - argc] = s->f[i];
	execve(argv0, argv, envp);
	fail("exec %s: %s", s->f[4], strerror(errno));
}

static void step_start_wait(void) {
	char p[64];
	fd_path(p, sizeof p, FIFO_FD);
	// Blocks until `start` opens the fifo for reading.
	int fd = open(p, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		fail("open exec fifo: %s", strerror(errno));
	if (write(fd, "\0", 1) != 1)
		fail("signal start: %s", strerror(errno));
	close(fd);
	close(FIFO_FD);
}

static void step_cloexec(void) {
	if (syscall(SYS_close_range, 3U, ~0U, CLOSE_RANGE_CLOEXEC) == 0)
		return;
	for (int fd = 3; fd < 1024; fd++)
		fcntl(fd, F_SETFD, FD_CLOEXEC);
}

static void step_chdir(const struct step *s) {
	// After every inherited fd is marked, so a cwd such as /proc/self/fd/N
	// can never land on a host directory (CVE-2024-21626); check it.
	if (chdir(str(s, 2)) < 0)
		fail("%s: %s", str(s, 2), strerror(errno));
	char wd[PATH_MAX];
	if (getcwd(wd, sizeof wd) == NULL || wd[0] != '/')
		fail("%s resolves outside the container", str(s, 2));
}

static void step_seccomp(const struct step *s) {
	struct sock_fprog prog = {.len = (unsigned short)(s->len[3] / sizeof(struct sock_filter)), .filter = (struct sock_filter *)s->f[3]};
	if (s->len[3] == 0 || s->len[3] % sizeof(struct sock_filter) != 0)
		fail("seccomp program: bad length %u", s->len[3]);
	if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, (unsigned)num(s, 2), &prog) != 0)
		fail("load seccomp filter: %s", strerror(errno));
}

static void step_capbset(const struct step *s) {
	int last = (int)num(s, 2);
	unsigned long long keep = num(s, 3);
	for (int c = 0; c <= last && c < 64; c++)
		if (!(keep & (1ULL << c)) && prctl(PR_CAPBSET_DROP, c, 0, 0, 0) < 0 && errno != EINVAL)
			fail("drop capability %d from bounding set: %s", c, strerror(errno));
}

static void step_setgroups(const struct step *s) {
	int n = s->n - 2;
	gid_t *g = calloc((size_t)n + 1, sizeof *g);
	if (!g)
		fail("%s", strerror(ENOMEM));
	for (int i = 0; i < n; i++)
		g[i] = (gid_t)num(s, 2 + i);
	if (syscall(SYS_setgroups, (size_t)n, g) < 0 && !(errno == EPERM && n == 0))
		fail("setgroups: %s", strerror(errno));
	free(g);
}

static void step_capset(const struct step *s) {
	struct __user_cap_header_struct hdr = {.version = _LINUX_CAPABILITY_VERSION_3};
	struct __user_cap_data_struct data[2];
	unsigned long long e = num(s, 2), p = num(s, 3), i = num(s, 4);
	for (int k = 0; k < 2; k++) {
		data[k].effective = (uint32_t)(e >> (32 * k));
		data[k].permitted = (uint32_t)(p >> (32 * k));
		data[k].inheritable = (uint32_t)(i >> (32 * k));
	}
	if (syscall(SYS_capset, &hdr, data) < 0)
		fail("capset: %s", strerror(errno));
}

// cgroup_ready, idmap_done: the parent's message came while waiting for
// another (it sends cgroup-ready unasked, as soon as it has placed us, and
// may answer the id map request before or after it).
static int cgroup_ready, idmap_done;

static int *stash_of(const char *buf) {
	if (strstr(buf, "\"cgroup-ready\"") != NULL)
		return &cgroup_ready;
	if (strstr(buf, "\"idmap-done\"") != NULL)
		return &idmap_done;
	return NULL;
}

// wait_msg waits for the parent's message of type want ("cgroup-ready" or
// "idmap-done"); what says what it is waiting for, in errors.
static void wait_msg(const char *want, const char *what) {
	char buf[256], quoted[64];
	snprintf(quoted, sizeof quoted, "\"%s\"", want);
	int *mine = stash_of(quoted);
	if (*mine)
		return;
	for (;;) {
		ssize_t n;
		do
			n = recv(SYNC_FD, buf, sizeof buf - 1, 0);
		while (n < 0 && errno == EINTR);
		if (n <= 0)
			fail("wait for %s: %s", what, n == 0 ? "parent gone" : strerror(errno));
		buf[n] = '\0';
		int *got = stash_of(buf);
		if (got == NULL || *got)
			fail("unexpected %s before %s", buf, what);
		*got = 1;
		if (got == mine)
			return;
	}
}

// step_userns makes the user namespace the others will belong to; the
// parent, root outside it, writes its id maps. The namespaces in early
// (a network namespace takes most of a millisecond) are made meanwhile:
// they need the new namespace's capabilities, not its maps. They wait for
// the cgroup placement all the same, so that the kernel memory they hold
// is charged to the container's cgroup and not to its runtime's.
static void step_userns(unsigned long early) {
	if (unshare(CLONE_NEWUSER) < 0)
		fail("%s", strerror(errno));
	send_msg("idmap");
	if (early != 0) {
		wait_msg("cgroup-ready", "cgroup placement");
		if (unshare((int)early) < 0)
			fail("unshare namespaces: %s", strerror(errno));
	}
	wait_msg("idmap-done", "the user namespace's id maps");
}

// step_lo_up brings the new network namespace's loopback up.
static void step_lo_up(void) {
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (s < 0)
		fail("bring lo up: socket: %s", strerror(errno));
	struct ifreq ifr;
	memset(&ifr, 0, sizeof ifr);
	strcpy(ifr.ifr_name, "lo");
	if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0)
		fail("bring lo up: %s", strerror(errno));
	ifr.ifr_flags |= IFF_UP;
	if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0)
		fail("bring lo up: %s", strerror(errno));
	close(s);
}

// step_fork enters the pid namespace unshared before: its first process is
// a child. CLONE_PARENT makes it the runtime's child, not this process's,
// so the runtime reaps it; this process tells the runtime its pid and
// exits. The child waits until the pid is sent (a byte on the pipe, or
// its end closing with this process) so that the pid is the first thing
// the runtime hears of it.
static void step_fork(void) {
	int p[2];
	if (pipe2(p, O_CLOEXEC) < 0)
		fail("pipe: %s", strerror(errno));
	pid_t pid = (pid_t)syscall(SYS_clone, CLONE_PARENT | SIGCHLD, 0, NULL, NULL, 0);
	if (pid < 0)
		fail("clone: %s", strerror(errno));
	if (pid > 0) {
		close(p[0]);
		char pkt[64];
		int k = snprintf(pkt, sizeof pkt, "{\"t\":\"pid\",\"p\":%d}", (int)pid);
		if (send(SYNC_FD, pkt, (size_t)k, MSG_NOSIGNAL) < 0) {
			int err = errno;
			kill(pid, SIGKILL);
			fail("send the init's pid: %s", strerror(err));
		}
		// The child may go on now, not only once this process is gone.
		(void)!write(p[1], "", 1);
		_exit(0);
	}
	close(p[1]);
	char c;
	while (read(p[0], &c, 1) < 0 && errno == EINTR)
		;
	close(p[0]);
}

static void run_step(const struct step *s) {
	const char *op = s->f[0];
	R.ctx = s->n > 1 ? s->f[1] : "";
#define IS(x) (strcmp(op, x) == 0)
	if (IS("cgroup-ready"))
		wait_msg("cgroup-ready", "cgroup placement");
	else if (IS("userns"))
		step_userns(s->n > 2 ? (unsigned long)num(s, 2) : 0);
	else if (IS("fork"))
		step_fork();
	else if (IS("lo-up"))
		step_lo_up();
	else if (IS("unshare")) {
		if (unshare((int)num(s, 2)) < 0)
			fail("%s", strerror(errno));
	} else if (IS("hostname")) {
		if (sethostname(str(s, 2), s->len[2]) < 0)
			fail("%s", strerror(errno));
	} else if (IS("domainname")) {
		if (setdomainname(str(s, 2), s->len[2]) < 0)
			fail("%s", strerror(errno));
	} else if (IS("setsid")) {
		if (setsid() < 0)
			fail("setsid: %s", strerror(errno));
	} else if (IS("host-mount")) {
		const char *data = str(s, 6);
		if (mount(str(s, 2), str(s, 3), *str(s, 4) ? str(s, 4) : NULL, num(s, 5), *data ? data : NULL) < 0)
			fail("%s", strerror(errno));
	} else if (IS("root")) {
		R.root = open(str(s, 2), O_PATH | O_DIRECTORY | O_CLOEXEC);
		if (R.root < 0)
			fail("open %s: %s", str(s, 2), strerror(errno));
	} else if (IS("mount"))
		step_mount(s);
	else if (IS("cgroup"))
		step_cgroup(s);
	else if (IS("umask"))
		umask((mode_t)num(s, 2));
	else if (IS("device"))
		step_device(s);
	else if (IS("symlink"))
		step_symlink(s);
	else if (IS("pivot"))
		step_pivot(s);
	else if (IS("write"))
		step_write(s);
	else if (IS("readonly"))
		step_readonly(s);
	else if (IS("mask"))
		step_mask(s);
	else if (IS("remount-root")) {
		if (remount_bind("/", MS_RDONLY) < 0)
			fail("%s", strerror(errno));
	} else if (IS("check-exec"))
		step_exec(s, 0);
	else if (IS("ready"))
		send_msg("ready");
	else if (IS("start-wait"))
		step_start_wait();
	else if (IS("close-sync")) {
		close(SYNC_FD);
		R.sync_open = 0;
	} else if (IS("rlimit")) {
		struct rlimit rl = {.rlim_cur = num(s, 3), .rlim_max = num(s, 4)};
		if (setrlimit((int)num(s, 2), &rl) < 0)
			fail("%s", strerror(errno));
	} else if (IS("cloexec"))
		step_cloexec();
	else if (IS("chdir"))
		step_chdir(s);
	else if (IS("seccomp"))
		step_seccomp(s);
	else if (IS("capbset"))
		step_capbset(s);
	else if (IS("keepcaps")) {
		if (prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) < 0)
			fail("keepcaps: %s", strerror(errno));
	} else if (IS("setgroups"))
		step_setgroups(s);
	else if (IS("setresgid")) {
		gid_t g = (gid_t)num(s, 2);
		if (syscall(SYS_setresgid, g, g, g) < 0)
			fail("setresgid %u: %s", g, strerror(errno));
	} else if (IS("setresuid")) {
		uid_t u = (uid_t)num(s, 2);
		if (syscall(SYS_setresuid, u, u, u) < 0)
			fail("setresuid %u: %s", u, strerror(errno));
	} else if (IS("capset"))
		step_capset(s);
	else if (IS("ambient-clear")) {
		if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0)
			fail("clear ambient capabilities: %s", strerror(errno));
	} else if (IS("ambient")) {
		if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, num(s, 2), 0, 0) < 0)
			fail("raise %s: %s (it must also be permitted and inheritable)", str(s, 3), strerror(errno));
	} else if (IS("no-new-privs")) {
		if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
			fail("no_new_privs: %s", strerror(errno));
	} else if (IS("exec"))
		step_exec(s, 1);
	else
		fail("unknown plan step %s", op);
#undef IS
}

static char *read_plan(size_t *size) {
	size_t cap = 1 << 16, n = 0;
	char *buf = malloc(cap);
	if (!buf)
		fail("read plan: %s", strerror(ENOMEM));
	for (;;) {
		if (n == cap) {
			cap *= 2;
			if (cap > (64u << 20) || !(buf = realloc(buf, cap)))
				fail("read plan: too large");
		}
		ssize_t k = read(PLAN_FD, buf + n, cap - n);
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0)
			fail("read plan: %s", strerror(errno));
		if (k == 0)
			break;
		n += (size_t)k;
	}
	close(PLAN_FD);
	*size = n;
	return buf;
}

static uint32_t le32(const char *p) {
	const unsigned char *u = (const unsigned char *)p;
	return (uint32_t)u[0] | (uint32_t)u[1] << 8 | (uint32_t)u[2] << 16 | (uint32_t)u[3] << 24;
}

void berth_fastinit_plan(void) __attribute__((noreturn));

void berth_fastinit(void) {
	const char *role = getenv("_BERTH_INIT");
	if (role == NULL || strcmp(role, "plan") != 0)
		return;
	berth_fastinit_plan();
}

// berth_fastinit_plan runs the plan on fd 4 whatever the environment says:
// berth-init, which carries this file too, calls it when started with -P
// (see Native.PlanInitPath).
void berth_fastinit_plan(void) {
	unsetenv("_BERTH_INIT");
	size_t size;
	char *buf = read_plan(&size);
	size_t off = 0;
	// The steps' field arrays are reused, grown as needed, never freed:
	// musl's allocator hands freed memory back to the kernel, a system
	// call or two for each of the plan's fifty-odd steps.
	struct step s = {0};
	int cap = 0;
	while (off < size) {
		if (size - off < 4)
			fail("plan: truncated");
		s.n = (int)le32(buf + off);
		off += 4;
		if (s.n < 1 || s.n > 1 << 16)
			fail("plan: bad field count");
		if (s.n > cap) {
			cap = s.n < 64 ? 64 : s.n;
			s.f = realloc(s.f, (size_t)cap * sizeof *s.f);
			s.len = realloc(s.len, (size_t)cap * sizeof *s.len);
			if (!s.f || !s.len)
				fail("plan: %s", strerror(ENOMEM));
		}
		for (int i = 0; i < s.n; i++) {
			if (size - off < 4)
				fail("plan: truncated");
			uint32_t l = le32(buf + off);
			off += 4;
			if (size - off < (size_t)l + 1 || buf[off + l] != '\0')
				fail("plan: truncated");
			s.f[i] = buf + off;
			s.len[i] = l;
			off += l + 1;
		}
		run_step(&s);
	}
	fail("plan: ends without exec");
}
