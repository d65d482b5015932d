// Fuzz: QMP input against a real running VM (`counter`). Wrongly typed arguments for every
// command, unknown commands, malformed and non-object JSON, binary garbage, huge messages, deeply
// nested JSON, half-closed and abandoned connections, many connections. Every reply is QMP's
// error form or a return; every whole JSON text and every resync byte is answered; the VM keeps
// running and answers query-status at the end.
import { afterAll, beforeAll, beforeEach, expect, it } from 'vitest';
import { describeWith } from './facility.js';
import { VmProcess, counterValues } from './harness.js';
import { RawQmp as Raw } from './qmp-raw.js';
import { fuzzCases, fuzzSeed, rng } from './fuzz/prng.js';
import { RESYNC, commandLine, garbage, isJsonText, malformed, nested, nonObject, unknownCommand } from './fuzz/qmp.js';

/** Why a reply line is not a QMP return, error or event; null if it is. */
function badReply(line: string): string | null {
  let m: Record<string, unknown>;
  try { m = JSON.parse(line); } catch { return `not JSON: ${line.slice(0, 200)}`; }
  if (!m || typeof m !== 'object' || Array.isArray(m)) return `not an object: ${line.slice(0, 200)}`;
  if ('event' in m) return typeof m.event === 'string' && 'timestamp' in m ? null : `bad event: ${line.slice(0, 200)}`;
  if ('return' in m) return null;
  if ('error' in m) {
    const e = m.error as { class?: unknown; desc?: unknown };
    if (!e || typeof e.class !== 'string' || typeof e.desc !== 'string') return `bad error form: ${line.slice(0, 200)}`;
    if (/\n\s+at |\bat [^ ]+ \(.*:\d+:\d+\)/.test(e.desc)) return `stack trace in desc: ${e.desc.slice(0, 300)}`;
    return null;
  }
  return `neither return nor error: ${line.slice(0, 200)}`;
}

describeWith(['guest'], 'fuzz: QMP input against a running VM', () => {
  let vm: VmProcess;
  const seed = fuzzSeed(0x9a9);
  const problems: string[] = [];
  const note = (p: string) => { if (problems.length < 30) problems.push(p); };

  beforeAll(async () => {
    vm = await VmProcess.start(['--guest', 'counter', '--log-level', 'silent']);
    await vm.waitFor(/counter \d+ tsc \d+ round \d+\n/);
  });
  afterAll(async () => { await vm?.kill(); });
  // A VM killed by an earlier case (a finding) is replaced, so one bug does not hide the others.
  beforeEach(async () => {
    if (vm.child.exitCode !== null) {
      vm = await VmProcess.start(['--guest', 'counter', '--log-level', 'silent']);
      await vm.waitFor(/counter \d+ tsc \d+ round \d+\n/);
    }
  });

  // Alive = answers a fresh connection (a crash from earlier input would have closed the monitor).
  const vmAlive = async (what: string) => {
    let answer = false;
    try {
      const c = await Raw.connect(vm.qmpPath);
      await c.negotiate();
      c.s.write('{"execute":"query-status","id":"alive"}\n');
      answer = await c.until(() => c.lines.some((l) => l.includes('"alive"')), 10_000);
      c.s.destroy();
    } catch { /* no monitor: gone */ }
    expect(answer && vm.child.exitCode === null, `VM gone (exit ${vm.child.exitCode}) after ${what}; stderr: ${vm.stderr.slice(-600)}`).toBe(true);
  };

  it('≥ 50,000 generated lines: each whole JSON text and each resync byte is answered, with a QMP return or error', async () => {
    const r = rng(seed);
    const N = fuzzCases(50_000);
    const c = await Raw.connect(vm.qmpPath);
    await c.negotiate();
    const counts: Record<string, number> = {};
    let sent = 0, batches = 0;
    const t0 = Date.now();
    while (sent < N) {
      const parts: Buffer[] = [];
      let owed = 0;
      for (let i = 0; i < 200; i++) {
        const kind = r.pick(['command', 'command', 'command', 'unknown', 'malformed', 'malformed', 'nonobject', 'garbage', 'whitespace']);
        counts[kind] = (counts[kind] ?? 0) + 1;
        const line = kind === 'command' ? Buffer.from(commandLine(r).text) : kind === 'unknown' ? Buffer.from(unknownCommand(r))
          : kind === 'malformed' ? Buffer.from(malformed(r)) : kind === 'nonobject' ? Buffer.from(nonObject(r))
          : kind === 'garbage' ? garbage(r) : Buffer.from(r.pick([' ', '\t', '\r', '  \r']));
        // Whatever the line left open, the resync byte closes it, with one error of its own.
        parts.push(line, Buffer.from(`\n${RESYNC}`));
        owed += (isJsonText(line) ? 1 : 0) + 1;
      }
      const base = c.lines.length;
      const tag = `sentinel-${batches}`;
      c.s.write(Buffer.concat(parts));
      c.s.write(`{"execute":"query-status","id":"${tag}"}`);
      const ok = await c.until(() => c.lines.slice(base).some((l) => l.includes(`"${tag}"`)), 30_000);
      if (!ok) { note(`batch ${batches} (seed ${seed}): no reply to the sentinel within 30 s${c.closed ? ' (connection closed)' : ''}; last lines ${JSON.stringify(c.lines.slice(-3)).slice(0, 500)}`); break; }
      const got = c.lines.slice(base).filter((l) => !l.startsWith('{"event"'));
      const replies = got.length - 1;
      const resyncs = got.filter((l) => l.endsWith(`${JSON.stringify(RESYNC).slice(1, -1)}'"}}`)).length;
      if (replies < owed) note(`batch ${batches} (seed ${seed}): ${owed} replies owed, ${replies} received`);
      if (resyncs < 200) note(`batch ${batches} (seed ${seed}): 200 resync bytes sent, ${resyncs} answered`);
      for (const l of got) { const b = badReply(l); if (b) note(`batch ${batches} (seed ${seed}): ${b}`); }
      c.lines = [];
      sent += 200; batches++;
    }
    c.s.write('{"execute":"migrate-set-parameters","arguments":{"mode":"normal","cpr-exec-command":[],"x-vdpa-path":"auto"}}{"execute":"cont"}');
    await c.until(() => c.lines.filter((l) => !l.startsWith('{"event"')).length >= 2, 10_000);
    c.s.destroy();
    console.log(`QMP fuzz: ${sent} lines in ${Date.now() - t0} ms (${batches} batches), seed ${seed}, by kind ${JSON.stringify(counts)}`);
    await vmAlive('the line fuzz');
    expect(problems, `seed ${seed}`).toEqual([]);
    expect(sent).toBeGreaterThanOrEqual(N); // a sentinel that went unanswered stops the loop early
  }, 180_000);

  it('huge messages: just under 1 MiB is answered; over it gets one error and the next command is answered; an endless token is cut off', async () => {
    const c = await Raw.connect(vm.qmpPath);
    await c.negotiate();
    const reply = async (id: string) => {
      expect(await c.until(() => c.lines.some((l) => l.includes(`"${id}"`)), 20_000), `no reply to ${id}: ${JSON.stringify(c.lines).slice(0, 300)}`).toBe(true);
      const got = c.lines; c.lines = [];
      for (const l of got) expect(badReply(l)).toBeNull();
      return got.map((l) => JSON.parse(l));
    };
    c.s.write(`{"execute":"query-status","arguments":{"pad":"${'y'.repeat((1 << 20) - 100)}"},"id":"under"}`);
    expect((await reply('under'))[0].error.desc).toBe("Parameter 'pad' is unexpected"); // read whole, then checked
    c.s.write(`{"execute":"query-status","arguments":{"pad":"${'y'.repeat(3 << 19)}"},"id":"over"}{"execute":"query-status","id":"after-over"}`);
    const over = await reply('after-over');
    expect(over.map((m) => m.error?.desc ?? m.id)).toEqual(['JSON message longer than 1048576 bytes; the rest of it is skipped', 'after-over']);
    const chunk = 'z'.repeat(64 * 1024);
    for (let i = 0; i < 40; i++) { c.s.write(chunk); await new Promise((r) => setImmediate(r)); } // a 2.5 MiB keyword
    c.s.write(`${RESYNC}{"execute":"query-status","id":"after-z"}`);
    const z = await reply('after-z');
    expect(z.map((m) => m.error?.desc ?? m.id)).toEqual(['JSON message longer than 1048576 bytes; the rest of it is skipped', `JSON parse error, stray '${RESYNC}'`, 'after-z']);
    expect(c.closed).toBe(false);
    c.s.destroy();
    await vmAlive('huge messages');
  }, 60_000);

  for (const [name, make] of [
    ['a deeply nested array (100k levels)', () => nested(100_000)],
    ['a deeply nested object (100k levels)', () => '{"a":'.repeat(100_000) + '1' + '}'.repeat(100_000)],
    ['deeply nested arguments (100k levels)', () => `{"execute":"query-status","arguments":{"a":${nested(100_000)}}}`],
    ['a deeply nested id (10k levels), echoed in the reply', () => `{"execute":"query-status","id":${nested(10_000)}}`],
    ['a deeply nested mode (10k levels)', () => `{"execute":"migrate-set-parameters","arguments":{"mode":${nested(10_000)}}}`],
    ['a deeply nested cpr-exec-command (10k levels)', () => `{"execute":"migrate-set-parameters","arguments":{"cpr-exec-command":[${nested(10_000)}]}}`],
    ['a deeply nested uri (10k levels)', () => `{"execute":"migrate","arguments":{"uri":${nested(10_000)}}}`],
  ] as const) {
    it(`${name}: one QMP reply, the connection and the VM stay up`, async () => {
      const c = await Raw.connect(vm.qmpPath);
      await c.negotiate();
      c.s.write(`${make()}{"execute":"query-status","id":"after"}`);
      const ok = await c.until(() => c.lines.some((l) => l.includes('"after"')), 20_000);
      const replies = c.lines.filter((l) => !l.startsWith('{"event"'));
      c.s.destroy();
      await vmAlive(name);
      expect(ok, `no reply after the nested input (connection ${c.closed ? 'closed' : 'open'}); got ${JSON.stringify(replies).slice(0, 300)}`).toBe(true);
      expect(replies.length).toBe(2);
      for (const l of replies) expect(badReply(l)).toBeNull();
    }, 60_000);
  }

  it('half-closed, abandoned and reset connections; 100 concurrent connections', async () => {
    const r = rng(seed ^ 0x55);
    const t0 = Date.now();
    let n = 0;
    for (let i = 0; i < 60; i++) {
      const c = await Raw.connect(vm.qmpPath);
      n++;
      switch (i % 6) {
        case 0: c.s.end(); break; // closed before the greeting was read
        case 1: c.s.end('{"execute":"qmp_capabilities"}\n{"execute":"query-status"}\n'); break; // half-close with commands pending
        case 2: c.s.write('{"execute":"qmp_capabilities"}\n{"execute":"stop"}\n{"execute":"cont"}\n'); c.s.destroy(); break; // reset with commands pending
        case 3: c.s.write('{"execute":"qmp_capa'); c.s.end(); break; // half a line
        case 4: await c.negotiate(); c.s.write(`${commandLine(r).text}\n`); c.s.end(); break;
        default: c.s.write(garbage(r)); c.s.destroy();
      }
    }
    const many = await Promise.all(Array.from({ length: 100 }, () => Raw.connect(vm.qmpPath)));
    await Promise.all(many.map((c) => c.negotiate()));
    for (const c of many) c.s.write('{"execute":"query-status","id":1}\n');
    const answered = await Promise.all(many.map((c) => c.until(() => c.lines.some((l) => l.includes('"return"')), 20_000)));
    for (const c of many) c.s.destroy();
    n += many.length;
    console.log(`QMP connection fuzz: ${n} connections in ${Date.now() - t0} ms`);
    expect(answered.every(Boolean)).toBe(true);
    await vmAlive('connection fuzz');
  }, 90_000);

  it('afterwards the VM runs, the counter advances and query-status answers', async () => {
    const c = await Raw.connect(vm.qmpPath);
    await c.negotiate();
    c.s.write('{"execute":"cont"}\n{"execute":"query-status","id":"final"}\n');
    expect(await c.until(() => c.lines.some((l) => l.includes('"final"')), 10_000)).toBe(true);
    const st = JSON.parse(c.lines.find((l) => l.includes('"final"'))!);
    expect(st.return).toMatchObject({ status: 'running', running: true });
    c.s.destroy();
    const before = counterValues(vm.stdout).length;
    await vm.waitFor(/counter \d+ tsc \d+ round \d+\n/, 10_000, vm.stdout.length); // a whole line
    expect(counterValues(vm.stdout).length).toBeGreaterThan(before);
    const v = counterValues(vm.stdout);
    for (let i = 1; i < v.length; i++) expect(v[i]).toBeGreaterThan(v[i - 1]);
  }, 30_000);
});
