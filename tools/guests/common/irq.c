#include "irq.h"

/* Local APIC registers (xAPIC MMIO, 32-bit each). */
#define LAPIC_TPR		0x080
#define LAPIC_EOI		0x0b0
#define LAPIC_SVR		0x0f0
#define LAPIC_SVR_ENABLE	0x100
#define LAPIC_LVT_TIMER		0x320
#define LAPIC_LVT_MASKED	0x10000
#define LAPIC_TIMER_INIT	0x380
#define LAPIC_TIMER_CUR		0x390
#define LAPIC_TIMER_DIV		0x3e0
#define LAPIC_DIV_16		0x3

#define IOAPIC_VERSION		0x01
#define IOAPIC_REDTBL(pin)	(0x10 + 2 * (pin))

#define DEFAULT_TSC_KHZ		2000000	/* only if the VMM did not say */
#define POLL_MS			20	/* longest sleep: the lost-interrupt fallback */

struct trap_frame {
	u64 rax, rcx, rdx, rsi, rdi, r8, r9, r10, r11;	/* pushed by trap_common */
	u64 vector, error;				/* pushed by the stub (or CPU) */
	u64 rip, cs, rflags, rsp, ss;			/* pushed by the CPU */
};

struct idt_gate {
	u16 offset0;
	u16 selector;
	u8 ist;
	u8 type;		/* 0x8e: present, DPL 0, 64-bit interrupt gate */
	u16 offset1;
	u32 offset2;
	u32 reserved;
} __attribute__((packed));

extern const u8 isr_stubs[];	/* isr.S: 256 stubs, 16 bytes apart */

u64 tsc_khz;

static struct idt_gate idt[256] __attribute__((aligned(16)));
static struct {
	void (*fn)(void *);
	void *arg;
} handlers[256];
static u32 ioapic_pins;
static u64 timer_per_ms;	/* LAPIC timer ticks per ms; 0: no timer, busy-poll */

static u32 lapic_read(u32 reg)
{
	return *(volatile u32 *)(LAPIC_BASE + reg);
}

static void lapic_write(u32 reg, u32 v)
{
	*(volatile u32 *)(LAPIC_BASE + reg) = v;
}

static u32 ioapic_read(u32 reg)
{
	*(volatile u32 *)IOAPIC_BASE = reg;
	return *(volatile u32 *)(IOAPIC_BASE + 0x10);
}

static void ioapic_write(u32 reg, u32 v)
{
	*(volatile u32 *)IOAPIC_BASE = reg;
	*(volatile u32 *)(IOAPIC_BASE + 0x10) = v;
}

/* Called by isr.S with interrupts off. Weak: a test guest may take over every vector. */
void trap(struct trap_frame *f);
__attribute__((weak)) void trap(struct trap_frame *f)
{
	u64 v = f->vector;

	if (v < 32)
		die("exception %lu error=0x%lx rip=0x%lx", v, f->error, f->rip);
	if (v == SPURIOUS_VECTOR)
		return;		/* the APIC wants no EOI for these */
	if (handlers[v].fn)
		handlers[v].fn(handlers[v].arg);
	lapic_write(LAPIC_EOI, 0);
}

static void idt_init(void)
{
	struct {
		u16 limit;
		u64 base;
	} __attribute__((packed)) idtr = { sizeof(idt) - 1, (u64)idt };
	u16 cs;

	asm volatile("mov %%cs, %0" : "=r"(cs));	/* the VMM's code selector */
	for (int v = 0; v < 256; v++) {
		u64 a = (u64)isr_stubs + 16 * v;

		idt[v] = (struct idt_gate){
			.offset0 = a, .selector = cs, .type = 0x8e,
			.offset1 = a >> 16, .offset2 = a >> 32,
		};
	}
	asm volatile("lidt %0" : : "m"(idtr));
}

/* Measure the timer against the TSC for ~1 ms; its rate is the VMM's choice. */
static void timer_calibrate(void)
{
	u64 t0, t1;
	u32 left;

	lapic_write(LAPIC_TIMER_DIV, LAPIC_DIV_16);
	lapic_write(LAPIC_LVT_TIMER, LAPIC_LVT_MASKED | TIMER_VECTOR);
	lapic_write(LAPIC_TIMER_INIT, 0xffffffff);
	t0 = rdtsc();
	while ((t1 = rdtsc()) - t0 < tsc_khz)
		;
	left = lapic_read(LAPIC_TIMER_CUR);
	lapic_write(LAPIC_TIMER_INIT, 0);
	timer_per_ms = (u64)(0xffffffff - left) * tsc_khz / (t1 - t0);
	lapic_write(LAPIC_LVT_TIMER, TIMER_VECTOR);	/* one-shot, unmasked */
	if (!timer_per_ms)
		printk("irq: no LAPIC timer, polling instead of sleeping\n");
}

static void timer_wake(void *arg)
{
	(void)arg;	/* nothing to do: waking up from hlt was the point */
}

void irq_init(const struct bootinfo *bi)
{
	tsc_khz = bi->tsc_khz;
	if (!tsc_khz) {
		tsc_khz = DEFAULT_TSC_KHZ;
		printk("irq: no tsc_khz in the boot info, assuming %lu\n", tsc_khz);
	}

	idt_init();

	/* The 8259s would deliver on vectors we do not expect: mask them all. */
	outb(0x21, 0xff);
	outb(0xa1, 0xff);

	lapic_write(LAPIC_SVR, LAPIC_SVR_ENABLE | SPURIOUS_VECTOR);
	lapic_write(LAPIC_TPR, 0);
	ioapic_pins = (ioapic_read(IOAPIC_VERSION) >> 16 & 0xff) + 1;

	handlers[TIMER_VECTOR].fn = timer_wake;
	timer_calibrate();
}

void irq_route(u32 gsi, void (*fn)(void *), void *arg)
{
	u32 v = IRQ_VECTOR_BASE + gsi;

	if (gsi >= ioapic_pins || v >= TIMER_VECTOR)
		die("irq %u: the IOAPIC has %u pins", gsi, ioapic_pins);
	if (handlers[v].fn)
		die("irq %u: shared interrupts are not supported", gsi);
	handlers[v].fn = fn;
	handlers[v].arg = arg;
	/* Destination APIC 0 (high word) first, so the pin is unmasked last. */
	ioapic_write(IOAPIC_REDTBL(gsi) + 1, 0);
	ioapic_write(IOAPIC_REDTBL(gsi), v);	/* fixed, physical, high, edge, unmasked */
}

void irq_wait(u64 deadline)
{
	u64 now = rdtsc(), max = ms_to_tsc(POLL_MS), left;

	if (now >= deadline || !timer_per_ms)
		return;		/* no timer: the caller just polls again */
	left = deadline - now < max ? deadline - now : max;
	lapic_write(LAPIC_TIMER_INIT, left * timer_per_ms / tsc_khz + 1);
	/*
	 * sti's one-instruction shadow makes "sti; hlt" atomic: an interrupt
	 * that came in while we were checking the rings is taken here and
	 * ends the hlt at once rather than being slept through.
	 */
	asm volatile("sti; hlt; cli" : : : "memory");
}
