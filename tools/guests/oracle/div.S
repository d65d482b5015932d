/*
 * Divisions done by the CPU itself, for the oracle programs. A #DE at one of the *_insn labels
 * is skipped by the host's SIGFPE handler or the guest's #DE handler (host.c, guest_de.S), which
 * also clear %r9, the "no fault" flag these return.
 *
 *   int NAME(a, b, *q, *r): extend the dividend (EXTEND), divide (INSN), store (MOV) unless #DE.
 */
	.text
	.code64

	.macro	DIVISION name, extend, insn, mov, q, r
	.globl	\name, \name\()_insn
\name:
	mov	%rdx, %r8
	mov	%rdi, %rax
	mov	$1, %r9d
	\extend
\name\()_insn:
	\insn
	test	%r9d, %r9d
	jz	1f
	\mov	\q, (%r8)
	\mov	\r, (%rcx)
1:	mov	%r9d, %eax
	ret
	.endm

	DIVISION oracle_idiv64, cqo, "idivq %rsi", movq, %rax, %rdx	/* idivq: 48 f7 fe, 3 bytes */
	DIVISION oracle_idiv32, cltd, "idivl %esi", movl, %eax, %edx	/* idivl: f7 fe, 2 bytes */
	DIVISION oracle_div64, "xor %edx, %edx", "divq %rsi", movq, %rax, %rdx	/* divq: 48 f7 f6, 3 bytes */

	.section .note.GNU-stack, "", @progbits
