// QMP input generators: commands with wrongly typed arguments, unknown commands, malformed JSON,
// non-object JSON, binary garbage. Never `quit`, never a `migrate` that could start (uri file:...).
import { edgeU32, type Rng } from './prng.js';

export const COMMANDS: Record<string, string[]> = {
  'query-status': [], 'query-version': [], 'query-kvm': [], stop: [], cont: [], 'query-migrate': [], 'query-migrate-parameters': [],
  'x-query-stats': [], 'x-query-vdpa': [], qmp_capabilities: ['enable'], 'query-migrate-capabilities': [],
  'migrate-set-capabilities': ['capabilities'],
  'migrate-set-parameters': ['mode', 'cpr-exec-command', 'x-vdpa-path', 'x-transfer-timeout-ms', 'cpr-transfer-path', 'incoming'],
  migrate: ['uri', 'channels', 'detach', 'resume', 'blk'],
};
const FORBIDDEN = new Set(['quit', 'system_powerdown', 'system_reset']);

export function junkValue(r: Rng, depth = 0): unknown {
  const k = r.int(depth > 2 ? 14 : 18);
  switch (k) {
    case 0: return null;
    case 1: return r.bool();
    case 2: return edgeU32(r) * (r.bool() ? 1 : -1);
    case 3: return r.pick([1e308, -1e308, 5e-324, 0.5, -0, 2 ** 53 + 1]);
    case 4: return '';
    case 5: return r.pick(['normal', 'cpr-exec', 'cpr-transfer', 'cpr-teleport', 'auto', 'fallback', 'tcp:1.2.3.4:5', 'exec:true', 'unix:/tmp/x', 'file', 'file:', 'FILE:/x', '__proto__', 'constructor', 'toString']);
    case 6: return r.str(r.int(40));
    case 7: return 'x'.repeat(r.pick([1000, 65536, 300_000]));
    case 8: return r.str(r.int(10), '\u0000\u0001\u001f\u007f\u2028\u2029\ud800\udfff\ufeff\u00a0"\\\n\r\t');
    case 9: return [];
    case 10: return [''];
    case 11: return ['/bin/true', 1];
    case 12: return {};
    case 13: return r.pick([[null], [[]], [{}], ['a', 'b'], ['/nonexistent/binary']]);
    case 14: return Array.from({ length: r.int(4) }, () => junkValue(r, depth + 1));
    case 15: return Object.fromEntries(Array.from({ length: r.int(4) }, () => [r.pick(['a', '__proto__', 'mode', 'uri', '', r.str(5)]), junkValue(r, depth + 1)]));
    case 16: return { execute: 'quit' };
    default: return r.pick([{ toString: 1 }, { valueOf: null }, ['x'.repeat(10)]]);
  }
}

/** Commands QEMU and minivmm both have, taking the same arguments (none). */
export const SHARED_COMMANDS: Record<string, string[]> = { 'query-status': [], 'query-version': [], 'query-kvm': [], stop: [], cont: [], 'query-migrate': [] };

/** A command with random arguments; a `migrate` never carries a startable uri. */
export function commandLine(r: Rng, commands = COMMANDS): { obj: Record<string, unknown>; text: string } {
  const name = r.pick(Object.keys(commands));
  const obj: Record<string, unknown> = { execute: name };
  if (r.bool(0.85)) {
    const args: Record<string, unknown> = {};
    for (const p of commands[name]) if (r.bool(0.6)) args[p] = junkValue(r);
    if (r.bool(0.3)) args[r.pick(['', 'foo', 'MODE', '__proto__', r.str(8)])] = junkValue(r);
    obj.arguments = r.bool(0.9) ? args : junkValue(r);
  }
  if (name === 'migrate' && obj.arguments && typeof obj.arguments === 'object') {
    const uri = (obj.arguments as Record<string, unknown>).uri;
    if (typeof uri === 'string' && uri.startsWith('file:')) (obj.arguments as Record<string, unknown>).uri = `tcp:${uri}`;
  }
  if (r.bool(0.3)) obj.id = junkValue(r);
  if (r.bool(0.05)) obj[r.pick(['execute', 'exec-oob', 'control'])] = junkValue(r);
  if (typeof obj.execute === 'string' && FORBIDDEN.has(obj.execute.trim())) obj.execute = 'query-status';
  return { obj, text: JSON.stringify(obj) };
}

export function unknownCommand(r: Rng): string {
  let name = r.pick([() => r.str(1 + r.int(30), 'abcdefghijklmnopqrstuvwxyz-_'), () => r.str(r.int(20)), () => r.pick(['', ' ', 'QUERY-STATUS', 'query-status ', 'x-', 'hasOwnProperty', '__proto__', 'constructor', 'query_status', 'migrate-incoming', 'device_add', 'human-monitor-command'])])();
  if (FORBIDDEN.has(name.trim())) name = `${name}-not`;
  return JSON.stringify({ execute: name, ...(r.bool() ? { arguments: junkValue(r) } : {}) });
}

/** A valid line mangled: characters dropped, inserted, swapped, truncated. */
export function malformed(r: Rng, commands = COMMANDS): string {
  let s = commandLine(r, commands).text;
  const n = 1 + r.int(4);
  for (let i = 0; i < n; i++) {
    const at = r.int(s.length + 1);
    switch (r.int(5)) {
      case 0: s = s.slice(0, at) + s.slice(at + 1 + r.int(3)); break;
      case 1: s = s.slice(0, at) + r.pick(['{', '}', '[', ']', '"', ',', ':', '\\', 'null', '\u0000', '\ud800', ' ']) + s.slice(at); break;
      case 2: s = s.slice(0, at); break;
      case 3: s = s.slice(0, at) + r.str(1 + r.int(5)) + s.slice(at); break;
      default: s = `${s}${r.pick(['}', ',', '{}', ' x', '{"execute":"query-status"}'])}`;
    }
  }
  if (/"execute"\s*:\s*"quit"/.test(s)) s = s.replace(/quit/g, 'quot');
  return s.replace(/\n/g, ' ');
}

export function nonObject(r: Rng): string {
  return JSON.stringify(r.pick<unknown>([null, 0, -1, 1.5, true, false, '', 'query-status', [], [{ execute: 'query-status' }], [1, 2, 3], 'x'.repeat(100)]));
}

/** Random bytes; newlines inside are fine (each line gets its own reply). */
export function garbage(r: Rng): Buffer {
  const b = r.bytes(1 + r.int(200));
  const text = b.toString('latin1');
  if (/quit/.test(text)) return Buffer.from('garbage');
  return b;
}

/**
 * What a client sends to force QMP's JSON parser into a known state (QMP spec: provoke a lexical
 * error with a control character other than tab, CR, LF). The server answers it with one error.
 */
export const RESYNC = '\u0004';

/** A line that is one whole JSON text: the server owes it a reply, before the resync's own. */
export function isJsonText(line: Buffer): boolean {
  try { JSON.parse(new TextDecoder('utf-8').decode(line)); return true; } catch { return false; }
}

export const nested = (depth: number, open = '[', close = ']'): string => open.repeat(depth) + close.repeat(depth);
