/*
 * Interrupts for the toy guests: an IDT, the local APIC (with its timer as a
 * wake-up alarm), the IOAPIC, and TSC time helpers.  Interrupts stay off
 * except inside irq_wait(), so handlers never race with the main loop.
 */
#ifndef GUEST_IRQ_H
#define GUEST_IRQ_H

#include "lib.h"

#define LAPIC_BASE		0xfee00000ULL
#define IOAPIC_BASE		0xfec00000ULL

/* Vectors: 0-31 exceptions, 0x30 + GSI for IOAPIC pins, then ours. */
#define IRQ_VECTOR_BASE		0x30
#define TIMER_VECTOR		0xf0
#define SPURIOUS_VECTOR		0xff

/* Guest TSC frequency from the boot info (a default if the VMM gave none). */
extern u64 tsc_khz;

static inline u64 ms_to_tsc(u64 ms)
{
	return ms * tsc_khz;
}

static inline u64 tsc_to_us(u64 ticks)
{
	return ticks * 1000 / tsc_khz;
}

/* IDT, 8259 masked, LAPIC on, LAPIC timer calibrated against the TSC. */
void irq_init(const struct bootinfo *bi);

/*
 * Route IOAPIC pin `gsi` (edge, active high, to APIC 0) to fn(arg), which
 * runs with interrupts off; the EOI is done for it.  Dies if the pin is
 * missing or taken.
 */
void irq_route(u32 gsi, void (*fn)(void *), void *arg);

/*
 * Sleep until an interrupt, `deadline` (TSC) or a short poll interval,
 * whichever comes first: callers re-check their rings after every return,
 * so a lost interrupt costs at most one poll interval.
 */
void irq_wait(u64 deadline);

#endif
