/* Division at the extremes: the CPU's idiv/div (x/0 and INT_MIN/-1 raise #DE, handled and
 * skipped), and C division and remainder by constants (multiply-by-reciprocal code at -O2). */
#include "oracle.h"

static const i64 s64[] = {
	0, 1, -1, 2, -2, 3, -3, 7, -7, 10, 0x7fffffffffffffffLL, (i64)0x8000000000000000ULL,
	0x7fffffff, -0x80000000LL, 1000000007, -1000000007,
};
#define N (sizeof s64 / sizeof s64[0])

void oracle_main(void)
{
	u64 state = 31;

	for (unsigned i = 0; i < N; i++) {
		for (unsigned j = 0; j < N; j++) {
			i64 q = 0, r = 0;
			i32 q32 = 0, r32 = 0;
			u64 uq = 0, ur = 0;

			if (oracle_idiv64(s64[i], s64[j], &q, &r)) {
				put_dec("idiv q", q);
				put_dec("idiv r", r);
			} else {
				put_str("idiv #DE\n");
			}
			if (oracle_idiv32((i32)s64[i], (i32)s64[j], &q32, &r32)) {
				put_dec("idivl q", q32);
				put_dec("idivl r", r32);
			} else {
				put_str("idivl #DE\n");
			}
			if (oracle_div64((u64)s64[i], (u64)s64[j], &uq, &ur)) {
				put_hex("div q", uq);
				put_hex("div r", ur);
			} else {
				put_str("div #DE\n");
			}
		}
		/* Constant divisors: the compiler's reciprocal multiplications. */
		i64 x = s64[i];
		if (x != (i64)0x8000000000000000ULL) {
			put_dec("c/3", x / 3);
			put_dec("c%3", x % 3);
			put_dec("c/-7", x / -7);
			put_dec("c/10", x / 10);
			put_dec("c%10", x % 10);
			put_dec("c/1024", x / 1024);
		}
		put_hex("u/10", (u64)x / 10);
		put_hex("u%1000000007", (u64)x % 1000000007);
	}
	for (int n = 0; n < 300; n++) {
		u64 a = rnd(&state), b = rnd(&state) >> (n % 64);
		i64 q = 0, r = 0;
		if (b && oracle_idiv64((i64)a, (i64)b, &q, &r)) {
			put_dec("rq", q);
			put_dec("rr", r);
		}
		if (b) {
			put_hex("cu", a / b);
			put_hex("cm", a % b);
		}
	}
	put_str("divide done\n");
}
