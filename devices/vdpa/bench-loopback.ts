// Host-driven loopback throughput of the simulated net device, per DMA personality:
//   node dist/devices/vdpa/bench-loopback.js [seconds per mode, default 3] [batch, default 128]
// The driver keeps the RX ring full, posts `batch` TX frames (12-byte header + 64 bytes), kicks
// TX once, waits for the TX used index, collects RX and checks the bytes of one frame per batch.
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { open, close, O_RDWR } from '../../src/libc.js';
import { startVdpaDaemon } from './launch.js';
import { DriverMemory, bringUp, kick, ringArea, waitFor, closeQueues } from './driver.js';

const seconds = Number(process.argv[2] ?? 3), batch = Number(process.argv[3] ?? 128);
const FRAME = 12 + 64, RXBUF = 2048, NUM = 256;

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'vdpa-bench-'));
  const d = await startVdpaDaemon({ dir: join(dir, 'm'), devices: [{ name: 'va', type: 'net', dma: 'va' }, { name: 'pa', type: 'net', dma: 'pa' }] });
  try {
    for (const [i, path] of d.paths.entries()) {
      const fd = open(path, O_RDWR);
      const mem = new DriverMemory(4 << 20);
      const [rx, tx] = bringUp(fd, mem, 3, { num: NUM });
      const base = ringArea(3, NUM), txBase = base + NUM * RXBUF;
      const slotOf = new Map<number, number>();
      const postRx = (slot: number) => slotOf.set(rx.ring.add([{ off: base + slot * RXBUF, len: RXBUF, write: true }]), slot);
      for (let s = 0; s < NUM; s++) postRx(s);
      rx.ring.publish(); kick(rx.kick);
      let frames = 0, batches = 0, bad = 0;
      const t0 = process.hrtime.bigint(), end = t0 + BigInt(seconds * 1e9);
      let seq = 0;
      while (process.hrtime.bigint() < end) {
        for (let k = 0; k < batch; k++) {
          const off = txBase + k * FRAME;
          mem.buf.fill(0xff, off + 12, off + 18); // broadcast: past vdpa_sim_net's receive filter
          mem.buf.writeUInt32LE(seq + k, off + 18);
          tx.ring.add([{ off, len: FRAME, write: false }]);
        }
        tx.ring.publish(); kick(tx.kick);
        const want = tx.ring.availIdx;
        if (!waitFor(() => tx.ring.usedIdx() === want, 5000)) throw new Error('device stalled');
        tx.ring.collect();
        const got = rx.ring.collect();
        // check the first frame of the batch, give the buffers back
        const first = got[0];
        if (!first || first.len !== FRAME || mem.buf.readUInt32LE(base + slotOf.get(first.head)! * RXBUF + 18) !== seq) bad++;
        for (const slot of got.map((u) => slotOf.get(u.head)!)) postRx(slot);
        rx.ring.publish();
        frames += got.length; batches++; seq += batch;
      }
      const secs = Number(process.hrtime.bigint() - t0) / 1e9;
      const st = d.status().devices[i];
      console.log(`${['va', 'pa'][i]}: ${frames} frames in ${secs.toFixed(2)} s = ${Math.round(frames / secs)} frames/s ` +
        `(batch ${batch}, ${batches} kicks, ${bad} bad batches, device looped ${st.counters.framesLooped}, dropped ${st.counters.framesDropped})`);
      closeQueues([rx, tx]);
      close(fd);
      mem.free();
    }
  } finally {
    await d.stop();
  }
}
void waitFor;
main().catch((e) => { console.error(e); process.exit(1); });
