/* Printing shared by both builds of an oracle program, so they print the same bytes. */
#include "oracle.h"

void put_str(const char *s)
{
	while (*s)
		oracle_putc(*s++);
}

void put_x(u64 v)
{
	char buf[17];
	int i = 16;

	buf[16] = 0;
	do {
		buf[--i] = "0123456789abcdef"[v & 15];
		v >>= 4;
	} while (v);
	put_str(buf + i);
}

void put_hex(const char *label, u64 v)
{
	put_str(label);
	oracle_putc('=');
	put_x(v);
	oracle_putc('\n');
}

void put_dec(const char *label, i64 v)
{
	char buf[21];
	int i = 20;
	u64 u = v < 0 ? -(u64)v : (u64)v;

	buf[20] = 0;
	do {
		buf[--i] = '0' + u % 10;
		u /= 10;
	} while (u);
	if (v < 0)
		buf[--i] = '-';
	put_str(label);
	oracle_putc('=');
	put_str(buf + i);
	oracle_putc('\n');
}

u64 rnd(u64 *state)
{
	u64 z = (*state += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}
