#include "lib.h"

void serial_putc(char c)
{
	/* No interrupts, no FIFO setup: just wait for room, like early printk. */
	while (!(inb(SERIAL_LSR) & SERIAL_LSR_THRE))
		;
	outb(SERIAL_PORT, c);
}

void serial_puts(const char *s)
{
	while (*s)
		serial_putc(*s++);
}

void print_dec(u64 v)
{
	char buf[21];
	int i = sizeof(buf);

	buf[--i] = '\0';
	do {
		buf[--i] = '0' + v % 10;
		v /= 10;
	} while (v);
	serial_puts(buf + i);
}

void print_hex(u64 v)
{
	char buf[17];
	int i = sizeof(buf);

	buf[--i] = '\0';
	do {
		buf[--i] = "0123456789abcdef"[v & 15];
		v >>= 4;
	} while (v);
	serial_puts(buf + i);
}

void vprintk(const char *fmt, va_list ap)
{
	for (; *fmt; fmt++) {
		int lng = 0;
		i64 d;

		if (*fmt != '%') {
			serial_putc(*fmt);
			continue;
		}
		while (*++fmt == 'l')
			lng = 1;	/* long and long long are both 64-bit here */
		switch (*fmt) {
		case 'd':
			d = lng ? va_arg(ap, long) : va_arg(ap, int);
			if (d < 0)
				serial_putc('-');
			print_dec(d < 0 ? -(u64)d : (u64)d);
			break;
		case 'u':
			print_dec(lng ? va_arg(ap, unsigned long) : va_arg(ap, unsigned int));
			break;
		case 'x':
			print_hex(lng ? va_arg(ap, unsigned long) : va_arg(ap, unsigned int));
			break;
		case 's':
			serial_puts(va_arg(ap, const char *));
			break;
		case 'c':
			serial_putc(va_arg(ap, int));
			break;
		case '%':
			serial_putc('%');
			break;
		case '\0':		/* stray '%' at the end */
			return;
		default:
			serial_putc('%');
			serial_putc(*fmt);
		}
	}
}

void printk(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vprintk(fmt, ap);
	va_end(ap);
}

const char *guest_name = "guest";

void die(const char *fmt, ...)
{
	va_list ap;

	printk("%s: ", guest_name);
	va_start(ap, fmt);
	vprintk(fmt, ap);
	va_end(ap);
	serial_putc('\n');
	exit(3);
}

void exit(int code)
{
	outl(EXIT_PORT, code);
	for (;;)		/* in case the VMM does not stop us */
		asm volatile("hlt");
}

void bootinfo_check(const struct bootinfo *bi)
{
	if (bi->magic != BOOTINFO_MAGIC || bi->version != BOOTINFO_VERSION ||
	    bi->nr_regions > BOOTINFO_MAX_REGIONS ||
	    bi->nr_devices > BOOTINFO_MAX_DEVICES) {
		serial_puts("bad boot info\n");
		exit(0x7f);
	}
}

static int is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* Parse [s, end) as decimal or 0x-hex; anything malformed gives def. */
static u64 parse_u64(const char *s, const char *end, u64 def)
{
	u64 v = 0, base = 10;

	if (end - s > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
		base = 16;
		s += 2;
	}
	if (s == end)
		return def;
	for (; s < end; s++) {
		u64 digit;

		if (*s >= '0' && *s <= '9')
			digit = *s - '0';
		else if (base == 16 && (*s | 0x20) >= 'a' && (*s | 0x20) <= 'f')
			digit = (*s | 0x20) - 'a' + 10;
		else
			return def;
		if (digit >= base)
			return def;
		v = v * base + digit;
	}
	return v;
}

u64 cmdline_u64(const struct bootinfo *bi, const char *key, u64 def)
{
	/* Bounded by the field size: do not trust the VMM's NUL. */
	const char *p = bi->cmdline, *end = p + BOOTINFO_CMDLINE_LEN;
	size_t klen = strlen(key);

	while (p < end && *p) {
		const char *tok;

		while (p < end && is_space(*p))
			p++;
		tok = p;
		while (p < end && *p && !is_space(*p))
			p++;
		/* [tok, p) is one option; the first "key=" wins */
		if ((size_t)(p - tok) > klen && !memcmp(tok, key, klen) && tok[klen] == '=')
			return parse_u64(tok + klen + 1, p, def);
	}
	return def;
}

u64 mix64(u64 x)
{
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ULL;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebULL;
	x ^= x >> 31;
	return x;
}

int ram_next_chunk(struct ram_iter *it, u64 *start, u64 *end)
{
	while (it->region < it->bi->nr_regions) {
		const struct bootinfo_region *r = &it->bi->regions[it->region];
		u64 lo = r->gpa < GUEST_LOW_RESERVED ? GUEST_LOW_RESERVED : r->gpa;
		u64 hi = (r->gpa + r->size) & ~(SZ_4K - 1);

		if (it->next < lo)
			it->next = (lo + SZ_4K - 1) & ~(SZ_4K - 1);
		if (it->next < hi) {
			u64 boundary = (it->next & ~(SZ_2M - 1)) + SZ_2M;

			*start = it->next;
			*end = boundary < hi ? boundary : hi;
			it->next = *end;
			return 1;
		}
		it->region++;
		it->next = 0;	/* regions need not be sorted */
	}
	return 0;
}

u64 chunk_page(u64 start, u64 end)
{
	u64 pages = (end - start) / SZ_4K;	/* >= 1 for chunks from ram_next_chunk */

	return start + mix64(start) % pages * SZ_4K;
}

void *memset(void *d, int c, size_t n)
{
	u8 *p = d;

	while (n--)
		*p++ = c;
	return d;
}

void *memcpy(void *d, const void *s, size_t n)
{
	u8 *dp = d;
	const u8 *sp = s;

	while (n--)
		*dp++ = *sp++;
	return d;
}

void *memmove(void *d, const void *s, size_t n)
{
	u8 *dp = d;
	const u8 *sp = s;

	if (dp <= sp)
		return memcpy(d, s, n);
	while (n--)
		dp[n] = sp[n];
	return d;
}

int memcmp(const void *a, const void *b, size_t n)
{
	const u8 *x = a, *y = b;

	for (; n; n--, x++, y++)
		if (*x != *y)
			return *x - *y;
	return 0;
}

size_t strlen(const char *s)
{
	size_t n = 0;

	while (s[n])
		n++;
	return n;
}
