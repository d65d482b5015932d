/* hello: the smallest end-to-end check of load, entry, boot info, serial and exit. */
#include "lib.h"

void guest_main(struct bootinfo *bi)
{
	serial_puts("Hello from minivmm guest\n");
	printk("ram=%lu cpus=%u tsc_khz=%u\n", bi->ram_size, bi->nr_cpus, bi->tsc_khz);
	exit(0);
}
