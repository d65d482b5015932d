/*
 * Compile-twice oracle programs: the same C runs natively on the host (the expected output) and
 * as a toy guest on an accelerator; both print through the code in print.c, byte for byte.
 * A program defines oracle_main() and prints with the functions below.
 */
#ifndef ORACLE_H
#define ORACLE_H

#include <stdint.h>

typedef uint8_t u8;
typedef uint16_t u16;
typedef uint32_t u32;
typedef uint64_t u64;
typedef int32_t i32;
typedef int64_t i64;

/* Provided by host.c or guest.c. */
void oracle_putc(char c);

void oracle_main(void);

void put_str(const char *s);
/* Lowercase hex, no prefix or padding. */
void put_x(u64 v);
/* "label=<hex>\n" and "label=<signed decimal>\n". */
void put_hex(const char *label, u64 v);
void put_dec(const char *label, i64 v);

/* Deterministic pseudo-random numbers (splitmix64). */
u64 rnd(u64 *state);

/*
 * Signed division with the CPU's own idiv (div.S); returns 0 and leaves *q, *r alone when it
 * raises #DE (x/0, INT_MIN/-1): the host's SIGFPE handler or the guest's #DE handler skips it.
 */
int oracle_idiv64(i64 a, i64 b, i64 *q, i64 *r);
int oracle_idiv32(i32 a, i32 b, i32 *q, i32 *r);
int oracle_div64(u64 a, u64 b, u64 *q, u64 *r);

/* RFLAGS bits each instruction defines (the others are architecturally undefined). */
#define F_CF 0x001
#define F_PF 0x004
#define F_AF 0x010
#define F_ZF 0x040
#define F_SF 0x080
#define F_OF 0x800
#define F_ARITH (F_CF | F_PF | F_AF | F_ZF | F_SF | F_OF)

#endif
