// A raw QMP connection for tests: writes exactly the bytes given, keeps every line received
// (QEMU and minivmm both end each message with a line break).
import net from 'node:net';

export class RawQmp {
  lines: string[] = [];
  closed = false;
  private buf = '';
  private wake: (() => void) | null = null;

  constructor(readonly s: net.Socket) {
    s.setEncoding('utf8');
    s.on('data', (d: string) => {
      this.buf += d;
      let nl: number;
      while ((nl = this.buf.indexOf('\n')) >= 0) { const l = this.buf.slice(0, nl).trim(); this.buf = this.buf.slice(nl + 1); if (l) this.lines.push(l); }
      this.wake?.();
    });
    s.on('close', () => { this.closed = true; this.wake?.(); });
    s.on('error', () => {});
  }

  static connect(path: string): Promise<RawQmp> {
    return new Promise((res, rej) => { const s = net.connect(path); s.once('connect', () => res(new RawQmp(s))); s.once('error', rej); });
  }

  /** Waits until `cond` holds, the connection closes or `ms` pass; returns `cond()`. */
  async until(cond: () => boolean, ms: number): Promise<boolean> {
    const t0 = Date.now();
    while (!cond()) {
      if (this.closed || Date.now() - t0 > ms) return cond();
      await new Promise<void>((r) => { this.wake = r; setTimeout(r, 50); });
    }
    return true;
  }

  /** Reads the greeting and negotiates; the lines so far are dropped. */
  async negotiate(): Promise<void> {
    if (!(await this.until(() => this.lines.length >= 1, 10_000))) throw new Error('no greeting');
    this.s.write('{"execute":"qmp_capabilities"}');
    if (!(await this.until(() => this.lines.length >= 2, 10_000))) throw new Error('no reply to qmp_capabilities');
    this.lines = [];
  }

  /** Every message received so far, parsed. */
  messages(): Record<string, unknown>[] { return this.lines.map((l) => JSON.parse(l)); }
}
