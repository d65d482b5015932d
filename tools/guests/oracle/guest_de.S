/* The guest's #DE handler: skip div.S's faulting division, clear its "no fault" flag (%r9). */
	.text
	.code64
	.globl	oracle_de_stub
oracle_de_stub:
	push	%rax
	mov	8(%rsp), %rax			/* the faulting RIP */
	cmp	$oracle_idiv32_insn, %rax
	je	2f
	cmp	$oracle_idiv64_insn, %rax
	je	3f
	cmp	$oracle_div64_insn, %rax
	je	3f
	mov	$0xf4, %edx			/* not ours: exit 4 */
	mov	$4, %eax
	outl	%eax, %dx
1:	hlt
	jmp	1b
2:	addq	$2, 8(%rsp)
	jmp	4f
3:	addq	$3, 8(%rsp)
4:	pop	%rax
	xor	%r9d, %r9d
	iretq

	.section .note.GNU-stack, "", @progbits
