/*
 * counter: a long-running guest for pause, snapshot and live-update tests.
 * All of its state lives in guest RAM, and every round re-checks that RAM, so
 * a VMM that loses or corrupts memory across such an operation makes it
 * print MISMATCH and exit 2.  The TSC check catches a clock restored badly.
 *
 * Command line: iters=N (counter increments per round, default 20000),
 * rounds=N (stop after N rounds; 0 = forever), seed=N (region contents),
 * touch=1 (write every 4 KiB page of RAM once first, as a guest that has used
 * all its memory has: the VMM's page tables then map all of it).
 */
#include "lib.h"

#define REGION_WORDS	(SZ_64K / 8)
#define MAX_SAMPLES	8192	/* one per 2 MiB covers 16 GiB; beyond that, spread out */
#define SAMPLE_REWRITE	16	/* rounds between rewrites, so pages keep getting dirtied */

static u64 counter;
static u64 region[REGION_WORDS];
static u64 region_sum;		/* kept up to date incrementally */
static u64 samples[MAX_SAMPLES];	/* addresses of the sampled words */
static u64 nr_samples;
static u64 sample_round;	/* round whose pattern the samples hold */

static void spin(u64 iters)
{
	/* Unrolled: at ~2 MIPS, loop overhead is most of a round's time. */
#pragma GCC unroll 4
	for (u64 i = 0; i < iters; i++) {
		counter++;
		barrier();	/* one real increment in RAM per iteration */
	}
}

/* Round and index both go into the value, so a stale word is caught. */
static u64 region_word(u64 seed, u64 round, u64 i)
{
	return mix64(seed ^ (round << 16) ^ i);
}

/* Position-dependent (^ i), so swapped words are caught too. */
static u64 region_checksum(void)
{
	u64 sum = 0;

#pragma GCC unroll 4
	for (u64 i = 0; i < REGION_WORDS; i++)
		sum += region[i] ^ i;
	return sum;
}

static void region_init(u64 seed)
{
	for (u64 i = 0; i < REGION_WORDS; i++)
		region[i] = region_word(seed, 0, i);
	region_sum = region_checksum();
}

static void region_step(u64 seed, u64 round)
{
	u64 i = mix64(seed + round) % REGION_WORDS;
	u64 v = region_word(seed, round, i);

	region_sum += (v ^ i) - (region[i] ^ i);
	region[i] = v;
}

static void samples_init(const struct bootinfo *bi)
{
	struct ram_iter it = { .bi = bi };
	u64 start, end, n = 0, stride;

	while (ram_next_chunk(&it, &start, &end))
		n++;
	stride = n > MAX_SAMPLES ? (n + MAX_SAMPLES - 1) / MAX_SAMPLES : 1;

	it = (struct ram_iter){ .bi = bi };
	for (u64 i = 0; ram_next_chunk(&it, &start, &end); i++)
		if (i % stride == 0 && nr_samples < MAX_SAMPLES)
			samples[nr_samples++] = chunk_page(start, end);
}

/* Sample value = address ^ f(round): wrong page or stale page both show. */
static void samples_write(u64 round)
{
	u64 k = mix64(round);

	for (u64 i = 0; i < nr_samples; i++)
		*(volatile u64 *)samples[i] = samples[i] ^ k;
	sample_round = round;
}

static void samples_check(void)
{
	u64 k = mix64(sample_round);

	for (u64 i = 0; i < nr_samples; i++) {
		u64 a = samples[i];

		if (*(volatile u64 *)a != (a ^ k)) {
			printk("MISMATCH sample 0x%lx\n", a);
			exit(2);
		}
	}
}

static void touch_all(const struct bootinfo *bi)
{
	struct ram_iter it = { .bi = bi };
	u64 start, end, pages = 0;

	while (ram_next_chunk(&it, &start, &end))
		for (u64 p = start; p < end; p += 4096, pages++)
			*(volatile u64 *)p = p;
	printk("touched %lu pages\n", pages);
}

void guest_main(struct bootinfo *bi)
{
	u64 iters = cmdline_u64(bi, "iters", 20000);
	u64 rounds = cmdline_u64(bi, "rounds", 0);
	u64 seed = cmdline_u64(bi, "seed", 0x5eed);
	u64 prev_tsc = rdtsc(), tsc, sum;

	if (cmdline_u64(bi, "touch", 0))
		touch_all(bi);
	region_init(seed);
	samples_init(bi);
	samples_write(0);

	for (u64 round = 1; !rounds || round <= rounds; round++) {
		spin(iters);

		region_step(seed, round);
		sum = region_checksum();
		if (sum != region_sum) {
			printk("MISMATCH round %lu expected 0x%lx got 0x%lx\n",
			       round, region_sum, sum);
			exit(2);
		}

		samples_check();
		if (round % SAMPLE_REWRITE == 0)
			samples_write(round);

		tsc = rdtsc();
		if (tsc < prev_tsc)
			printk("TSC BACKWARDS prev %lu now %lu\n", prev_tsc, tsc);
		prev_tsc = tsc;

		printk("counter %lu tsc %lu round %lu\n", counter, tsc, round);
	}
	printk("counter done\n");
	exit(0);
}
