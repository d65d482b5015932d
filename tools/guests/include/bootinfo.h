/*
 * Boot info that the minivmm VMM hands to a toy guest (RDI at entry).
 *
 * Little endian, 608 bytes, version 1.  The VMM writes it below 2 MiB; the
 * guest only reads it.  Keep this in sync with the VMM's writer.
 */
#ifndef MINIVMM_BOOTINFO_H
#define MINIVMM_BOOTINFO_H

#include <stdint.h>

#define BOOTINFO_MAGIC		0x424d564dU	/* "MVMB" read as a little-endian u32 */
#define BOOTINFO_VERSION	1
#define BOOTINFO_MAX_REGIONS	8
#define BOOTINFO_MAX_DEVICES	8
#define BOOTINFO_CMDLINE_LEN	256
#define BOOTINFO_SIZE		608

/* Device types are virtio device ids. */
#define BOOTINFO_DEV_NET	1
#define BOOTINFO_DEV_BLK	2

/* Guest memory map facts from the boot contract. */
#define GUEST_LOAD_ADDR		0x100000ULL	/* image is linked and loaded here */
#define GUEST_LOW_RESERVED	0x400000ULL	/* below: VMM structures + image */
#define GUEST_LOW_RAM_MAX	0xc0000000ULL	/* at most 3 GiB below the hole */
#define GUEST_HIGH_RAM_BASE	0x100000000ULL	/* the rest starts at 4 GiB */

struct bootinfo_region {
	uint64_t gpa;
	uint64_t size;
} __attribute__((packed));

/* A virtio-mmio (version 2) transport; its interrupt is an edge on an IOAPIC pin. */
struct bootinfo_device {
	uint32_t type;		/* BOOTINFO_DEV_* */
	uint32_t irq;		/* IOAPIC input pin = GSI, >= 16 */
	uint64_t base;		/* virtio-mmio registers, e.g. 0xd0000000 + i * 0x1000 */
	uint64_t size;		/* 0x1000 */
} __attribute__((packed));

struct bootinfo {
	uint32_t magic;					/*   0 */
	uint32_t version;				/*   4 */
	uint64_t ram_size;				/*   8: total bytes */
	uint32_t nr_regions;				/*  16 */
	uint32_t nr_devices;				/*  20 */
	uint32_t nr_cpus;				/*  24 */
	uint32_t tsc_khz;				/*  28: guest TSC frequency */
	struct bootinfo_region regions[BOOTINFO_MAX_REGIONS];	/*  32 */
	struct bootinfo_device devices[BOOTINFO_MAX_DEVICES];	/* 160 */
	char cmdline[BOOTINFO_CMDLINE_LEN];		/* 352: NUL-terminated key=value ... */
} __attribute__((packed));

_Static_assert(sizeof(struct bootinfo_region) == 16, "region layout");
_Static_assert(sizeof(struct bootinfo_device) == 24, "device layout");
_Static_assert(__builtin_offsetof(struct bootinfo, tsc_khz) == 28, "tsc_khz offset");
_Static_assert(__builtin_offsetof(struct bootinfo, regions) == 32, "regions offset");
_Static_assert(__builtin_offsetof(struct bootinfo, devices) == 160, "devices offset");
_Static_assert(__builtin_offsetof(struct bootinfo, cmdline) == 352, "cmdline offset");
_Static_assert(sizeof(struct bootinfo) == BOOTINFO_SIZE, "bootinfo size");

#endif
