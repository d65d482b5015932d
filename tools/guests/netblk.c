/*
 * netblk: netloop and blkcheck in one guest, both devices driven from one
 * loop (each poll does what is ready on that device, then the other).
 *
 * Command line: the union of both (size, frames, blocks, generations,
 * period_ms).  Each half that has a target prints its stats line and
 * "netloop done" / "blkcheck done" when it gets there, then stops; when both
 * have, "netblk done" and exit 0, or 1 if either saw errors.  Fatal driver
 * errors: "netblk: <reason>", exit 3.  Both devices must be present.
 */
#include "drivers.h"
#include "irq.h"

void guest_main(struct bootinfo *bi)
{
	int net_on = 1, blk_on = 1;
	u64 period, next;

	guest_name = "netblk";
	irq_init(bi);
	period = ms_to_tsc(cmdline_u64(bi, "period_ms", 500));
	net_init(bi);
	blk_init(bi);

	next = period ? rdtsc() + period : ~0ULL;
	for (;;) {
		int busy = 0;

		if (net_on)
			busy += net_poll();
		if (blk_on)
			busy += blk_poll();
		if (net_on && net_done()) {
			net_print();
			printk("netloop done\n");
			net_on = 0;
		}
		if (blk_on && blk_done()) {
			blk_print();
			printk("blkcheck done\n");
			blk_on = 0;
		}
		if (!net_on && !blk_on) {
			printk("netblk done\n");
			exit(net_clean() && blk_clean() ? 0 : 1);
		}
		if (rdtsc() >= next) {
			if (net_on)
				net_print();
			if (blk_on)
				blk_print();
			next = rdtsc() + period;
		}
		if (!busy)
			irq_wait(next);
	}
}
