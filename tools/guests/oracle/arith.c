/* Integer arithmetic and its flags: add/sub/adc/sbb/neg/inc/dec/logic/mul/imul on edge values. */
#include "oracle.h"

static const u64 edges[] = {
	0, 1, 2, 0x7f, 0x80, 0xff, 0x7fff, 0x8000, 0xffff, 0x7fffffff, 0x80000000, 0xffffffff,
	0x100000000ULL, 0x7fffffffffffffffULL, 0x8000000000000000ULL, 0xfffffffffffffffeULL, 0xffffffffffffffffULL,
};
#define NEDGES (sizeof edges / sizeof edges[0])
#define F_LOGIC (F_CF | F_PF | F_ZF | F_SF | F_OF)

static void line(const char *op, u64 a, u64 b, u64 r, u64 f)
{
	put_str(op);
	oracle_putc(' ');
	put_x(a);
	oracle_putc(' ');
	put_x(b);
	put_str(" = ");
	put_x(r);
	put_str(" f=");
	put_x(f);
	oracle_putc('\n');
}

/* A two-operand instruction (after `pre`) on 64-bit registers, or 32-bit ones with mod "k";
 * the flags it leaves go to `f`, masked to those it defines. */
#define OP(name, pre, insn, mod, type, mask) \
	static u64 name(u64 a, u64 b, u64 *f) \
	{ \
		u64 fl; \
		type x = a; \
		asm volatile(pre insn " %" mod "2, %" mod "0\n\tpushfq\n\tpopq %1" : "+r"(x), "=r"(fl) : "r"(b) : "cc"); \
		*f = fl & (mask); \
		return x; \
	}
#define OP64(name, insn, mask) OP(name, "", insn, "", u64, mask)
#define OP32(name, insn, mask) OP(name, "", insn, "k", u32, mask)
#define OPC(name, insn, mask) OP(name, "stc\n\t", insn, "", u64, mask)	/* with the carry set (adc, sbb) */

OP64(add64, "addq", F_ARITH)
OP64(sub64, "subq", F_ARITH)
OP64(and64, "andq", F_LOGIC)
OP64(or64, "orq", F_LOGIC)
OP64(xor64, "xorq", F_LOGIC)
OP64(imul64, "imulq", F_CF | F_OF)
OP32(add32, "addl", F_ARITH)
OP32(sub32, "subl", F_ARITH)
OP32(imul32, "imull", F_CF | F_OF)
OPC(adc64, "adcq", F_ARITH)
OPC(sbb64, "sbbq", F_ARITH)

static u64 cmp64(u64 a, u64 b, u64 *f)
{
	u64 fl;

	asm volatile("cmpq %2, %1\n\tpushfq\n\tpopq %0" : "=r"(fl) : "r"(a), "r"(b) : "cc");
	*f = fl & F_ARITH;
	return 0;
}

static u64 mul64(u64 a, u64 b, u64 *f)
{
	u64 lo = a, hi, fl;

	asm volatile("mulq %3\n\tpushfq\n\tpopq %2" : "+a"(lo), "=d"(hi), "=r"(fl) : "r"(b) : "cc");
	*f = fl & (F_CF | F_OF);
	return hi ^ lo;
}

static u64 imul128(u64 a, u64 b, u64 *f)
{
	u64 lo = a, hi, fl;

	asm volatile("imulq %3\n\tpushfq\n\tpopq %2" : "+a"(lo), "=d"(hi), "=r"(fl) : "r"(b) : "cc");
	*f = fl & (F_CF | F_OF);
	return hi * 31 + lo;
}

struct binop {
	const char *name;
	u64 (*fn)(u64, u64, u64 *);
};

static const struct binop ops[] = {
	{ "add", add64 }, { "sub", sub64 }, { "and", and64 }, { "or", or64 }, { "xor", xor64 },
	{ "imul", imul64 }, { "addl", add32 }, { "subl", sub32 }, { "imull", imul32 }, { "adc", adc64 },
	{ "sbb", sbb64 }, { "cmp", cmp64 }, { "mul", mul64 }, { "imul128", imul128 },
};

/* Unary ones: neg, inc, dec (inc/dec keep CF: set it first, to see that). */
static void unary(u64 a)
{
	u64 r, fl;

	r = a;
	asm volatile("negq %0\n\tpushfq\n\tpopq %1" : "+r"(r), "=r"(fl) : : "cc");
	line("neg", a, 0, r, fl & F_ARITH);
	r = a;
	asm volatile("stc\n\tincq %0\n\tpushfq\n\tpopq %1" : "+r"(r), "=r"(fl) : : "cc");
	line("inc", a, 0, r, fl & F_ARITH);
	r = a;
	asm volatile("clc\n\tdecq %0\n\tpushfq\n\tpopq %1" : "+r"(r), "=r"(fl) : : "cc");
	line("dec", a, 0, r, fl & F_ARITH);
	r = a;
	asm volatile("notq %0" : "+r"(r));
	line("not", a, 0, r, 0);
}

/* What C itself makes of the same values (the compiler's own choice of instructions). */
static void c_level(u64 a, u64 b)
{
	i64 sa = (i64)a, sb = (i64)b;
	u64 s, d, m;
	int ov;

	ov = __builtin_add_overflow(sa, sb, (i64 *)&s);
	line("c_add_ov", a, b, s, ov);
	ov = __builtin_sub_overflow(sa, sb, (i64 *)&d);
	line("c_sub_ov", a, b, d, ov);
	ov = __builtin_mul_overflow(a, b, &m);
	line("c_umul_ov", a, b, m, ov);
	ov = __builtin_mul_overflow((i32)a, (i32)b, (i32 *)&m);
	line("c_mul32_ov", a & 0xffffffff, b & 0xffffffff, m & 0xffffffff, ov);
	line("c_lt", a, b, sa < sb, a < b);
	line("c_minmax", a, b, sa < sb ? sa : sb, a > b ? a : b);
	line("c_avg", a, b, (a & b) + ((a ^ b) >> 1), (u64)((sa >> 1) + (sb >> 1)));
}

void oracle_main(void)
{
	u64 state = 0x1234, f;

	for (unsigned i = 0; i < NEDGES; i++) {
		unary(edges[i]);
		for (unsigned j = 0; j < NEDGES; j++) {
			for (unsigned k = 0; k < sizeof ops / sizeof ops[0]; k++) {
				u64 r = ops[k].fn(edges[i], edges[j], &f);
				line(ops[k].name, edges[i], edges[j], r, f);
			}
			c_level(edges[i], edges[j]);
		}
	}
	for (int n = 0; n < 200; n++) {
		u64 a = rnd(&state), b = rnd(&state) >> (n & 63);
		for (unsigned k = 0; k < sizeof ops / sizeof ops[0]; k++) {
			u64 r = ops[k].fn(a, b, &f);
			line(ops[k].name, a, b, r, f);
		}
		c_level(a, b);
	}
	put_str("arith done\n");
}
