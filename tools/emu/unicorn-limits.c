/*
 * Minimal reproducers of what Unicorn 2.0.1 (Debian 12's libunicorn2) does not do that a VMM
 * needs, each worked around in src/accel/emu/shim.c. Plain API use, no interposition:
 *
 *   gcc -O2 tools/emu/unicorn-limits.c -o /tmp/unicorn-limits -lunicorn -lpthread && /tmp/unicorn-limits
 *
 * Each line: the limitation, and what this library did.
 */
#include <unicorn/unicorn.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec * 1e-9;
}

/* A 64-bit engine with 2 MiB of RAM at 0 and `code` at 0x1000. */
static uc_engine *engine(const uint8_t *code, size_t len, uint8_t **ram)
{
	uc_engine *uc;
	uint8_t *mem = mmap(0, 2 << 20, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);

	if (uc_open(UC_ARCH_X86, UC_MODE_64, &uc) || uc_mem_map_ptr(uc, 0, 2 << 20, UC_PROT_ALL, mem)) {
		fprintf(stderr, "cannot open Unicorn\n");
		exit(1);
	}
	uc_ctl_exits_enable(uc);
	memcpy(mem + 0x1000, code, len);
	if (ram)
		*ram = mem;
	return uc;
}
static uint64_t rd(uc_engine *uc, int r) { uint64_t x = 0; uc_reg_read(uc, r, &x); return x; }
static void wr(uc_engine *uc, int r, uint64_t x) { uc_reg_write(uc, r, &x); }

/* mov ecx, 1000000; mov ebx, 0x8000; L: mov [rbx], rdx (store) or mov rdx, [rbx] (load); dec rcx; jnz L; hlt */
static uint8_t loop[] = { 0xb9, 0x40, 0x42, 0x0f, 0x00, 0xbb, 0, 0x80, 0, 0, 0x48, 0x89, 0x13, 0x48, 0xff, 0xc9, 0x75, 0xf8, 0xf4 };

/* Seconds the store (or load) loop takes, with or without a memory hook far from it. */
static void memhook_cb(uc_engine *uc, uc_mem_type t, uint64_t a, int s, int64_t v, void *u) { (void)uc; (void)t; (void)a; (void)s; (void)v; (void)u; }
static double time_loop(int store, int memhook)
{
	uc_engine *uc;
	uc_hook h;
	double t0;

	loop[11] = store ? 0x89 : 0x8b;
	uc = engine(loop, sizeof loop, NULL);
	if (memhook)
		uc_hook_add(uc, &h, UC_HOOK_MEM_READ, memhook_cb, NULL, 0x10000000, 0x10000fff);
	t0 = now();
	uc_emu_start(uc, 0x1000, 0, 0, 0);
	t0 = now() - t0;
	uc_close(uc);
	return t0;
}

/* 1. Every store takes QEMU's "not dirty" slow path (no dirty tracking in Unicorn 2.0). */
static void stores(void)
{
	printf("1. stores take a slow path: a store loop runs %.0fx slower than the same loop with loads\n", time_loop(1, 0) / time_loop(0, 0));
}

/* 2, 3. RDTSC cannot be hooked, the TSC MSR cannot be written; unknown MSRs raise no #GP. */
static void msrs(void)
{
	uint8_t code[] = { 0x0f, 0x31, 0xf4, 0xb9, 0xef, 0xbe, 0xad, 0xde, 0x0f, 0x32, 0xf4 };	/* rdtsc; hlt; mov ecx,..; rdmsr; hlt */
	uc_engine *uc = engine(code, sizeof code, NULL);
	uc_hook h;
	uc_err e = uc_hook_add(uc, &h, UC_HOOK_INSN, (void *)1, NULL, 1, 0, UC_X86_INS_RDTSC);
	uc_x86_msr m = { 0x10, 1000 };

	uc_reg_write(uc, UC_X86_REG_MSR, &m);
	uc_emu_start(uc, 0x1000, 0, 0, 0);
	uint64_t tsc = rd(uc, UC_X86_REG_RDX) << 32 | (uint32_t)rd(uc, UC_X86_REG_RAX);
	printf("2. RDTSC hook: %s; after writing 1000 to MSR 0x10 the guest reads TSC %" PRIu64 "\n", uc_strerror(e), tsc);
	wr(uc, UC_X86_REG_RAX, 0x1234);
	e = uc_emu_start(uc, 0x1003, 0, 0, 0);
	printf("3. rdmsr of MSR 0xdeadbeef: %s, EAX 0x%" PRIx64 " (no #GP)\n", uc_strerror(e), rd(uc, UC_X86_REG_RAX));
	uc_close(uc);
}

/* 4. Exception hooks get no error code, and QEMU's double-fault bookkeeping is never reset. */
static int intnos[4], nint;
static void on_intr(uc_engine *uc, uint32_t intno, void *user)
{
	(void)user;
	if (nint < 4)
		intnos[nint++] = intno;
	wr(uc, UC_X86_REG_RIP, rd(uc, UC_X86_REG_RIP) + 2);	/* skip the 2-byte div */
}
static void exceptions(void)
{
	/* xor edx,edx; xor ecx,ecx; div ecx; xor edx,edx; div ecx; hlt */
	uint8_t code[] = { 0x31, 0xd2, 0x31, 0xc9, 0xf7, 0xf1, 0x31, 0xd2, 0xf7, 0xf1, 0xf4 };
	uc_engine *uc = engine(code, sizeof code, NULL);
	uc_hook h;

	uc_hook_add(uc, &h, UC_HOOK_INTR, on_intr, NULL, 1, 0);
	uc_emu_start(uc, 0x1000, 0, 0, 0);
	printf("4. two divisions by zero, each skipped by the hook: vectors %d and %d (a #DE, then a #DF)\n", intnos[0], intnos[1]);
	uc_close(uc);
}

/* 5. HLT and uc_emu_stop look the same to the caller. */
static void hlt(void)
{
	uint8_t code[] = { 0xf4 };
	uc_engine *uc = engine(code, sizeof code, NULL);
	uc_err e = uc_emu_start(uc, 0x1000, 0, 0, 0);

	printf("5. hlt: uc_emu_start returns %s with RIP after it, as for a stop request\n", uc_strerror(e));
	uc_close(uc);
}

/* 6. An 8-byte MMIO access reaches the callbacks as two 4-byte ones. */
static int mmio_calls[4], nmmio;
static uint64_t mmio_read(uc_engine *uc, uint64_t off, unsigned size, void *u) { (void)uc; (void)off; (void)u; mmio_calls[nmmio++ & 3] = size; return 0; }
static void mmio_write(uc_engine *uc, uint64_t off, unsigned size, uint64_t v, void *u) { (void)uc; (void)off; (void)v; (void)u; mmio_calls[nmmio++ & 3] = size; }
static void mmio64(void)
{
	uint8_t code[] = { 0x48, 0x8b, 0x04, 0x25, 0x00, 0x00, 0x00, 0x10, 0xf4 };	/* mov rax, [0x10000000]; hlt */
	uc_engine *uc = engine(code, sizeof code, NULL);

	uc_mmio_map(uc, 0x10000000, 0x1000, mmio_read, NULL, mmio_write, NULL);
	uc_emu_start(uc, 0x1000, 0, 0, 0);
	printf("6. an 8-byte MMIO read: %d callbacks, of %d and %d bytes\n", nmmio, mmio_calls[0], mmio_calls[1]);
	uc_close(uc);
}

/* 7, 8. RIP in an I/O hook is a stale block start; a stop makes instructions run again. */
static uint64_t in_rips[4];
static int nouts, nins, stop_once;
static void on_out(uc_engine *uc, uint32_t port, int size, uint32_t value, void *user)
{
	(void)port; (void)size; (void)value; (void)user;
	nouts++;
	if (stop_once) {
		stop_once = 0;
		uc_emu_stop(uc);
	}
}
static uint32_t on_in(uc_engine *uc, uint32_t port, int size, void *user)
{
	(void)port; (void)size; (void)user;
	if (nins < 4)
		in_rips[nins] = rd(uc, UC_X86_REG_RIP);
	nins++;
	return 0x20;
}
static void io(void)
{
	/* 0x1000 mov ecx,3; mov edi,0x8000; L: 0x100a nop; 0x100b in al,dx; test al,0x20; je L;
	 * 0x1010 out dx,al; movzx esi, byte [rdi]; dec ecx; jnz L; hlt */
	uint8_t code[] = { 0xb9, 3, 0, 0, 0, 0xbf, 0, 0x80, 0, 0, 0x90, 0xec, 0xa8, 0x20, 0x74, 0xfa,
			   0xee, 0x0f, 0xb6, 0x37, 0xff, 0xc9, 0x75, 0xf2, 0xf4 };
	uc_hook h;

	for (int pass = 0; pass < 2; pass++) {
		uc_engine *uc = engine(code, sizeof code, NULL);
		uc_hook_add(uc, &h, UC_HOOK_INSN, on_out, NULL, 1, 0, UC_X86_INS_OUT);
		uc_hook_add(uc, &h, UC_HOOK_INSN, on_in, NULL, 1, 0, UC_X86_INS_IN);
		nouts = nins = 0;
		stop_once = pass;
		for (uint64_t rip = 0x1000; rip != 0x1000 + sizeof code;) {
			uc_emu_start(uc, rip, 0, 0, 0);
			rip = rd(uc, UC_X86_REG_RIP);
		}
		if (pass == 0)
			printf("7. RIP seen by the hook of the IN at 0x100b, three times: 0x%" PRIx64 ", 0x%" PRIx64 ", 0x%" PRIx64 "\n", in_rips[0], in_rips[1], in_rips[2]);
		else
			printf("8. uc_emu_stop once, in the OUT hook (a load follows in its block): %d OUTs where the guest executes 3\n", nouts);
		uc_close(uc);
	}
}

/* 9. Any memory hook, whatever its range, makes every guest memory access slow. */
static void memhooks(void)
{
	printf("9. a memory-read hook on a range the loop never touches makes its loads %.1fx slower\n", time_loop(0, 1) / time_loop(0, 0));
}

/* 10. Page tables: faults are walked, but the virtual address is used as the physical one. */
static void paging(void)
{
	uint8_t code[] = { 0x48, 0x8b, 0x04, 0x25, 0x00, 0x00, 0x00, 0x40, 0xf4 };	/* mov rax, [0x40000000]; hlt */
	uint8_t *ram;
	uc_engine *uc = engine(code, sizeof code, &ram);
	uint8_t *high = mmap(0, 2 << 20, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	uint64_t *pml4 = (uint64_t *)(ram + 0x10000), *pdpt = (uint64_t *)(ram + 0x11000), *pd = (uint64_t *)(ram + 0x12000);

	uc_mem_map_ptr(uc, 0x40000000, 2 << 20, UC_PROT_ALL, high);
	pml4[0] = 0x11003;
	pdpt[0] = 0x12003;
	pdpt[1] = 0x12003;		/* 1 GiB -> physical 0 */
	pd[0] = 0x83;
	ram[0] = 0x11;			/* what the guest should read */
	high[0] = 0x22;			/* what physical 1 GiB holds */
	wr(uc, UC_X86_REG_CR4, 0x20);
	wr(uc, UC_X86_REG_CR3, 0x10000);
	wr(uc, UC_X86_REG_CR0, 0x80050033);
	uc_emu_start(uc, 0x1000, 0, 0, 0);
	printf("10. virtual 1 GiB mapped to physical 0 (holding 0x11): the guest reads 0x%" PRIx64 "\n", rd(uc, UC_X86_REG_RAX) & 0xff);
	uc_close(uc);
}

int main(void)
{
	unsigned major, minor;

	uc_version(&major, &minor);
	printf("Unicorn %u.%u\n", major, minor);
	stores();
	msrs();
	exceptions();
	hlt();
	mmio64();
	io();
	memhooks();
	paging();
	return 0;
}
