/*
 * virtio 1.x over virtio-mmio version 2, split virtqueues: the transport and
 * ring handling shared by the toy drivers.  No EVENT_IDX, no indirect
 * descriptors: the driver always notifies and always wants interrupts.
 */
#ifndef GUEST_VIRTIO_H
#define GUEST_VIRTIO_H

#include "lib.h"

/* virtio-mmio registers (virtio 1.x spec 4.2.2); all 32-bit. */
#define VIRTIO_MMIO_MAGIC_VALUE		0x000
#define VIRTIO_MMIO_VERSION		0x004
#define VIRTIO_MMIO_DEVICE_ID		0x008
#define VIRTIO_MMIO_DEVICE_FEATURES	0x010
#define VIRTIO_MMIO_DEVICE_FEATURES_SEL	0x014
#define VIRTIO_MMIO_DRIVER_FEATURES	0x020
#define VIRTIO_MMIO_DRIVER_FEATURES_SEL	0x024
#define VIRTIO_MMIO_QUEUE_SEL		0x030
#define VIRTIO_MMIO_QUEUE_NUM_MAX	0x034
#define VIRTIO_MMIO_QUEUE_NUM		0x038
#define VIRTIO_MMIO_QUEUE_READY		0x044
#define VIRTIO_MMIO_QUEUE_NOTIFY	0x050
#define VIRTIO_MMIO_INTERRUPT_STATUS	0x060
#define VIRTIO_MMIO_INTERRUPT_ACK	0x064
#define VIRTIO_MMIO_STATUS		0x070
#define VIRTIO_MMIO_QUEUE_DESC_LOW	0x080
#define VIRTIO_MMIO_QUEUE_DESC_HIGH	0x084
#define VIRTIO_MMIO_QUEUE_AVAIL_LOW	0x090
#define VIRTIO_MMIO_QUEUE_AVAIL_HIGH	0x094
#define VIRTIO_MMIO_QUEUE_USED_LOW	0x0a0
#define VIRTIO_MMIO_QUEUE_USED_HIGH	0x0a4
#define VIRTIO_MMIO_CONFIG_GENERATION	0x0fc
#define VIRTIO_MMIO_CONFIG		0x100

#define VIRTIO_MMIO_MAGIC		0x74726976	/* "virt" */

/* Device status bits (virtio 1.x spec 2.1). */
#define VIRTIO_STATUS_ACKNOWLEDGE	0x01
#define VIRTIO_STATUS_DRIVER		0x02
#define VIRTIO_STATUS_DRIVER_OK		0x04
#define VIRTIO_STATUS_FEATURES_OK	0x08
#define VIRTIO_STATUS_FAILED		0x80

#define BIT(n)				(1ULL << (n))
#define VIRTIO_F_VERSION_1		32
/* Bus addresses are physical here (no IOMMU), so this one costs nothing. */
#define VIRTIO_F_ACCESS_PLATFORM	33

#define VQ_DESC_F_NEXT			1
#define VQ_DESC_F_WRITE			2

/* Largest queue we set up (the vdpa simulators offer 256); rings need 3 pages. */
#define VQ_MAX				256
#define VQ_RING_BYTES			(3 * SZ_4K)

struct vq_desc {
	u64 addr;
	u32 len;
	u16 flags;
	u16 next;
};

struct vq_avail {
	u16 flags;
	u16 idx;
	u16 ring[];
};

struct vq_used_elem {
	u32 id;			/* head of the chain */
	u32 len;		/* bytes the device wrote */
};

struct vq_used {
	u16 flags;
	u16 idx;
	struct vq_used_elem ring[];
};

struct virtio_dev {
	const char *name;	/* "net", "blk": prefixes error messages */
	u64 base;
	u32 irq;
	u64 features;		/* negotiated */
	volatile u64 irqs;	/* interrupts taken */
};

/*
 * Index arithmetic is free-running u16, as in the virtio spec: slot = idx % num,
 * which is why num must be a power of 2.  The device owns everything between
 * last_used and avail_idx; the ring indexes it writes are read through
 * volatile pointers so the compiler never caches them.
 */
struct virtq {
	struct virtio_dev *dev;
	u32 index;		/* queue number, what QueueNotify takes */
	u16 num;		/* queue size, a power of 2 */
	u16 avail_idx;		/* our copy of avail->idx */
	u16 last_used;		/* next used entry to look at */
	struct vq_desc *desc;
	volatile struct vq_avail *avail;
	volatile struct vq_used *used;
};

static inline u32 virtio_read(const struct virtio_dev *d, u32 reg)
{
	return *(volatile u32 *)(d->base + reg);
}

static inline void virtio_write(const struct virtio_dev *d, u32 reg, u32 v)
{
	*(volatile u32 *)(d->base + reg) = v;
}

/* The first device of `type` (a BOOTINFO_DEV_*) in the boot info, or NULL. */
const struct bootinfo_device *virtio_find(const struct bootinfo *bi, u32 type);

/*
 * Reset, ACKNOWLEDGE, DRIVER, negotiate features (wanted & offered; must
 * include VERSION_1), FEATURES_OK, and route the interrupt.  Dies on failure.
 */
void virtio_begin(struct virtio_dev *d, const char *name, const struct bootinfo_device *bd,
		  u32 device_id, u64 wanted);
/* Set up queue `index` with at most `want` entries, its rings in `mem`
 * (VQ_RING_BYTES, 4 KiB aligned).  Dies if the queue does not exist. */
void virtq_init(struct virtq *vq, struct virtio_dev *d, u32 index, u16 want, void *mem);
/* After the queues (and any buffers) are set up: the device may go. */
void virtio_driver_ok(struct virtio_dev *d);

/* Config space reads (virtio 1.x spec 4.2.2: by field width), retried across changes. */
u8 virtio_config8(const struct virtio_dev *d, u32 off);
u64 virtio_config64(const struct virtio_dev *d, u32 off);

/* Make the chain at `head` available (no notification yet). */
void virtq_push(struct virtq *vq, u16 head);
/* Tell the device about everything pushed so far. */
void virtq_kick(struct virtq *vq);
/* Next used chain: 1 with *id and *len set, 0 if none yet. */
int virtq_pop(struct virtq *vq, u32 *id, u32 *len);

#endif
