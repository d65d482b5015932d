// A live update's status, as QMP's query-migrate reports it: none → setup → active → completed |
// failed. One object owns the transitions and the MIGRATION events, so every path (cpr-exec,
// cpr-transfer, their rollbacks, the new image completing) goes through the same few methods.

export type UpdateMode = 'cpr-exec' | 'cpr-transfer';
export type MigrationStatus = 'none' | 'setup' | 'active' | 'completed' | 'failed';

export interface UpdateResult {
  n: number;
  mode: UpdateMode;
  /** Blackout in ms: from the pause to the guest running again. */
  downtime: number;
  /** From `migrate` to the pause, ms (QEMU's setup-time). */
  setup: number;
  /** "new-owner" or "fallback" (the slowest any device took), "none" without devices. */
  path: string;
  phases: Record<string, number>;
  devices: { index: number; path: string; note?: string; timings: Record<string, number> }[];
  /** cpr-exec: the old address space held by a keeper until the guest ran again (its teardown out of the blackout), or torn down by the exec. */
  oldAddressSpace?: 'kept until resume' | 'torn down by exec';
}

export class Migration {
  status: MigrationStatus = 'none';
  error?: string;
  /** cpr-transfer: the new process failed and this one took the guest and its devices back. */
  rolledBack?: boolean;
  /** The last completed update (this image's arrival, for a new image). */
  last?: UpdateResult;
  /** When `migrate` was accepted (process.hrtime, ns): total-time while one is under way. */
  requested?: bigint;

  constructor(private emit: (status: MigrationStatus) => void) {}

  get inProgress(): boolean { return this.status === 'setup' || this.status === 'active'; }

  /** `migrate` accepted. Throws if an update is already under way. */
  setup(): void {
    if (this.inProgress) throw new Error('There is already a migration in progress');
    this.requested = process.hrtime.bigint();
    this.move('setup');
  }

  active(): void { this.move('active'); }

  completed(result: UpdateResult): void { this.last = result; this.move('completed'); }

  failed(reason: string, rolledBack?: boolean): void { this.move('failed', reason, rolledBack); }

  private move(status: MigrationStatus, error?: string, rolledBack?: boolean): void {
    this.status = status;
    this.error = error;
    this.rolledBack = rolledBack;
    this.emit(status);
  }
}
