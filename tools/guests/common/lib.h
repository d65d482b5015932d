/*
 * Tiny runtime shared by the minivmm toy guests: serial output, a printf
 * subset, port I/O, exit through the debug-exit port, boot info helpers.
 */
#ifndef GUEST_LIB_H
#define GUEST_LIB_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "bootinfo.h"

typedef uint8_t u8;
typedef uint16_t u16;
typedef uint32_t u32;
typedef uint64_t u64;
typedef int64_t i64;

#define SZ_4K		0x1000ULL
#define SZ_64K		0x10000ULL
#define SZ_2M		0x200000ULL

#define SERIAL_PORT	0x3f8		/* COM1 16550 */
#define SERIAL_LSR	(SERIAL_PORT + 5)
#define SERIAL_LSR_THRE	0x20		/* transmit holding register empty */
#define EXIT_PORT	0xf4		/* isa-debug-exit style: status = value & 0xff */

#define ARRAY_SIZE(a)	(sizeof(a) / sizeof((a)[0]))
#define barrier()	asm volatile("" ::: "memory")

static inline void outb(u16 port, u8 v)
{
	asm volatile("outb %0, %1" : : "a"(v), "Nd"(port));
}

static inline void outl(u16 port, u32 v)
{
	asm volatile("outl %0, %1" : : "a"(v), "Nd"(port));
}

static inline u8 inb(u16 port)
{
	u8 v;

	asm volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

static inline u64 rdtsc(void)
{
	u32 lo, hi;

	asm volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return (u64)hi << 32 | lo;
}

/* Serial output; "\n" is sent as is (the VMM passes bytes through). */
void serial_putc(char c);
void serial_puts(const char *s);
void print_dec(u64 v);
void print_hex(u64 v);		/* lowercase, no prefix, no padding */
/* %d %u %x (with l/ll), %s, %c, %%.  No width or flags. */
void printk(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void vprintk(const char *fmt, va_list ap);

/* Prefix of die()'s message; each guest sets its own name. */
extern const char *guest_name;
/* Fatal error: print "<guest_name>: <message>", exit 3. */
void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

/* Write code to the exit port, then halt forever. */
void exit(int code) __attribute__((noreturn));

/* Called by start.S before guest_main: bad boot info -> "bad boot info", exit 0x7f. */
void bootinfo_check(const struct bootinfo *bi);
/* Value of "key=N" (decimal or 0x hex) on the command line, else def. */
u64 cmdline_u64(const struct bootinfo *bi, const char *key, u64 def);

/* Cheap, well-mixed hash (splitmix64 finalizer) for patterns and picks. */
u64 mix64(u64 x);

/*
 * Walk guest RAM above GUEST_LOW_RESERVED in 4 KiB-aligned chunks that never
 * cross a 2 MiB boundary (full 2 MiB chunks except at region edges).
 * Usage: struct ram_iter it = { .bi = bi }; while (ram_next_chunk(&it, &s, &e)) ...
 */
struct ram_iter {
	const struct bootinfo *bi;
	u32 region;
	u64 next;
};
int ram_next_chunk(struct ram_iter *it, u64 *start, u64 *end);
/* A pseudo-random (but fixed) 4 KiB page inside [start, end). */
u64 chunk_page(u64 start, u64 end);

/* gcc may emit calls to these even with -ffreestanding. */
void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
void *memmove(void *d, const void *s, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);

/* Each guest defines this; it must not return. */
void guest_main(struct bootinfo *bi);

#endif
