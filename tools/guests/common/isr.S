/*
 * Interrupt entry.  One 16-byte stub per vector (irq.c points gate v at
 * isr_stubs + 16 * v) pushes a dummy error code where the CPU pushes none,
 * then the vector, so trap() always sees the same frame (struct trap_frame).
 */
	.text
	.code64

	.balign	16
	.globl	isr_stubs
isr_stubs:
	.set	.Lvec, 0
	.rept	256
	.balign	16
	/* Exceptions that push an error code: #DF #TS #NP #SS #GP #PF #AC #CP #VC #SX */
	.if !(.Lvec == 8 || (.Lvec >= 10 && .Lvec <= 14) || .Lvec == 17 || .Lvec == 21 || .Lvec == 29 || .Lvec == 30)
	pushq	$0
	.endif
	pushq	$.Lvec
	jmp	trap_common
	.set	.Lvec, .Lvec + 1
	.endr

/*
 * Save the registers the C ABI lets trap() clobber.  The CPU aligned RSP to
 * 16 before pushing its 6 words (with the error code); vector + 9 registers
 * are 80 more bytes, so RSP is 16-aligned at the call as the ABI wants.  No
 * red zone to skip: the guests are built with -mno-red-zone.
 */
trap_common:
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
	call	trap
	pop	%rax
	pop	%rcx
	pop	%rdx
	pop	%rsi
	pop	%rdi
	pop	%r8
	pop	%r9
	pop	%r10
	pop	%r11
	add	$16, %rsp		/* vector and error code */
	iretq

	.section .note.GNU-stack, "", @progbits
