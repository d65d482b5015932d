/*
 * The address-space keeper (cpr-exec). execve tears down the old image's address space before the
 * new image runs: every page table entry of guest RAM the guest has touched, measured at ~33 ms
 * per GiB on a 2-core EPYC, all inside the blackout. A keeper is a process made with CLONE_VM just
 * before the exec: it shares that address space, so the exec only drops a reference, and the
 * teardown happens when the new image kills the keeper after the guest runs again.
 *
 * It must be C: the child runs on a stack of its own with no runtime, and must not touch the
 * parent's thread-local data (it shares the parent's TLS), so it makes raw system calls only:
 * it closes every fd it inherited (a device must be free to reopen, a client must see its
 * connection close), asks for SIGKILL when the VMM process dies (no keeper outlives it), keeps
 * every other signal blocked (inherited from keeper_start), and waits to be killed.
 */
#define _GNU_SOURCE
#include <sched.h>
#include <signal.h>
#include <errno.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <pthread.h>

static long raw_syscall(long n, long a, long b, long c)
{
	long ret;

	__asm__ volatile ("syscall" : "=a"(ret) : "a"(n), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
	return ret;
}

static char keeper_stack[16384] __attribute__((aligned(16)));
static volatile int keeper_ready;
static int keeper_parent;

static int keep(void *arg)
{
	(void)arg;
	raw_syscall(SYS_close_range, 0, ~0U, 0);
	raw_syscall(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL, 0);
	if (raw_syscall(SYS_getppid, 0, 0, 0) != keeper_parent)	/* the VMM died before the prctl */
		raw_syscall(SYS_exit, 0, 0, 0);
	__atomic_store_n(&keeper_ready, 1, __ATOMIC_RELEASE);
	for (;;)
		raw_syscall(SYS_pause, 0, 0, 0);
	return 0;
}

/* Starts a keeper; returns its pid once it holds no fd, or -errno. Call from the main thread. */
int keeper_start(void)
{
	sigset_t all, old;
	int pid;

	keeper_ready = 0;
	keeper_parent = (int)raw_syscall(SYS_getpid, 0, 0, 0);
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);	/* the child starts with every signal blocked */
	pid = clone(keep, keeper_stack + sizeof keeper_stack, CLONE_VM | SIGCHLD, NULL);
	if (pid < 0)
		pid = -errno;
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (pid < 0)
		return pid;
	while (!__atomic_load_n(&keeper_ready, __ATOMIC_ACQUIRE)) {
		if (waitpid(pid, NULL, WNOHANG) == pid)	/* it exited instead */
			return -ECHILD;
		sched_yield();
	}
	return pid;
}
