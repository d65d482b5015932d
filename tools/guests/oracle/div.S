/*
 * Divisions done by the CPU itself, for the oracle programs. A #DE at one of the *_insn labels
 * is skipped by the host's SIGFPE handler or the guest's #DE handler (host.c, guest_de.S), which
 * also clear %r9, the "no fault" flag these return.
 */
	.text
	.code64

	/* int oracle_idiv64(i64 a, i64 b, i64 *q, i64 *r) */
	.globl	oracle_idiv64, oracle_idiv64_insn
oracle_idiv64:
	mov	%rdx, %r8
	mov	%rdi, %rax
	mov	$1, %r9d
	cqo
oracle_idiv64_insn:
	idivq	%rsi			/* 48 f7 fe: 3 bytes */
	test	%r9d, %r9d
	jz	1f
	mov	%rax, (%r8)
	mov	%rdx, (%rcx)
1:	mov	%r9d, %eax
	ret

	/* int oracle_idiv32(i32 a, i32 b, i32 *q, i32 *r) */
	.globl	oracle_idiv32, oracle_idiv32_insn
oracle_idiv32:
	mov	%rdx, %r8
	mov	%edi, %eax
	mov	$1, %r9d
	cltd
oracle_idiv32_insn:
	idivl	%esi			/* f7 fe: 2 bytes */
	test	%r9d, %r9d
	jz	1f
	mov	%eax, (%r8)
	mov	%edx, (%rcx)
1:	mov	%r9d, %eax
	ret

	/* int oracle_div64(u64 a, u64 b, u64 *q, u64 *r) */
	.globl	oracle_div64, oracle_div64_insn
oracle_div64:
	mov	%rdx, %r8
	mov	%rdi, %rax
	mov	$1, %r9d
	xor	%edx, %edx
oracle_div64_insn:
	divq	%rsi			/* 48 f7 f6: 3 bytes */
	test	%r9d, %r9d
	jz	1f
	mov	%rax, (%r8)
	mov	%rdx, (%rcx)
1:	mov	%r9d, %eax
	ret

	.section .note.GNU-stack, "", @progbits
