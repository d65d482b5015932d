/*
 * memtest: tag a few words in every 2 MiB chunk of RAM above 4 MiB, then
 * check them all.  Writing everything before reading anything catches chunks
 * that alias each other (a wrong memslot or page table entry in the VMM), not
 * just memory that is missing.  Sparse on purpose: at ~2 MIPS a full test of
 * 16 GiB would take days; this takes about two seconds.
 */
#include "lib.h"

#define WORDS	8	/* at a pseudo-random page of the chunk */

/* Unique per address (odd multiplier), so a word that shows up elsewhere is caught. */
static u64 pattern(u64 addr)
{
	return addr * 0x9e3779b97f4a7c15ULL ^ 0x5a5a5a5a5a5a5a5aULL;
}

/*
 * Word i of a chunk: WORDS words at a random page spread the test over all
 * page offsets; one more at the chunk start sits at the same offset in every
 * chunk, so two chunks backed by the same memory overwrite each other's tag.
 */
static volatile u64 *spot(u64 start, u64 page, int i)
{
	return (volatile u64 *)(i < WORDS ? page + i * 8 : start);
}

static void fill(u64 start, u64 end)
{
	u64 page = chunk_page(start, end);

	for (int i = 0; i <= WORDS; i++)
		*spot(start, page, i) = pattern((u64)spot(start, page, i));
}

/* Address of the first bad word, or 0 (never a valid answer: we skip low RAM). */
static u64 check(u64 start, u64 end)
{
	u64 page = chunk_page(start, end);

	for (int i = 0; i <= WORDS; i++)
		if (*spot(start, page, i) != pattern((u64)spot(start, page, i)))
			return (u64)spot(start, page, i);
	return 0;
}

void guest_main(struct bootinfo *bi)
{
	struct ram_iter it = { .bi = bi };
	u64 start, end, chunks = 0, bad;

	while (ram_next_chunk(&it, &start, &end)) {
		fill(start, end);
		chunks++;
	}

	it = (struct ram_iter){ .bi = bi };
	while (ram_next_chunk(&it, &start, &end)) {
		bad = check(start, end);
		if (bad) {
			printk("memtest FAIL at 0x%lx\n", bad);
			exit(1);
		}
	}

	printk("memtest ok chunks=%lu ram=%lu\n", chunks, bi->ram_size);
	exit(0);
}
