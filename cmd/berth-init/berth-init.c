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
 * With -t the workload gets a terminal (a pty opened here, inside the
 * container, as its controlling terminal), with -i a standard input that
 * stays open; either way berth-init listens on ATTACH_NAME, a seqpacket
 * socket in the log directory, for the agent to attach to. Output still
 * goes to the log files; attached clients get a copy. Messages on the
 * socket are one byte of type, then the payload:
 *   client -> init: CH_STDIN data, MSG_RESIZE rows cols (u16 LE each),
 *                   MSG_CLOSE (end the workload's input)
 *   init -> client: CH_STDOUT data, CH_STDERR data, MSG_BUSY (too many
 *                   clients: this one is refused)
 * A client that goes away detaches; the workload runs on.
 *
 * It is C, static and allocation-free so that an idle container costs the
 * host a few pages, not a Go runtime.
 *
 *   berth-init -U     (hold a new user namespace for the agent; see below)
 *   berth-init -P     (run a container init's plan: the runtime's fast init,
 *                      runtime/fastinit/fastinit.c, linked in by hack/build.sh)
 *   berth-init [-l DIR] [-s MAXBYTES] [-n FILES] [-u UID] [-g GID]
 *              [-G GID,GID...] [-D CAP,CAP...] [-t] [-i] -- COMMAND [ARG...]
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
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/un.h>
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
#define ATTACH_NAME "attach.sock"
#define MAX_CLIENTS 4

enum { CH_STDIN = 0, CH_STDOUT = 1, CH_STDERR = 2, MSG_RESIZE = 3, MSG_CLOSE = 4, MSG_BUSY = 5 };

static int logdir = -1, logfd = -1;
static long long logsize, maxsize = 10LL << 20;
static int nfiles = 3;
static int tty, stdinOpen;
static int clients[MAX_CLIENTS] = {-1, -1, -1, -1};

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

static void drop_client(int i)
{
	close(clients[i]);
	clients[i] = -1;
}

/* broadcast copies output to every attached client. A client that cannot
 * take it within the socket's send timeout is dropped rather than allowed
 * to stall the workload. */
static void broadcast(unsigned char ch, const char *p, size_t n)
{
	struct iovec iov[2] = {{&ch, 1}, {(void *)p, n}};
	struct msghdr m = {.msg_iov = iov, .msg_iovlen = 2};
	for (int i = 0; i < MAX_CLIENTS; i++)
		if (clients[i] >= 0 && sendmsg(clients[i], &m, MSG_NOSIGNAL) < 0)
			drop_client(i);
}

/* recent keeps a terminal's last output, replayed to a client as it
 * attaches: attaching follows the start, and `run -it` would otherwise
 * miss the shell's first prompt (a re-attach sees the screen's tail, as
 * with screen or tmux). */
static char recent[2048];
static size_t nrecent;

static void remember(const char *p, size_t n)
{
	if (n >= sizeof recent) {
		memcpy(recent, p + n - sizeof recent, sizeof recent);
		nrecent = sizeof recent;
		return;
	}
	if (nrecent + n > sizeof recent) {
		size_t drop = nrecent + n - sizeof recent;
		memmove(recent, recent + drop, nrecent - drop);
		nrecent -= drop;
	}
	memcpy(recent + nrecent, p, n);
	nrecent += n;
}

/* pump reads what the stream has and logs it line by line; it returns 0 at
 * end of file (or, for a pty, once no process holds the terminal). */
static int pump(int fd, const char *stream, unsigned char ch)
{
	static char buf[16384];
	ssize_t n = read(fd, buf, sizeof buf);
	if (n < 0)
		return errno == EAGAIN || errno == EINTR;
	if (n == 0)
		return 0;
	broadcast(ch, buf, (size_t)n);
	if (tty)
		remember(buf, (size_t)n);
	char *p = buf, *end = buf + n;
	while (p < end) {
		char *nl = memchr(p, '\n', end - p);
		if (!nl) {
			emit(stream, p, end - p, 0);
			break;
		}
		/* A terminal ends lines with CRLF; the log keeps the line. */
		emit(stream, p, nl - p - (tty && nl > p && nl[-1] == '\r'), 1);
		p = nl + 1;
	}
	return 1;
}

/* listen_attach binds the attach socket in the log directory while it is
 * still mounted, so the socket stays reachable from the host (and only
 * from there) once the directory is unmounted. */
static int listen_attach(const char *dir)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	if (snprintf(sa.sun_path, sizeof sa.sun_path, "%s/%s", dir, ATTACH_NAME) >= (int)sizeof sa.sun_path) {
		errno = ENAMETOOLONG;
		die("attach socket path");
	}
	unlinkat(logdir, ATTACH_NAME, 0);
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(fd, MAX_CLIENTS) < 0)
		die("attach socket");
	fchmodat(logdir, ATTACH_NAME, 0600, 0);
	return fd;
}

static void accept_client(int lfd)
{
	int c = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	if (c < 0)
		return;
	for (int i = 0; i < MAX_CLIENTS; i++) {
		if (clients[i] < 0) {
			struct timeval tv = {2, 0};
			setsockopt(c, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
			clients[i] = c;
			if (nrecent > 0) {
				unsigned char ch = CH_STDOUT;
				struct iovec iov[2] = {{&ch, 1}, {recent, nrecent}};
				struct msghdr m = {.msg_iov = iov, .msg_iovlen = 2};
				if (sendmsg(c, &m, MSG_NOSIGNAL) < 0)
					drop_client(i);
			}
			return;
		}
	}
	unsigned char busy = MSG_BUSY;
	send(c, &busy, 1, MSG_NOSIGNAL | MSG_DONTWAIT);
	close(c);
}

/* Input from a client waits here until the workload takes it; while it
 * does, no more input is read, so a workload that does not read cannot
 * make berth-init block or buffer without bound. */
static char pending[16384];
static size_t npending, offpending;

static void flush_input(int in)
{
	while (npending > offpending) {
		ssize_t w = write(in, pending + offpending, npending - offpending);
		if (w < 0) {
			if (errno == EAGAIN || errno == EINTR)
				return;
			npending = 0; /* the workload closed its input */
			break;
		}
		offpending += (size_t)w;
	}
	npending = offpending = 0;
}

/* client_message handles one message from client i; in is the workload's
 * input (pipe or pty master), -1 once closed. It returns the new in. */
static int client_message(int i, int in)
{
	ssize_t n = recv(clients[i], pending, sizeof pending, MSG_DONTWAIT);
	if (n < 0) {
		if (errno != EAGAIN && errno != EINTR)
			drop_client(i);
		return in;
	}
	if (n == 0) {
		drop_client(i);
		return in;
	}
	switch ((unsigned char)pending[0]) {
	case CH_STDIN:
		if (in >= 0 && stdinOpen && n > 1) {
			npending = (size_t)n;
			offpending = 1;
			flush_input(in);
		}
		break;
	case MSG_RESIZE:
		if (tty && n >= 5) {
			unsigned char *b = (unsigned char *)pending + 1;
			struct winsize ws = {.ws_row = (unsigned short)(b[0] | b[1] << 8),
					     .ws_col = (unsigned short)(b[2] | b[3] << 8)};
			ioctl(in, TIOCSWINSZ, &ws);
		}
		break;
	case MSG_CLOSE:
		if (!stdinOpen || in < 0)
			break;
		if (tty) {
			/* A terminal has no end of input, only its EOF character. */
			npending = 2;
			pending[1] = 4;
			offpending = 1;
			flush_input(in);
		} else {
			close(in);
			in = -1;
		}
		stdinOpen = 0;
		break;
	}
	return in;
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

/* The runtime's fast init (runtime/fastinit/fastinit.c): it starts the
 * container's process from a plan the runtime computed, as berth-runtime's
 * C constructor does, and never returns. Weak, so that berth-init builds on
 * its own too (without -P). A glibc static executable spends a third of a
 * millisecond identifying the CPU before main (each CPUID traps to the
 * hypervisor of a VM); hack/build.sh builds berth-init with musl. */
void berth_fastinit_plan(void) __attribute__((weak));

int main(int argc, char **argv)
{
	const char *dir = NULL;
	long uid = -1, gid = -1;
	gid_t groups[MAX_GROUPS];
	int ngroups = -1, opt, ndrop = 0, drop[8], wantStdin = 0;

	if (argc == 2 && strcmp(argv[1], "-U") == 0)
		return holdUserns();
	if (argc == 2 && strcmp(argv[1], "-P") == 0) {
		if (berth_fastinit_plan)
			berth_fastinit_plan();
		/* Said to the runtime waiting on the sync socket (fd 3), as the
		 * fast init says its errors. */
		static const char msg[] = "{\"t\":\"error\",\"e\":\"berth-init was built without the fast init "
					  "(runtime/fastinit/fastinit.c): build it with hack/build.sh\"}";
		if (send(3, msg, sizeof msg - 1, MSG_NOSIGNAL) < 0)
			dprintf(2, "berth-init: built without the fast init\n");
		return 125;
	}
	/* Every signal is blocked before anything else: as PID 1 of its
	 * namespace, berth-init would have a SIGTERM without a handler
	 * discarded, and a stop sent while it sets up would be lost (the
	 * stopper then waits its whole timeout). Blocked, it stays pending
	 * and is forwarded once the workload runs. A client or workload gone
	 * mid-write must not signal anyone: SIGPIPE is ignored here (never
	 * forwarded), and reset for the workload. */
	sigset_t all, old;
	sigfillset(&all);
	sigdelset(&all, SIGPIPE);
	sigprocmask(SIG_SETMASK, &all, &old);
	signal(SIGPIPE, SIG_IGN);
	while ((opt = getopt(argc, argv, "+l:s:n:u:g:G:D:ti")) != -1) {
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
		case 't': tty = 1; break;
		case 'i': wantStdin = 1; break;
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
	if ((tty || wantStdin) && !dir) {
		dprintf(2, "berth-init: -t and -i need -l\n");
		return 125;
	}
	if (maxsize < 4096)
		maxsize = 4096;
	if (nfiles < 1)
		nfiles = 1;

	int out[2] = {-1, -1}, err[2] = {-1, -1}, in[2] = {-1, -1}, master = -1, slave = -1, lfd = -1;
	if (dir) {
		logdir = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (logdir < 0)
			die("open log directory");
		if (tty || wantStdin)
			lfd = listen_attach(dir);
		/* The workload must not see or reach the log directory. */
		umount2(dir, MNT_DETACH);
		open_log();
		if (tty) {
			master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
			if (master < 0 || grantpt(master) < 0 || unlockpt(master) < 0)
				die("open pty");
			/* Opened before the fork: a master whose slave was never
			 * open would not report the end when the workload goes. */
			slave = ioctl(master, TIOCGPTPEER, O_RDWR | O_NOCTTY | O_CLOEXEC);
			if (slave < 0)
				die("open pty slave");
		} else if (pipe2(out, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0) {
			die("pipe");
		}
		if (wantStdin && !tty && pipe2(in, O_CLOEXEC) < 0)
			die("pipe");
		stdinOpen = wantStdin;
	}
	/* Keep same-uid workloads from ptracing us or opening /proc/1/fd. */
	prctl(PR_SET_DUMPABLE, 0);

	int sfd = signalfd(-1, &all, SFD_CLOEXEC | SFD_NONBLOCK);
	if (sfd < 0)
		die("signalfd");

	pid_t child = fork();
	if (child < 0)
		die("fork");
	if (child == 0) {
		/* Whatever berth-init was started with, the workload starts
		 * with every signal at its default (a SIGINT ignored by the
		 * caller would make ^C useless). */
		for (int sig = 1; sig < NSIG; sig++)
			if (sig != SIGKILL && sig != SIGSTOP)
				signal(sig, SIG_DFL);
		sigprocmask(SIG_SETMASK, &old, NULL);
		setsid();
		if (tty) {
			/* After setsid it becomes the workload's controlling
			 * terminal: ^C reaches its foreground process group. */
			if (ioctl(slave, TIOCSCTTY, 0) < 0)
				die("controlling terminal");
			if (dup2(slave, 0) < 0 || dup2(slave, 1) < 0 || dup2(slave, 2) < 0)
				die("dup2");
		} else if (dir) {
			if (dup2(out[1], 1) < 0 || dup2(err[1], 2) < 0)
				die("dup2");
			if (in[0] >= 0) {
				if (dup2(in[0], 0) < 0)
					die("dup2");
			} else {
				int null = open("/dev/null", O_RDONLY);
				if (null >= 0 && null != 0) {
					dup2(null, 0);
					close(null);
				}
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
	/* input is where client input goes: the pty master or the stdin pipe. */
	int input = -1;
	if (tty) {
		close(slave);
		out[0] = master;
		input = master;
	} else if (dir) {
		close(out[1]);
		close(err[1]);
		fcntl(err[0], F_SETFL, O_NONBLOCK);
		if (in[0] >= 0) {
			close(in[0]);
			input = in[1];
			fcntl(input, F_SETFL, O_NONBLOCK);
		}
	}
	if (dir)
		fcntl(out[0], F_SETFL, O_NONBLOCK);

	int code = -1, outOpen = dir != NULL, errOpen = dir != NULL && !tty;
	struct timespec ended = {0, 0}, now;
	for (;;) {
		struct pollfd p[5 + MAX_CLIENTS] = {{sfd, POLLIN, 0}, {outOpen ? out[0] : -1, POLLIN, 0},
						    {errOpen ? err[0] : -1, POLLIN, 0}, {lfd, POLLIN, 0},
						    {npending ? input : -1, POLLOUT, 0}};
		for (int i = 0; i < MAX_CLIENTS; i++)
			p[5 + i] = (struct pollfd){npending ? -1 : clients[i], POLLIN, 0};
		/* Once the workload is gone, drain what its descendants still
		 * write for a moment, then end: PID 1 leaving ends them all. */
		int n = poll(p, 5 + MAX_CLIENTS, code >= 0 ? 100 : -1);
		if (n < 0 && errno != EINTR)
			die("poll");
		if (n == 0)
			break;
		if (p[1].revents && !pump(out[0], "stdout", CH_STDOUT))
			outOpen = 0;
		if (p[2].revents && !pump(err[0], "stderr", CH_STDERR))
			errOpen = 0;
		if (p[3].revents)
			accept_client(lfd);
		if (p[4].revents)
			flush_input(input);
		for (int i = 0; i < MAX_CLIENTS; i++)
			if (p[5 + i].revents && clients[i] >= 0)
				input = client_message(i, input);
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
