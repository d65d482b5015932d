/*
 * sleeper: prints "sleeping N", sleeps 100 ms on the LAPIC timer (the toy guests' irq_wait:
 * one-shot timer, "sti; hlt"), prints "woke N", and again: for tests that save and restore a VM
 * while it is halted with its timer armed (a timer lost in the state leaves it asleep forever).
 */
#include "lib.h"
#include "irq.h"

void guest_main(struct bootinfo *bi)
{
	u64 prev = 0;

	guest_name = "sleeper";
	irq_init(bi);
	for (u64 n = 1;; n++) {
		u64 t0 = rdtsc(), until = t0 + ms_to_tsc(100);

		printk("sleeping %lu\n", n);
		while (rdtsc() < until)
			irq_wait(until);
		if (t0 < prev)
			printk("TSC BACKWARDS\n");
		prev = t0;
		printk("woke %lu\n", n);
	}
}
