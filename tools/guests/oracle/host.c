/* The host side of an oracle program: run natively, print to stdout. */
#define _GNU_SOURCE
#include <signal.h>
#include <string.h>
#include <ucontext.h>
#include <unistd.h>
#include "oracle.h"

extern const char oracle_idiv64_insn[], oracle_idiv32_insn[], oracle_div64_insn[];

static char buf[1 << 16];
static unsigned len;

void oracle_putc(char c)
{
	if (len == sizeof buf) {
		if (write(1, buf, len) < 0)
			_exit(2);
		len = 0;
	}
	buf[len++] = c;
}

/* #DE in one of div.S's divisions: skip the instruction and clear its "no fault" flag. */
static void sigfpe(int sig, siginfo_t *si, void *ctx)
{
	ucontext_t *uc = ctx;
	greg_t *g = uc->uc_mcontext.gregs;
	const char *rip = (const char *)g[REG_RIP];

	(void)sig; (void)si;
	if (rip == oracle_idiv64_insn || rip == oracle_div64_insn)
		g[REG_RIP] += 3;
	else if (rip == oracle_idiv32_insn)
		g[REG_RIP] += 2;
	else
		_exit(3);
	g[REG_R9] = 0;
}

int main(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof sa);
	sa.sa_sigaction = sigfpe;
	sa.sa_flags = SA_SIGINFO | SA_NODEFER;
	sigaction(SIGFPE, &sa, NULL);
	oracle_main();
	if (len && write(1, buf, len) < 0)
		return 2;
	return 0;
}
