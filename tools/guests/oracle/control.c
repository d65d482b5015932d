/* Control flow: jump tables, indirect calls, recursion, a bytecode interpreter with computed gotos. */
#include "oracle.h"

static u64 dense(unsigned x, u64 v)
{
	switch (x) {	/* dense: a jump table at -O2 */
	case 0: return v + 1;
	case 1: return v * 3;
	case 2: return v ^ 0x5555;
	case 3: return v >> 3;
	case 4: return v - 7;
	case 5: return ~v;
	case 6: return v * v;
	case 7: return v << 5;
	case 8: return v | 0x100;
	case 9: return v & 0xff00ff;
	case 10: return v + (v >> 7);
	case 11: return v * 0x9e3779b97f4a7c15ULL;
	default: return 0xdead;
	}
}

static int sparse(i64 x)
{
	switch (x) {
	case -1000000: return 1;
	case -3: return 2;
	case 17: return 3;
	case 4096: return 4;
	case 0x7fffffffffffffffLL: return 5;
	case (i64)0x8000000000000000ULL: return 6;
	default: return 0;
	}
}

static u64 f_add(u64 a, u64 b) { return a + b; }
static u64 f_mul(u64 a, u64 b) { return a * b; }
static u64 f_xor(u64 a, u64 b) { return a ^ b; }
static u64 f_rot(u64 a, u64 b) { return (a << (b & 63)) | (a >> ((64 - (b & 63)) & 63)); }
static u64 (*const table[])(u64, u64) = { f_add, f_mul, f_xor, f_rot };

static u64 fib(unsigned n) { return n < 2 ? n : fib(n - 1) + fib(n - 2); }
static u64 ack(u64 m, u64 n) { return m == 0 ? n + 1 : n == 0 ? ack(m - 1, 1) : ack(m - 1, ack(m, n - 1)); }
static int is_odd(unsigned n);
static int is_even(unsigned n) { return n == 0 ? 1 : is_odd(n - 1); }
static int is_odd(unsigned n) { return n == 0 ? 0 : is_even(n - 1); }
static u64 hanoi(unsigned n, int from, int to, int via, u64 acc)
{
	if (n == 0)
		return acc;
	acc = hanoi(n - 1, from, via, to, acc);
	acc = acc * 7 + (u64)(from * 3 + to);
	return hanoi(n - 1, via, to, from, acc);
}

/* Sort with a comparator through a function pointer. */
static int cmp_u64(const void *x, const void *y)
{
	u64 a = *(const u64 *)x, b = *(const u64 *)y;
	return a < b ? -1 : a > b;
}
static void sort(u64 *v, unsigned n, int (*cmp)(const void *, const void *))
{
	for (unsigned i = 1; i < n; i++)
		for (unsigned j = i; j > 0 && cmp(&v[j - 1], &v[j]) > 0; j--) {
			u64 t = v[j];
			v[j] = v[j - 1];
			v[j - 1] = t;
		}
}

/* A small stack machine with computed gotos (indirect jumps). */
enum { PUSH, ADD, MUL, DUP, SWAP, JNZ, DEC, HALT };
static u64 interp(const u8 *code)
{
	static void *const ops[] = { &&push, &&add, &&mul, &&dup, &&swap, &&jnz, &&dec, &&halt };
	u64 st[32];
	int sp = 0, pc = 0;

#define NEXT goto *ops[code[pc++]]
	NEXT;
push:	st[sp++] = code[pc++]; NEXT;
add:	sp--; st[sp - 1] += st[sp]; NEXT;
mul:	sp--; st[sp - 1] *= st[sp]; NEXT;
dup:	st[sp] = st[sp - 1]; sp++; NEXT;
swap:	{ u64 t = st[sp - 1]; st[sp - 1] = st[sp - 2]; st[sp - 2] = t; } NEXT;
jnz:	sp--; if (st[sp]) pc = code[pc]; else pc++; NEXT;
dec:	st[sp - 1]--; NEXT;
halt:	return st[sp - 1];
#undef NEXT
}

void oracle_main(void)
{
	u64 state = 99, v[40];
	/* acc = 1; n = 12; do { acc *= n-ish; n--; } while (n) */
	static const u8 prog[] = { PUSH, 1, PUSH, 12, DUP, PUSH, 3, ADD, SWAP, DEC, DUP, JNZ, 4, HALT };

	for (unsigned x = 0; x < 14; x++)
		for (int k = 0; k < 5; k++)
			put_hex("dense", dense(x, rnd(&state)));
	static const i64 keys[] = { -1000000, -3, 17, 4096, 0x7fffffffffffffffLL, (i64)0x8000000000000000ULL, 0, 5, -4 };
	for (unsigned i = 0; i < sizeof keys / sizeof keys[0]; i++)
		put_dec("sparse", sparse(keys[i]));
	for (int n = 0; n < 64; n++) {
		u64 a = rnd(&state), b = rnd(&state);
		put_hex("call", table[n & 3](a, b));
	}
	for (unsigned n = 0; n <= 25; n++)
		put_dec("fib", (i64)fib(n));
	for (u64 m = 0; m <= 2; m++)
		for (u64 n = 0; n <= 4; n++)
			put_dec("ack", (i64)ack(m, n));
	put_dec("even", is_even(1001) * 10 + is_odd(1001));
	put_hex("hanoi", hanoi(12, 1, 3, 2, 0));
	for (int i = 0; i < 40; i++)
		v[i] = rnd(&state) % 1000;
	sort(v, 40, cmp_u64);
	for (int i = 0; i < 40; i++)
		put_dec("sorted", (i64)v[i]);
	put_hex("interp", interp(prog));
	put_str("control done\n");
}
