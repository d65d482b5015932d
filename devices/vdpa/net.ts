// A virtio-net device like vdpa_sim_net: every frame sent on TX (vq 1) comes back on RX (vq 0);
// the control queue (vq 2) takes VIRTIO_NET_CTRL_MAC_ADDR_SET. Profile as observed on 6.12
// (spec §2.5): device id 1, features 0x308830028 (MTU, MAC, STATUS, CTRL_VQ, CTRL_MAC_ADDR,
// ANY_LAYOUT, VERSION_1, ACCESS_PLATFORM; no MRG_RXBUF, so the 12-byte VERSION_1 header is
// copied along as part of the frame), vring max 256, config 24 bytes, 2 groups (data, cvq), 2 ASes.
import { SimDevice, type SimProfile } from './sim.js';
import { popAvail, pushUsed, wantsInterrupt, type Chain } from './virtqueue.js';

const RX = 0, TX = 1, CVQ = 2;
const VIRTIO_NET_F_CTRL_VQ = 1n << 17n;
const BATCH = 256, MAX_FRAME = 65550;

export function netProfile(mac?: string): SimProfile {
  // The MAC stays 00:00:00:00:00:00 unless given, as vdpasim_net without a `mac` attribute at
  // `vdpa dev add`. Loop-back doesn't depend on it: every frame comes back here, and the kernel's
  // receive filter passes what the guests send (broadcast, or to the config MAC, whatever it is).
  const config = Buffer.alloc(24);
  if (mac) Buffer.from(mac.replace(/:/g, ''), 'hex').copy(config, 0);
  config.writeUInt16LE(1, 6); // status: VIRTIO_NET_S_LINK_UP
  config.writeUInt16LE(1, 8); // max_virtqueue_pairs
  config.writeUInt16LE(1500, 10); // mtu
  return {
    deviceId: 1, features: 0x308830028n, vringMax: 256, nvqs: 3, nas: 2, ngroups: 2,
    vqGroup: (vq) => (vq === CVQ ? 1 : 0), config,
  };
}

export class NetDevice extends SimDevice {
  constructor(mac?: string) { super(netProfile(mac)); }

  protected work(): boolean {
    if (this.has(VIRTIO_NET_F_CTRL_VQ) && this.vqs[CVQ].ready) this.control();
    const rxq = this.vqs[RX], txq = this.vqs[TX];
    if (!txq.ready || !rxq.ready) return false;
    const txDma = this.dmaFor(TX), rxDma = this.dmaFor(RX);
    txDma.begin(); if (rxDma !== txDma) rxDma.begin();
    const tx = popAvail(txDma, txq, BATCH);
    if (tx.chains.length === 0) return false;
    const frames = tx.chains.map((c) => clip(c.out, MAX_FRAME));
    const all = txDma.gather(frames.flat());
    if (!all) throw new Error('Failed to read TX buffers');
    // One RX chain per frame; frames without an RX buffer are dropped (TX completes with 0).
    const rx = popAvail(rxDma, rxq, tx.chains.length);
    const rxSegs = [], rxData: Buffer[] = [], rxUsed: number[] = [], txUsed: number[] = [];
    let at = 0;
    for (let i = 0; i < tx.chains.length; i++) {
      const len = frames[i].reduce((a, s) => a + s.len, 0);
      const frame = all.subarray(at, at + len);
      at += len;
      txUsed.push(tx.chains[i].head, 0);
      const r = rx.chains[i];
      if (!r) { this.counters.framesDropped++; continue; }
      const n = Math.min(len, r.inLen);
      rxSegs.push(...clip(r.in, n));
      rxData.push(frame.subarray(0, n));
      rxUsed.push(r.head, n);
      this.counters.framesLooped++;
    }
    if (rxSegs.length && !rxDma.scatter(rxSegs, rxData.length === 1 ? rxData[0] : Buffer.concat(rxData))) throw new Error('Failed to write RX buffers');
    pushUsed(rxDma, rxq, rxUsed);
    pushUsed(txDma, txq, txUsed);
    if (rxUsed.length && wantsInterrupt(rx.flags)) this.signal(rxq);
    if (wantsInterrupt(tx.flags)) this.signal(txq);
    return tx.chains.length === BATCH; // more may be waiting
  }

  /** VIRTIO_NET_CTRL_MAC / MAC_ADDR_SET; anything else is answered VIRTIO_NET_ERR. */
  private control(): void {
    const vq = this.vqs[CVQ], dma = this.dmaFor(CVQ);
    dma.begin();
    const { chains, flags } = popAvail(dma, vq, BATCH);
    if (!chains.length) return;
    const used: number[] = [];
    for (const c of chains) {
      const cmd = dma.gather(c.out);
      let status = 1; // VIRTIO_NET_ERR
      if (cmd && cmd.length >= 8 && cmd[0] === 1 && cmd[1] === 1) { cmd.copy(this.config, 0, 2, 8); status = 0; }
      const written = writeStatus(dma, c, status);
      used.push(c.head, written);
    }
    pushUsed(dma, vq, used);
    if (wantsInterrupt(flags)) this.signal(vq);
  }
}

/** The first `max` bytes of a segment list. */
export function clip(segs: { addr: number; len: number }[], max: number): { addr: number; len: number }[] {
  const out = [];
  for (const s of segs) { if (max <= 0) break; const n = Math.min(s.len, max); out.push({ addr: s.addr, len: n }); max -= n; }
  return out;
}

function writeStatus(dma: import('./dma.js').Dma, c: Chain, status: number): number {
  const last = c.in[c.in.length - 1];
  if (!last || last.len < 1) return 0;
  return dma.write(last.addr, Buffer.from([status])) ? 1 : 0;
}
