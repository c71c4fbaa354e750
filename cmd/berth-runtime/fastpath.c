// The fast path of `start` and `delete`: the two verbs every container
// lifecycle runs once each and that, in the common case, come down to a few
// system calls. They run here, in a constructor, before the Go runtime
// starts (which costs more than the work itself). Anything but the common
// case returns without having changed anything, and the Go code then does
// the whole verb, with its checks and its error messages:
//
//   - the command line is exactly `[globals] start ID` or
//     `[globals] delete [-f|--force] ID` with globals this file knows;
//   - the container has a fast record (<root>/<id>/fastpath), which create
//     writes only for containers without poststart/poststop hooks that have
//     a pid namespace of their own;
//   - start: the init is alive and waiting at the exec fifo, and the cgroup
//     is not frozen; delete: the init has exited and every cgroup directory
//     can be removed.
//
// BERTH_RUNTIME_FASTPATH=0 turns the fast path off (tests compare both).
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define FAST_FILE "fastpath"
#define MAX_CGROUPS 32

struct fast_record {
	long pid;
	unsigned long long start;
	int ncg;
	char cg[MAX_CGROUPS][PATH_MAX];
};

static int valid_id(const char *id) {
	if (*id == '\0' || strlen(id) > 1024 || strcmp(id, ".") == 0 || strcmp(id, "..") == 0)
		return 0;
	for (const char *p = id; *p; p++) {
		char c = *p;
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '_' || c == '+' || c == '-' || c == '.'))
			return 0;
	}
	return 1;
}

// read_small reads a whole small file into buf (NUL-terminated).
static int read_small(const char *path, char *buf, size_t size) {
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	size_t n = 0;
	while (n < size - 1) {
		ssize_t k = read(fd, buf + n, size - 1 - n);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			break;
		n += (size_t)k;
	}
	close(fd);
	buf[n] = '\0';
	return (int)n;
}

// process_start is the start time of pid in clock ticks since boot, 0 if it
// is gone or a zombie (the Go side's processStart, to the letter).
static unsigned long long process_start(long pid) {
	char path[64], buf[1024];
	snprintf(path, sizeof path, "/proc/%ld/stat", pid);
	if (read_small(path, buf, sizeof buf) <= 0)
		return 0;
	char *p = strrchr(buf, ')');
	if (p == NULL)
		return 0;
	p++;
	// After ")": field 1 is the state, field 20 the start time.
	char *save = NULL;
	int field = 0;
	for (char *tok = strtok_r(p, " \n", &save); tok; tok = strtok_r(NULL, " \n", &save)) {
		field++;
		if (field == 1 && (tok[0] == 'Z' || tok[0] == 'X'))
			return 0;
		if (field == 20)
			return strtoull(tok, NULL, 10);
	}
	return 0;
}

static int load_record(const char *dir, struct fast_record *r) {
	char path[PATH_MAX], buf[8192];
	if (snprintf(path, sizeof path, "%s/" FAST_FILE, dir) >= (int)sizeof path)
		return -1;
	int n = read_small(path, buf, sizeof buf);
	if (n <= 0 || n == (int)sizeof buf - 1)
		return -1;
	memset(r, 0, sizeof *r);
	char *save = NULL;
	for (char *line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		if (strncmp(line, "pid ", 4) == 0)
			r->pid = strtol(line + 4, NULL, 10);
		else if (strncmp(line, "start ", 6) == 0)
			r->start = strtoull(line + 6, NULL, 10);
		else if (strncmp(line, "cgroup /", 8) == 0) {
			if (r->ncg == MAX_CGROUPS || strlen(line + 7) >= PATH_MAX)
				return -1;
			strcpy(r->cg[r->ncg++], line + 7);
		} else
			return -1; // a record from a later version: let Go read state.json
	}
	return r->pid > 0 && r->start > 0 ? 0 : -1;
}

// frozen reports whether any of the cgroup's freezers says other than thawed.
static int frozen(const struct fast_record *r) {
	char path[PATH_MAX + 32], buf[64];
	for (int i = 0; i < r->ncg; i++) {
		snprintf(path, sizeof path, "%s/freezer.state", r->cg[i]);
		if (read_small(path, buf, sizeof buf) > 0 && strncmp(buf, "THAWED", 6) != 0)
			return 1;
		snprintf(path, sizeof path, "%s/cgroup.freeze", r->cg[i]);
		if (read_small(path, buf, sizeof buf) > 0 && buf[0] != '0')
			return 1;
	}
	return 0;
}

// fast_start returns 0 when the container was started, 1 when the Go code
// must do the verb, and exits on an error past the point of no return.
static int fast_start(const char *dir) {
	struct fast_record r;
	if (load_record(dir, &r) < 0 || process_start(r.pid) != r.start || frozen(&r))
		return 1;
	char fifo[PATH_MAX];
	snprintf(fifo, sizeof fifo, "%s/exec.fifo", dir);
	int fd = open(fifo, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0)
		return 1; // not created (running already, or gone): Go says which
	for (;;) {
		struct pollfd pfd = {.fd = fd, .events = POLLIN};
		int n = poll(&pfd, 1, 20);
		if (n < 0 && errno != EINTR) {
			close(fd);
			return 1;
		}
		if (n > 0) {
			char b;
			if (read(fd, &b, 1) == 1)
				break;
			if (pfd.revents & POLLHUP) {
				close(fd);
				return 1;
			}
		}
		if (process_start(r.pid) != r.start) {
			close(fd);
			return 1;
		}
	}
	close(fd);
	// The init runs the user's process now: from here on, only forward.
	if (unlink(fifo) < 0) {
		dprintf(2, "berth-runtime: remove exec fifo: %s\n", strerror(errno));
		_exit(1);
	}
	return 0;
}

// fast_delete removes a stopped container's cgroup and state.
static int fast_delete(const char *dir) {
	struct fast_record r;
	if (load_record(dir, &r) < 0 || process_start(r.pid) == r.start)
		return 1; // not stopped: Go kills (or refuses) and deletes
	for (int i = 0; i < r.ncg; i++)
		if (rmdir(r.cg[i]) < 0 && errno != ENOENT)
			return 1; // busy, or has children: Go's removal retries and recurses
	// The state files go one by one, state.json last, so that a failure
	// part-way still leaves a record the Go code can delete from.
	DIR *d = opendir(dir);
	if (d == NULL)
		return 1;
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0 || strcmp(e->d_name, "state.json") == 0)
			continue;
		if (unlinkat(dirfd(d), e->d_name, 0) < 0) {
			closedir(d);
			return 1;
		}
	}
	int err = unlinkat(dirfd(d), "state.json", 0);
	closedir(d);
	if (err < 0 && errno != ENOENT)
		return 1;
	if (rmdir(dir) < 0) {
		dprintf(2, "berth-runtime: delete %s: remove state: %s\n", dir, strerror(errno));
		_exit(1);
	}
	return 0;
}

// flag_value matches "--name VALUE" and "--name=VALUE" at argv[*i].
static const char *flag_value(int argc, char **argv, int *i, const char *name) {
	size_t n = strlen(name);
	if (strncmp(argv[*i], name, n) != 0)
		return NULL;
	if (argv[*i][n] == '=')
		return argv[*i] + n + 1;
	if (argv[*i][n] == '\0' && *i + 1 < argc)
		return argv[++*i];
	return NULL;
}

void berth_fastpath(int argc, char **argv) {
	if (argc < 3 || getenv("_BERTH_INIT") || getenv("_BERTH_SETNS"))
		return;
	const char *fp = getenv("BERTH_RUNTIME_FASTPATH");
	if (fp && strcmp(fp, "0") == 0)
		return;
	const char *root = "/run/berth-runtime", *log = NULL;
	int i = 1;
	for (; i < argc && argv[i][0] == '-'; i++) {
		const char *v;
		if ((v = flag_value(argc, argv, &i, "--root")) != NULL)
			root = v;
		else if ((v = flag_value(argc, argv, &i, "--log-format")) != NULL) {
			if (strcmp(v, "json") != 0 && strcmp(v, "text") != 0)
				return;
		} else if ((v = flag_value(argc, argv, &i, "--log")) != NULL)
			log = v;
		else if ((v = flag_value(argc, argv, &i, "--criu")) != NULL)
			;
		else if ((v = flag_value(argc, argv, &i, "--rootless")) != NULL) {
			if (strcmp(v, "true") == 0)
				return;
		} else
			return; // --debug, --systemd-cgroup, --help, ...: Go handles them
	}
	if (i >= argc)
		return;
	const char *verb = argv[i++];
	int del = strcmp(verb, "delete") == 0;
	if (!del && strcmp(verb, "start") != 0)
		return;
	if (del && i < argc && (strcmp(argv[i], "-f") == 0 || strcmp(argv[i], "--force") == 0))
		i++;
	if (i != argc - 1 || !valid_id(argv[i]))
		return;
	char dir[PATH_MAX];
	if (snprintf(dir, sizeof dir, "%s/%s", root, argv[i]) >= (int)sizeof dir)
		return;
	if (log != NULL) {
		// As the Go side does: callers read the log after a failure and
		// expect to find it.
		int fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
		if (fd < 0)
			return;
		close(fd);
	}
	if ((del ? fast_delete(dir) : fast_start(dir)) == 0)
		_exit(0);
}
