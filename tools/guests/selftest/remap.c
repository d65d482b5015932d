/*
 * remap: switches to its own page tables that also map virtual 1 GiB to physical 0 (an alias,
 * away from identity), then computes for a while. Unicorn 2.0 cannot translate that mapping: the
 * accelerator must stop the guest with a clear message rather than let it read wrong memory.
 */
#include "lib.h"

#define TABLES 0x600000ULL	/* above the image and the boot page tables */

void guest_main(struct bootinfo *bi)
{
	u64 *pml4 = (u64 *)TABLES, *pdpt = (u64 *)(TABLES + 0x1000), *pd = (u64 *)(TABLES + 0x2000);
	u64 t0;

	guest_name = "remap";
	for (int i = 0; i < 512; i++) {
		pml4[i] = pdpt[i] = 0;
		pd[i] = (u64)i << 21 | 0x83;	/* [0, 1 GiB) identity, 2 MiB pages */
	}
	pml4[0] = (u64)pdpt | 3;
	pdpt[0] = (u64)pd | 3;
	pdpt[1] = (u64)pd | 3;		/* [1 GiB, 2 GiB) -> [0, 1 GiB): not identity */
	printk("switching page tables\n");
	asm volatile("mov %0, %%cr3" : : "r"((u64)pml4) : "memory");
	t0 = rdtsc();
	while (rdtsc() - t0 < 2000 * (u64)bi->tsc_khz)
		;
	printk("still running with an aliased mapping\n");
	exit(1);
}
