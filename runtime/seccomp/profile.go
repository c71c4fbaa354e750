package seccomp

import (
	"runtime"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// DefaultProfile returns Berth's default seccomp profile. In effect it
// matches Docker's default for a container with the default capability set:
// an allow-list of the syscalls ordinary programs use, EPERM for everything
// else, ENOSYS for clone3 (so libcs fall back to clone, whose flags can be
// inspected), clone without namespace flags, and personality limited to the
// harmless personas. Namespace creation, keyrings, mounts, module loading,
// BPF, perf, kexec, reboot, clock setting, ptrace-adjacent kcmp and the like
// stay forbidden. Each call returns a fresh value the caller may modify.
func DefaultProfile() *specs.LinuxSeccomp {
	eperm := uint(1)
	enosys := uint(38)
	names := defaultAllowed()
	names = append(names, archAllowed(runtime.GOARCH)...)
	p := &specs.LinuxSeccomp{
		DefaultAction:   specs.ActErrno,
		DefaultErrnoRet: &eperm,
		Architectures:   archesFor(runtime.GOARCH),
		Syscalls: []specs.LinuxSyscall{
			{Names: names, Action: specs.ActAllow},
			{Names: []string{"clone3"}, Action: specs.ActErrno, ErrnoRet: &enosys},
		},
	}
	// clone's flags are argument 0 everywhere except s390, whose kernel
	// swaps the first two arguments.
	flagsArg := uint(0)
	if runtime.GOARCH == "s390x" {
		flagsArg = 1
	}
	p.Syscalls = append(p.Syscalls, specs.LinuxSyscall{
		Names:  []string{"clone"},
		Action: specs.ActAllow,
		Args:   []specs.LinuxSeccompArg{{Index: flagsArg, Value: cloneNamespaceFlags, ValueTwo: 0, Op: specs.OpMaskedEqual}},
	})
	for _, persona := range allowedPersonalities() {
		p.Syscalls = append(p.Syscalls, specs.LinuxSyscall{
			Names:  []string{"personality"},
			Action: specs.ActAllow,
			Args:   []specs.LinuxSeccompArg{{Index: 0, Value: persona, Op: specs.OpEqualTo}},
		})
	}
	return p
}

// cloneNamespaceFlags are the CLONE_NEW* bits: clone may not create
// namespaces (CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET).
const cloneNamespaceFlags = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000

// allowedPersonalities: PER_LINUX, PER_LINUX32, UNAME26, UNAME26|PER_LINUX32,
// and 0xffffffff, which only queries the current persona.
func allowedPersonalities() []uint64 { return []uint64{0x0, 0x8, 0x20000, 0x20008, 0xffffffff} }

func archesFor(goarch string) []specs.Arch {
	switch goarch {
	case "amd64":
		return []specs.Arch{specs.ArchX86_64, specs.ArchX86, specs.ArchX32}
	case "386":
		return []specs.Arch{specs.ArchX86}
	case "arm64":
		return []specs.Arch{specs.ArchAARCH64, specs.ArchARM}
	case "arm":
		return []specs.Arch{specs.ArchARM}
	case "ppc64le":
		return []specs.Arch{specs.ArchPPC64LE}
	case "s390x":
		return []specs.Arch{specs.ArchS390X, specs.ArchS390}
	case "riscv64":
		return []specs.Arch{specs.ArchRISCV64}
	}
	return nil
}

func archAllowed(goarch string) []string {
	switch goarch {
	case "arm", "arm64":
		return []string{"arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2", "breakpoint", "cacheflush", "set_tls"}
	case "s390x":
		return []string{"s390_pci_mmio_read", "s390_pci_mmio_write", "s390_runtime_instr"}
	case "riscv64":
		return []string{"riscv_flush_icache"}
	}
	return nil
}

// defaultAllowed is grouped by purpose so a reviewer can see what a
// container may do. Names a kernel or libseccomp does not know are skipped at
// compile time, so 32-bit and newer variants can be listed freely.
func defaultAllowed() []string {
	return []string{
		// processes and threads
		"exit", "exit_group", "fork", "vfork", "execve", "execveat", "wait4", "waitid", "waitpid",
		"getpid", "getppid", "gettid", "getpgid", "getpgrp", "getsid", "setpgid", "setsid",
		"set_tid_address", "set_robust_list", "get_robust_list", "rseq", "restart_syscall",
		"arch_prctl", "prctl", "capget", "capset", "get_thread_area", "set_thread_area",
		"pidfd_open", "pidfd_send_signal", "pidfd_getfd", "process_mrelease",
		"ptrace", "process_vm_readv", "process_vm_writev", "chroot",
		// identity
		"getuid", "getuid32", "geteuid", "geteuid32", "getgid", "getgid32", "getegid", "getegid32",
		"getresuid", "getresuid32", "getresgid", "getresgid32", "getgroups", "getgroups32",
		"setuid", "setuid32", "setgid", "setgid32", "setreuid", "setreuid32", "setregid", "setregid32",
		"setresuid", "setresuid32", "setresgid", "setresgid32", "setgroups", "setgroups32",
		"setfsuid", "setfsuid32", "setfsgid", "setfsgid32",
		// signals
		"kill", "tkill", "tgkill", "rt_sigaction", "rt_sigpending", "rt_sigprocmask", "rt_sigqueueinfo",
		"rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait", "rt_sigtimedwait_time64", "rt_tgsigqueueinfo",
		"sigaltstack", "signalfd", "signalfd4", "sigprocmask", "sigreturn", "pause",
		"sigaction", "signal", "sigpending", "sigsuspend", // 32-bit legacy forms
		// memory
		"brk", "mmap", "mmap2", "munmap", "mremap", "mprotect", "madvise", "mincore", "msync",
		"mlock", "mlock2", "mlockall", "munlock", "munlockall", "membarrier", "memfd_create", "memfd_secret",
		"get_mempolicy", "set_mempolicy", "set_mempolicy_home_node", "mbind",
		"remap_file_pages", "pkey_alloc", "pkey_free", "pkey_mprotect", "map_shadow_stack",
		// files and directories
		"open", "openat", "openat2", "creat", "close", "close_range", "read", "readv", "pread64", "preadv", "preadv2",
		"write", "writev", "pwrite64", "pwritev", "pwritev2", "lseek", "_llseek", "dup", "dup2", "dup3",
		"fcntl", "fcntl64", "ioctl", "flock", "fsync", "fdatasync", "sync", "syncfs", "sync_file_range",
		"truncate", "truncate64", "ftruncate", "ftruncate64", "fallocate", "fadvise64", "fadvise64_64", "readahead",
		"stat", "stat64", "lstat", "lstat64", "fstat", "fstat64", "fstatat64", "newfstatat", "statx",
		"statfs", "statfs64", "fstatfs", "fstatfs64", "access", "faccessat", "faccessat2",
		"readdir", "getdents", "getdents64", "getcwd", "chdir", "fchdir", "mkdir", "mkdirat", "mknod", "mknodat",
		"rmdir", "rename", "renameat", "renameat2", "link", "linkat", "unlink", "unlinkat",
		"symlink", "symlinkat", "readlink", "readlinkat", "umask",
		"chmod", "fchmod", "fchmodat", "fchmodat2", "chown", "chown32", "fchown", "fchown32", "fchownat",
		"lchown", "lchown32", "utime", "utimes", "utimensat", "utimensat_time64", "futimesat",
		"getxattr", "lgetxattr", "fgetxattr", "setxattr", "lsetxattr", "fsetxattr",
		"listxattr", "llistxattr", "flistxattr", "removexattr", "lremovexattr", "fremovexattr",
		"sendfile", "sendfile64", "splice", "tee", "vmsplice", "copy_file_range", "cachestat",
		"name_to_handle_at", "pipe", "pipe2", "inotify_init", "inotify_init1", "inotify_add_watch",
		"inotify_rm_watch", "fanotify_mark",
		// polling, events, timers, async I/O
		"select", "_newselect", "pselect6", "pselect6_time64", "poll", "ppoll", "ppoll_time64",
		"epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_wait", "epoll_wait_old",
		"epoll_pwait", "epoll_pwait2", "eventfd", "eventfd2",
		"futex", "futex_time64", "futex_waitv", "futex_wake", "futex_wait", "futex_requeue",
		"nanosleep", "clock_nanosleep", "clock_nanosleep_time64", "clock_gettime", "clock_gettime64",
		"clock_getres", "clock_getres_time64", "gettimeofday",
		// read the clock's tuning; changing it needs CAP_SYS_TIME, which the
		// default capability set lacks
		"adjtimex", "clock_adjtime", "clock_adjtime64", "time", "times", "alarm",
		"getitimer", "setitimer", "timer_create", "timer_delete", "timer_getoverrun", "timer_gettime",
		"timer_gettime64", "timer_settime", "timer_settime64", "timerfd_create", "timerfd_gettime",
		"timerfd_gettime64", "timerfd_settime", "timerfd_settime64",
		"io_setup", "io_destroy", "io_submit", "io_cancel", "io_getevents", "io_pgetevents", "io_pgetevents_time64",
		// scheduling and limits
		"sched_yield", "sched_getaffinity", "sched_setaffinity", "sched_getattr", "sched_setattr",
		"sched_getparam", "sched_setparam", "sched_getscheduler", "sched_setscheduler",
		"sched_get_priority_max", "sched_get_priority_min", "sched_rr_get_interval", "sched_rr_get_interval_time64",
		"getpriority", "setpriority", "ioprio_get", "ioprio_set", "getrlimit", "ugetrlimit", "setrlimit",
		"prlimit64", "getrusage", "getcpu", "sysinfo", "uname", "getrandom", "seccomp",
		"landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self",
		// sockets
		"socket", "socketpair", "socketcall", "bind", "listen", "accept", "accept4", "connect",
		"getsockname", "getpeername", "getsockopt", "setsockopt", "shutdown",
		"send", "sendto", "sendmsg", "sendmmsg", "recv", "recvfrom", "recvmsg", "recvmmsg", "recvmmsg_time64",
		// System V and POSIX IPC (the container has its own IPC namespace)
		"ipc", "msgget", "msgctl", "msgsnd", "msgrcv", "semget", "semctl", "semop", "semtimedop",
		"semtimedop_time64", "shmget", "shmctl", "shmat", "shmdt",
		"mq_open", "mq_unlink", "mq_getsetattr", "mq_notify", "mq_timedreceive", "mq_timedreceive_time64",
		"mq_timedsend", "mq_timedsend_time64",
	}
}
