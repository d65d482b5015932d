#include "virtio.h"
#include "irq.h"

#define RESET_TIMEOUT_MS	2000

const struct bootinfo_device *virtio_find(const struct bootinfo *bi, u32 type)
{
	for (u32 i = 0; i < bi->nr_devices; i++)
		if (bi->devices[i].type == type)
			return &bi->devices[i];
	return NULL;
}

/* The transport's "used buffer" interrupt: the main loop does the work. */
static void virtio_isr(void *arg)
{
	struct virtio_dev *d = arg;

	/* InterruptStatus is always "used buffer" here; skip the read (a VM exit). */
	virtio_write(d, VIRTIO_MMIO_INTERRUPT_ACK, 1);
	d->irqs++;
}

static void set_status(struct virtio_dev *d, u32 bits)
{
	virtio_write(d, VIRTIO_MMIO_STATUS, virtio_read(d, VIRTIO_MMIO_STATUS) | bits);
}

void virtio_begin(struct virtio_dev *d, const char *name, const struct bootinfo_device *bd,
		  u32 device_id, u64 wanted)
{
	u64 offered, t0;
	u32 v;

	d->name = name;
	d->base = bd->base;
	d->irq = bd->irq;
	if (virtio_read(d, VIRTIO_MMIO_MAGIC_VALUE) != VIRTIO_MMIO_MAGIC)
		die("%s: no virtio-mmio device at 0x%lx", name, d->base);
	v = virtio_read(d, VIRTIO_MMIO_VERSION);
	if (v != 2)
		die("%s: virtio-mmio version %u at 0x%lx, want 2", name, v, d->base);
	v = virtio_read(d, VIRTIO_MMIO_DEVICE_ID);
	if (v != device_id)
		die("%s: device id %u at 0x%lx, want %u", name, v, d->base, device_id);

	/* Reset, and wait for it to finish before touching anything else. */
	virtio_write(d, VIRTIO_MMIO_STATUS, 0);
	t0 = rdtsc();
	while (virtio_read(d, VIRTIO_MMIO_STATUS) != 0)
		if (rdtsc() - t0 > ms_to_tsc(RESET_TIMEOUT_MS))
			die("%s: device at 0x%lx did not reset", name, d->base);
	set_status(d, VIRTIO_STATUS_ACKNOWLEDGE);
	set_status(d, VIRTIO_STATUS_DRIVER);

	virtio_write(d, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
	offered = virtio_read(d, VIRTIO_MMIO_DEVICE_FEATURES);
	virtio_write(d, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
	offered |= (u64)virtio_read(d, VIRTIO_MMIO_DEVICE_FEATURES) << 32;
	if (!(offered & BIT(VIRTIO_F_VERSION_1))) {
		set_status(d, VIRTIO_STATUS_FAILED);
		die("%s: device offers no VIRTIO_F_VERSION_1 (features 0x%lx)", name, offered);
	}

	d->features = offered & wanted;
	virtio_write(d, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
	virtio_write(d, VIRTIO_MMIO_DRIVER_FEATURES, (u32)d->features);
	virtio_write(d, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
	virtio_write(d, VIRTIO_MMIO_DRIVER_FEATURES, d->features >> 32);
	set_status(d, VIRTIO_STATUS_FEATURES_OK);
	if (!(virtio_read(d, VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_FEATURES_OK)) {
		set_status(d, VIRTIO_STATUS_FAILED);
		die("%s: feature negotiation refused (offered 0x%lx, asked 0x%lx)", name,
		    offered, d->features);
	}

	/* Before any queue exists, so no edge can come and go unseen. */
	irq_route(d->irq, virtio_isr, d);
}

void virtq_init(struct virtq *vq, struct virtio_dev *d, u32 index, u16 want, void *mem)
{
	u64 desc = (u64)mem, avail = desc + SZ_4K, used = avail + SZ_4K;
	u32 max;
	u16 num = VQ_MAX;

	virtio_write(d, VIRTIO_MMIO_QUEUE_SEL, index);
	if (virtio_read(d, VIRTIO_MMIO_QUEUE_READY))
		die("%s: queue %u is already live after reset", d->name, index);
	max = virtio_read(d, VIRTIO_MMIO_QUEUE_NUM_MAX);
	if (!max)
		die("%s: queue %u does not exist", d->name, index);
	while (num > want || num > max)	/* the largest power of 2 that fits both */
		num /= 2;
	if (!num)
		die("%s: queue %u too small (max %u)", d->name, index, max);

	/* One page each: desc needs 16-byte, avail 2-byte, used 4-byte alignment. */
	memset(mem, 0, VQ_RING_BYTES);
	*vq = (struct virtq){
		.dev = d, .index = index, .num = num,
		.desc = (struct vq_desc *)desc,
		.avail = (volatile struct vq_avail *)avail,
		.used = (volatile struct vq_used *)used,
	};

	virtio_write(d, VIRTIO_MMIO_QUEUE_NUM, num);
	virtio_write(d, VIRTIO_MMIO_QUEUE_DESC_LOW, (u32)desc);
	virtio_write(d, VIRTIO_MMIO_QUEUE_DESC_HIGH, desc >> 32);
	virtio_write(d, VIRTIO_MMIO_QUEUE_AVAIL_LOW, (u32)avail);
	virtio_write(d, VIRTIO_MMIO_QUEUE_AVAIL_HIGH, avail >> 32);
	virtio_write(d, VIRTIO_MMIO_QUEUE_USED_LOW, (u32)used);
	virtio_write(d, VIRTIO_MMIO_QUEUE_USED_HIGH, used >> 32);
	virtio_write(d, VIRTIO_MMIO_QUEUE_READY, 1);
}

void virtio_driver_ok(struct virtio_dev *d)
{
	set_status(d, VIRTIO_STATUS_DRIVER_OK);
}

/* Config reads are consistent only if the generation did not move under them. */
u8 virtio_config8(const struct virtio_dev *d, u32 off)
{
	u32 gen;
	u8 v;

	do {
		gen = virtio_read(d, VIRTIO_MMIO_CONFIG_GENERATION);
		v = *(volatile u8 *)(d->base + VIRTIO_MMIO_CONFIG + off);
	} while (gen != virtio_read(d, VIRTIO_MMIO_CONFIG_GENERATION));
	return v;
}

u64 virtio_config64(const struct virtio_dev *d, u32 off)
{
	u32 gen;
	u64 v;

	do {
		gen = virtio_read(d, VIRTIO_MMIO_CONFIG_GENERATION);
		v = virtio_read(d, VIRTIO_MMIO_CONFIG + off);
		v |= (u64)virtio_read(d, VIRTIO_MMIO_CONFIG + off + 4) << 32;
	} while (gen != virtio_read(d, VIRTIO_MMIO_CONFIG_GENERATION));
	return v;
}

void virtq_push(struct virtq *vq, u16 head)
{
	vq->avail->ring[vq->avail_idx % vq->num] = head;
	/*
	 * The descriptors and the ring entry must be in memory before the
	 * device can see the new index.  x86 keeps stores in order; the
	 * compiler must not move them either.
	 */
	barrier();
	vq->avail->idx = ++vq->avail_idx;
}

void virtq_kick(struct virtq *vq)
{
	barrier();	/* ring updates before the doorbell */
	virtio_write(vq->dev, VIRTIO_MMIO_QUEUE_NOTIFY, vq->index);
}

int virtq_pop(struct virtq *vq, u32 *id, u32 *len)
{
	volatile struct vq_used_elem *e;

	if (vq->used->idx == vq->last_used)
		return 0;
	/* The device wrote the element (and the buffer) before the index. */
	barrier();
	e = &vq->used->ring[vq->last_used % vq->num];
	*id = e->id;
	*len = e->len;
	if (*id >= vq->num)
		die("%s: queue %u: device used descriptor %u of %u", vq->dev->name,
		    vq->index, *id, vq->num);
	vq->last_used++;
	return 1;
}
