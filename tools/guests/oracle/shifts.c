/* Shifts and rotates by 0, 1, 31, 63 and counts of the operand width and more (the CPU masks
 * them), with the flags each count defines. */
#include "oracle.h"

static const u8 counts[] = { 0, 1, 2, 7, 8, 15, 16, 31, 32, 33, 63, 64, 65, 127, 128, 255 };
static const u64 values[] = {
	0, 1, 0x80, 0x8000000000000000ULL, 0xffffffffffffffffULL, 0x7fffffff80000001ULL, 0x0123456789abcdefULL,
	0xfedcba9876543210ULL, 0x80000000ULL, 0xffffffffULL,
};

/* Flags before the instruction: a known pattern, so "unchanged" (count 0) is visible. */
#define FLAGS_IN 0x8d5ULL

static void line(const char *op, u64 v, unsigned c, u64 r, u64 f)
{
	put_str(op);
	oracle_putc(' ');
	put_x(v);
	put_str(" by ");
	put_x(c);
	put_str(" = ");
	put_x(r);
	put_str(" f=");
	put_x(f);
	oracle_putc('\n');
}

/* Defined flags: masked count 0 leaves all; 1 defines CF, OF, SF, ZF, PF; more: CF, SF, ZF, PF. */
static u64 shift_mask(unsigned masked)
{
	return masked == 0 ? F_ARITH : masked == 1 ? (F_CF | F_OF | F_SF | F_ZF | F_PF) : (F_CF | F_SF | F_ZF | F_PF);
}
/* Rotates: 0 leaves all, 1 defines CF and OF, more only CF. */
static u64 rot_mask(unsigned masked)
{
	return masked == 0 ? F_ARITH : masked == 1 ? (F_CF | F_OF) : F_CF;
}

#define SH64(name, insn) \
	static u64 name(u64 v, u8 c, u64 *f) \
	{ \
		u64 fl; \
		asm volatile("pushq %3\n\tpopfq\n\t" insn " %%cl, %0\n\tpushfq\n\tpopq %1" \
			     : "+r"(v), "=r"(fl) : "c"(c), "r"(FLAGS_IN) : "cc"); \
		*f = fl; \
		return v; \
	}
#define SH32(name, insn) \
	static u64 name(u64 v, u8 c, u64 *f) \
	{ \
		u64 fl; \
		u32 x = v; \
		asm volatile("pushq %3\n\tpopfq\n\t" insn " %%cl, %0\n\tpushfq\n\tpopq %1" \
			     : "+r"(x), "=r"(fl) : "c"(c), "r"(FLAGS_IN) : "cc"); \
		*f = fl; \
		return x; \
	}

SH64(shl64, "shlq")
SH64(shr64, "shrq")
SH64(sar64, "sarq")
SH64(rol64, "rolq")
SH64(ror64, "rorq")
SH32(shl32, "shll")
SH32(shr32, "shrl")
SH32(sar32, "sarl")
SH32(rol32, "roll")
SH32(ror32, "rorl")

struct shop {
	const char *name;
	u64 (*fn)(u64, u8, u64 *);
	int width, rotate;
};

static const struct shop ops[] = {
	{ "shl", shl64, 64, 0 }, { "shr", shr64, 64, 0 }, { "sar", sar64, 64, 0 }, { "rol", rol64, 64, 1 },
	{ "ror", ror64, 64, 1 }, { "shll", shl32, 32, 0 }, { "shrl", shr32, 32, 0 }, { "sarl", sar32, 32, 0 },
	{ "roll", rol32, 32, 1 }, { "rorl", ror32, 32, 1 },
};

/* Immediate counts, as the compiler emits them for constant shifts. */
static void immediates(u64 v)
{
	u64 f;

	asm volatile("pushq %2\n\tpopfq\n\tshlq $1, %0\n\tpushfq\n\tpopq %1" : "+r"(v), "=r"(f) : "r"(FLAGS_IN) : "cc");
	line("shl1", v, 1, v, f & shift_mask(1));
	asm volatile("pushq %2\n\tpopfq\n\tsarq $63, %0\n\tpushfq\n\tpopq %1" : "+r"(v), "=r"(f) : "r"(FLAGS_IN) : "cc");
	line("sar63", v, 63, v, f & shift_mask(63));
	asm volatile("pushq %2\n\tpopfq\n\tshrl $31, %k0\n\tpushfq\n\tpopq %1" : "+r"(v), "=r"(f) : "r"(FLAGS_IN) : "cc");
	line("shrl31", v, 31, v, f & shift_mask(31));
}

void oracle_main(void)
{
	u64 f, state = 77;

	for (unsigned i = 0; i < sizeof values / sizeof values[0]; i++) {
		immediates(values[i]);
		for (unsigned j = 0; j < sizeof counts / sizeof counts[0]; j++) {
			for (unsigned k = 0; k < sizeof ops / sizeof ops[0]; k++) {
				unsigned masked = counts[j] & (ops[k].width == 64 ? 63 : 31);
				u64 r = ops[k].fn(values[i], counts[j], &f);
				line(ops[k].name, values[i], counts[j], r, f & (ops[k].rotate ? rot_mask(masked) : shift_mask(masked)));
			}
		}
	}
	/* C shifts by variable (in-range) counts, and the compiler's idioms. */
	for (int n = 0; n < 300; n++) {
		u64 v = rnd(&state);
		unsigned c = rnd(&state) & 63;
		i64 s = (i64)v;
		line("c_shl", v, c, v << c, (u64)(s >> c));
		line("c_shr32", v, c & 31, (u32)v >> (c & 31), (u64)(i64)((i32)v >> (c & 31)));
		line("c_rot", v, c, (v << c) | (v >> ((64 - c) & 63)), (v >> c) | (v << ((64 - c) & 63)));
	}
	put_str("shifts done\n");
}
