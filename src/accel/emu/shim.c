// The emu accelerator's C shim over Unicorn (QEMU's TCG as a library).
//
// Why C: Unicorn calls its hooks synchronously on the thread that emulates, and an IN hook must
// return the value read. ffi-rs runs JavaScript callbacks asynchronously, so the hooks live here.
// The platform (LAPIC, IOAPIC, PIC, PIT, IDT delivery) stays in TypeScript; this file only runs
// the CPU and reports exits, with the same contract as KVM_RUN:
//
//   - every vCPU has its own emulator thread running uc_emu_start;
//   - emu_run() (called through ffi-rs on a libuv pool thread) lets that thread go on and returns
//     when there is an exit, described in `struct emu_shared`, which TypeScript reads through a
//     Buffer over this memory; a hook that needs an answer (port IN, MMIO read) waits until the
//     next emu_run(), which brings it in `data`;
//   - while the guest runs, emu_run() polls the bound irqfds, a wake eventfd and the platform's
//     timer deadline; any of them stops the guest at the next translated block (uc_emu_stop) and
//     is reported as an EVENT exit; a halted guest waits here, burning no CPU.
//
// Unicorn 2.0.1 (Debian 12) cannot do some things a VMM needs through its API. Each has a minimal
// reproducer in tools/emu/unicorn-limits.c (numbered as here) and is worked around below, most by
// interposing one of libunicorn's exported internal functions (the shim is loaded ahead of it,
// so the dynamic linker binds libunicorn's own references to the definitions here):
//   1. every guest store takes QEMU's slow "not dirty" path (no dirty tracking): 15-40x slower.
//      tlb_set_page_with_attrs / tlb_protect_code: TLB entries of pages without translated code
//      are marked dirty (fast stores); a page that gets code is protected again, so
//      self-modifying code is still caught.
//   2. RDTSC cannot be hooked and the TSC MSR cannot be written: helper_rdtsc(p) and the TSC MSR
//      return host TSC + a per-vCPU offset (continuous, settable, saved and restored).
//   3. RDMSR/WRMSR of an unknown MSR do nothing: helper_rdmsr/wrmsr raise #GP for them.
//   4. exception hooks get no error code, and as QEMU's own delivery never runs its double-fault
//      bookkeeping is never reset (a second #DE arrives as #DF, the next stops the CPU as a
//      triple fault): raise_exception* / raise_interrupt record the real vector, error code and
//      software-interrupt length before QEMU sees them.
//   5. HLT is indistinguishable from a stopped emulation: helper_hlt records it.
//   6. an 8-byte MMIO access reaches the callbacks as two 4-byte ones:
//      memory_region_dispatch_read/write see the whole access first.
//   7. RIP in I/O and MMIO hooks is wherever the translated code last synced it (a block start,
//      often an earlier block's): the I/O and softmmu helpers record their return address into
//      translated code, from which QEMU's cpu_restore_state recovers the exact instruction.
//   8. a stop request is acted on after the next memory access, leaving RIP at the block's start:
//      instructions already done run again (from another thread, or in a hook). Stops are only
//      requested at the start of a block, from a block hook (hook_block).
//   9. any memory hook, whatever its range, slows every guest memory access: MMIO goes through
//      uc_mmio_map callbacks only.
//  10. page tables are walked for faults but the virtual address is used as the physical one:
//      with 2.0 only identity-mapped guests run (check_paging stops the others); with 2.1,
//      UC_TLB_CPU translates.
// emu_init() checks that the interposition took effect; if not (another Unicorn build), the
// accelerator is unavailable rather than wrong.
#define _GNU_SOURCE
#include <unicorn/unicorn.h>
#include <dlfcn.h>
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>
#include <x86intrin.h>

#define EXPORT __attribute__((visibility("default")))

// ---- the shared exit record (layout mirrored in shim.ts; emu_layout() lets it check) ----

enum exit_kind {
	EXIT_NONE, EXIT_IO, EXIT_MMIO, EXIT_EVENT, EXIT_WINDOW, EXIT_EXCEPTION, EXIT_INTERRUPTED,
	EXIT_FATAL, EXIT_HALT /* internal: emu_run waits for an event instead */
};
enum exc_flags { EXC_SOFT = 1, EXC_ERROR_CODE = 2 };

struct emu_shared {
	/* exit: written by the shim */
	uint32_t kind;		/*   0 */
	uint32_t size;		/*   4: io/mmio access size in bytes */
	uint32_t write;		/*   8 */
	uint32_t flags;		/*  12: exc_flags; for io/mmio 1 = rip is exact */
	uint64_t addr;		/*  16: port or guest-physical address */
	uint8_t data[8];	/*  24: value written, or the answer to a read (written by TS) */
	uint64_t rip;		/*  32 */
	uint32_t vector;	/*  40: exception vector */
	uint32_t error_code;	/*  44 */
	uint64_t cr2;		/*  48 */
	uint32_t insn_len;	/*  56: software interrupt instruction length */
	uint32_t uc_error;	/*  60 */
	uint32_t gsi_edges;	/*  64: GSIs whose irqfd fired since TS last cleared this */
	uint32_t halted;	/*  68: in HLT; TS clears it when it delivers an interrupt */
	uint8_t insn[16];	/*  72: instruction bytes at rip (fatal exits) */
	char message[128];	/*  88: detail of a fatal exit */
	/* control: written by TS */
	uint32_t immediate_exit;	/* 216 */
	uint32_t irq_pending;	/* 220: the platform has an interrupt to deliver once IF allows */
	uint64_t deadline_ns;	/* 224: CLOCK_MONOTONIC of the next platform timer event, 0 = none */
	uint32_t timer_fired;	/* 232: set by the shim when the deadline passed; TS clears it */
	uint32_t pad;		/* 236 */
};				/* 240 */

// ---- the register block of emu_get_regs/emu_set_regs (layout mirrored in shim.ts) ----

struct dtab { uint64_t base; uint32_t limit; uint32_t pad; };
struct sysseg { uint64_t base; uint32_t limit; uint32_t flags; uint16_t selector; uint16_t pad[3]; };
struct emu_regs {
	uint64_t gpr[18];	/*   0: rax rbx rcx rdx rsi rdi rsp rbp r8..r15 rip rflags */
	uint64_t cr0, cr2, cr3, cr4, cr8, efer;	/* 144 */
	uint64_t fs_base, gs_base, kernel_gs_base;	/* 192 */
	uint16_t sel[6];	/* 216: cs ds es fs gs ss */
	uint16_t pad0[2];	/* 228 */
	struct dtab gdt, idt;	/* 232 */
	struct sysseg tr, ldt;	/* 264 */
	uint64_t apic_base;	/* 312 */
	uint64_t tsc;		/* 320 */
	uint16_t fcw, fsw, ftw, fop;	/* 328: ftw abridged (FXSAVE) */
	uint32_t mxcsr, pad1;	/* 336 */
	uint64_t fip, fdp;	/* 344 */
	uint8_t st[8][16];	/* 360 */
	uint8_t xmm[16][16];	/* 488 */
	uint64_t msr[9];	/* 744: star lstar cstar sfmask sysenter_cs/esp/eip pat tsc_aux */
};				/* 816 */
enum { REGS_GPR = 1, REGS_SYS = 2, REGS_FPU = 4, REGS_MSR = 8, REGS_TSC = 16 };
static const uint32_t state_msrs[9] = {
	0xc0000081, 0xc0000082, 0xc0000083, 0xc0000084, 0x174, 0x175, 0x176, 0x277, 0xc0000103,
};

// ---- the vCPU ----

/* RUNNING: the emulator thread may run guest code; POSTED: it waits (at an instruction
 * boundary, or inside a hook for an answer) for the next emu_run(). */
enum vstate { VS_RUNNING = 1, VS_POSTED };
enum { KICK_EVENT = 1, KICK_SLICE = 2 };
#define MAX_REGIONS 4
#define MAX_FDS 64
#define RFLAGS_IF 0x200ULL
#define SLICE_NS 10000000LL		/* 10 ms: paging checks (emu_set_slice changes it) */
#define WINDOW_SLICE_NS 1000000LL	/* 1 ms: an interrupt waits for IF */

struct region { uint64_t gpa, size; uint8_t *host; uint64_t ram_base; uint8_t *code; };
struct mmio_region { struct vcpu *v; uint64_t gpa, size; };
struct ioevent { int fd; uint64_t addr; uint32_t len; int pio, has_match; uint64_t match; };
struct irqfd { int fd; uint32_t gsi; };

struct vcpu {
	uc_engine *uc;
	struct emu_shared *sh;
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	_Atomic int state;	/* enum vstate */
	_Atomic int poller_waiting;	/* emu_run sleeps in poll(): an exit must write exit_efd */
	int in_hook;		/* the posted exit waits inside a hook for its answer */
	int runners;		/* emu_run calls in progress (emu_vcpu_destroy waits for them) */
	int quit;
	int exit_efd, wake_efd;
	_Atomic int kick;
	int64_t slice_start;	/* the last slice kick: slices span emu_run calls (exits are frequent) */
	int64_t slice_ns;
	/* recorded by the interposed functions, on the emulator thread */
	int exc_vector, exc_error, exc_flags, exc_len;
	int hlt;
	uint64_t tsc_offset, apic_base;
	void *cpu;		/* QEMU's CPUState, for the TLB calls */
	/* memory */
	struct region ram[MAX_REGIONS];
	int nram;
	struct mmio_region mmio[MAX_REGIONS];
	int nmmio;
	uint64_t unmapped_addr;
	int unmapped_type;
	/* eventfds */
	pthread_mutex_t tables;
	struct irqfd irqfds[MAX_FDS];
	int nirqfd;
	struct ioevent ioev[MAX_FDS];
	int nioev;
	/* paging check (Unicorn < 2.1 only translates identity mappings) */
	int tlb_cpu;
	uint64_t checked_cr3;
	/* instruction counting (benchmarks) */
	int counting;
	uint64_t icount;
	struct block_count *counts;
};

static __thread struct vcpu *cur;	/* the vCPU this emulator thread runs */
/* The return address into translated code of the I/O or memory helper running now. */
static __thread uintptr_t tls_ra;
/* An MMIO access seen whole by memory_region_dispatch_*, before QEMU splits it. */
static __thread struct { int active, done; uint64_t addr, value; unsigned size; } mmio_tls;

static char last_error[256];
EXPORT const char *emu_last_error(void) { return last_error; }
static void set_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void set_error(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(last_error, sizeof last_error, fmt, ap);
	va_end(ap);
}

static int64_t now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static uint64_t reg(struct vcpu *v, int id)
{
	uint64_t x = 0;
	uc_reg_read(v->uc, id, &x);
	return x;
}
static void set_reg(struct vcpu *v, int id, uint64_t x) { uc_reg_write(v->uc, id, &x); }
static uint64_t guest_tsc(struct vcpu *v) { return __rdtsc() + v->tsc_offset; }

// ---- libunicorn's internal functions we interpose (see the top of the file) ----

static void *unicorn_lib;
static void (*orig_rdtsc)(void *env);
static void (*orig_rdtscp)(void *env);
static void (*orig_rdmsr)(void *env);
static void (*orig_wrmsr)(void *env);
static void (*orig_hlt)(void *env, int next_eip_addend);
static void (*orig_raise_interrupt)(void *env, int intno, int is_int, int error_code, int next_eip_addend);
static void (*orig_raise_exception)(void *env, int intno);
static void (*orig_raise_exception_ra)(void *env, int intno, uintptr_t ra);
static void (*orig_raise_exception_err)(void *env, int intno, int error_code);
static void (*orig_raise_exception_err_ra)(void *env, int intno, int error_code, uintptr_t ra);
static void (*orig_tlb_set_page)(void *cpu, uint64_t vaddr, uint64_t paddr, uint32_t attrs, int prot, int mmu_idx, uint64_t size);
static void (*orig_tlb_protect_code)(void *uc, uint64_t ram_addr);
static int (*orig_dispatch_read)(void *uc, void *mr, uint64_t addr, uint64_t *pval, uint32_t op, uint32_t attrs);
static int (*orig_dispatch_write)(void *uc, void *mr, uint64_t addr, uint64_t data, uint32_t op, uint32_t attrs);
static void (*tlb_set_dirty_fn)(void *cpu, uint64_t vaddr);
static void (*tlb_reset_dirty_fn)(void *cpu, uint64_t host_start, uint64_t length);
static uint64_t (*ram_addr_from_host_fn)(void *uc, void *host);
static bool (*cpu_restore_state_fn)(void *cpu, uintptr_t host_pc, bool will_exit);
/* Set when our definitions are the ones libunicorn calls. */
static _Atomic unsigned seen;
enum { SEEN_RDTSC = 1, SEEN_MSR = 2, SEEN_HLT = 4, SEEN_RAISE = 8, SEEN_TLB = 16 };

static void capture(int vector, int error, int flags, int len)
{
	struct vcpu *v = cur;
	atomic_fetch_or(&seen, SEEN_RAISE);
	if (!v || v->exc_vector >= 0)
		return;		/* the first one is the one the guest sees */
	v->exc_vector = vector;
	v->exc_error = error;
	v->exc_flags = flags;
	v->exc_len = len;
}

EXPORT __attribute__((noreturn)) void raise_interrupt_x86_64(void *env, int intno, int is_int, int error_code, int next_eip_addend)
{
	capture(intno, error_code, is_int ? EXC_SOFT : EXC_ERROR_CODE, next_eip_addend);
	orig_raise_interrupt(env, intno, is_int, error_code, next_eip_addend);
	__builtin_unreachable();
}
EXPORT __attribute__((noreturn)) void raise_exception_x86_64(void *env, int intno)
{
	capture(intno, 0, 0, 0);
	orig_raise_exception(env, intno);
	__builtin_unreachable();
}
EXPORT __attribute__((noreturn)) void raise_exception_ra_x86_64(void *env, int intno, uintptr_t ra)
{
	capture(intno, 0, 0, 0);
	orig_raise_exception_ra(env, intno, ra);
	__builtin_unreachable();
}
EXPORT __attribute__((noreturn)) void raise_exception_err_x86_64(void *env, int intno, int error_code)
{
	capture(intno, error_code, EXC_ERROR_CODE, 0);
	orig_raise_exception_err(env, intno, error_code);
	__builtin_unreachable();
}
EXPORT __attribute__((noreturn)) void raise_exception_err_ra_x86_64(void *env, int intno, int error_code, uintptr_t ra)
{
	capture(intno, error_code, EXC_ERROR_CODE, 0);
	orig_raise_exception_err_ra(env, intno, error_code, ra);
	__builtin_unreachable();
}

EXPORT void helper_hlt_x86_64(void *env, int next_eip_addend)
{
	atomic_fetch_or(&seen, SEEN_HLT);
	if (cur)
		cur->hlt = 1;
	orig_hlt(env, next_eip_addend);
}

static void set_edx_eax(struct vcpu *v, uint64_t x)
{
	set_reg(v, UC_X86_REG_RAX, (uint32_t)x);
	set_reg(v, UC_X86_REG_RDX, x >> 32);
}

EXPORT void helper_rdtsc_x86_64(void *env)
{
	atomic_fetch_or(&seen, SEEN_RDTSC);
	if (!cur) {
		orig_rdtsc(env);
		return;
	}
	set_edx_eax(cur, guest_tsc(cur));
}

EXPORT void helper_rdtscp_x86_64(void *env)
{
	orig_rdtscp(env);	/* ECX = TSC_AUX */
	if (cur)
		set_edx_eax(cur, guest_tsc(cur));
}

/* MSRs QEMU's TCG implements (target/i386/misc_helper.c), besides TSC and APIC_BASE (ours). */
static int msr_known(uint32_t i)
{
	switch (i) {
	case 0x174: case 0x175: case 0x176:			/* SYSENTER_CS/ESP/EIP */
	case 0x179: case 0x17a: case 0x17b:			/* MCG_CAP/STATUS/CTL */
	case 0x1a0:						/* MISC_ENABLE */
	case 0x277:						/* PAT */
	case 0xfe: case 0x2ff: case 0x250: case 0x258: case 0x259:	/* MTRRs */
	case 0xc0000080: case 0xc0000081: case 0xc0000082: case 0xc0000083: case 0xc0000084:
	case 0xc0000100: case 0xc0000101: case 0xc0000102: case 0xc0000103:
		return 1;
	}
	return (i >= 0x200 && i <= 0x20f) || (i >= 0x268 && i <= 0x26f) || (i >= 0x400 && i < 0x428);
}

/* #GP(0) at the RDMSR/WRMSR: `ra` is the return address into the translated block. */
static __attribute__((noreturn)) void raise_gp(void *env, uintptr_t ra)
{
	raise_exception_err_ra_x86_64(env, 13, 0, ra);
}

EXPORT __attribute__((noinline)) void helper_rdmsr_x86_64(void *env)
{
	struct vcpu *v = cur;
	uint32_t i;

	atomic_fetch_or(&seen, SEEN_MSR);
	if (!v) {
		orig_rdmsr(env);
		return;
	}
	i = (uint32_t)reg(v, UC_X86_REG_RCX);
	if (i == 0x10)
		set_edx_eax(v, guest_tsc(v));
	else if (i == 0x1b)
		set_edx_eax(v, v->apic_base);
	else if (msr_known(i))
		orig_rdmsr(env);
	else
		raise_gp(env, (uintptr_t)__builtin_return_address(0));
}

EXPORT __attribute__((noinline)) void helper_wrmsr_x86_64(void *env)
{
	struct vcpu *v = cur;
	uint32_t i;
	uint64_t x;

	atomic_fetch_or(&seen, SEEN_MSR);
	if (!v) {
		orig_wrmsr(env);
		return;
	}
	i = (uint32_t)reg(v, UC_X86_REG_RCX);
	x = (uint32_t)reg(v, UC_X86_REG_RAX) | reg(v, UC_X86_REG_RDX) << 32;
	if (i == 0x10)
		v->tsc_offset = x - __rdtsc();
	else if (i == 0x1b)
		v->apic_base = x;
	else if (msr_known(i))
		orig_wrmsr(env);
	else
		raise_gp(env, (uintptr_t)__builtin_return_address(0));
}

/* The RAM region holding guest-physical `gpa`, or NULL. */
static struct region *ram_at(struct vcpu *v, uint64_t gpa)
{
	for (int i = 0; i < v->nram; i++)
		if (gpa - v->ram[i].gpa < v->ram[i].size)
			return &v->ram[i];
	return NULL;
}

#define PAGE_WRITE 2
EXPORT void tlb_set_page_with_attrs_x86_64(void *cpu, uint64_t vaddr, uint64_t paddr, uint32_t attrs, int prot, int mmu_idx, uint64_t size)
{
	struct vcpu *v = cur;
	struct region *r;

	orig_tlb_set_page(cpu, vaddr, paddr, attrs, prot, mmu_idx, size);
	atomic_fetch_or(&seen, SEEN_TLB);
	if (!v)
		return;
	v->cpu = cpu;
	r = ram_at(v, paddr);
	if ((prot & PAGE_WRITE) && r) {
		uint64_t page = (paddr - r->gpa) >> 12;
		if (!(r->code[page >> 3] & (1 << (page & 7))))
			tlb_set_dirty_fn(cpu, vaddr);	/* no translated code there: stores go fast */
	}
}

EXPORT void tlb_protect_code_x86_64(void *uc, uint64_t ram_addr)
{
	struct vcpu *v = cur;

	orig_tlb_protect_code(uc, ram_addr);
	if (!v)
		return;
	for (int i = 0; i < v->nram; i++) {
		struct region *r = &v->ram[i];
		if (ram_addr - r->ram_base < r->size) {
			uint64_t page = (ram_addr - r->ram_base) >> 12;
			if (!(r->code[page >> 3] & (1 << (page & 7)))) {
				r->code[page >> 3] |= 1 << (page & 7);
				/* Entries made fast before this page held code: slow again, so stores
				 * to it invalidate the translations. */
				if (v->cpu)
					tlb_reset_dirty_fn(v->cpu, (uint64_t)(uintptr_t)(r->host + (page << 12)), 4096);
			}
			return;
		}
	}
}

/* Port I/O and softmmu slow-path helpers, wrapped to record where in translated code they were
 * called from (QEMU's GETPC()): hooks below them can then tell the exact guest RIP. */
#define WRAP_IN(name) \
	static uint64_t (*orig_##name)(void *env, uint32_t port); \
	EXPORT __attribute__((noinline)) uint64_t name(void *env, uint32_t port) \
	{ \
		uintptr_t saved = tls_ra; \
		tls_ra = (uintptr_t)__builtin_return_address(0); \
		uint64_t x = orig_##name(env, port); \
		tls_ra = saved; \
		return x; \
	}
#define WRAP_OUT(name) \
	static void (*orig_##name)(void *env, uint32_t port, uint32_t data); \
	EXPORT __attribute__((noinline)) void name(void *env, uint32_t port, uint32_t data) \
	{ \
		uintptr_t saved = tls_ra; \
		tls_ra = (uintptr_t)__builtin_return_address(0); \
		orig_##name(env, port, data); \
		tls_ra = saved; \
	}
#define WRAP_LD(name) \
	static uint64_t (*orig_##name)(void *env, uint64_t addr, uint32_t oi, uintptr_t ra); \
	EXPORT uint64_t name(void *env, uint64_t addr, uint32_t oi, uintptr_t ra) \
	{ \
		uintptr_t saved = tls_ra; \
		tls_ra = ra; \
		uint64_t x = orig_##name(env, addr, oi, ra); \
		tls_ra = saved; \
		return x; \
	}
#define WRAP_ST(name, type) \
	static void (*orig_##name)(void *env, uint64_t addr, type val, uint32_t oi, uintptr_t ra); \
	EXPORT void name(void *env, uint64_t addr, type val, uint32_t oi, uintptr_t ra) \
	{ \
		uintptr_t saved = tls_ra; \
		tls_ra = ra; \
		orig_##name(env, addr, val, oi, ra); \
		tls_ra = saved; \
	}
WRAP_IN(helper_inb_x86_64)
WRAP_IN(helper_inw_x86_64)
WRAP_IN(helper_inl_x86_64)
WRAP_OUT(helper_outb_x86_64)
WRAP_OUT(helper_outw_x86_64)
WRAP_OUT(helper_outl_x86_64)
WRAP_LD(helper_ret_ldub_mmu_x86_64)
WRAP_LD(helper_le_lduw_mmu_x86_64)
WRAP_LD(helper_le_ldul_mmu_x86_64)
WRAP_LD(helper_le_ldq_mmu_x86_64)
WRAP_ST(helper_ret_stb_mmu_x86_64, uint8_t)
WRAP_ST(helper_le_stw_mmu_x86_64, uint16_t)
WRAP_ST(helper_le_stl_mmu_x86_64, uint32_t)
WRAP_ST(helper_le_stq_mmu_x86_64, uint64_t)

EXPORT int memory_region_dispatch_read_x86_64(void *uc, void *mr, uint64_t addr, uint64_t *pval, uint32_t op, uint32_t attrs)
{
	int r;

	mmio_tls.active = 1;
	mmio_tls.done = 0;
	mmio_tls.addr = addr;
	mmio_tls.size = 1u << (op & 3);
	r = orig_dispatch_read(uc, mr, addr, pval, op, attrs);
	mmio_tls.active = 0;
	return r;
}

EXPORT int memory_region_dispatch_write_x86_64(void *uc, void *mr, uint64_t addr, uint64_t data, uint32_t op, uint32_t attrs)
{
	int r;

	mmio_tls.active = 1;
	mmio_tls.done = 0;
	mmio_tls.addr = addr;
	mmio_tls.size = 1u << (op & 3);
	mmio_tls.value = data;
	r = orig_dispatch_write(uc, mr, addr, data, op, attrs);
	mmio_tls.active = 0;
	return r;
}

// ---- exits ----

/* Posts an exit (record already filled) and waits until emu_run() lets the vCPU go on. */
static void post_and_wait(struct vcpu *v, enum exit_kind kind, int in_hook)
{
	uint64_t one = 1;

	v->sh->kind = kind;
	v->in_hook = in_hook;
	atomic_store(&v->state, VS_POSTED);
	if (atomic_load(&v->poller_waiting) && write(v->exit_efd, &one, 8) != 8)
		abort();
	pthread_mutex_lock(&v->lock);
	while (atomic_load(&v->state) != VS_RUNNING && !v->quit)
		pthread_cond_wait(&v->cond, &v->lock);
	pthread_mutex_unlock(&v->lock);
}

/* Reads guest-virtual memory (for instruction bytes): walks the page tables when paging is on. */
static int read_virt(struct vcpu *v, uint64_t va, uint8_t *buf, size_t len)
{
	if (uc_mem_read(v->uc, va, buf, len) == UC_ERR_OK)
		return 0;
	memset(buf, 0, len);
	return -1;
}

/* The exact RIP inside a hook (limit 7): QEMU recovers the instruction from the host return
 * address into the translated block, recorded by the helper wrappers. */
static uint64_t exact_rip(struct vcpu *v, int *exact)
{
	*exact = 0;
	if (tls_ra && v->cpu && cpu_restore_state_fn(v->cpu, tls_ra, false))
		*exact = 1;
	return reg(v, UC_X86_REG_RIP);
}

static uint32_t hook_in(uc_engine *uc, uint32_t port, int size, void *user)
{
	struct vcpu *v = user;
	struct emu_shared *sh = v->sh;
	int exact;
	uint32_t x;

	(void)uc;
	sh->addr = port;
	sh->size = size;
	sh->write = 0;
	memset(sh->data, 0, 8);
	sh->rip = exact_rip(v, &exact);
	sh->flags = exact;
	post_and_wait(v, EXIT_IO, 1);
	memcpy(&x, sh->data, 4);
	return size == 4 ? x : x & ((1u << (size * 8)) - 1);
}

/* A guest write that an ioeventfd takes: signal it, no exit (as KVM_IOEVENTFD). */
static int ioeventfd_take(struct vcpu *v, int pio, uint64_t addr, unsigned len, uint64_t value)
{
	int hit = 0;

	pthread_mutex_lock(&v->tables);
	for (int i = 0; i < v->nioev && !hit; i++) {
		struct ioevent *e = &v->ioev[i];
		if (e->pio == pio && e->addr == addr && (e->len == 0 || e->len == len) &&
		    (!e->has_match || e->match == value)) {
			uint64_t one = 1;
			hit = write(e->fd, &one, 8) == 8;
		}
	}
	pthread_mutex_unlock(&v->tables);
	return hit;
}

static void hook_out(uc_engine *uc, uint32_t port, int size, uint32_t value, void *user)
{
	struct vcpu *v = user;
	struct emu_shared *sh = v->sh;
	int exact;

	(void)uc;
	if (ioeventfd_take(v, 1, port, size, value))
		return;
	sh->addr = port;
	sh->size = size;
	sh->write = 1;
	memset(sh->data, 0, 8);
	memcpy(sh->data, &value, 4);
	sh->rip = exact_rip(v, &exact);
	sh->flags = exact;
	post_and_wait(v, EXIT_IO, 1);
}

/* One MMIO access, whole: an exit (or an ioeventfd); returns the value read. */
static uint64_t mmio_access(struct vcpu *v, uint64_t gpa, unsigned size, int write, uint64_t value)
{
	struct emu_shared *sh = v->sh;
	uint64_t x = 0;
	int exact;

	if (write && ioeventfd_take(v, 0, gpa, size, value))
		return 0;
	sh->addr = gpa;
	sh->size = size;
	sh->write = write;
	memcpy(sh->data, &value, 8);
	if (!write)
		memset(sh->data, 0, 8);
	sh->rip = exact_rip(v, &exact);
	sh->flags = exact;
	post_and_wait(v, EXIT_MMIO, 1);
	memcpy(&x, sh->data, 8);
	return x;
}

/* Unicorn's MMIO callbacks. mmio_tls holds the whole access when QEMU splits it. */
static uint64_t hook_mmio_read(uc_engine *uc, uint64_t offset, unsigned size, void *user)
{
	struct mmio_region *r = user;
	unsigned shift;

	(void)uc;
	if (!mmio_tls.active || offset < mmio_tls.addr || offset + size > mmio_tls.addr + mmio_tls.size)
		return mmio_access(r->v, r->gpa + offset, size, 0, 0);
	if (!mmio_tls.done) {
		mmio_tls.value = mmio_access(r->v, r->gpa + mmio_tls.addr, mmio_tls.size, 0, 0);
		mmio_tls.done = 1;
	}
	shift = (unsigned)(offset - mmio_tls.addr) * 8;
	return size == 8 ? mmio_tls.value : (mmio_tls.value >> shift) & ((1ULL << (size * 8)) - 1);
}

static void hook_mmio_write(uc_engine *uc, uint64_t offset, unsigned size, uint64_t value, void *user)
{
	struct mmio_region *r = user;

	(void)uc;
	if (!mmio_tls.active || offset < mmio_tls.addr || offset + size > mmio_tls.addr + mmio_tls.size) {
		mmio_access(r->v, r->gpa + offset, size, 1, value);
		return;
	}
	if (!mmio_tls.done) {
		mmio_access(r->v, r->gpa + mmio_tls.addr, mmio_tls.size, 1, mmio_tls.value);
		mmio_tls.done = 1;
	}
}

/* Every exception stops the emulation; the vector was recorded by the raise_* functions. */
static void hook_intr(uc_engine *uc, uint32_t intno, void *user)
{
	struct vcpu *v = user;

	if (v->exc_vector < 0) {	/* not seen by the interposers (should not happen) */
		v->exc_vector = (int)intno;
		v->exc_error = 0;
		v->exc_flags = 0;
		v->exc_len = 0;
	}
	uc_emu_stop(uc);
}

static bool hook_unmapped(uc_engine *uc, uc_mem_type type, uint64_t address, int size, int64_t value, void *user)
{
	struct vcpu *v = user;

	(void)uc; (void)size; (void)value;
	v->unmapped_addr = address;
	v->unmapped_type = type;
	return false;
}

/*
 * Instruction counting for benchmarks: each block executed adds its instruction count, which
 * Unicorn reports per translated block (cached here by address). A per-instruction code hook
 * would count exactly but changes how Unicorn leaves blocks; blocks run whole here (no guest
 * exceptions in the benchmarks), so the count is the guest's.
 */
#define COUNT_CACHE 65536
struct block_count { uint64_t pc; uint32_t icount; };
static void count_block(struct vcpu *v, uint64_t pc)
{
	struct block_count *c = &v->counts[(pc ^ (pc >> 16)) & (COUNT_CACHE - 1)];

	if (c->pc != pc || !c->icount) {
		uc_tb tb;
		if (uc_ctl_request_cache(v->uc, pc, &tb) != UC_ERR_OK)
			return;
		c->pc = pc;
		c->icount = tb.icount;
	}
	v->icount += c->icount;
}

/*
 * Stopping a running guest (limit 8): Unicorn acts on a stop request after the next memory access
 * and leaves the translated block with RIP at its start, so the instructions already done run
 * again (an OUT printed twice). Only a stop requested at a block's start, before any of its
 * instructions ran, is exact: every block checks here whether it was asked to stop.
 */
static void hook_block(uc_engine *uc, uint64_t address, uint32_t size, void *user)
{
	struct vcpu *v = user;

	(void)size;
	if (atomic_load_explicit(&v->kick, memory_order_relaxed) || v->sh->immediate_exit)
		uc_emu_stop(uc);
	else if (v->counting)
		count_block(v, address);
}

// ---- the paging restriction of Unicorn < 2.1 ----

static const uint8_t *phys(struct vcpu *v, uint64_t gpa, uint64_t len)
{
	struct region *r = ram_at(v, gpa);
	return r && gpa + len <= r->gpa + r->size ? r->host + (gpa - r->gpa) : NULL;
}

/* 0 if every present mapping under the table at `table` (level 4: the PML4) is the identity,
 * -1 if one is not, -2 if a table is not in RAM. */
static int identity_table(struct vcpu *v, uint64_t table, int level, uint64_t va)
{
	const uint64_t mask = 0x000ffffffffff000ULL;
	const uint64_t *t = (const uint64_t *)phys(v, table & mask, 4096);
	int shift = 12 + 9 * (level - 1);

	if (!t)
		return -2;
	for (int i = 0; i < 512; i++) {
		uint64_t e = t[i], a = va | (uint64_t)i << shift;
		if (!(e & 1))
			continue;
		if (level == 1 || (level <= 3 && (e & 0x80))) {	/* a 4 KiB, 2 MiB or 1 GiB page */
			if ((e & mask & ~((1ULL << shift) - 1)) != a)
				return -1;
		} else {
			int r = identity_table(v, e, level - 1, a);
			if (r)
				return r;
		}
	}
	return 0;
}

/* Returns NULL, or why the guest's page tables cannot run on this Unicorn. */
static const char *check_paging(struct vcpu *v)
{
	static __thread char why[128];
	uint64_t cr0 = reg(v, UC_X86_REG_CR0), cr3 = reg(v, UC_X86_REG_CR3);
	int r;

	if (v->tlb_cpu || !(cr0 & 0x80000000ULL) || cr3 == v->checked_cr3)
		return NULL;
	r = identity_table(v, cr3, 4, 0);
	if (r == 0) {
		v->checked_cr3 = cr3;
		return NULL;
	}
	snprintf(why, sizeof why, r == -1 ? "the guest maps virtual memory away from identity (CR3 0x%" PRIx64 ")"
					  : "the guest's page tables (CR3 0x%" PRIx64 ") are not in RAM", cr3);
	return why;
}

// ---- the emulator thread ----

static int next_is_hlt(struct vcpu *v, uint64_t rip)
{
	uint8_t b;
	return read_virt(v, rip, &b, 1) == 0 && b == 0xf4;
}

static void fill_fatal(struct vcpu *v, uc_err err, const char *what)
{
	struct emu_shared *sh = v->sh;

	sh->rip = reg(v, UC_X86_REG_RIP);
	sh->uc_error = err;
	read_virt(v, sh->rip, sh->insn, sizeof sh->insn);
	snprintf(sh->message, sizeof sh->message, "%s", what);
}

/* Runs the guest until something must be reported. At an instruction boundary on return. */
static enum exit_kind step(struct vcpu *v)
{
	struct emu_shared *sh = v->sh;

	for (;;) {
		int k = atomic_exchange(&v->kick, 0);
		uint64_t rip, rflags;
		const char *why;
		uc_err err;

		if (v->quit || sh->immediate_exit)
			return EXIT_INTERRUPTED;
		if (k & KICK_EVENT)
			return EXIT_EVENT;
		if ((why = check_paging(v))) {
			fill_fatal(v, 0, why);
			snprintf(sh->message, sizeof sh->message,
				 "%.70s; Unicorn 2.0 runs identity-mapped guests only", why);
			return EXIT_FATAL;
		}
		rip = reg(v, UC_X86_REG_RIP);
		rflags = reg(v, UC_X86_REG_RFLAGS);
		/* After "sti" the next instruction runs before an interrupt: only HLT can tell. */
		if (sh->irq_pending && (rflags & RFLAGS_IF) && !next_is_hlt(v, rip))
			return EXIT_WINDOW;
		v->exc_vector = -1;
		v->hlt = 0;
		v->unmapped_type = 0;
		err = uc_emu_start(v->uc, rip, 0, 0, 0);
		if (v->exc_vector >= 0) {
			sh->vector = v->exc_vector;
			sh->error_code = v->exc_error;
			sh->flags = v->exc_flags;
			sh->insn_len = v->exc_len;
			sh->rip = reg(v, UC_X86_REG_RIP);
			sh->cr2 = reg(v, UC_X86_REG_CR2);
			return EXIT_EXCEPTION;
		}
		if (err != UC_ERR_OK) {
			char what[96];
			if (v->unmapped_type)
				snprintf(what, sizeof what, "%s at unmapped guest-physical address 0x%" PRIx64,
					 v->unmapped_type == UC_MEM_FETCH_UNMAPPED ? "instruction fetch" :
					 v->unmapped_type == UC_MEM_WRITE_UNMAPPED ? "write" : "read", v->unmapped_addr);
			else
				snprintf(what, sizeof what, "%s", uc_strerror(err));
			fill_fatal(v, err, what);
			return EXIT_FATAL;
		}
		if (v->hlt) {
			if (sh->irq_pending && (reg(v, UC_X86_REG_RFLAGS) & RFLAGS_IF))
				return EXIT_WINDOW;
			sh->halted = 1;
			return EXIT_HALT;
		}
		/* Stopped by a kick (or a slice): go round. */
	}
}

static void *emu_thread(void *arg)
{
	struct vcpu *v = arg;

	cur = v;
	pthread_mutex_lock(&v->lock);
	while (atomic_load(&v->state) != VS_RUNNING && !v->quit)
		pthread_cond_wait(&v->cond, &v->lock);
	pthread_mutex_unlock(&v->lock);
	while (!v->quit)
		post_and_wait(v, step(v), 0);
	return NULL;
}

// ---- emu_run: the KVM_RUN of this accelerator ----

/* Makes a running guest stop at the start of its next translated block (hook_block). */
static void kick(struct vcpu *v, int why)
{
	atomic_fetch_or(&v->kick, why);
}

/* Reads and clears an eventfd; returns whether it had fired. */
static int drain(int fd)
{
	uint64_t x;
	return read(fd, &x, 8) == 8;
}

EXPORT int emu_run(struct vcpu *v)
{
	struct emu_shared *sh = v->sh;
	struct pollfd pfd[2 + MAX_FDS];
	uint32_t gsi[MAX_FDS];
	int running = 0, kind;

	drain(v->wake_efd);	/* before the vCPU goes on: a later wake-up is for this run */
	pthread_mutex_lock(&v->lock);
	v->runners++;
	if (atomic_load(&v->state) == VS_POSTED && !v->quit) {
		/* At a boundary a pending immediate exit or interrupt window needs no guest code. */
		uint64_t rflags = v->in_hook ? 0 : reg(v, UC_X86_REG_RFLAGS);
		if (!v->in_hook && sh->immediate_exit) {
			sh->kind = EXIT_INTERRUPTED;
			goto out_locked;
		}
		if (!v->in_hook && sh->halted && sh->irq_pending && (rflags & RFLAGS_IF)) {
			sh->kind = EXIT_WINDOW;
			goto out_locked;
		}
		if (v->in_hook || !sh->halted) {
			atomic_store(&v->state, VS_RUNNING);
			running = 1;
			pthread_cond_broadcast(&v->cond);
		}
	}
	pthread_mutex_unlock(&v->lock);

	for (;;) {
		int n = 0, nirq;
		int64_t now = now_ns(), wait_ns;
		struct timespec ts, *timeout = NULL;
		int event = 0;

		if (v->quit) {
			sh->kind = EXIT_INTERRUPTED;
			break;
		}
		pfd[n++] = (struct pollfd){ .fd = v->exit_efd, .events = POLLIN };
		pfd[n++] = (struct pollfd){ .fd = v->wake_efd, .events = POLLIN };
		pthread_mutex_lock(&v->tables);
		for (int i = 0; i < v->nirqfd; i++) {
			gsi[i] = v->irqfds[i].gsi;
			pfd[n++] = (struct pollfd){ .fd = v->irqfds[i].fd, .events = POLLIN };
		}
		nirq = v->nirqfd;
		pthread_mutex_unlock(&v->tables);

		wait_ns = INT64_MAX;
		if (sh->deadline_ns && !sh->timer_fired)
			wait_ns = (int64_t)sh->deadline_ns - now;
		if (running) {
			int64_t left = v->slice_start + (sh->irq_pending ? WINDOW_SLICE_NS : v->slice_ns) - now;
			if (left < wait_ns)
				wait_ns = left;
		}
		if (wait_ns != INT64_MAX) {
			if (wait_ns < 0)
				wait_ns = 0;
			ts = (struct timespec){ wait_ns / 1000000000LL, wait_ns % 1000000000LL };
			timeout = &ts;
		}
		/* Announce the sleep, then look once more: the emulator thread writes exit_efd only
		 * when it sees poller_waiting (both sequentially consistent, so neither is missed). */
		atomic_store(&v->poller_waiting, 1);
		if (!(running && atomic_load(&v->state) == VS_POSTED) && ppoll(pfd, n, timeout, NULL) < 0 && errno != EINTR) {
			atomic_store(&v->poller_waiting, 0);
			sh->kind = EXIT_INTERRUPTED;
			break;
		}
		atomic_store(&v->poller_waiting, 0);
		now = now_ns();

		if (pfd[0].revents & POLLIN)
			drain(v->exit_efd);
		if (running && atomic_load(&v->state) == VS_POSTED) {
			if (sh->kind != EXIT_HALT)
				break;
			running = 0;	/* halted: wait here for an event */
		}
		if (pfd[1].revents & POLLIN) {
			drain(v->wake_efd);
			event = 1;	/* an immediate exit, or the platform has an interrupt */
		}
		for (int i = 0; i < nirq; i++)
			if ((pfd[2 + i].revents & POLLIN) && drain(pfd[2 + i].fd)) {
				sh->gsi_edges |= 1u << gsi[i];
				event = 1;
			}
		if (sh->deadline_ns && !sh->timer_fired && now >= (int64_t)sh->deadline_ns) {
			sh->timer_fired = 1;
			event = 1;
		}
		if (event && !running) {
			sh->kind = sh->immediate_exit ? EXIT_INTERRUPTED : EXIT_EVENT;
			break;
		}
		if (event) {
			kick(v, KICK_EVENT);
		} else if (running && now - v->slice_start >= (sh->irq_pending ? WINDOW_SLICE_NS : v->slice_ns)) {
			kick(v, KICK_SLICE);
			v->slice_start = now;
		}
		for (int i = 0; i < n; i++)
			pfd[i].revents = 0;
	}
	pthread_mutex_lock(&v->lock);
out_locked:
	kind = (int)sh->kind;	/* sh may be freed once runners drops to 0 */
	v->runners--;
	pthread_cond_broadcast(&v->cond);
	pthread_mutex_unlock(&v->lock);
	return kind;
}

/* Wakes emu_run(): an immediate exit was requested, or the platform has an interrupt. */
EXPORT void emu_kick(struct vcpu *v)
{
	uint64_t one = 1;
	if (write(v->wake_efd, &one, 8) != 8)
		return;
}

// ---- creation, memory, eventfds ----

static int lookup_originals(void)
{
	if (unicorn_lib)
		return 0;
	unicorn_lib = dlopen("libunicorn.so.2", RTLD_NOW | RTLD_NOLOAD);
	if (!unicorn_lib) {
		set_error("libunicorn.so.2 is not loaded: %s", dlerror());
		return -1;
	}
#define ORIG(var, name) \
	do { \
		*(void **)&var = dlsym(unicorn_lib, name); \
		if (!var) { set_error("libunicorn.so.2 has no %s (not a Unicorn 2.0 build this shim knows)", name); return -1; } \
	} while (0)
	ORIG(orig_rdtsc, "helper_rdtsc_x86_64");
	ORIG(orig_rdtscp, "helper_rdtscp_x86_64");
	ORIG(orig_rdmsr, "helper_rdmsr_x86_64");
	ORIG(orig_wrmsr, "helper_wrmsr_x86_64");
	ORIG(orig_hlt, "helper_hlt_x86_64");
	ORIG(orig_raise_interrupt, "raise_interrupt_x86_64");
	ORIG(orig_raise_exception, "raise_exception_x86_64");
	ORIG(orig_raise_exception_ra, "raise_exception_ra_x86_64");
	ORIG(orig_raise_exception_err, "raise_exception_err_x86_64");
	ORIG(orig_raise_exception_err_ra, "raise_exception_err_ra_x86_64");
	ORIG(orig_tlb_set_page, "tlb_set_page_with_attrs_x86_64");
	ORIG(orig_tlb_protect_code, "tlb_protect_code_x86_64");
	ORIG(orig_dispatch_read, "memory_region_dispatch_read_x86_64");
	ORIG(orig_dispatch_write, "memory_region_dispatch_write_x86_64");
	ORIG(tlb_set_dirty_fn, "tlb_set_dirty_x86_64");
	ORIG(tlb_reset_dirty_fn, "tlb_reset_dirty_x86_64");
	ORIG(ram_addr_from_host_fn, "qemu_ram_addr_from_host_x86_64");
	ORIG(cpu_restore_state_fn, "cpu_restore_state_x86_64");
#define ORIG_WRAPPED(name) ORIG(orig_##name, #name)
	ORIG_WRAPPED(helper_inb_x86_64);
	ORIG_WRAPPED(helper_inw_x86_64);
	ORIG_WRAPPED(helper_inl_x86_64);
	ORIG_WRAPPED(helper_outb_x86_64);
	ORIG_WRAPPED(helper_outw_x86_64);
	ORIG_WRAPPED(helper_outl_x86_64);
	ORIG_WRAPPED(helper_ret_ldub_mmu_x86_64);
	ORIG_WRAPPED(helper_le_lduw_mmu_x86_64);
	ORIG_WRAPPED(helper_le_ldul_mmu_x86_64);
	ORIG_WRAPPED(helper_le_ldq_mmu_x86_64);
	ORIG_WRAPPED(helper_ret_stb_mmu_x86_64);
	ORIG_WRAPPED(helper_le_stw_mmu_x86_64);
	ORIG_WRAPPED(helper_le_stl_mmu_x86_64);
	ORIG_WRAPPED(helper_le_stq_mmu_x86_64);
#undef ORIG_WRAPPED
#undef ORIG
	if ((void *)orig_rdtsc == (void *)helper_rdtsc_x86_64) {
		set_error("the shim's definitions were bound ahead of libunicorn's own");
		return -1;
	}
	return 0;
}

EXPORT unsigned emu_unicorn_version(void)
{
	unsigned major, minor;
	return uc_version(&major, &minor);
}

static void free_vcpu(struct vcpu *v)
{
	if (v->uc)
		uc_close(v->uc);
	for (int i = 0; i < v->nram; i++)
		free(v->ram[i].code);
	free(v->counts);
	if (v->exit_efd >= 0)
		close(v->exit_efd);
	if (v->wake_efd >= 0)
		close(v->wake_efd);
	free(v->sh);
	free(v);
}

EXPORT struct vcpu *emu_vcpu_create(void)
{
	struct vcpu *v;
	uc_hook h;
	uc_err e;
	unsigned major, minor;

	if (lookup_originals() < 0)
		return NULL;
	v = calloc(1, sizeof *v);
	if (!v) {
		set_error("out of memory");
		return NULL;
	}
	v->exit_efd = v->wake_efd = -1;
	v->exc_vector = -1;
	v->state = VS_POSTED;	/* stopped at an instruction boundary, as after an exit */
	v->apic_base = 0xfee00000ULL | 0x800 | 0x100;	/* enabled, BSP */
	v->tsc_offset = -__rdtsc();	/* the guest's TSC starts at 0, as on KVM */
	v->slice_ns = SLICE_NS;
	pthread_mutex_init(&v->lock, NULL);
	pthread_mutex_init(&v->tables, NULL);
	pthread_cond_init(&v->cond, NULL);
	if (posix_memalign((void **)&v->sh, 64, sizeof *v->sh)) {
		free(v);
		set_error("out of memory");
		return NULL;
	}
	memset(v->sh, 0, sizeof *v->sh);
	v->exit_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	v->wake_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (v->exit_efd < 0 || v->wake_efd < 0) {
		set_error("eventfd failed: %s", strerror(errno));
		goto fail;
	}
	e = uc_open(UC_ARCH_X86, UC_MODE_64, &v->uc);
	if (e != UC_ERR_OK) {
		set_error("uc_open failed: %s", uc_strerror(e));
		v->uc = NULL;
		goto fail;
	}
	uc_version(&major, &minor);
	if (major > 2 || (major == 2 && minor >= 1)) {
		/* UC_CTL_TLB_TYPE (12) = UC_TLB_CPU (0): translate through the guest's page tables. */
		v->tlb_cpu = uc_ctl(v->uc, UC_CTL_WRITE(12, 1), 0) == UC_ERR_OK;
	}
	uc_ctl_exits_enable(v->uc);	/* no "until" address: we stop it ourselves */
	if (uc_hook_add(v->uc, &h, UC_HOOK_INSN, hook_in, v, 1, 0, UC_X86_INS_IN) ||
	    uc_hook_add(v->uc, &h, UC_HOOK_INSN, hook_out, v, 1, 0, UC_X86_INS_OUT) ||
	    uc_hook_add(v->uc, &h, UC_HOOK_INTR, hook_intr, v, 1, 0) ||
	    uc_hook_add(v->uc, &h, UC_HOOK_BLOCK, hook_block, v, 1, 0) ||
	    uc_hook_add(v->uc, &h, UC_HOOK_MEM_UNMAPPED, hook_unmapped, v, 1, 0)) {
		set_error("uc_hook_add failed");
		goto fail;
	}
	if (pthread_create(&v->thread, NULL, emu_thread, v)) {
		set_error("pthread_create failed");
		goto fail;
	}
	return v;
fail:
	free_vcpu(v);
	return NULL;
}

EXPORT void emu_vcpu_destroy(struct vcpu *v)
{
	pthread_mutex_lock(&v->lock);
	v->quit = 1;
	pthread_cond_broadcast(&v->cond);
	pthread_mutex_unlock(&v->lock);
	emu_kick(v);
	/* A running guest leaves uc_emu_start at the next block; keep asking until the thread ends. */
	for (;;) {
		struct timespec t;
		clock_gettime(CLOCK_REALTIME, &t);
		t.tv_nsec += 1000000;
		if (t.tv_nsec >= 1000000000) {
			t.tv_sec++;
			t.tv_nsec -= 1000000000;
		}
		uc_emu_stop(v->uc);
		if (pthread_timedjoin_np(v->thread, NULL, &t) == 0)
			break;
	}
	pthread_mutex_lock(&v->lock);
	while (v->runners)
		pthread_cond_wait(&v->cond, &v->lock);
	pthread_mutex_unlock(&v->lock);
	free_vcpu(v);
}

EXPORT struct emu_shared *emu_shared(struct vcpu *v) { return v->sh; }

EXPORT int emu_map_ram(struct vcpu *v, uint64_t gpa, uint64_t size, uint64_t host)
{
	struct region *r;
	uc_err e;

	if (v->nram == MAX_REGIONS) {
		set_error("too many RAM regions");
		return -1;
	}
	r = &v->ram[v->nram];
	r->code = calloc(size / 4096 / 8 + 1, 1);
	if (!r->code) {
		set_error("out of memory");
		return -1;
	}
	e = uc_mem_map_ptr(v->uc, gpa, size, UC_PROT_ALL, (void *)(uintptr_t)host);
	if (e != UC_ERR_OK) {
		free(r->code);
		set_error("uc_mem_map_ptr(0x%" PRIx64 ", 0x%" PRIx64 ") failed: %s", gpa, size, uc_strerror(e));
		return -1;
	}
	r->gpa = gpa;
	r->size = size;
	r->host = (uint8_t *)(uintptr_t)host;
	r->ram_base = ram_addr_from_host_fn(v->uc, r->host);
	v->nram++;
	return 0;
}

EXPORT int emu_map_mmio(struct vcpu *v, uint64_t gpa, uint64_t size)
{
	struct mmio_region *r;
	uc_err e;

	if (v->nmmio == MAX_REGIONS) {
		set_error("too many MMIO regions");
		return -1;
	}
	r = &v->mmio[v->nmmio];
	r->v = v;
	r->gpa = gpa;
	r->size = size;
	e = uc_mmio_map(v->uc, gpa, size, hook_mmio_read, r, hook_mmio_write, r);
	if (e != UC_ERR_OK) {
		set_error("uc_mmio_map(0x%" PRIx64 ", 0x%" PRIx64 ") failed: %s", gpa, size, uc_strerror(e));
		return -1;
	}
	v->nmmio++;
	return 0;
}

EXPORT int emu_irqfd(struct vcpu *v, int fd, uint32_t gsi, int assign)
{
	int rc = 0;

	pthread_mutex_lock(&v->tables);
	for (int i = 0; i < v->nirqfd; i++) {
		if (v->irqfds[i].fd == fd) {
			if (assign) {
				rc = -EEXIST;
			} else {
				v->irqfds[i] = v->irqfds[--v->nirqfd];
				assign = -1;
			}
			break;
		}
	}
	if (assign == 1 && rc == 0) {
		if (v->nirqfd == MAX_FDS)
			rc = -ENOSPC;
		else
			v->irqfds[v->nirqfd++] = (struct irqfd){ fd, gsi };
	} else if (assign == 0) {
		rc = -ENOENT;
	}
	pthread_mutex_unlock(&v->tables);
	emu_kick(v);	/* a running emu_run polls the new set */
	return rc;
}

EXPORT int emu_ioeventfd(struct vcpu *v, int fd, uint64_t addr, uint32_t len, int pio, int has_match, uint64_t match, int assign)
{
	int rc = 0, found = -1;

	pthread_mutex_lock(&v->tables);
	for (int i = 0; i < v->nioev; i++) {
		struct ioevent *e = &v->ioev[i];
		if (e->fd == fd && e->addr == addr && e->len == len && e->pio == pio &&
		    e->has_match == has_match && (!has_match || e->match == match))
			found = i;
	}
	if (assign) {
		if (found >= 0)
			rc = -EEXIST;
		else if (v->nioev == MAX_FDS)
			rc = -ENOSPC;
		else
			v->ioev[v->nioev++] = (struct ioevent){ fd, addr, len, pio, has_match, match };
	} else if (found < 0) {
		rc = -ENOENT;
	} else {
		v->ioev[found] = v->ioev[--v->nioev];
	}
	pthread_mutex_unlock(&v->tables);
	return rc;
}

// ---- registers ----

static int idle(struct vcpu *v)
{
	int ok;
	pthread_mutex_lock(&v->lock);
	ok = atomic_load(&v->state) != VS_RUNNING && !v->in_hook;
	pthread_mutex_unlock(&v->lock);
	if (!ok)
		set_error("the vCPU is not stopped at an instruction boundary (run it until it reports 'interrupted')");
	return ok;
}

static const int gpr_ids[18] = {
	UC_X86_REG_RAX, UC_X86_REG_RBX, UC_X86_REG_RCX, UC_X86_REG_RDX, UC_X86_REG_RSI, UC_X86_REG_RDI,
	UC_X86_REG_RSP, UC_X86_REG_RBP, UC_X86_REG_R8, UC_X86_REG_R9, UC_X86_REG_R10, UC_X86_REG_R11,
	UC_X86_REG_R12, UC_X86_REG_R13, UC_X86_REG_R14, UC_X86_REG_R15, UC_X86_REG_RIP, UC_X86_REG_RFLAGS,
};
static const int sel_ids[6] = { UC_X86_REG_CS, UC_X86_REG_DS, UC_X86_REG_ES, UC_X86_REG_FS, UC_X86_REG_GS, UC_X86_REG_SS };

static uint64_t msr_read(struct vcpu *v, uint32_t index)
{
	uc_x86_msr m = { index, 0 };
	uc_reg_read(v->uc, UC_X86_REG_MSR, &m);
	return m.value;
}
static int msr_write(struct vcpu *v, uint32_t index, uint64_t value)
{
	uc_x86_msr m = { index, value };
	return uc_reg_write(v->uc, UC_X86_REG_MSR, &m);
}

EXPORT int emu_get_regs(struct vcpu *v, struct emu_regs *r)
{
	uc_x86_mmr m;
	uint64_t ftw = 0;

	if (!idle(v))
		return -1;
	memset(r, 0, sizeof *r);
	for (int i = 0; i < 18; i++)
		r->gpr[i] = reg(v, gpr_ids[i]);
	r->cr0 = reg(v, UC_X86_REG_CR0);
	r->cr2 = reg(v, UC_X86_REG_CR2);
	r->cr3 = reg(v, UC_X86_REG_CR3);
	r->cr4 = reg(v, UC_X86_REG_CR4);
	r->cr8 = reg(v, UC_X86_REG_CR8);
	r->efer = msr_read(v, 0xc0000080);
	r->fs_base = reg(v, UC_X86_REG_FS_BASE);
	r->gs_base = reg(v, UC_X86_REG_GS_BASE);
	r->kernel_gs_base = msr_read(v, 0xc0000102);
	for (int i = 0; i < 6; i++)
		r->sel[i] = (uint16_t)reg(v, sel_ids[i]);
	uc_reg_read(v->uc, UC_X86_REG_GDTR, &m);
	r->gdt = (struct dtab){ m.base, m.limit, 0 };
	uc_reg_read(v->uc, UC_X86_REG_IDTR, &m);
	r->idt = (struct dtab){ m.base, m.limit, 0 };
	uc_reg_read(v->uc, UC_X86_REG_TR, &m);
	r->tr = (struct sysseg){ m.base, m.limit, m.flags, m.selector, { 0 } };
	uc_reg_read(v->uc, UC_X86_REG_LDTR, &m);
	r->ldt = (struct sysseg){ m.base, m.limit, m.flags, m.selector, { 0 } };
	r->apic_base = v->apic_base;
	r->tsc = guest_tsc(v);
	r->fcw = (uint16_t)reg(v, UC_X86_REG_FPCW);
	r->fsw = (uint16_t)reg(v, UC_X86_REG_FPSW);
	uc_reg_read(v->uc, UC_X86_REG_FPTAG, &ftw);
	for (int i = 0; i < 8; i++)	/* full tag word (2 bits, 11 = empty) to FXSAVE's abridged one */
		if (((ftw >> (2 * i)) & 3) != 3)
			r->ftw |= 1 << i;
	r->fop = (uint16_t)reg(v, UC_X86_REG_FOP);
	r->mxcsr = (uint32_t)reg(v, UC_X86_REG_MXCSR);
	r->fip = reg(v, UC_X86_REG_FIP);
	r->fdp = reg(v, UC_X86_REG_FDP);
	for (int i = 0; i < 8; i++)
		uc_reg_read(v->uc, UC_X86_REG_ST0 + i, r->st[i]);
	for (int i = 0; i < 16; i++)
		uc_reg_read(v->uc, UC_X86_REG_XMM0 + i, r->xmm[i]);
	for (int i = 0; i < 9; i++)
		r->msr[i] = msr_read(v, state_msrs[i]);
	return 0;
}

#define CHECK(what, call) \
	do { uc_err e_ = (call); if (e_ != UC_ERR_OK) { set_error("setting %s: %s", what, uc_strerror(e_)); return -1; } } while (0)

EXPORT int emu_set_regs(struct vcpu *v, const struct emu_regs *r, uint32_t which)
{
	uc_x86_mmr m;

	if (!idle(v))
		return -1;
	if (which & REGS_SYS) {
		/* Order: the mode (EFER, CR4, CR3, CR0) and the GDT before selectors, which load from it. */
		CHECK("EFER", msr_write(v, 0xc0000080, r->efer));
		CHECK("CR4", uc_reg_write(v->uc, UC_X86_REG_CR4, &r->cr4));
		CHECK("CR3", uc_reg_write(v->uc, UC_X86_REG_CR3, &r->cr3));
		CHECK("CR0", uc_reg_write(v->uc, UC_X86_REG_CR0, &r->cr0));
		CHECK("CR2", uc_reg_write(v->uc, UC_X86_REG_CR2, &r->cr2));
		m = (uc_x86_mmr){ 0, r->gdt.base, r->gdt.limit, 0 };
		CHECK("GDTR", uc_reg_write(v->uc, UC_X86_REG_GDTR, &m));
		m = (uc_x86_mmr){ 0, r->idt.base, r->idt.limit, 0 };
		CHECK("IDTR", uc_reg_write(v->uc, UC_X86_REG_IDTR, &m));
		for (int i = 0; i < 6; i++) {
			uint16_t s = r->sel[i];
			uc_err e = uc_reg_write(v->uc, sel_ids[i], &s);
			if (e != UC_ERR_OK) {
				set_error("loading segment selector 0x%x from the GDT: %s", s, uc_strerror(e));
				return -1;
			}
		}
		m = (uc_x86_mmr){ r->tr.selector, r->tr.base, r->tr.limit, r->tr.flags };
		CHECK("TR", uc_reg_write(v->uc, UC_X86_REG_TR, &m));
		m = (uc_x86_mmr){ r->ldt.selector, r->ldt.base, r->ldt.limit, r->ldt.flags };
		CHECK("LDTR", uc_reg_write(v->uc, UC_X86_REG_LDTR, &m));
		CHECK("FS base", uc_reg_write(v->uc, UC_X86_REG_FS_BASE, &r->fs_base));
		CHECK("GS base", uc_reg_write(v->uc, UC_X86_REG_GS_BASE, &r->gs_base));
		CHECK("KERNEL_GS_BASE", msr_write(v, 0xc0000102, r->kernel_gs_base));
		v->checked_cr3 = 0;	/* check the page tables again */
	}
	if (which & REGS_FPU) {
		uint64_t x, ftw = 0;
		for (int i = 0; i < 8; i++)
			ftw |= (uint64_t)((r->ftw >> i) & 1 ? 0 : 3) << (2 * i);
		x = r->fcw; CHECK("FPCW", uc_reg_write(v->uc, UC_X86_REG_FPCW, &x));
		x = r->fsw; CHECK("FPSW", uc_reg_write(v->uc, UC_X86_REG_FPSW, &x));
		CHECK("FPTAG", uc_reg_write(v->uc, UC_X86_REG_FPTAG, &ftw));
		x = r->fop; CHECK("FOP", uc_reg_write(v->uc, UC_X86_REG_FOP, &x));
		x = r->mxcsr; CHECK("MXCSR", uc_reg_write(v->uc, UC_X86_REG_MXCSR, &x));
		CHECK("FIP", uc_reg_write(v->uc, UC_X86_REG_FIP, &r->fip));
		CHECK("FDP", uc_reg_write(v->uc, UC_X86_REG_FDP, &r->fdp));
		for (int i = 0; i < 8; i++)
			CHECK("ST", uc_reg_write(v->uc, UC_X86_REG_ST0 + i, r->st[i]));
		for (int i = 0; i < 16; i++)
			CHECK("XMM", uc_reg_write(v->uc, UC_X86_REG_XMM0 + i, r->xmm[i]));
	}
	if (which & REGS_MSR) {
		v->apic_base = r->apic_base;
		for (int i = 0; i < 9; i++)
			CHECK("an MSR", msr_write(v, state_msrs[i], r->msr[i]));
	}
	if (which & REGS_TSC)
		v->tsc_offset = r->tsc - __rdtsc();
	if (which & REGS_GPR) {
		for (int i = 0; i < 16; i++)
			CHECK("a register", uc_reg_write(v->uc, gpr_ids[i], &r->gpr[i]));
		CHECK("RFLAGS", uc_reg_write(v->uc, UC_X86_REG_RFLAGS, &r->gpr[17]));
		CHECK("RIP", uc_reg_write(v->uc, UC_X86_REG_RIP, &r->gpr[16]));
	}
	return 0;
}

/* Guest-virtual memory at `va` (TS uses it for the bytes at RIP). */
EXPORT int emu_read_virt(struct vcpu *v, uint64_t va, uint8_t *buf, uint32_t len)
{
	return read_virt(v, va, buf, len);
}

// ---- benchmarks: guest instruction counts (hook_block) ----

EXPORT int emu_set_counting(struct vcpu *v, int on)
{
	if (on && !v->counts && !(v->counts = calloc(COUNT_CACHE, sizeof *v->counts))) {
		set_error("out of memory");
		return -1;
	}
	v->counting = on;
	return 0;
}
EXPORT uint64_t emu_instructions(struct vcpu *v) { return v->icount; }

/* How often a running guest is stopped and looked at (tests make it very often, to check that
 * stops never make the guest run instructions twice). */
EXPORT void emu_set_slice(struct vcpu *v, uint64_t ns) { v->slice_ns = ns ? (int64_t)ns : SLICE_NS; }

// ---- the TSC rate ----

/* The host TSC rate in kHz, measured once against CLOCK_MONOTONIC (guest TSC = host TSC + offset). */
EXPORT uint32_t emu_tsc_khz(void)
{
	static uint32_t khz;
	if (!khz) {
		int64_t t0 = now_ns(), t1;
		uint64_t c0 = __rdtsc(), c1;
		struct timespec d = { 0, 20000000 };
		nanosleep(&d, NULL);
		t1 = now_ns();
		c1 = __rdtsc();
		khz = (uint32_t)((double)(c1 - c0) * 1e6 / (double)(t1 - t0) + 0.5);
	}
	return khz;
}

// ---- the layout check and the interposition self-test ----

EXPORT uint32_t emu_layout(uint32_t which)
{
	switch (which) {
	case 0: return sizeof(struct emu_shared);
	case 1: return sizeof(struct emu_regs);
	case 2: return offsetof(struct emu_shared, immediate_exit);
	case 3: return offsetof(struct emu_regs, msr);
	}
	return 0;
}

/* The self-test's HLT waits for an event: give it one once the vCPU is halted (or after 2 s). */
static void *wake_when_halted(void *arg)
{
	struct vcpu *v = arg;
	for (int i = 0; i < 20000 && !__atomic_load_n(&v->sh->halted, __ATOMIC_ACQUIRE); i++)
		usleep(100);
	emu_kick(v);
	return NULL;
}

/* Runs a few instructions on a throw-away vCPU and checks that every interposition took effect.
 * Returns 0, or -1 with what is wrong (one line) in emu_last_error(). */
EXPORT int emu_init(void)
{
	static char why[256];
	static const uint8_t code[] = {
		0x89, 0x00,				/* mov [rax], eax: a store (TLB) */
		0x0f, 0x31,				/* rdtsc */
		0x48, 0x89, 0xd6,			/* mov rsi, rdx */
		0xf4,					/* hlt */
		0xb9, 0xef, 0xbe, 0xad, 0xde,		/* mov ecx, 0xdeadbeef */
		0x0f, 0x32,				/* rdmsr: #GP */
		0x48, 0xff, 0xc7,			/* 0x100f: inc rdi */
		0xeb, 0xfb,				/* jmp 0x100f */
	};
	struct vcpu *v;
	uint8_t *mem;
	pthread_t waker;
	int kind;

	if (lookup_originals() < 0)
		return -1;
	mem = aligned_alloc(4096, 65536);
	if (!mem) {
		set_error("out of memory");
		return -1;
	}
	memset(mem, 0, 65536);
	memcpy(mem + 0x1000, code, sizeof code);
	why[0] = 0;
	v = emu_vcpu_create();
	if (!v) {
		free(mem);
		return -1;
	}
	if (emu_map_ram(v, 0, 65536, (uint64_t)(uintptr_t)mem) < 0) {
		snprintf(why, sizeof why, "%s", last_error);
		goto out;
	}
	set_reg(v, UC_X86_REG_RIP, 0x1000);
	set_reg(v, UC_X86_REG_RAX, 0x8000);
	v->tsc_offset = 1ULL << 62;
	if (pthread_create(&waker, NULL, wake_when_halted, v)) {
		snprintf(why, sizeof why, "pthread_create failed");
		goto out;
	}
	kind = emu_run(v);
	pthread_join(waker, NULL);
	if (kind != EXIT_EVENT || !v->sh->halted || !(seen & SEEN_HLT))
		snprintf(why, sizeof why, "HLT was not seen (exit %d)", kind);
	else if (!(seen & SEEN_TLB))
		snprintf(why, sizeof why, "libunicorn's TLB fills do not reach the shim");
	else if (!(seen & SEEN_RDTSC) || reg(v, UC_X86_REG_RSI) < (1ULL << 30))
		snprintf(why, sizeof why, "RDTSC does not reach the shim");
	if (why[0])
		goto out;
	v->sh->halted = 0;
	kind = emu_run(v);
	if (kind != EXIT_EXCEPTION || v->sh->vector != 13 || !(seen & SEEN_MSR) || !(seen & SEEN_RAISE)) {
		snprintf(why, sizeof why, "an unknown MSR raised no #GP (exit %d)", kind);
		goto out;
	}
	/* A guest in a loop is stopped by the deadline, at an instruction of the loop. */
	set_reg(v, UC_X86_REG_RIP, 0x100f);
	v->sh->deadline_ns = now_ns() + 200000;
	kind = emu_run(v);
	uint64_t rip = reg(v, UC_X86_REG_RIP);
	if (kind != EXIT_EVENT || (rip != 0x100f && rip != 0x1012))
		snprintf(why, sizeof why, "a running guest could not be stopped (exit %d, RIP 0x%" PRIx64 ")", kind, rip);
out:
	emu_vcpu_destroy(v);
	free(mem);
	if (why[0]) {
		set_error("the shim cannot work around this Unicorn's limits: %.190s", why);
		return -1;
	}
	return 0;
}
