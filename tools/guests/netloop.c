/*
 * netloop: virtio-net loopback test (see common/net.c).  The device loops
 * every TX frame back to RX; lost, duplicated and corrupt frames are counted,
 * and so is the longest silence on RX (a device pause shows up there).
 *
 * Command line: size=N (frame payload bytes, default 64), frames=N (stop
 * after N frames received; 0 = run forever), period_ms=N (stats line period,
 * default 500; 0 = no periodic lines).
 * Exit: 0 done and clean, 1 done with lost/duplicated/corrupt frames,
 * 3 fatal driver error ("netloop: <reason>").
 */
#include "drivers.h"
#include "irq.h"

void guest_main(struct bootinfo *bi)
{
	u64 period, next;

	guest_name = "netloop";
	irq_init(bi);
	period = ms_to_tsc(cmdline_u64(bi, "period_ms", 500));
	net_init(bi);

	next = period ? rdtsc() + period : ~0ULL;
	for (;;) {
		int busy = net_poll();

		if (net_done()) {
			net_print();
			printk("netloop done\n");
			exit(net_clean() ? 0 : 1);
		}
		if (rdtsc() >= next) {
			net_print();
			next = rdtsc() + period;
		}
		if (!busy)
			irq_wait(next);
	}
}
