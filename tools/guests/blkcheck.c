/*
 * blkcheck: virtio-blk write-then-verify test (see common/blk.c).  Every
 * generation rewrites the first `blocks` 4 KiB blocks with new content and
 * reads them all back, several requests in flight, forever or for N rounds.
 *
 * Command line: blocks=N (default 256, capped by the capacity),
 * generations=N (stop after N; 0 = run forever), period_ms=N (stats line
 * period, default 500; 0 = no periodic lines).
 * Exit: 0 done and clean, 1 done with mismatches or I/O errors, 3 fatal
 * driver error ("blkcheck: <reason>").
 */
#include "drivers.h"
#include "irq.h"

void guest_main(struct bootinfo *bi)
{
	u64 period, next;

	guest_name = "blkcheck";
	irq_init(bi);
	period = ms_to_tsc(cmdline_u64(bi, "period_ms", 500));
	blk_init(bi);

	next = period ? rdtsc() + period : ~0ULL;
	for (;;) {
		int busy = blk_poll();

		if (blk_done()) {
			blk_print();
			printk("blkcheck done\n");
			exit(blk_clean() ? 0 : 1);
		}
		if (rdtsc() >= next) {
			blk_print();
			next = rdtsc() + period;
		}
		if (!busy)
			irq_wait(next);
	}
}
