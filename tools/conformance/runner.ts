// Runs the case list against one device: decides applicability from the device's answers, runs each
// case from a closed device, prints one line per case and the closing count line.
import type { AgentConfig } from './agent.js';
import { cases as allCases } from './cases.js';
import { Case, Ctx, Fail, Skip, Tag } from './harness.js';
import type { DeviceInfo } from './probe.js';

export interface CaseResult { id: number; title: string; tags: Tag[]; result: 'pass' | 'fail' | 'skip'; detail: string }

/** Why a case does not apply to this device, from its tags (docs/vhost-vdpa-live-update.md §7.1), or null. */
export function tagGate(d: DeviceInfo, tags: Tag[]): string | null {
  if (tags.includes('U0') && d.series) return 'device carries the live-update series (bit 9 advertised or accepted) [U0]';
  if (tags.includes('P+R') && !(d.newOwner && d.remap)) return `needs bits 9 and 10 advertised (got 0x${d.backend.toString(16)}) [P+R]`;
  if (tags.includes('P') && !d.newOwner) return `needs bit 9 NEW_OWNER advertised (got 0x${d.backend.toString(16)}) [P]`;
  if (tags.includes('VA') && d.mode !== 'va') return `needs a VA-mode parent (mode ${d.mode ?? 'undetermined'}) [VA]`;
  if (tags.includes('PA') && d.mode !== 'pa') return `needs a PA-mode parent (mode ${d.mode ?? 'undetermined'}) [PA]`;
  return null;
}

export function lineOf(r: CaseResult): string {
  const word = r.result === 'pass' ? 'ok' : r.result === 'fail' ? 'FAIL' : 'skip';
  const tags = r.result === 'skip' && !/\[[A-Z+0]+\]$/.test(r.detail) ? ` [${r.tags.join(',')}]` : '';
  const sep = r.result === 'pass' ? (r.detail ? ` (${r.detail})` : '') : `: ${r.detail}${tags}`;
  return `${word} ${r.id} ${r.title}${sep}`;
}

export async function runCases(dev: DeviceInfo, cfg: AgentConfig, log: (l: string) => void, only?: Set<number>): Promise<CaseResult[]> {
  const results: CaseResult[] = [];
  for (const k of allCases) {
    if (only && !only.has(k.id)) continue;
    const r = await runOne(k, dev, cfg);
    results.push(r);
    log(lineOf(r));
  }
  return results;
}

async function runOne(k: Case, dev: DeviceInfo, cfg: AgentConfig): Promise<CaseResult> {
  const res = (result: CaseResult['result'], detail: string): CaseResult => ({ id: k.id, title: k.title, tags: k.tags, result, detail });
  const why = k.gate ? k.gate(dev) : tagGate(dev, k.tags) ?? k.needs?.(dev) ?? null;
  if (why) return res('skip', why);
  const c = new Ctx(dev, cfg);
  try {
    const detail = await k.run(c);
    return res('pass', detail ?? '');
  } catch (e) {
    if (e instanceof Skip) return res('skip', e.message);
    if (e instanceof Fail) return res('fail', e.message);
    return res('fail', `harness: ${(e as Error).message}`);
  } finally {
    await c.dispose();
  }
}
