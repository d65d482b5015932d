/*
 * Guest entry.  The VMM enters here in 64-bit mode with paging on,
 * interrupts off, RDI = boot info and RSP = a temporary stack in memory the
 * VMM owns, so the first thing to do is move to our own stack.
 */
	.section .text.start, "ax"
	.code64
	.globl _start
_start:
	mov	$boot_stack_top, %rsp
	xor	%ebp, %ebp		/* end of frame chain for debuggers */
	cld				/* the C ABI wants DF clear */
	mov	%rdi, %rbx		/* callee-saved: boot info survives the calls */

	/*
	 * Zero .bss.  The VMM zero-fills p_memsz too, but a guest that is
	 * re-entered (or a lazy VMM) must not see stale data.  A plain loop:
	 * no string instructions for the emulator to trip on.  This wipes the
	 * stack we are on, which is fine: nothing has been pushed yet.
	 */
	mov	$__bss_start, %rax
	mov	$__bss_end, %rcx
1:	cmp	%rcx, %rax
	jae	2f
	movq	$0, (%rax)
	add	$8, %rax
	jmp	1b
2:
	mov	%rbx, %rdi
	call	bootinfo_check		/* exits 0x7f on bad boot info */
	mov	%rbx, %rdi
	call	guest_main

	/* guest_main must not return: report it as a failure. */
	mov	$0xff, %eax
	mov	$0xf4, %edx
	outl	%eax, %dx
3:	hlt
	jmp	3b

	.section .bss
	.balign 16
boot_stack:
	.skip	65536
boot_stack_top:

	.section .note.GNU-stack, "", @progbits
