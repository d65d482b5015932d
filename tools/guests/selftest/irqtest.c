/*
 * irqtest: a guest that checks the interrupt and exception delivery of the accelerator it runs
 * on, and prints "ok NAME" or "FAIL NAME: why" per check, then exits with the number of
 * failures. Exceptions that return (#DE twice, #UD, #GP from an unknown MSR, #PF with its error
 * code and CR2, INT3, INT n), the LAPIC (self IPIs, nested interrupts by priority, EOI and TPR
 * blocking, timer one-shot and periodic), "sti; hlt" with a pending interrupt, the IOAPIC
 * (masking, edge and level with remote IRR), the 8259 PIC through LINT0, the PIT, the TSC MSR,
 * an 8-byte MMIO access seen whole, and ioeventfds (MMIO with a datamatch, port I/O) and an
 * irqfd. The test side plays the devices through ports 0x520-0x525 (test/emu-ports.ts), records
 * MMIO at 0xd0000000 and binds the eventfds.
 */
#include "lib.h"

#define LAPIC		0xfee00000ULL
#define IOAPIC		0xfec00000ULL
#define PULSE_GSI	0x520
#define RAISE_GSI	0x521
#define LOWER_GSI	0x522
#define TEST_MMIO	0xd0000000ULL
#define SIGNAL_IRQFD	0x523	/* OUT: the test writes the irqfd bound to GSI 12 */
#define MMIO_EVENTS	0x524	/* IN: signals the MMIO ioeventfd got (read and reset) */
#define PIO_EVENTS	0x525	/* IN: the same for the port ioeventfd at PIO_DOORBELL */
#define PIO_DOORBELL	0x530

struct frame {
	u64 rax, rcx, rdx, rsi, rdi, r8, r9, r10, r11;
	u64 vector, error;
	u64 rip, cs, rflags, rsp, ss;
};

extern const u8 isr_stubs[];	/* common/isr.S: 256 stubs, 16 bytes apart, calling trap() */
static struct {
	u16 offset0, selector;
	u8 ist, type;
	u16 offset1;
	u32 offset2, reserved;
} __attribute__((packed)) idt[256] __attribute__((aligned(16)));

static u64 tsc_khz, timer_per_ms;
static unsigned failures;
/* The last exception: where it happened, and where to go on. */
volatile u64 resume, fault_site;
static volatile u64 fault_vector, fault_error, fault_rip, fault_cr2;
static volatile u32 count[256];
static volatile u8 order[16];
static volatile u32 norder;
static void (*volatile action[256])(struct frame *);

static u32 lapic_read(u32 r) { return *(volatile u32 *)(LAPIC + r); }
static void lapic_write(u32 r, u32 v) { *(volatile u32 *)(LAPIC + r) = v; }
static void eoi(void) { lapic_write(0xb0, 0); }
static void ioapic_write(u32 r, u32 v) { *(volatile u32 *)IOAPIC = r; *(volatile u32 *)(IOAPIC + 0x10) = v; }
static void self_ipi(u8 v) { lapic_write(0x310, 0); lapic_write(0x300, 0x40000 | v); }	/* shorthand "self" */
static u64 read_cr2(void) { u64 x; asm volatile("mov %%cr2, %0" : "=r"(x)); return x; }
static void sti(void) { asm volatile("sti" ::: "memory"); }
static void cli(void) { asm volatile("cli" ::: "memory"); }

/* Every vector comes here (in place of irq.c's trap()). */
void trap(struct frame *f);
void trap(struct frame *f)
{
	u64 v = f->vector;

	if (v < 32) {
		fault_vector = v;
		fault_error = f->error;
		fault_rip = f->rip;
		fault_cr2 = read_cr2();
		if (!resume) {
			printk("FAIL unexpected exception %lu error=0x%lx rip=0x%lx\n", v, f->error, f->rip);
			exit(9);
		}
		f->rip = resume;
		resume = 0;
		return;
	}
	count[v]++;
	if (norder < sizeof order)
		order[norder++] = v;
	if (action[v])
		action[v](f);
	else if (v != 0x80)
		eoi();
}

static void check(int ok, const char *name, const char *why)
{
	if (ok) {
		printk("ok %s\n", name);
	} else {
		printk("FAIL %s: %s\n", name, why);
		failures++;
	}
}
/* The same, with two numbers in the failure message. */
static void check2(int ok, const char *name, const char *why, u64 a, u64 b)
{
	if (ok) {
		printk("ok %s\n", name);
	} else {
		printk("FAIL %s: %s (%lu, %lu)\n", name, why, a, b);
		failures++;
	}
}

/* Spins with interrupts as they are until count[v] >= n or `ms` pass; true if it got there. */
static int wait_count(u8 v, u32 n, u64 ms)
{
	u64 t0 = rdtsc();
	while (count[v] < n)
		if (rdtsc() - t0 > ms * tsc_khz)
			return 0;
	return 1;
}
static void spin_ms(u64 ms)
{
	u64 t0 = rdtsc();
	while (rdtsc() - t0 < ms * tsc_khz)
		;
}

/* Runs `insn` expecting an exception; resumes after it. fault_site: where it starts. */
#define EXPECT_FAULT(insn, ...) \
	asm volatile("lea 1f(%%rip), %%rax\n\tmov %%rax, resume(%%rip)\n\tlea 2f(%%rip), %%rax\n\t" \
		     "mov %%rax, fault_site(%%rip)\n\t" __VA_ARGS__ "\n2:\t" insn "\n1:" ::: "rax", "rcx", "rdx", "memory")

static void test_exceptions(void)
{
	fault_vector = ~0ULL;
	EXPECT_FAULT("div %%ecx", "xor %%edx, %%edx\n\tmov $7, %%eax\n\txor %%ecx, %%ecx");
	check(fault_vector == 0 && fault_rip == fault_site, "de", "no #DE at the division");
	fault_vector = ~0ULL;
	EXPECT_FAULT("idiv %%rcx", "mov $0x8000000000000000, %%rax\n\tcqo\n\tmov $-1, %%rcx");
	check(fault_vector == 0 && fault_rip == fault_site, "de_again", "INT_MIN/-1 gave no #DE (or a #DF)");
	fault_vector = ~0ULL;
	EXPECT_FAULT("ud2", "");
	check(fault_vector == 6 && fault_rip == fault_site, "ud", "no #UD at ud2");
	fault_vector = ~0ULL;
	EXPECT_FAULT("rdmsr", "mov $0xdeadbeef, %%ecx");
	check(fault_vector == 13 && fault_error == 0 && fault_rip == fault_site, "gp_msr", "rdmsr of an unknown MSR gave no #GP(0)");
	fault_vector = ~0ULL;
	EXPECT_FAULT("wrmsr", "mov $0xdeadbeef, %%ecx\n\txor %%eax, %%eax\n\txor %%edx, %%edx");
	check(fault_vector == 13 && fault_rip == fault_site, "gp_wrmsr", "wrmsr of an unknown MSR gave no #GP");
	fault_vector = ~0ULL;
	EXPECT_FAULT("int3", "");
	check(fault_vector == 3 && fault_rip == fault_site + 1, "int3", "int3 not delivered as a trap after the instruction");

	/* #PF: take away the 2 MiB page at 64 MiB (first PD of the boot page tables, at 0x12000). */
	volatile u64 *pde = (volatile u64 *)(0x12000 + 32 * 8);
	u64 saved = *pde;
	*pde = saved & ~1ULL;
	asm volatile("invlpg (%0)" : : "r"(64ULL << 20) : "memory");
	fault_vector = ~0ULL;
	EXPECT_FAULT("mov (%%rcx), %%rax", "mov $0x4000010, %%rcx");
	int read_ok = fault_vector == 14 && fault_error == 0 && fault_cr2 == 0x4000010 && fault_rip == fault_site;
	fault_vector = ~0ULL;
	EXPECT_FAULT("movq $1, (%%rcx)", "mov $0x4000020, %%rcx");
	int write_ok = fault_vector == 14 && fault_error == 2 && fault_cr2 == 0x4000020;
	*pde = saved;
	asm volatile("invlpg (%0)" : : "r"(64ULL << 20) : "memory");
	check(read_ok, "pf_read", "no #PF(0) with CR2 for a read of a not-present page");
	check(write_ok, "pf_write", "no #PF(2) with CR2 for a write to a not-present page");
	check(*(volatile u64 *)(64ULL << 20) == *(volatile u64 *)(64ULL << 20), "pf_restored", "");

	u32 before = count[0x80];
	asm volatile("int $0x80" ::: "memory");
	check(count[0x80] == before + 1, "int_n", "int $0x80 did not reach its gate");
}

static volatile int nested_seen, blocked_ok;
static void on_0x41(struct frame *f)
{
	(void)f;
	sti();
	self_ipi(0x81);		/* higher priority class: must interrupt this handler */
	nested_seen = wait_count(0x81, 1, 1000);
	cli();
	eoi();
}
static void on_0x82(struct frame *f)
{
	(void)f;
	sti();
	self_ipi(0x42);		/* lower class: held until this one's EOI */
	spin_ms(20);
	blocked_ok = count[0x42] == 0;
	cli();
	eoi();
}

static void test_lapic(void)
{
	sti();
	self_ipi(0x40);
	check(wait_count(0x40, 1, 1000), "self_ipi", "a self IPI did not arrive");
	cli();

	action[0x41] = on_0x41;
	norder = 0;
	sti();
	self_ipi(0x41);
	wait_count(0x41, 1, 1000);
	cli();
	check(nested_seen && order[0] == 0x41 && order[1] == 0x81, "nested", "a higher-priority interrupt did not nest");

	action[0x82] = on_0x82;
	sti();
	self_ipi(0x82);
	int later = wait_count(0x42, 1, 1000);
	cli();
	check(blocked_ok && later, "eoi_priority", "a lower-priority interrupt was not held until EOI");

	lapic_write(0x80, 0x50);	/* TPR: class 5 and below wait */
	sti();
	self_ipi(0x45);
	spin_ms(20);
	int held = count[0x45] == 0;
	lapic_write(0x80, 0);
	int taken = wait_count(0x45, 1, 1000);
	cli();
	check(held && taken, "tpr", "TPR did not hold an interrupt back, or did not let it go");
}

static void timer_calibrate(void)
{
	lapic_write(0x3e0, 0xb);		/* divide by 1 */
	lapic_write(0x320, 0x10000 | 0x60);	/* masked */
	u64 t0 = rdtsc();
	lapic_write(0x380, 0xffffffff);
	u64 t1 = rdtsc();
	spin_ms(20);
	u64 t2 = rdtsc();
	u32 left = lapic_read(0x390);
	u64 t3 = rdtsc();
	lapic_write(0x380, 0);
	/* Each register access is an exit of the accelerator: take the middle of each. */
	timer_per_ms = (u64)(0xffffffffU - left) * tsc_khz / ((t2 + t3) / 2 - (t0 + t1) / 2);
}

static void test_timer(void)
{
	timer_calibrate();
	check(timer_per_ms > 0, "timer_counts", "the LAPIC timer's current count does not move");
	if (!timer_per_ms)
		return;
	lapic_write(0x320, 0x60);		/* one-shot, unmasked */
	u64 t0 = rdtsc();
	lapic_write(0x380, 5 * timer_per_ms);
	u32 cur = lapic_read(0x390);
	sti();
	while (!count[0x60] && rdtsc() - t0 < 2000 * tsc_khz)
		asm volatile("hlt");
	cli();
	u64 ms = (rdtsc() - t0) / tsc_khz;
	check2(count[0x60] == 1 && ms >= 4 && ms < 1000 && cur > 0 && cur <= 5 * timer_per_ms, "timer_oneshot",
	       "the one-shot timer did not fire once after ~5 ms (count, ms)", count[0x60], ms);
	check(lapic_read(0x390) == 0, "timer_oneshot_done", "the current count is not 0 after a one-shot");

	lapic_write(0x320, 0x20000 | 0x61);	/* periodic */
	t0 = rdtsc();
	lapic_write(0x380, timer_per_ms);
	sti();
	while (count[0x61] < 10 && rdtsc() - t0 < 3000 * tsc_khz)
		asm volatile("hlt");
	cli();
	lapic_write(0x380, 0);
	ms = (rdtsc() - t0) / tsc_khz;
	check2(count[0x61] >= 10 && ms >= 5 && ms < 2000, "timer_periodic", "10 periodic ticks did not come in ~10 ms (ticks, ms)", count[0x61], ms);
}

static void test_sti_hlt(void)
{
	/*
	 * A tick of the periodic timer stopped just before may still be pending (IRR): taken at the
	 * sti below, ahead of 0x44 (a higher class), it would end the hlt and leave 0x44 to the cli.
	 * Let anything pending be taken first.
	 */
	sti();
	spin_ms(5);
	lapic_write(0x320, 0x62);		/* a one-shot alarm in 500 ms, should the wake-up be lost */
	cli();
	self_ipi(0x44);				/* pending while IF=0 */
	u64 t0 = rdtsc();
	lapic_write(0x380, 500 * timer_per_ms);
	asm volatile("sti; hlt; cli" ::: "memory");
	u64 ms = (rdtsc() - t0) / tsc_khz;
	lapic_write(0x380, 0);
	check2(count[0x44] == 1 && ms < 200, "sti_hlt", "sti; hlt slept through a pending interrupt (count, ms)", count[0x44], ms);
}

static void on_level(struct frame *f)
{
	(void)f;
	if (count[0x5b] >= 2)
		outl(LOWER_GSI, 11);
	eoi();	/* the line still high: delivered again */
}

static void test_ioapic(void)
{
	ioapic_write(0x10 + 2 * 10 + 1, 0);
	ioapic_write(0x10 + 2 * 10, 0x10000 | 0x5a);	/* edge, masked */
	sti();
	outl(PULSE_GSI, 10);
	spin_ms(20);
	int masked = count[0x5a] == 0;
	ioapic_write(0x10 + 2 * 10, 0x5a);		/* unmasked */
	outl(PULSE_GSI, 10);
	int got = wait_count(0x5a, 1, 1000);
	cli();
	check(masked && got, "ioapic_mask", "a masked pin delivered, or an unmasked one did not");

	action[0x5b] = on_level;
	ioapic_write(0x10 + 2 * 11 + 1, 0);
	ioapic_write(0x10 + 2 * 11, 0x8000 | 0x5b);	/* level, unmasked */
	sti();
	outl(RAISE_GSI, 11);
	int twice = wait_count(0x5b, 2, 1000);
	spin_ms(20);
	cli();
	check(twice && count[0x5b] == 2, "ioapic_level", "a level-triggered pin was not delivered again after EOI while high (or after it went low)");
	ioapic_write(0x10 + 2 * 11, 0x10000);
}

static void on_pic(struct frame *f)
{
	(void)f;
	outb(0x20, 0x20);	/* non-specific EOI to the master 8259 */
}

static void test_pic_pit(void)
{
	outb(0x20, 0x11); outb(0x21, 0x70); outb(0x21, 0x04); outb(0x21, 0x01);
	outb(0xa0, 0x11); outb(0xa1, 0x78); outb(0xa1, 0x02); outb(0xa1, 0x01);
	outb(0x21, 0xdf);			/* only IRQ 5 */
	outb(0xa1, 0xff);
	lapic_write(0x350, 0x700);		/* LINT0: ExtINT */
	action[0x75] = on_pic;
	action[0x70] = on_pic;
	sti();
	outl(PULSE_GSI, 5);
	int got = wait_count(0x75, 1, 1000);
	outb(0x21, 0xff);			/* masked at the PIC */
	outl(PULSE_GSI, 5);
	spin_ms(20);
	cli();
	check(got && count[0x75] == 1, "pic", "the 8259 did not deliver IRQ 5 through LINT0, or did while masked");
	outb(0x20, 0x0b);			/* OCW3: read ISR */
	check(inb(0x20) == 0, "pic_isr", "the 8259's in-service register is not clear after EOI");

	/* PIT channel 0, rate generator, 10 ms, on IRQ 0. */
	outb(0x43, 0x34);
	outb(0x40, 11932 & 0xff);
	outb(0x40, 11932 >> 8);
	outb(0x43, 0x00);			/* latch channel 0 */
	u32 c1 = inb(0x40) | inb(0x40) << 8;
	spin_ms(2);
	outb(0x43, 0x00);
	u32 c2 = inb(0x40) | inb(0x40) << 8;
	check(c1 != c2 && c1 <= 11932 && c2 <= 11932, "pit_count", "the PIT's latched count does not move");
	u64 t0 = rdtsc();
	outb(0x21, 0xfe);			/* only IRQ 0 */
	sti();
	int five = wait_count(0x70, 5, 2000);
	cli();
	u64 ms = (rdtsc() - t0) / tsc_khz;
	outb(0x21, 0xff);
	outb(0x43, 0x30);			/* one-shot mode, never loaded: quiet */
	check(five && ms >= 35 && ms < 1500, "pit_irq0", "PIT channel 0 did not tick about every 10 ms");
	lapic_write(0x350, 0x10000);
}

static void test_tsc(void)
{
	u64 a = rdtsc(), b = rdtsc();
	u64 target = 1ULL << 40;
	asm volatile("wrmsr" : : "c"(0x10), "a"((u32)target), "d"((u32)(target >> 32)));
	u64 c = rdtsc();
	u32 lo, hi;
	asm volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(0x10));
	u64 d = (u64)hi << 32 | lo;
	check(b >= a && c >= target && c < target + 1000 * tsc_khz && d >= c, "tsc_msr", "writing the TSC MSR did not set the TSC");
}

static void test_mmio64(void)
{
	*(volatile u64 *)TEST_MMIO = 0x1122334455667788ULL;
	u64 v = *(volatile u64 *)(TEST_MMIO + 8);
	check(v == 0x8877665544332211ULL, "mmio64", "an 8-byte MMIO read did not come back whole");
}

static u32 inl(u16 port)
{
	u32 v;
	asm volatile("inl %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

static void test_eventfds(void)
{
	*(volatile u32 *)(TEST_MMIO + 0x1000) = 6;	/* no match: an MMIO exit */
	*(volatile u32 *)(TEST_MMIO + 0x1000) = 7;	/* matches: the eventfd, no exit */
	*(volatile u32 *)(TEST_MMIO + 0x1000) = 7;
	asm volatile("outw %w0, %w1" : : "a"(1), "Nd"(PIO_DOORBELL));
	u32 mmio = inl(MMIO_EVENTS), pio = inl(PIO_EVENTS);
	check2(mmio == 2 && pio == 1, "ioeventfd", "guest writes did not signal their ioeventfds (mmio, pio)", mmio, pio);

	ioapic_write(0x10 + 2 * 12 + 1, 0);
	ioapic_write(0x10 + 2 * 12, 0x5c);		/* edge, unmasked */
	sti();
	outl(SIGNAL_IRQFD, 0);
	int got = wait_count(0x5c, 1, 1000);
	cli();
	check(got, "irqfd", "a write to the irqfd did not raise its GSI");
	ioapic_write(0x10 + 2 * 12, 0x10000);
}

void guest_main(struct bootinfo *bi)
{
	struct { u16 limit; u64 base; } __attribute__((packed)) idtr = { sizeof(idt) - 1, (u64)idt };
	u16 cs;

	guest_name = "irqtest";
	tsc_khz = bi->tsc_khz;
	asm volatile("mov %%cs, %0" : "=r"(cs));
	for (int v = 0; v < 256; v++) {
		u64 a = (u64)isr_stubs + 16 * v;
		idt[v].offset0 = a;
		idt[v].selector = cs;
		idt[v].type = 0x8e;
		idt[v].offset1 = a >> 16;
		idt[v].offset2 = a >> 32;
	}
	asm volatile("lidt %0" : : "m"(idtr));
	outb(0x21, 0xff);
	outb(0xa1, 0xff);
	lapic_write(0xf0, 0x100 | 0xff);	/* software enable, spurious vector 0xff */

	test_exceptions();
	test_lapic();
	test_timer();
	test_sti_hlt();
	test_ioapic();
	test_pic_pit();
	test_tsc();
	test_mmio64();
	test_eventfds();
	printk("irqtest done failures=%u\n", failures);
	exit(failures ? 1 : 0);
}
