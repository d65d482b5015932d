/*
 * virtio-blk write-then-verify test over the first `blocks` 4 KiB blocks.
 * Generation g writes every block with a pattern of (run nonce, g, block),
 * then reads every block back and checks it.  The nonce is new each boot, so
 * data left on the disk by an earlier run never passes for this run's.
 *
 * Request slot s owns descriptors 3s (header), 3s+1 (data), 3s+2 (status);
 * the used id 3s names the slot.
 */
#include "drivers.h"
#include "irq.h"
#include "virtio.h"

#define VIRTIO_BLK_F_RO		5
#define VIRTIO_BLK_T_IN		0
#define VIRTIO_BLK_T_OUT	1

#define SECTOR_SIZE		512
#define BLOCK_SIZE		4096
#define BLOCK_WORDS		(BLOCK_SIZE / 8)
#define SECTORS_PER_BLOCK	(BLOCK_SIZE / SECTOR_SIZE)
#define MAX_BLOCKS		65536	/* 256 MiB: plenty at ~2 MIPS */
#define DEPTH			8	/* requests in flight */
#define QUEUE_SIZE		32	/* a power of 2 with room for DEPTH 3-descriptor chains */
#define GOLDEN			0x9e3779b97f4a7c15ULL

_Static_assert(3 * DEPTH <= QUEUE_SIZE && DEPTH <= 32, "slots fit the queue and a u32 bitmap");

struct blk_hdr {
	u32 type;
	u32 reserved;
	u64 sector;
};

static struct virtio_dev dev;
static struct virtq vq;
static u8 ring[VQ_RING_BYTES] __attribute__((aligned(4096)));
static u64 data[DEPTH][BLOCK_WORDS] __attribute__((aligned(4096)));
static struct blk_hdr hdr[DEPTH];
static volatile u8 status[DEPTH];	/* written by the device */
static u32 req_block[DEPTH];
static u16 free_slots[DEPTH], nfree;
static u32 owned;			/* bit s: the device has slot s */
static u8 write_ok[MAX_BLOCKS / 8];	/* this generation's write of the block succeeded */

static u32 blocks, depth;
static u64 nonce, gen = 1, target;	/* target: generations to run, 0 = forever */
static int reading, done;		/* phase of generation gen */
static u32 next_block, finished;	/* of this phase: issued, completed (or skipped) */
static u64 written, verified, mismatches, ioerrs;

static u64 block_base(u32 b)
{
	return mix64(nonce ^ gen << 32 ^ b);
}

static void block_fill(u64 *w, u32 b)
{
	u64 v = block_base(b);

#pragma GCC unroll 4
	for (u32 i = 0; i < BLOCK_WORDS; i++, v += GOLDEN)
		w[i] = v;
}

static int block_ok(const u64 *w, u32 b)
{
	u64 v = block_base(b);

#pragma GCC unroll 4
	for (u32 i = 0; i < BLOCK_WORDS; i++, v += GOLDEN)
		if (w[i] != v)
			return 0;
	return 1;
}

static int blk_reap(void)
{
	u32 id, len;
	int n = 0;

	while (virtq_pop(&vq, &id, &len)) {
		u16 s = id / 3;
		u32 b;
		u8 st;

		if (id % 3 || !(owned & 1U << s))
			die("blk: device used descriptor %u, not a request it had", id);
		owned &= ~(1U << s);
		b = req_block[s];
		st = status[s];
		if (st) {
			ioerrs++;
			printk("blk IOERR block=%u status=%u\n", b, st);
			if (!reading)
				write_ok[b / 8] &= ~(1 << b % 8);
		} else if (!reading) {
			written++;
			write_ok[b / 8] |= 1 << b % 8;
		} else if (block_ok(data[s], b)) {
			verified++;
		} else {
			mismatches++;
			printk("blk MISMATCH block=%u generation=%lu\n", b, gen);
		}
		finished++;
		free_slots[nfree++] = s;
		n++;
	}
	return n;
}

/* Queue a request for block b in this phase; 0 if there is nothing to do for it. */
static int blk_issue(u32 b)
{
	u16 s;

	if (reading && !(write_ok[b / 8] & 1 << b % 8)) {
		finished++;	/* its write failed (already reported): nothing to verify */
		return 0;
	}
	s = free_slots[--nfree];
	hdr[s] = (struct blk_hdr){
		.type = reading ? VIRTIO_BLK_T_IN : VIRTIO_BLK_T_OUT,
		.sector = (u64)b * SECTORS_PER_BLOCK,
	};
	/* The data buffer is device-writable only for reads. */
	vq.desc[3 * s + 1].flags = VQ_DESC_F_NEXT | (reading ? VQ_DESC_F_WRITE : 0);
	status[s] = 0xff;	/* the device must overwrite it */
	req_block[s] = b;
	if (!reading)
		block_fill(data[s], b);
	owned |= 1U << s;
	virtq_push(&vq, 3 * s);
	return 1;
}

/* All of this phase's requests are done: read back, or start the next generation. */
static void blk_next_phase(void)
{
	if (!reading) {
		reading = 1;
	} else if (target && gen == target) {
		done = 1;
		return;
	} else {
		gen++;
		reading = 0;
	}
	next_block = 0;
	finished = 0;
}

int blk_poll(void)
{
	int n = blk_reap(), issued = 0;

	while (!done) {
		if (finished == blocks) {
			blk_next_phase();
			continue;
		}
		if (!nfree || next_block == blocks)
			break;
		issued += blk_issue(next_block++);
	}
	if (issued)
		virtq_kick(&vq);
	return n + issued;
}

void blk_init(const struct bootinfo *bi)
{
	const struct bootinfo_device *bd = virtio_find(bi, BOOTINFO_DEV_BLK);
	u64 want = cmdline_u64(bi, "blocks", 256), capacity;

	if (!bd)
		die("no virtio-blk device in the boot info");
	target = cmdline_u64(bi, "generations", 0);
	nonce = mix64(rdtsc());

	virtio_begin(&dev, "blk", bd, BOOTINFO_DEV_BLK,
		     BIT(VIRTIO_F_VERSION_1) | BIT(VIRTIO_F_ACCESS_PLATFORM));
	if (dev.features & BIT(VIRTIO_BLK_F_RO))
		die("blk: the device is read-only");
	capacity = virtio_config64(&dev, 0);	/* in 512-byte sectors, whatever blk_size says */
	if (want > capacity / SECTORS_PER_BLOCK)
		want = capacity / SECTORS_PER_BLOCK;
	if (want > MAX_BLOCKS)
		want = MAX_BLOCKS;
	if (!want)
		die("blk: disk too small (%lu sectors)", capacity);
	blocks = want;

	virtq_init(&vq, &dev, 0, QUEUE_SIZE, ring);
	depth = vq.num / 3 < DEPTH ? vq.num / 3 : DEPTH;
	if (!depth)
		die("blk: queue too small (%u)", vq.num);
	for (u16 s = 0; s < depth; s++) {
		struct vq_desc *d = &vq.desc[3 * s];

		d[0] = (struct vq_desc){ (u64)&hdr[s], sizeof(hdr[s]), VQ_DESC_F_NEXT, 3 * s + 1 };
		d[1] = (struct vq_desc){ (u64)data[s], BLOCK_SIZE, VQ_DESC_F_NEXT, 3 * s + 2 };
		d[2] = (struct vq_desc){ (u64)&status[s], 1, VQ_DESC_F_WRITE, 0 };
		free_slots[nfree++] = s;
	}

	virtio_driver_ok(&dev);
	printk("blk ready base=0x%lx irq=%u features=0x%lx capacity=%lu blocks=%u depth=%u\n",
	       dev.base, dev.irq, dev.features, capacity, blocks, depth);
}

void blk_print(void)
{
	printk("blk written=%lu verified=%lu mismatches=%lu generation=%lu irqs=%lu\n",
	       written, verified, mismatches, gen, dev.irqs);
}

int blk_done(void)
{
	return done;
}

int blk_clean(void)
{
	return !mismatches && !ioerrs;
}
