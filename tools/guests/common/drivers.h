/*
 * The two device exercisers, each a small state machine that the guests'
 * main loops drive: *_poll() does whatever work is ready (reap used
 * buffers, post new ones) and returns nonzero if it did any.
 */
#ifndef GUEST_DRIVERS_H
#define GUEST_DRIVERS_H

#include "lib.h"

/*
 * virtio-net loopback test (net.c).  Cmdline: size=N (frame payload bytes,
 * default 64), frames=N (done after N received; 0 = never).  received
 * counts good frames that were neither duplicates nor corrupt; a corrupt
 * frame also shows up as lost once a later one comes.
 */
void net_init(const struct bootinfo *bi);
int net_poll(void);
void net_print(void);		/* "net sent=... irqs=..." */
int net_done(void);
int net_clean(void);		/* nothing lost, duplicated or corrupt */

/*
 * virtio-blk write-then-verify test (blk.c).  Cmdline: blocks=N (4 KiB
 * blocks from the start of the disk, default 256, capped by the capacity),
 * generations=N (done after N; 0 = never).  Once done it issues nothing more.
 */
void blk_init(const struct bootinfo *bi);
int blk_poll(void);
void blk_print(void);		/* "blk written=... irqs=..." */
int blk_done(void);
int blk_clean(void);		/* no mismatch, no I/O error */

#endif
