// `minivmm update`: drive one cpr-exec live update over QMP and report it. The connection drops
// when the VMM exec's; the listening socket survives, so we reconnect and poll query-migrate on the
// new image (no one is connected when it resumes, so its MIGRATION event reaches nobody).
import { QmpConnection } from './qmp.js';

/**
 * `extra` goes into migrate-set-parameters; `extra.uri` (cpr-transfer: "unix:PATH" with
 * `mode: 'cpr-transfer'`) or `extra.channels` (QEMU 10's form) is the migrate target instead.
 */
export async function runUpdate(socket: string, execArgv: string[] | null, timeoutMs = 60_000, extra: Record<string, unknown> = {}): Promise<Record<string, unknown>> {
  const { uri = 'file:/dev/null', channels, ...params } = extra;
  const c = await QmpConnection.connect(socket);
  await c.execute('migrate-set-capabilities', { capabilities: [{ capability: 'events', state: true }] });
  await c.execute('migrate-set-parameters', { mode: 'cpr-exec', 'cpr-exec-command': execArgv ?? [], ...params });
  await c.execute('migrate', channels ? { channels } : { uri });
  // Either the old image reports failure (exec failed, guest kept) or the connection closes (exec).
  const done = (m: Record<string, unknown>) => m.event === 'MIGRATION' && ['completed', 'failed'].includes((m.data as { status: string }).status);
  const ev = c.events.find(done) ?? await c.next(done, timeoutMs);
  if (!('closed' in ev)) {
    const r = (await c.execute('query-migrate')) as Record<string, unknown>;
    c.close();
    return r;
  }
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      const n = await QmpConnection.connect(socket, Math.max(1000, deadline - Date.now()));
      const r = (await n.execute('query-migrate')) as Record<string, unknown>;
      n.close();
      return r;
    } catch (e) {
      if (Date.now() > deadline) {
        return { status: 'failed', 'error-desc': `the VMM did not come back after exec (${(e as Error).message}): the new image failed before restoring, so the guest is lost; its vdpa devices were released when its fds closed` };
      }
      await new Promise((r) => setTimeout(r, 10));
    }
  }
}
