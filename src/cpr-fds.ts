// The fds a live update keeps (QEMU's cpr_save_fd / cpr_find_fd): each owner (guest RAM, the
// serial sink, the monitor, a vhost-vdpa device) registers the fds it keeps under a name and id,
// and finds them again by that name in the new process. The live-update transports carry the
// whole set without knowing whose fds they are. Fd numbers are never stored as meaning anything:
// after cpr-exec they happen to be the same, after cpr-transfer they are whatever SCM_RIGHTS gave.
import { setCloexec } from './libc.js';

export interface NamedFd { name: string; id: number; fd: number }

const kept = new Map<string, NamedFd>();
const key = (name: string, id: number): string => `${name}\0${id}`;

/** Keeps `fd` across the next update, as (name, id); replaces an earlier fd of that name. */
export function cprSaveFd(name: string, id: number, fd: number): void { kept.set(key(name, id), { name, id, fd }); }

export function cprDeleteFd(name: string, id: number): void { kept.delete(key(name, id)); }

/** The fd kept as (name, id): after an update, the inherited one. */
export function cprFindFd(name: string, id = 0): number | undefined { return kept.get(key(name, id))?.fd; }

/** Every fd to keep, in registration order (the order the transports carry them in). */
export function cprFds(): NamedFd[] { return [...kept.values()]; }

/** The new process: the fds it inherited, named as the old one registered them. */
export function cprAdoptFds(fds: NamedFd[]): void {
  kept.clear();
  for (const f of fds) cprSaveFd(f.name, f.id, f.fd);
}

/**
 * After the guest runs again: the inherited fds go back to close-on-exec, so nothing this process
 * spawns gets them. An fd its owner already closed (a device that took the slow path) is skipped.
 */
export function cprCloseOnExec(): void {
  for (const f of kept.values()) {
    try { setCloexec(f.fd, true); } catch { /* EBADF: closed by its owner since the update */ }
  }
}
