/*
 * berth-init: PID 1 of every Berth container (unless --init=false).
 *
 * It reaps zombies, forwards signals to the workload, and supervises it
 * without any process on the host: the agent hands it a directory (bind
 * mounted at -l, unmounted again here once opened) where it writes the
 * workload's stdout/stderr as CRI log lines into size-capped, rotated
 * files, and the workload's exit code when it ends. So logs never fill the
 * disk, and an exit code survives an agent that is down at the time.
 *
 * It is C, static and allocation-free so that an idle container costs the
 * host a few pages, not a Go runtime.
 *
 *   berth-init -U     (hold a new user namespace for the agent; see below)
 *   berth-init [-l DIR] [-s MAXBYTES] [-n FILES] [-u UID] [-g GID]
 *              [-G GID,GID...] [-D CAP,CAP...] -- COMMAND [ARG...]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define LOG_NAME "container.log"
#define MAX_GROUPS 64

static int logdir = -1, logfd = -1;
static long long logsize, maxsize = 10LL << 20;
static int nfiles = 3;

static void die(const char *what)
{
	dprintf(2, "berth-init: %s: %s\n", what, strerror(errno));
	_exit(126);
}

static void open_log(void)
{
	struct stat st;
	logfd = openat(logdir, LOG_NAME, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
	logsize = (logfd >= 0 && fstat(logfd, &st) == 0) ? st.st_size : 0;
}

/* rotate shifts container.log.N-2 .. .1 up by one and starts a new file,
 * so at most nfiles files of about maxsize bytes exist. */
static void rotate(void)
{
	char from[64], to[64];
	if (logfd >= 0)
		close(logfd);
	for (int i = nfiles - 1; i >= 1; i--) {
		if (i == 1)
			snprintf(from, sizeof from, "%s", LOG_NAME);
		else
			snprintf(from, sizeof from, "%s.%d", LOG_NAME, i - 1);
		snprintf(to, sizeof to, "%s.%d", LOG_NAME, i);
		renameat(logdir, from, logdir, to);
	}
	if (nfiles <= 1)
		unlinkat(logdir, LOG_NAME, 0);
	open_log();
}

/* emit writes one CRI log record: "<RFC3339Nano> <stream> <F|P> <text>\n". */
static void emit(const char *stream, const char *p, size_t n, int full)
{
	char head[64];
	struct timespec ts;
	struct tm tm;
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	int h = snprintf(head, sizeof head, "%04d-%02d-%02dT%02d:%02d:%02d.%09ldZ %s %c ",
			 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
			 tm.tm_sec, ts.tv_nsec, stream, full ? 'F' : 'P');
	if (logfd < 0)
		return;
	if (logsize > 0 && logsize + h + (long long)n + 1 > maxsize)
		rotate();
	if (logfd < 0)
		return;
	struct iovec iov[3] = {{head, (size_t)h}, {(void *)p, n}, {"\n", 1}};
	ssize_t w = writev(logfd, iov, 3);
	if (w > 0)
		logsize += w;
}

/* pump reads what the stream has and logs it line by line; it returns 0 at
 * end of file. */
static int pump(int fd, const char *stream)
{
	static char buf[16384];
	ssize_t n = read(fd, buf, sizeof buf);
	if (n < 0)
		return errno == EAGAIN || errno == EINTR;
	if (n == 0)
		return 0;
	char *p = buf, *end = buf + n;
	while (p < end) {
		char *nl = memchr(p, '\n', end - p);
		if (!nl) {
			emit(stream, p, end - p, 0);
			break;
		}
		emit(stream, p, nl - p, 1);
		p = nl + 1;
	}
	return 1;
}

static void write_exit(int code)
{
	if (logdir < 0)
		return;
	int fd = openat(logdir, "exit.tmp", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
	if (fd < 0)
		return;
	/* No fsync: a host crash ends the container with it, and the
	 * rename alone keeps a reader from seeing half a number. */
	dprintf(fd, "%d\n", code);
	close(fd);
	renameat(logdir, "exit.tmp", logdir, "exit");
}

/* holdUserns serves the agent, not a container: it enters a new user
 * namespace, says so on stdout, and waits to be killed. The agent maps its
 * ids and opens it for idmapped mounts; a tiny process forks far faster
 * than the agent could with CLONE_NEWUSER. */
static int holdUserns(void)
{
	if (unshare(CLONE_NEWUSER) < 0)
		die("unshare user namespace");
	if (write(1, "u", 1) != 1)
		die("write");
	for (;;)
		pause();
	return 0;
}

int main(int argc, char **argv)
{
	const char *dir = NULL;
	long uid = -1, gid = -1;
	gid_t groups[MAX_GROUPS];
	int ngroups = -1, opt, ndrop = 0, drop[8];

	if (argc == 2 && strcmp(argv[1], "-U") == 0)
		return holdUserns();
	while ((opt = getopt(argc, argv, "+l:s:n:u:g:G:D:")) != -1) {
		switch (opt) {
		case 'l': dir = optarg; break;
		case 's': maxsize = atoll(optarg); break;
		case 'n': nfiles = atoi(optarg); break;
		case 'u': uid = atol(optarg); break;
		case 'g': gid = atol(optarg); break;
		case 'G': {
			ngroups = 0;
			for (char *s = optarg; *s && ngroups < MAX_GROUPS;) {
				groups[ngroups++] = (gid_t)strtoul(s, &s, 10);
				if (*s == ',')
					s++;
			}
			break;
		}
		case 'D':
			for (char *s = optarg; *s && ndrop < 8;) {
				drop[ndrop++] = (int)strtol(s, &s, 10);
				if (*s == ',')
					s++;
			}
			break;
		default:
			dprintf(2, "usage: berth-init [-l dir] [-s bytes] [-n files] [-u uid] [-g gid] [-G gids] -- cmd...\n");
			return 125;
		}
	}
	if (optind >= argc) {
		dprintf(2, "berth-init: no command\n");
		return 125;
	}
	if (maxsize < 4096)
		maxsize = 4096;
	if (nfiles < 1)
		nfiles = 1;

	int out[2] = {-1, -1}, err[2] = {-1, -1};
	if (dir) {
		logdir = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (logdir < 0)
			die("open log directory");
		/* The workload must not see or reach the log directory. */
		umount2(dir, MNT_DETACH);
		open_log();
		if (pipe2(out, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0)
			die("pipe");
	}
	/* Keep same-uid workloads from ptracing us or opening /proc/1/fd. */
	prctl(PR_SET_DUMPABLE, 0);

	sigset_t all, old;
	sigfillset(&all);
	sigprocmask(SIG_SETMASK, &all, &old);
	int sfd = signalfd(-1, &all, SFD_CLOEXEC | SFD_NONBLOCK);
	if (sfd < 0)
		die("signalfd");

	pid_t child = fork();
	if (child < 0)
		die("fork");
	if (child == 0) {
		sigprocmask(SIG_SETMASK, &old, NULL);
		setsid();
		if (dir) {
			if (dup2(out[1], 1) < 0 || dup2(err[1], 2) < 0)
				die("dup2");
			int null = open("/dev/null", O_RDONLY);
			if (null >= 0 && null != 0) {
				dup2(null, 0);
				close(null);
			}
		}
		/* Capabilities only berth-init needed leave the bound now; the
		 * switch to a non-root user below clears the rest. */
		for (int i = 0; i < ndrop; i++)
			if (prctl(PR_CAPBSET_DROP, drop[i], 0, 0, 0) < 0)
				die("drop capability");
		if (ngroups >= 0 && setgroups(ngroups, groups) < 0)
			die("setgroups");
		if (gid >= 0 && setgid((gid_t)gid) < 0)
			die("setgid");
		if (uid >= 0 && setuid((uid_t)uid) < 0)
			die("setuid");
		execvp(argv[optind], argv + optind);
		int e = errno;
		dprintf(2, "berth-init: exec %s: %s\n", argv[optind], strerror(e));
		_exit(e == ENOENT ? 127 : 126);
	}
	if (dir) {
		close(out[1]);
		close(err[1]);
		fcntl(out[0], F_SETFL, O_NONBLOCK);
		fcntl(err[0], F_SETFL, O_NONBLOCK);
	}

	int code = -1, outOpen = dir != NULL, errOpen = dir != NULL;
	struct timespec ended = {0, 0}, now;
	for (;;) {
		struct pollfd p[3] = {{sfd, POLLIN, 0}, {outOpen ? out[0] : -1, POLLIN, 0},
				      {errOpen ? err[0] : -1, POLLIN, 0}};
		/* Once the workload is gone, drain what its descendants still
		 * write for a moment, then end: PID 1 leaving ends them all. */
		int n = poll(p, 3, code >= 0 ? 100 : -1);
		if (n < 0 && errno != EINTR)
			die("poll");
		if (n == 0)
			break;
		if (p[1].revents && !pump(out[0], "stdout"))
			outOpen = 0;
		if (p[2].revents && !pump(err[0], "stderr"))
			errOpen = 0;
		if (p[0].revents) {
			struct signalfd_siginfo si;
			while (read(sfd, &si, sizeof si) == sizeof si) {
				if (si.ssi_signo != SIGCHLD) {
					kill(child, (int)si.ssi_signo);
					continue;
				}
				int st;
				pid_t w;
				while ((w = waitpid(-1, &st, WNOHANG)) > 0) {
					if (w != child)
						continue;
					code = WIFSIGNALED(st) ? 128 + WTERMSIG(st) : WEXITSTATUS(st);
				}
			}
		}
		if (code >= 0 && !outOpen && !errOpen)
			break;
		if (code >= 0) {
			clock_gettime(CLOCK_MONOTONIC, &now);
			if (ended.tv_sec == 0)
				ended = now;
			else if (now.tv_sec - ended.tv_sec >= 2)
				break;
		}
	}
	write_exit(code);
	return code;
}
