// A virtio-net device like vdpa_sim_net (Linux 6.12, drivers/vdpa/vdpa_sim/vdpa_sim_net.c): a frame
// sent on TX (vq 1) comes back on RX (vq 0) if the receive filter passes it; the control queue
// (vq 2) takes VIRTIO_NET_CTRL_MAC_ADDR_SET. Profile as observed on 6.12: device id 1, features
// 0x308830028 (MTU, MAC, STATUS, CTRL_VQ, CTRL_MAC_ADDR, ANY_LAYOUT, VERSION_1, ACCESS_PLATFORM;
// no MRG_RXBUF, so the net header travels as part of the frame), vring max 256, config 24 bytes,
// 2 groups (data, cvq), 2 ASes (docs/vhost-vdpa-live-update.md §2.5).
//
// The data path, frame by frame as vdpasim_net_work:
// - the first 4096 bytes of a TX chain are the frame (a page-sized bounce buffer);
// - receive filter: shorter than the net header (12 bytes with VERSION_1, else 10) + 6 → dropped;
//   broadcast or multicast destination → passed; else passed if strncmp(destination, config mac, 6)
//   is 0, which stops at a zero byte: with the all-zero default MAC every destination starting
//   with 00 passes. A dropped frame completes its TX chain with length 0 and uses no RX buffer;
// - no RX buffer (or an RX chain with a device-readable descriptor): that TX completes with 0 and
//   the device stops until the next kick (the following TX chains stay queued);
// - a TX chain with a device-writable descriptor stops the device with the chain consumed and
//   never completed, as vringh's "Unexpected writable desc" does.
import { VIRTIO_F, VIRTIO_ID } from '../../src/vhost.js';
import { SimDevice, type SimProfile } from './sim.js';
import { popAvail, pushUsed, unpop, wantsInterrupt, type Chain } from './virtqueue.js';
import type { Dma } from './dma.js';

// virtio-net as linux/virtio_net.h defines it; tools/layout-check.mjs checks every entry.
/** Feature bits (masks): VIRTIO_NET_F_<name>. */
export const VIRTIO_NET_F = { MTU: 1n << 3n, MAC: 1n << 5n, STATUS: 1n << 16n, CTRL_VQ: 1n << 17n, CTRL_MAC_ADDR: 1n << 23n } as const;
/** struct virtio_net_config: the fields vdpa_sim_net fills. */
export const VIRTIO_NET_CONFIG = { mac: 0, status: 6, max_virtqueue_pairs: 8, mtu: 10, sizeof: 24 } as const;
export const VIRTIO_NET_S_LINK_UP = 1;
/** The header in front of every frame: struct virtio_net_hdr, or virtio_net_hdr_v1 with VERSION_1. */
export const VIRTIO_NET_HDR = { sizeof: 10 } as const, VIRTIO_NET_HDR_V1 = { sizeof: 12 } as const;
export const netHdrSize = (features: bigint): number => ((features & VIRTIO_F.VERSION_1) ? VIRTIO_NET_HDR_V1 : VIRTIO_NET_HDR).sizeof;
/** Control queue: struct virtio_net_ctrl_hdr, the classes and commands (VIRTIO_NET_CTRL_<name>), the ack (VIRTIO_NET_<name>). */
export const VIRTIO_NET_CTRL_HDR = { class: 0, cmd: 1, sizeof: 2 } as const;
export const VIRTIO_NET_CTRL = { MAC: 1, MAC_ADDR_SET: 1 } as const;
export const VIRTIO_NET_ACK = { OK: 0, ERR: 1 } as const;
export const ETH_ALEN = 6;

const RX = 0, TX = 1, CVQ = 2;
const BATCH = 256, FRAME_MAX = 4096;

export function netProfile(mac?: string): SimProfile {
  // The MAC stays 00:00:00:00:00:00 unless given, as vdpasim_net without a `mac` attribute at
  // `vdpa dev add`. The guests send to the config MAC, the suite broadcasts: both pass the filter.
  const C = VIRTIO_NET_CONFIG, config = Buffer.alloc(C.sizeof);
  if (mac) Buffer.from(mac.replace(/:/g, ''), 'hex').copy(config, C.mac);
  config.writeUInt16LE(VIRTIO_NET_S_LINK_UP, C.status);
  config.writeUInt16LE(1, C.max_virtqueue_pairs);
  config.writeUInt16LE(1500, C.mtu);
  const F = VIRTIO_NET_F, features = F.MTU | F.MAC | F.STATUS | F.CTRL_VQ | F.CTRL_MAC_ADDR |
    VIRTIO_F.ANY_LAYOUT | VIRTIO_F.VERSION_1 | VIRTIO_F.ACCESS_PLATFORM; // 0x308830028
  return {
    deviceId: VIRTIO_ID.NET, features, vringMax: 256, nvqs: 3, nas: 2, ngroups: 2,
    vqGroup: (vq) => (vq === CVQ ? 1 : 0), config,
  };
}

export class NetDevice extends SimDevice {
  constructor(mac?: string) { super(netProfile(mac)); }

  protected work(): boolean {
    if (this.has(VIRTIO_NET_F.CTRL_VQ) && this.vqs[CVQ].ready) this.control();
    const rxq = this.vqs[RX], txq = this.vqs[TX];
    if (!txq.ready || !rxq.ready) return false;
    const txDma = this.dmaFor(TX), rxDma = this.dmaFor(RX);
    txDma.begin(); if (rxDma !== txDma) rxDma.begin();
    const tx = popAvail(txDma, txq, BATCH);
    if (tx.chains.length === 0) return false;
    const frames = this.framesOf(txDma, tx.chains);
    // RX buffers for the frames that will reach RX (up to the first TX chain that stops the device).
    let wanted = 0;
    for (let i = 0; i < tx.chains.length && !tx.chains[i].in.length; i++) if (frames[i] && this.accepts(frames[i]!)) wanted++;
    const rx = popAvail(rxDma, rxq, wanted);
    const rxSegs = [], rxData: Buffer[] = [], rxUsed: number[] = [], txUsed: number[] = [];
    let taken = 0, rxTaken = 0, stopped = false;
    for (const c of tx.chains) {
      taken++;
      if (c.in.length) { this.ringError('Unexpected writable desc in a TX chain'); stopped = true; break; }
      const frame = frames[taken - 1];
      if (!frame || !this.accepts(frame)) { txUsed.push(c.head, 0); this.counters.framesDropped++; continue; }
      const r = rx.chains[rxTaken];
      if (r) rxTaken++;
      if (!r || r.out.length || r.inLen === 0) {
        // rx_overrun: this frame is lost; the rest waits for the next kick. (A zero-length RX
        // buffer is the kernel's rx_errors: neither chain completed.)
        if (!r || r.out.length) txUsed.push(c.head, 0);
        this.counters.framesDropped++;
        stopped = true;
        break;
      }
      const n = Math.min(frame.length, r.inLen);
      rxSegs.push(...clip(r.in, n));
      rxData.push(frame.subarray(0, n));
      rxUsed.push(r.head, n);
      txUsed.push(c.head, 0);
      this.counters.framesLooped++;
    }
    unpop(txq, tx.chains.length - taken);
    unpop(rxq, rx.chains.length - rxTaken);
    if (rxSegs.length && !rxDma.scatter(rxSegs, rxData.length === 1 ? rxData[0] : Buffer.concat(rxData))) throw new Error('Failed to write RX buffers');
    pushUsed(rxDma, rxq, rxUsed);
    pushUsed(txDma, txq, txUsed);
    if (rxUsed.length && wantsInterrupt(rx.flags)) this.signal(rxq);
    if (txUsed.length && wantsInterrupt(tx.flags)) this.signal(txq);
    return !stopped && tx.chains.length === BATCH; // more may be waiting
  }

  /** The first FRAME_MAX bytes of each TX chain; null where they cannot be read (completed with 0). */
  private framesOf(dma: Dma, chains: Chain[]): (Buffer | null)[] {
    const segs = chains.map((c) => clip(c.out, FRAME_MAX));
    const all = dma.gather(segs.flat()); // one copy for the whole batch when it all translates
    if (!all) return segs.map((s) => (s.length ? dma.gather(s) : null));
    let at = 0;
    return segs.map((s) => {
      const len = s.reduce((a, x) => a + x.len, 0);
      at += len;
      return len ? all.subarray(at - len, at) : null;
    });
  }

  /** vdpa_sim_net's receive_filter. */
  private accepts(frame: Buffer): boolean {
    const hdr = netHdrSize(this.features);
    if (frame.length < hdr + ETH_ALEN) return false;
    const dst = frame.subarray(hdr, hdr + ETH_ALEN);
    if (dst[0] & 1) return true; // broadcast or multicast
    for (let i = 0; i < ETH_ALEN; i++) { // strncmp(dst, mac, ETH_ALEN)
      if (dst[i] !== this.config[i]) return false;
      if (dst[i] === 0) return true;
    }
    return true;
  }

  /**
   * vdpasim_handle_cvq: VIRTIO_NET_CTRL_MAC / MAC_ADDR_SET. As in the kernel, the status of a
   * command of another class is the previous command's (it is not reset), a short command stops
   * the queue with its chain consumed, and every completion signals (no NO_INTERRUPT check).
   */
  private control(): void {
    const vq = this.vqs[CVQ], dma = this.dmaFor(CVQ);
    dma.begin();
    const { chains } = popAvail(dma, vq, BATCH);
    const used: number[] = [];
    let status: number = VIRTIO_NET_ACK.ERR, taken = 0;
    for (const c of chains) {
      taken++;
      const H = VIRTIO_NET_CTRL_HDR, cmd = dma.gather(clip(c.out, H.sizeof + ETH_ALEN));
      if (!cmd || cmd.length < H.sizeof) { this.ringError('control command shorter than its header'); break; }
      if (cmd[H.class] === VIRTIO_NET_CTRL.MAC) {
        status = VIRTIO_NET_ACK.ERR;
        if (cmd[H.cmd] === VIRTIO_NET_CTRL.MAC_ADDR_SET) {
          cmd.copy(this.config, VIRTIO_NET_CONFIG.mac, H.sizeof);
          if (cmd.length === H.sizeof + ETH_ALEN) status = VIRTIO_NET_ACK.OK;
        }
      }
      used.push(c.head, dma.scatter(c.in, Buffer.from([status])) && c.inLen ? 1 : 0);
    }
    unpop(vq, chains.length - taken);
    pushUsed(dma, vq, used);
    for (let i = 0; i < used.length; i += 2) this.signal(vq);
  }
}

/** The first `max` bytes of a segment list. */
export function clip(segs: { addr: number; len: number }[], max: number): { addr: number; len: number }[] {
  const out = [];
  for (const s of segs) { if (max <= 0) break; const n = Math.min(s.len, max); out.push({ addr: s.addr, len: n }); max -= n; }
  return out;
}
