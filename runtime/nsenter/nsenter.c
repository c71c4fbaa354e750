// Joins namespaces listed in _BERTH_SETNS before Go starts. Failures are
// reported to the parent over the sync socket (fd 3) in the runtime's JSON
// message form, then the process exits.
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define SYNC_FD 3

static void fail(const char *kind, int err) {
	char msg[256];
	int n = snprintf(msg, sizeof msg, "{\"t\":\"error\",\"e\":\"join %s namespace: %s\"}", kind, strerror(err));
	if (n > 0 && send(SYNC_FD, msg, (size_t)n, MSG_NOSIGNAL) < 0)
		dprintf(2, "berth-runtime: join %s namespace: %s\n", kind, strerror(err));
	_exit(125);
}

static int flag_of(const char *kind) {
	if (strcmp(kind, "user") == 0) return CLONE_NEWUSER;
	if (strcmp(kind, "mnt") == 0) return CLONE_NEWNS;
	if (strcmp(kind, "net") == 0) return CLONE_NEWNET;
	if (strcmp(kind, "uts") == 0) return CLONE_NEWUTS;
	if (strcmp(kind, "ipc") == 0) return CLONE_NEWIPC;
	if (strcmp(kind, "cgroup") == 0) return CLONE_NEWCGROUP;
	if (strcmp(kind, "pid") == 0) return CLONE_NEWPID;
	return -1;
}

void berth_nsenter(void) {
	const char *v = getenv("_BERTH_SETNS");
	if (v == NULL || *v == '\0')
		return;
	char buf[512];
	if (strlen(v) >= sizeof buf)
		fail("(list too long)", E2BIG);
	strcpy(buf, v);
	char *save = NULL;
	for (char *item = strtok_r(buf, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
		char *colon = strchr(item, ':');
		if (colon == NULL)
			fail(item, EINVAL);
		*colon = '\0';
		int flag = flag_of(item);
		if (flag < 0)
			fail(item, EINVAL);
		int fd = atoi(colon + 1);
		if (setns(fd, flag) < 0)
			fail(item, errno);
		close(fd);
	}
	unsetenv("_BERTH_SETNS");
}
