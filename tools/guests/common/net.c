/*
 * virtio-net loopback test: the device sends every TX frame back on RX.
 * Each frame carries a sequence number; frames come back in order, so a
 * jump ahead means frames were lost and a step back means a duplicate.
 *
 * Buffer ownership is fixed: RX buffer i is descriptor i of queue 0, TX slot
 * s is descriptor s of queue 1, so a used id names the buffer directly.
 * Enough RX buffers stay posted that the device never has to drop a frame:
 * frames it can still loop back before we next reap RX are at most the TX
 * window in flight when we last reaped plus the window we send after, so
 * 2 * window <= RX buffers.
 */
#include "drivers.h"
#include "irq.h"
#include "virtio.h"

#define NET_RXQ			0
#define NET_TXQ			1
#define VIRTIO_NET_F_MAC	5

#define NET_HDR_LEN	12	/* struct virtio_net_hdr_v1: VERSION_1, no MRG_RXBUF */
#define ETH_ALEN	6
#define ETH_HLEN	14
#define ETH_MTU		1500
#define ETH_P_TEST	0x88b5	/* IEEE local experimental ethertype */
#define RX_BUFS		64
#define RX_BUF_LEN	(NET_HDR_LEN + 1526)	/* a full frame, even with a VLAN tag */
#define TX_WINDOW	32
#define TX_BUF_LEN	(NET_HDR_LEN + ETH_HLEN + ETH_MTU)

#define PROBE_MAGIC	0x706f6f6cU	/* "loop" */
#define GOLDEN		0x9e3779b97f4a7c15ULL
#define FNV_BASIS	0xcbf29ce484222325ULL
#define FNV_PRIME	0x100000001b3ULL

/* The frame payload.  Unaligned (it follows 26 header bytes): fine on x86. */
struct probe {
	u32 magic;
	u32 size;		/* payload bytes, this header included */
	u64 seq;
	u64 tsc;		/* when sent */
	u64 csum;		/* over all the other fields */
	u64 pattern[];		/* a function of seq alone */
} __attribute__((packed));

_Static_assert(RX_BUFS <= 64 && TX_WINDOW <= 64, "ownership bitmaps are u64");

static struct virtio_dev dev;
static struct virtq rxq, txq;
static u8 rx_ring[VQ_RING_BYTES] __attribute__((aligned(4096)));
static u8 tx_ring[VQ_RING_BYTES] __attribute__((aligned(4096)));
static u8 rx_buf[RX_BUFS][RX_BUF_LEN];
static u8 tx_buf[TX_WINDOW][TX_BUF_LEN];

static u32 size, words, frame_len;	/* probe bytes, pattern words, bytes on the wire */
static u16 tx_free[TX_WINDOW], tx_nfree;
static u64 rx_owned, tx_owned;		/* bit set: the device has that buffer */

static u64 target;			/* frames to receive, 0 = forever */
static u64 next_seq, expected;		/* next to send, next to come back */
static u64 sent, received, lost, duplicated, corrupt;
static u64 last_rx_tsc, max_gap;
static u64 window_gap;			/* longest gap since the last stats line */

static u64 fold(u64 s, u64 w)
{
	return (s ^ w) * FNV_PRIME;
}

static u64 probe_head_sum(const struct probe *p)
{
	return fold(fold(fold(FNV_BASIS, (u64)p->size << 32 | p->magic), p->seq), p->tsc);
}

static void probe_fill(struct probe *p, u64 seq)
{
	u64 w = mix64(seq), s;

	p->magic = PROBE_MAGIC;
	p->size = size;
	p->seq = seq;
	p->tsc = rdtsc();
	s = probe_head_sum(p);
	for (u32 i = 0; i < words; i++, w += GOLDEN) {
		p->pattern[i] = w;
		s = fold(s, w);
	}
	p->csum = s;
}

static int probe_ok(const struct probe *p)
{
	u64 w, s;

	if (p->magic != PROBE_MAGIC || p->size != size || p->seq >= next_seq)
		return 0;
	w = mix64(p->seq);
	s = probe_head_sum(p);
	for (u32 i = 0; i < words; i++, w += GOLDEN) {
		if (p->pattern[i] != w)
			return 0;
		s = fold(s, w);
	}
	return s == p->csum;
}

static struct probe *probe_at(u8 *buf)
{
	return (struct probe *)(buf + NET_HDR_LEN + ETH_HLEN);
}

static void rx_post(u16 i)
{
	rx_owned |= 1ULL << i;
	virtq_push(&rxq, i);
}

/* Check and count every frame that came back, and hand its buffer back at once. */
static int net_rx(void)
{
	u64 now = rdtsc();
	u32 id, len;
	int n = 0;

	while (virtq_pop(&rxq, &id, &len)) {
		const struct probe *p = probe_at(rx_buf[id]);

		n++;
		if (last_rx_tsc && now - last_rx_tsc > max_gap)
			max_gap = now - last_rx_tsc;
		if (last_rx_tsc && now - last_rx_tsc > window_gap)
			window_gap = now - last_rx_tsc;
		last_rx_tsc = now;
		if (!(rx_owned & 1ULL << id)) {
			duplicated++;	/* the device used a buffer twice; it still has it */
			continue;
		}
		rx_owned &= ~(1ULL << id);
		if (len != frame_len || !probe_ok(p)) {
			corrupt++;
		} else if (p->seq < expected) {
			duplicated++;
		} else {
			lost += p->seq - expected;	/* final: a later frame is here */
			expected = p->seq + 1;
			received++;
		}
		rx_post(id);
	}
	if (n)
		virtq_kick(&rxq);
	return n;
}

static int net_tx_reap(void)
{
	u32 id, len;
	int n = 0;

	while (virtq_pop(&txq, &id, &len)) {
		if (!(tx_owned & 1ULL << id))
			die("net: TX descriptor %u completed twice", id);
		tx_owned &= ~(1ULL << id);
		tx_free[tx_nfree++] = id;
		n++;
	}
	return n;
}

static int net_tx_send(void)
{
	int n = 0;

	while (tx_nfree) {
		u16 s = tx_free[--tx_nfree];

		probe_fill(probe_at(tx_buf[s]), next_seq++);
		tx_owned |= 1ULL << s;
		virtq_push(&txq, s);
		n++;
	}
	if (n) {
		sent += n;
		virtq_kick(&txq);
	}
	return n;
}

int net_poll(void)
{
	/* RX first: every buffer reaped is back in the ring before we send more. */
	int n = net_rx();

	n += net_tx_reap();
	return n + net_tx_send();
}

void net_init(const struct bootinfo *bi)
{
	const struct bootinfo_device *bd = virtio_find(bi, BOOTINFO_DEV_NET);
	u8 mac[ETH_ALEN] = { 0x02, 0, 0, 0, 0, 0x01 };	/* locally administered */
	u8 dst[ETH_ALEN] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
	u64 want = cmdline_u64(bi, "size", 64);
	u32 rx_bufs, window;

	if (!bd)
		die("no virtio-net device in the boot info");
	target = cmdline_u64(bi, "frames", 0);
	/* Probe header plus at least one pattern word, whole words, one MTU at most. */
	if (want < sizeof(struct probe) + 8)
		want = sizeof(struct probe) + 8;
	if (want > ETH_MTU)
		want = ETH_MTU;
	size = want & ~7ULL;
	words = (size - sizeof(struct probe)) / 8;
	frame_len = NET_HDR_LEN + ETH_HLEN + size;

	/* Not MRG_RXBUF, CSUM, GSO, CTRL_VQ or MQ: one plain queue pair. */
	virtio_begin(&dev, "net", bd, BOOTINFO_DEV_NET,
		     BIT(VIRTIO_F_VERSION_1) | BIT(VIRTIO_F_ACCESS_PLATFORM) | BIT(VIRTIO_NET_F_MAC));
	virtq_init(&rxq, &dev, NET_RXQ, RX_BUFS, rx_ring);
	virtq_init(&txq, &dev, NET_TXQ, TX_WINDOW, tx_ring);
	rx_bufs = rxq.num;
	window = txq.num < rx_bufs / 2 ? txq.num : rx_bufs / 2;
	if (!window)
		die("net: RX queue too small (%u)", rx_bufs);

	/* The simulator loops back only frames for its own MAC or broadcast. */
	if (dev.features & BIT(VIRTIO_NET_F_MAC))
		for (int i = 0; i < ETH_ALEN; i++)
			dst[i] = mac[i] = virtio_config8(&dev, i);

	/* TX slots: a zero virtio_net_hdr (no offloads) and a fixed Ethernet header. */
	for (u32 s = 0; s < window; s++) {
		u8 *eth = tx_buf[s] + NET_HDR_LEN;

		memcpy(eth, dst, ETH_ALEN);
		memcpy(eth + ETH_ALEN, mac, ETH_ALEN);
		eth[12] = ETH_P_TEST >> 8;
		eth[13] = ETH_P_TEST & 0xff;
		txq.desc[s] = (struct vq_desc){ .addr = (u64)tx_buf[s], .len = frame_len };
		tx_free[tx_nfree++] = s;
	}
	for (u32 i = 0; i < rx_bufs; i++) {
		rxq.desc[i] = (struct vq_desc){
			.addr = (u64)rx_buf[i], .len = RX_BUF_LEN, .flags = VQ_DESC_F_WRITE,
		};
		rx_post(i);
	}

	virtio_driver_ok(&dev);
	virtq_kick(&rxq);	/* no notifications before DRIVER_OK */
	printk("net ready base=0x%lx irq=%u features=0x%lx rx=%u window=%u size=%u\n",
	       dev.base, dev.irq, dev.features, rx_bufs, window, size);
}

void net_print(void)
{
	printk("net sent=%lu received=%lu lost=%lu duplicated=%lu corrupt=%lu max_gap_us=%lu irqs=%lu gap_us=%lu\n",
	       sent, received, lost, duplicated, corrupt, tsc_to_us(max_gap), dev.irqs, tsc_to_us(window_gap));
	window_gap = 0;
}

int net_done(void)
{
	return target && received >= target;
}

int net_clean(void)
{
	return !lost && !duplicated && !corrupt;
}
