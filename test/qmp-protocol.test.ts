// minivmm's QMP monitor over a stand-in machine (no KVM, no guest), and the same bytes sent to
// QEMU (qemu-system-x86_64 -machine none) and to it: the replies must have the same shape.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { describeWith } from './facility.js';
import { tempDir } from './harness.js';
import { RawQmp } from './qmp-raw.js';
import { fuzzCases, fuzzSeed, rng } from './fuzz/prng.js';
import { RESYNC, SHARED_COMMANDS, commandLine, garbage, junkValue, malformed, nonObject } from './fuzz/qmp.js';
import { QmpServer } from '../vmm/qmp.js';
import { installCommands, shutdownData, type MonitorTarget, type MigrationParameters, type ShutdownCause } from '../vmm/monitor.js';
import { VERSION } from '../vmm/vmm.js';
import { Migration } from '../vmm/migration.js';

/** The machine behind the monitor, without a VM: it records what the monitor asked of it. */
class StandIn implements MonitorTarget {
  running = true;
  params: MigrationParameters = { mode: 'normal', cprExecCommand: null, vdpaPath: 'auto', transferTimeoutMs: 5000 };
  capabilities = { events: false };
  /** The same Migration object the Vmm has: it sends the MIGRATION events. */
  migration = new Migration((status) => this.server.event('MIGRATION', { status }));
  readonly accelerator = { kind: 'emu' as const, kvmPresent: false };
  calls: string[] = [];
  constructor(private readonly server: QmpServer) {}
  async stop(): Promise<void> { this.calls.push('stop'); this.running = false; }
  cont(): void { this.calls.push('cont'); this.running = true; }
  quit(reason: ShutdownCause): void { this.calls.push(`quit ${reason}`); this.server.event('SHUTDOWN', shutdownData(reason)); }
  /** Completes at once, as a live update would: active, then completed with fractional figures. */
  migrate(mode: 'cpr-exec' | 'cpr-transfer', uri: string): void {
    this.calls.push(`migrate ${mode} ${uri}`);
    this.migration.setup();
    setImmediate(() => {
      this.migration.active();
      this.migration.completed({ n: 1, mode, downtime: 12.34, setup: 0.56, path: 'none', phases: { pause: 0.1 }, devices: [] });
    });
  }
  vdpaInfo(): unknown { return { daemon: null, devices: [] }; }
  stats(): Record<string, unknown> { return { 'first-run-ms': null, 'first-run-epoch-ms': null, updates: 0 }; }
}

async function standIn(path: string): Promise<{ server: QmpServer; target: StandIn }> {
  const server = await QmpServer.listen(path, VERSION);
  const target = new StandIn(server);
  installCommands(server, target);
  return { server, target };
}

type Message = Record<string, unknown> & { id?: unknown; error?: { class: string; desc: string } };
const pause = () => new Promise((r) => setTimeout(r, 20)); // lets each write arrive as its own read

/**
 * Sends `parts` one write at a time on a fresh connection (negotiated unless told), then a
 * sentinel; returns the replies before the sentinel's (events apart).
 */
async function exchange(path: string, parts: (string | Buffer)[], negotiate = true): Promise<Message[]> {
  const c = await RawQmp.connect(path);
  try {
    if (negotiate) await c.negotiate();
    else { await c.until(() => c.lines.length >= 1, 10_000); c.lines = []; }
    for (const p of parts) { c.s.write(p); await pause(); }
    c.s.write('{"execute":"sentinel-probe","id":"sentinel"}');
    const done = await c.until(() => c.messages().some((m) => m.id === 'sentinel'), 10_000);
    if (!done) throw new Error(`no reply to the sentinel; got ${JSON.stringify(c.lines).slice(0, 500)}`);
    const all = c.messages().filter((m) => !('event' in m)) as Message[];
    return all.slice(0, all.findIndex((m) => m.id === 'sentinel'));
  } finally { c.s.destroy(); }
}

/** A JSON value with its objects' members sorted (QEMU's dicts are hash tables: no order). */
const canonical = (v: unknown): unknown => (Array.isArray(v) ? v.map(canonical)
  : v !== null && typeof v === 'object' ? Object.fromEntries(Object.keys(v).sort().map((k) => [k, canonical((v as Record<string, unknown>)[k])])) : v);
/** A reply's kind, error class and id: what must agree with QEMU. */
const summary = (m: Message) => ('return' in m ? { kind: 'return', id: canonical(m.id) } : { kind: 'error', class: m.error?.class, id: canonical(m.id) });
/** Field names and JSON types (integers apart from other numbers). */
const shape = (v: unknown): unknown => (Array.isArray(v) ? v.map(shape)
  : v !== null && typeof v === 'object' ? Object.fromEntries(Object.keys(v).sort().map((k) => [k, shape((v as Record<string, unknown>)[k])]))
    : v === null ? 'null' : Number.isInteger(v) ? 'int' : typeof v);

describe('the QMP monitor over a stand-in machine', () => {
  const dir = tempDir('minivmm-qmp-');
  const path = join(dir, 'qmp.sock');
  let m: Awaited<ReturnType<typeof standIn>>;
  beforeAll(async () => { m = await standIn(path); });
  afterAll(() => m?.server.close());
  const ask = async (parts: (string | Buffer)[]) => exchange(path, parts);

  it('checks every argument before acting: unknown or mistyped arguments change nothing', async () => {
    const r = await ask([
      '{"execute":"stop","arguments":{"bogus":1},"id":1}',
      '{"execute":"migrate-set-parameters","arguments":{"mode":"cpr-exec","x-transfer-timeout-ms":0},"id":2}',
      '{"execute":"migrate-set-parameters","arguments":{"mode":"cpr-exec","downtime-limit":300},"id":3}',
      '{"execute":"migrate-set-parameters","arguments":{"x-vdpa-path":"fallback","mode":"cpr-teleport"},"id":4}',
      '{"execute":"migrate-set-parameters","arguments":{"cpr-exec-command":["a",1]},"id":5}',
      '{"execute":"query-migrate-parameters","id":6}',
    ]);
    expect(r.map((x) => x.error?.desc ?? x.return)).toEqual([
      "Parameter 'bogus' is unexpected",
      "Parameter 'x-transfer-timeout-ms' expects an integer from 1 to 600000",
      "Parameter 'downtime-limit' is unexpected",
      "Parameter 'mode' does not accept value 'cpr-teleport'",
      "Invalid parameter type for 'cpr-exec-command[1]', expected: string",
      { mode: 'normal', 'cpr-exec-command': [], 'x-vdpa-path': 'auto', 'x-transfer-timeout-ms': 5000 },
    ]);
    expect(r.map((x) => x.id)).toEqual([1, 2, 3, 4, 5, 6]);
    expect(m.target.calls).toEqual([]);
    expect(m.target.running).toBe(true);
  });

  it('capabilities: events is the one implemented, any other is refused as QEMU refuses an unknown one', async () => {
    const r = await ask([
      '{"execute":"migrate-set-capabilities","arguments":{"capabilities":[{"capability":"events","state":true},{"capability":"xbzrle","state":false}]}}',
      '{"execute":"query-migrate-capabilities"}',
      '{"execute":"migrate-set-capabilities","arguments":{"capabilities":[{"capability":"events","state":true}]}}',
      '{"execute":"query-migrate-capabilities"}',
      '{"execute":"migrate-set-capabilities","arguments":{"capabilities":[{"capability":"events","state":false}]}}',
    ]);
    expect(r[0].error).toEqual({ class: 'GenericError', desc: "Parameter 'capabilities[1].capability' does not accept value 'xbzrle'" });
    expect(r[1].return).toEqual([{ capability: 'events', state: false }]); // nothing applied from the refused list
    expect(r[3].return).toEqual([{ capability: 'events', state: true }]);
    expect(m.target.capabilities.events).toBe(false);
  });

  it('MIGRATION events only with the events capability; query-migrate in integer milliseconds', async () => {
    const run = async (events: boolean) => {
      const c = await RawQmp.connect(path);
      await c.negotiate();
      c.s.write(`{"execute":"migrate-set-capabilities","arguments":{"capabilities":[{"capability":"events","state":${events}}]}}`);
      c.s.write('{"execute":"migrate-set-parameters","arguments":{"mode":"cpr-exec"}}{"execute":"migrate","arguments":{"uri":"file:/dev/null"},"id":"m"}');
      await c.until(() => c.messages().some((x) => x.id === 'm'), 5000);
      for (let i = 0; i < 100 && m.target.migration.status !== 'completed'; i++) await pause();
      c.s.write('{"execute":"query-migrate","id":"q"}');
      await c.until(() => c.messages().some((x) => x.id === 'q'), 5000);
      c.s.destroy();
      const msgs = c.messages();
      return { events: msgs.filter((x) => x.event === 'MIGRATION').map((x) => (x.data as { status: string }).status), info: msgs.find((x) => x.id === 'q')!.return as Record<string, unknown> };
    };
    const off = await run(false);
    expect(off.events).toEqual([]);
    const on = await run(true);
    expect(on.events).toEqual(['setup', 'active', 'completed']);
    expect(on.info).toMatchObject({ status: 'completed', downtime: 12, 'setup-time': 1, 'total-time': 13, 'x-rolled-back': false });
    expect((on.info['x-cpr'] as { downtime: number }).downtime).toBe(12.34);
    expect(m.target.calls.filter((c) => c.startsWith('migrate'))).toEqual(['migrate cpr-exec file:/dev/null', 'migrate cpr-exec file:/dev/null']);
  });

  it("cpr-transfer takes QEMU 10's channels form: the cpr channel is the new process's socket", async () => {
    const chan = (type: string, addr: object) => ({ 'channel-type': type, addr });
    const unix = (p: string) => ({ transport: 'socket', type: 'unix', path: p });
    const migrate = (args: object) => `{"execute":"migrate","arguments":${JSON.stringify(args)}}`;
    m.target.migration = new Migration((status) => m.server.event('MIGRATION', { status }));
    const r = await ask([
      '{"execute":"migrate-set-parameters","arguments":{"mode":"cpr-transfer"}}',
      migrate({ channels: [chan('main', unix('/x/main.sock'))] }),
      migrate({ channels: [chan('main', unix('/x/main.sock')), chan('cpr', { transport: 'socket', type: 'inet', host: 'h', port: '1' })] }),
      migrate({ channels: [chan('main', unix('/x/a')), chan('main', unix('/x/b'))] }),
      migrate({ channels: [chan('cpr', unix('/x/cpr.sock'))] }),
      migrate({ channels: [chan('main', { transport: 'socket', type: 'unix' })] }),
      migrate({ channels: [chan('main', { transport: 'carrier-pigeon' })] }),
      migrate({ uri: 'unix:/x/cpr.sock', channels: [] }),
      migrate({ channels: [chan('main', unix('/x/main.sock')), chan('cpr', unix('/x/cpr.sock'))] }),
    ]);
    expect(r.map((x) => x.error?.desc ?? 'ok')).toEqual([
      'ok',
      "missing 'cpr' migration channel",
      'bad cpr channel address; must be unix',
      'Channel list has more than one main entry',
      'Channel list has no main entry',
      "Parameter 'channels[0].addr.path' is missing",
      "Parameter 'channels[0].addr.transport' does not accept value 'carrier-pigeon'",
      "need either 'uri' or 'channels' argument",
      'ok',
    ]);
    expect(m.target.calls.at(-1)).toBe('migrate cpr-transfer unix:/x/cpr.sock');
  });

  it('an object over the size limit, or nested too deep, gets one error; the next command is answered', async () => {
    const r = await ask([
      `{"execute":"query-status","arguments":{"pad":"${'y'.repeat(1 << 20)}"},"id":"big"}`,
      '{"execute":"query-status","id":"after-big"}',
      `{"execute":"query-status","id":${'['.repeat(5000)}${']'.repeat(5000)}}`,
      '{"execute":"query-status","id":"after-deep"}',
    ]);
    expect(r.map((x) => x.error?.desc ?? x.id)).toEqual([
      'JSON message longer than 1048576 bytes; the rest of it is skipped', 'after-big', 'JSON nesting depth limit exceeded', 'after-deep',
    ]);
  });

  it('quit answers with its id, then the machine ends with reason host-qmp-quit', async () => {
    const c = await RawQmp.connect(path);
    await c.negotiate();
    c.s.write('{"execute":"quit","id":{"q":[1]}}');
    await c.until(() => c.messages().some((x) => x.event === 'SHUTDOWN'), 5000);
    c.s.destroy();
    const msgs = c.messages();
    expect(msgs[0]).toEqual({ return: {}, id: { q: [1] } });
    expect(msgs[1]).toMatchObject({ event: 'SHUTDOWN', data: { guest: false, reason: 'host-qmp-quit' } });
    expect(m.target.calls.at(-1)).toBe('quit host-qmp-quit');
  });

  it('echoes ids exactly: a leading U+FEFF, NUL in modified UTF-8, surrogate pairs', async () => {
    const r = await ask(['{"execute":"query-status","id":"\ufeffa"}', Buffer.from('{"execute":"query-status","id":"\u00ef\u00bb\u00bfb\xc0\x80"}', 'latin1'), '{"execute":"query-status","id":"\ud83d\ude00"}']);
    expect(r.map((x) => x.id)).toEqual(['\ufeffa', '\ufeffb\u0000', '\u{1f600}']);
  });

  it('query-kvm and x-query-stats report the accelerator the machine runs on', async () => {
    const r = await ask(['{"execute":"query-kvm"}', '{"execute":"x-query-stats"}']);
    expect(r[0].return).toEqual({ enabled: false, present: false });
    expect(r[1].return).toMatchObject({ accelerator: 'emu' });
  });
});

/**
 * Differences from QEMU 7.2 that stay, each with its reason. The test below checks that each is
 * still a difference, so this list cannot go stale.
 */
const DIFFERENCES = {
  oob: 'QEMU offers the oob capability; minivmm runs commands one at a time and offers none, so enable ["oob"] is refused',
  capabilities: 'QEMU lists its 21 migration capabilities; minivmm implements and lists only events (the others are refused)',
  mode: "QEMU 7.2 has no migration 'mode' (8.2) nor cpr-exec / cpr-transfer (10.x): migrate-set-parameters refuses it there",
  ram: "query-migrate: QEMU's RAM statistics are absent (CPR copies no RAM; it stays in the memfds); minivmm adds x-cpr and x-rolled-back",
  commands: "minivmm has the commands a live-update VMM needs; QEMU's others (device_add, query-stats, ...) get CommandNotFound",
};

describeWith(['qemu'], 'the same bytes to QEMU and to minivmm', () => {
  const dir = tempDir('minivmm-qemu-');
  const qemus = new Map<string, ChildProcess>();
  /** How a QEMU ended, for a failure message (a closed connection is otherwise a mystery). */
  const fate = (path: string) => { const p = qemus.get(path); return p ? `qemu exit ${p.exitCode} signal ${p.signalCode}` : 'minivmm'; };
  let mini: Awaited<ReturnType<typeof standIn>>;
  const miniPath = join(dir, 'minivmm.sock');

  /** A QEMU with no machine at all: just its monitor. */
  async function qemu(name: string): Promise<string> {
    const path = join(dir, `${name}.sock`);
    const p = spawn('qemu-system-x86_64', ['-machine', 'none', '-nodefaults', '-display', 'none', '-qmp', `unix:${path},server=on,wait=off`], { stdio: ['ignore', 'ignore', 'inherit'] });
    qemus.set(path, p);
    for (let i = 0; i < 500; i++) {
      if (p.exitCode !== null) throw new Error(`qemu-system-x86_64 exited (${p.exitCode})`);
      if (existsSync(path)) { try { (await RawQmp.connect(path)).s.destroy(); return path; } catch { /* not listening yet */ } }
      await pause();
    }
    throw new Error('qemu-system-x86_64 did not listen');
  }
  let qemuPath: string;
  beforeAll(async () => { qemuPath = await qemu('qemu'); mini = await standIn(miniPath); });
  afterAll(() => { for (const p of qemus.values()) p.kill('SIGKILL'); mini?.server.close(); });

  // Each case: the writes, whether to negotiate first, and whether the error texts must match too.
  const cases: { name: string; parts: (string | Buffer)[]; negotiate?: boolean; sameWording?: boolean; shapeOf?: boolean; before?: () => void }[] = [
    { name: 'no newline', parts: ['{"execute":"query-status","id":1}'], shapeOf: true },
    { name: 'two objects in one write', parts: ['{"execute":"query-status","id":1}{"execute":"query-version","id":2}'], shapeOf: true },
    { name: 'one object split over several writes', parts: ['{"exe', 'cute":"query-st', 'atus","i', 'd":3', '}'] },
    { name: 'pretty-printed over several lines', parts: ['{\n  "execute": "query-status",\n  "id": 4\n}\n'] },
    { name: 'a lexical error, then recovery', parts: ['{"execute": @, "id": 1}{"execute":"query-status","id":2}'], sameWording: true },
    { name: 'malformed JSON', parts: ['{not json}', '{"a" 1}', '{"a":1,}', '["a" "b"]', '{"id":"\\x"}', '{"a":1,"a":2}', '01 '], sameWording: true },
    { name: 'an unclosed object ended by a control character', parts: ['{"execute":"query-status"', '\u0004'], sameWording: true },
    { name: 'invalid UTF-8 and bad \\u escapes', parts: [Buffer.from([0x7b, 0x22, 0x69, 0x64, 0x22, 0x3a, 0x22, 0xe2, 0x82, 0x22, 0x7d]), '{"id":"\\ud800"}', '{"id":"\\uFFFF"}'], sameWording: true },
    { name: 'arrays and scalars', parts: ['["a"]', '1 ', '"str"', 'null ', 'true ', '1.5 ', '{}'], sameWording: true },
    { name: "the request's own members", parts: ['{"execute":1,"id":1}', '{"execute":"query-status","arguments":[],"id":2}', '{"execute":"query-status","foo":1,"id":3}', '{"exec-oob":"query-status","id":4}'], sameWording: true },
    { name: 'an unknown command', parts: ['{"execute":"no-such-command","id":1}'], sameWording: true },
    { name: 'an unknown argument', parts: ['{"execute":"stop","arguments":{"bogus":1},"id":1}', '{"execute":"query-status","arguments":{"x":1},"id":2}'], sameWording: true },
    { name: 'a wrongly typed argument', parts: ['{"execute":"migrate-set-capabilities","arguments":{"capabilities":[{"capability":"events","state":1}]},"id":1}', '{"execute":"migrate","arguments":{"uri":5},"id":2}', '{"execute":"migrate-set-capabilities","arguments":{"capabilities":{}},"id":3}'], sameWording: true },
    { name: 'a missing argument', parts: ['{"execute":"migrate-set-capabilities","arguments":{},"id":1}', '{"execute":"migrate-set-capabilities","arguments":{"capabilities":[{"capability":"events"}]},"id":2}'], sameWording: true },
    {
      name: 'id echo for each JSON type',
      parts: ['1', '-5', '1.5', '"s"', '"\\u00e9\'"', "'single'", 'true', 'false', 'null', '[1,"a",null,[]]', '{"a":{"b":[]},"c":0}'].map((id) => `{"execute":"query-status","id":${id}}`),
    },
    { name: 'a command before negotiation', negotiate: false, parts: ['{"execute":"query-status","id":1}', '{"execute":"no-such-command","id":2}', '{"id":3}', '{"execute":"qmp_capabilities","id":4}', '{"execute":"qmp_capabilities","id":5}'], sameWording: true },
    { name: 'events capability and query-kvm', before: () => { mini.target.migration = new Migration((status) => mini.server.event('MIGRATION', { status })); }, parts: ['{"execute":"migrate-set-capabilities","arguments":{"capabilities":[{"capability":"events","state":true}]},"id":1}', '{"execute":"query-kvm","id":2}', '{"execute":"query-migrate","id":3}'], shapeOf: true },
  ];

  for (const c of cases) {
    it(c.name, async () => {
      c.before?.();
      const [q, mv] = [await exchange(qemuPath, c.parts, c.negotiate ?? true), await exchange(miniPath, c.parts, c.negotiate ?? true)];
      expect(q.length, JSON.stringify(q)).toBeGreaterThan(0);
      expect(mv.map(summary), `QEMU: ${JSON.stringify(q)}\nminivmm: ${JSON.stringify(mv)}`).toEqual(q.map(summary));
      if (c.sameWording) expect(mv.map((x) => x.error?.desc)).toEqual(q.map((x) => x.error?.desc));
      if (c.shapeOf) expect(mv.map((x) => shape(x.return))).toEqual(q.map((x) => shape(x.return)));
    });
  }

  it('migration: MIGRATION events only with the capability, and query-migrate with the same integer times', async () => {
    const flow = async (path: string, params: string, uri: string, events: boolean) => {
      const c = await RawQmp.connect(path);
      await c.negotiate();
      c.s.write(`{"execute":"migrate-set-capabilities","arguments":{"capabilities":[{"capability":"events","state":${events}}]}}${params}`);
      c.s.write(`{"execute":"migrate","arguments":{"uri":${JSON.stringify(uri)}},"id":"m"}`);
      let info: Record<string, unknown> = {};
      // QMP's way to follow a migration without events: poll query-migrate.
      for (let i = 0; i < 250 && info.status !== 'completed'; i++) {
        const n = c.lines.length;
        c.s.write('{"execute":"query-migrate","id":"q"}');
        const answered = await c.until(() => c.messages().slice(n).some((x) => x.id === 'q'), 5000);
        if (!answered) throw new Error(`no answer to query-migrate (connection ${c.closed ? 'closed' : 'open'}, ${fate(path)}): ${JSON.stringify(c.lines).slice(0, 800)}`);
        info = c.messages().slice(n).find((x) => x.id === 'q')!.return as Record<string, unknown>;
        if (info.status !== 'completed') await pause();
      }
      c.s.destroy();
      const msgs = c.messages();
      return { reply: msgs.find((x) => x.id === 'm'), events: msgs.filter((x) => x.event === 'MIGRATION').map((x) => (x.data as { status: string }).status), info };
    };
    const qemuOff = await flow(await qemu('qemu-off'), '', 'exec:cat > /dev/null', false);
    const qemuOn = await flow(await qemu('qemu-on'), '', 'exec:cat > /dev/null', true);
    const setMode = '{"execute":"migrate-set-parameters","arguments":{"mode":"cpr-exec"}}'; // see DIFFERENCES.mode
    mini.target.migration = new Migration((status) => mini.server.event('MIGRATION', { status }));
    const miniOff = await flow(miniPath, setMode, 'file:/dev/null', false);
    const miniOn = await flow(miniPath, setMode, 'file:/dev/null', true);
    for (const r of [qemuOff, qemuOn, miniOff, miniOn]) expect(r.reply).toEqual({ return: {}, id: 'm' });
    expect(qemuOff.events).toEqual([]);
    expect(miniOff.events).toEqual([]);
    expect(miniOn.events).toEqual(qemuOn.events);
    // The members both have carry the same types (int milliseconds); QEMU's others are its RAM
    // statistics (DIFFERENCES.ram), minivmm's others are x- extensions.
    const common = Object.keys(qemuOn.info).filter((k) => k in miniOn.info);
    expect(common.sort()).toEqual(['downtime', 'setup-time', 'status', 'total-time']);
    for (const k of common) expect(shape(miniOn.info[k]), k).toEqual(shape(qemuOn.info[k]));
    expect(Object.keys(qemuOn.info).filter((k) => !common.includes(k))).toEqual(['ram']);
    expect(Object.keys(miniOn.info).filter((k) => !common.includes(k)).every((k) => k.startsWith('x-'))).toBe(true);
  });

  it('differential fuzz: generated input gives replies of the same kinds, classes and ids', async () => {
    const seed = fuzzSeed(0x9e3);
    const r = rng(seed);
    const N = fuzzCases(3000);
    const fuzzQemu = await qemu('qemu-fuzz');
    // Input both servers read the same way: the commands they share, junk arguments and ids,
    // mangled and non-object JSON, raw bytes. Left out: numbers that overflow a double (QEMU
    // prints `inf`, which is not JSON) and messages past minivmm's 1 MiB limit.
    const item = (): string | Buffer => {
      for (;;) {
        const kind = r.pick(['command', 'command', 'unknown', 'malformed', 'malformed', 'nonobject', 'garbage']);
        const x = kind === 'command' ? commandLine(r, SHARED_COMMANDS).text : kind === 'malformed' ? malformed(r, SHARED_COMMANDS)
          : kind === 'unknown' ? JSON.stringify({ execute: `x-none-${r.str(8, 'abcdefgh')}`, arguments: { a: junkValue(r) } })
            : kind === 'nonobject' ? nonObject(r) : garbage(r);
        if (x.length < 256 * 1024 && !/\d[eE][+-]?\d{3}/.test(x.toString('latin1'))) return x;
      }
    };
    // Mangled names can hit a command QEMU has and minivmm has not (DIFFERENCES.commands).
    const names = async (path: string) => new Set(((await exchange(path, ['{"execute":"query-commands"}']))[0].return as { name: string }[]).map((c) => c.name));
    const [qemuCommands, miniCommands] = [await names(fuzzQemu), await names(miniPath)];
    const notHere = (m: Message) => m.error?.class === 'CommandNotFound' && qemuCommands.has(/^The command (.*) has not been found$/.exec(m.error.desc)?.[1] ?? '')
      && !miniCommands.has(/^The command (.*) has not been found$/.exec(m.error.desc)![1]);
    let sent = 0;
    const mismatches: string[] = [];
    while (sent < N) {
      const batch = Buffer.concat(Array.from({ length: 100 }, () => [Buffer.from(item()), Buffer.from(`\n${RESYNC}`)]).flat());
      const [q, mv] = [await exchange(fuzzQemu, [batch]), await exchange(miniPath, [batch])];
      // Error texts are compared where they do not depend on QEMU's hash order of members or on
      // how a long stray token is quoted.
      const norm = (m: Message) => ({ ...summary(m), desc: /^JSON parse error, (?!stray)/.test(m.error?.desc ?? '') ? m.error!.desc : undefined });
      const at = Array.from({ length: Math.max(q.length, mv.length) }, (_, i) => i)
        .find((i) => JSON.stringify(q[i] && norm(q[i])) !== JSON.stringify(mv[i] && norm(mv[i])) && !(mv[i] && notHere(mv[i])));
      if (at !== undefined && mismatches.length < 5) {
        mismatches.push(`batch at ${sent} (seed ${seed}), reply ${at} of ${q.length} / ${mv.length}: QEMU ${JSON.stringify(q.slice(at, at + 2)).slice(0, 400)}, minivmm ${JSON.stringify(mv.slice(at, at + 2)).slice(0, 400)}`);
      }
      sent += 100;
    }
    await exchange(miniPath, ['{"execute":"cont"}']);
    expect(mismatches, `seed ${seed}`).toEqual([]);
    expect(sent).toBeGreaterThanOrEqual(N);
  }, 120_000);

  it('quit: the reply carries the id, SHUTDOWN says host-qmp-quit', async () => {
    const run = async (path: string) => {
      const c = await RawQmp.connect(path);
      await c.negotiate();
      c.s.write('{"execute":"quit","id":"q"}');
      await c.until(() => c.messages().some((x) => x.id === 'q') && c.messages().some((x) => x.event === 'SHUTDOWN'), 5000);
      c.s.destroy();
      return { reply: c.messages().find((x) => x.id === 'q'), shutdown: c.messages().find((x) => x.event === 'SHUTDOWN')?.data };
    };
    expect(await run(miniPath)).toEqual(await run(await qemu('qemu-quit')));
  });

  it('the differences that stay are still differences', async () => {
    expect(Object.keys(DIFFERENCES)).toEqual(['oob', 'capabilities', 'mode', 'ram', 'commands']);
    const oob = '{"execute":"qmp_capabilities","arguments":{"enable":["oob"]},"id":1}';
    const [qo, mo] = [await exchange(qemuPath, [oob], false), await exchange(miniPath, [oob], false)];
    expect(qo[0]).toEqual({ return: {}, id: 1 });
    expect(mo[0]).toEqual({ error: { class: 'GenericError', desc: 'Capability oob not available' }, id: 1 });
    const caps = '{"execute":"query-migrate-capabilities","id":1}';
    const [qc, mc] = [await exchange(qemuPath, [caps]), await exchange(miniPath, [caps])];
    expect((qc[0].return as unknown[]).length).toBeGreaterThan(1);
    expect(mc[0].return).toEqual([{ capability: 'events', state: expect.any(Boolean) }]);
    const mode = '{"execute":"migrate-set-parameters","arguments":{"mode":"cpr-exec"},"id":1}';
    const [qm, mm] = [await exchange(qemuPath, [mode]), await exchange(miniPath, [mode])];
    expect(qm[0].error?.desc).toBe("Parameter 'mode' is unexpected");
    expect(mm[0]).toEqual({ return: {}, id: 1 });
    const list = '{"execute":"query-commands","id":1}';
    const [ql, ml] = [await exchange(qemuPath, [list]), await exchange(miniPath, [list])];
    const has = (r: Message[]) => new Set((r[0].return as { name: string }[]).map((c) => c.name));
    const [qemuHas, miniHas] = [has(ql), has(ml)];
    expect([...miniHas].filter((n) => !qemuHas.has(n) && !n.startsWith('x-'))).toEqual([]); // ours are QEMU's, or x- extensions
    expect(qemuHas.size).toBeGreaterThan(miniHas.size);
  });
});
