/* String instructions (rep movs/stos/cmps/scas, both directions) and string code in C. */
#include "oracle.h"

static u8 a[512], b[512];

static u64 sum(const u8 *p, unsigned n)
{
	u64 s = 0;

	for (unsigned i = 0; i < n; i++)
		s = s * 131 + p[i];
	return s;
}

static void fill(u8 *p, unsigned n, u64 seed)
{
	for (unsigned i = 0; i < n; i++)
		p[i] = (u8)rnd(&seed);
}

static void rep_instructions(void)
{
	u64 rcx, rsi, rdi, fl;

	for (unsigned n = 0; n < 64; n += 7) {
		fill(a, sizeof a, n);
		fill(b, sizeof b, 1000 + n);
		/* forward movsb */
		rcx = n; rsi = (u64)(a + 3); rdi = (u64)(b + 5);
		asm volatile("cld\n\trep movsb" : "+c"(rcx), "+S"(rsi), "+D"(rdi) : : "memory");
		put_hex("movsb", sum(b, sizeof b) ^ (rdi - (u64)b) ^ (rsi - (u64)a) << 16 ^ rcx << 32);
		/* backward movsq (overlapping) */
		rcx = n / 8; rsi = (u64)(b + 200); rdi = (u64)(b + 204);
		asm volatile("std\n\trep movsq\n\tcld" : "+c"(rcx), "+S"(rsi), "+D"(rdi) : : "memory");
		put_hex("movsq_back", sum(b, sizeof b) ^ (rdi - (u64)b) ^ (rsi - (u64)b) << 16);
		/* stosb / stosq */
		rcx = n; rdi = (u64)(a + 100);
		asm volatile("cld\n\trep stosb" : "+c"(rcx), "+D"(rdi) : "a"(0x5a) : "memory");
		rcx = n / 4; rdi = (u64)(a + 300);
		asm volatile("cld\n\trep stosq" : "+c"(rcx), "+D"(rdi) : "a"(0x1122334455667788ULL) : "memory");
		put_hex("stos", sum(a, sizeof a) ^ (rdi - (u64)a));
		/* repe cmpsb: where two buffers first differ */
		for (unsigned i = 0; i < 40; i++)
			b[400 + i] = a[i];
		b[400 + n % 40] ^= 1;
		rcx = 40; rsi = (u64)a; rdi = (u64)(b + 400);
		asm volatile("cld\n\trepe cmpsb\n\tpushfq\n\tpopq %3" : "+c"(rcx), "+S"(rsi), "+D"(rdi), "=r"(fl) : : "memory", "cc");
		put_hex("cmpsb", rcx << 32 ^ (rsi - (u64)a) ^ (fl & F_ARITH) << 48);
		/* repne scasb: find a byte, backwards too */
		a[n + 10] = 0xee;
		rcx = 200; rdi = (u64)a;
		asm volatile("cld\n\trepne scasb\n\tpushfq\n\tpopq %2" : "+c"(rcx), "+D"(rdi), "=r"(fl) : "a"(0xee) : "memory", "cc");
		put_hex("scasb", rcx ^ (rdi - (u64)a) << 20 ^ (fl & F_ZF) << 40);
		rcx = 200; rdi = (u64)(a + 199);
		asm volatile("std\n\trepne scasb\n\tcld\n\tpushfq\n\tpopq %2" : "+c"(rcx), "+D"(rdi), "=r"(fl) : "a"(0xee) : "memory", "cc");
		put_hex("scasb_back", rcx ^ (rdi - (u64)a) << 20 ^ (fl & F_ZF) << 40);
		/* lodsb loop */
		rsi = (u64)a;
		u64 acc = 0;
		for (unsigned i = 0; i < n; i++) {
			u64 x;
			asm volatile("lodsb" : "=a"(x), "+S"(rsi) : "0"(0) : "memory");
			acc = acc * 3 + (x & 0xff);
		}
		put_hex("lods", acc);
	}
}

/* String handling in C: the compiler picks the instructions. */
static unsigned my_strlen(const char *s)
{
	unsigned n = 0;

	while (s[n])
		n++;
	return n;
}

static int my_strcmp(const char *x, const char *y)
{
	while (*x && *x == *y)
		x++, y++;
	return (u8)*x - (u8)*y;
}

static void reverse(char *s)
{
	for (unsigned i = 0, j = my_strlen(s); i + 1 < j; i++, j--) {
		char t = s[i];
		s[i] = s[j - 1];
		s[j - 1] = t;
	}
}

static void utoa(u64 v, unsigned base, char *out)
{
	unsigned i = 0;

	do {
		out[i++] = "0123456789abcdefghijklmnopqrstuvwxyz"[v % base];
		v /= base;
	} while (v);
	out[i] = 0;
	reverse(out);
}

static const char *words[] = { "", "a", "ab", "abc", "abd", "b", "zz", "hello", "hellO", "hello, world" };

void oracle_main(void)
{
	char buf[80];
	u64 state = 5;

	rep_instructions();
	for (unsigned i = 0; i < sizeof words / sizeof words[0]; i++) {
		put_dec("len", my_strlen(words[i]));
		for (unsigned j = 0; j < sizeof words / sizeof words[0]; j++)
			put_dec("cmp", my_strcmp(words[i], words[j]));
	}
	for (int n = 0; n < 100; n++) {
		u64 v = rnd(&state) >> (n % 64);
		for (unsigned base = 2; base <= 36; base += 7) {
			utoa(v, base, buf);
			put_str(buf);
			oracle_putc('\n');
		}
	}
	put_str("strings done\n");
}
