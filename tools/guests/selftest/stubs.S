/*
 * IDT entry stubs of the self-checking guests: one 16-byte stub per vector (push a dummy error
 * code where the CPU pushes none, then the vector), all calling selftest_trap(frame).
 */
	.text
	.code64

	.balign	16
	.globl	selftest_stubs
selftest_stubs:
	.set	.Lvec, 0
	.rept	256
	.balign	16
	.if !(.Lvec == 8 || (.Lvec >= 10 && .Lvec <= 14) || .Lvec == 17 || .Lvec == 21 || .Lvec == 29 || .Lvec == 30)
	pushq	$0
	.endif
	pushq	$.Lvec
	jmp	selftest_common
	.set	.Lvec, .Lvec + 1
	.endr

selftest_common:
	push	%r11
	push	%r10
	push	%r9
	push	%r8
	push	%rdi
	push	%rsi
	push	%rdx
	push	%rcx
	push	%rax
	mov	%rsp, %rdi
	cld
	call	selftest_trap
	pop	%rax
	pop	%rcx
	pop	%rdx
	pop	%rsi
	pop	%rdi
	pop	%r8
	pop	%r9
	pop	%r10
	pop	%r11
	add	$16, %rsp
	iretq

	.section .note.GNU-stack, "", @progbits
