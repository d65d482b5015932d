// pino on stderr, created on first use: the restore path loads it only after the guest runs again.
import type { Logger } from 'pino';

let logger: Logger | undefined;
let level = process.env.MINIVMM_LOG_LEVEL ?? 'info';

export function setLogLevel(l: string): void { level = l; if (logger) logger.level = l; }

export async function log(): Promise<Logger> {
  if (!logger) {
    const { pino } = await import('pino');
    logger = pino({ level, base: { pid: process.pid } }, pino.destination({ fd: 2, sync: true }));
  }
  return logger;
}
