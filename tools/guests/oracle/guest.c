/* The guest side of an oracle program: a toy guest printing to the serial port. */
#include "lib.h"
#include "oracle.h"

extern const u8 oracle_de_stub[];	/* guest_de.S */

/* Output goes to RAM above the image (serial output costs two exits a byte); at the end its
 * length goes to port ORACLE_PORT, where the test reads it back from guest memory. */
#define ORACLE_OUT	((char *)GUEST_LOW_RESERVED)
#define ORACLE_MAX	(64ULL << 20)
#define ORACLE_PORT	0x510
static u64 out_len;

void oracle_putc(char c)
{
	if (out_len < ORACLE_MAX)
		ORACLE_OUT[out_len] = c;
	out_len++;
}

/* An IDT with the #DE gate only: div.S's divisions are the only exceptions expected. */
static struct {
	u16 offset0, selector;
	u8 ist, type;
	u16 offset1;
	u32 offset2, reserved;
} __attribute__((packed)) idt[1] __attribute__((aligned(16)));

void guest_main(struct bootinfo *bi)
{
	struct { u16 limit; u64 base; } __attribute__((packed)) idtr = { sizeof(idt) - 1, (u64)idt };
	u64 a = (u64)oracle_de_stub;
	u16 cs;

	(void)bi;
	asm volatile("mov %%cs, %0" : "=r"(cs));
	idt[0].offset0 = a;
	idt[0].selector = cs;
	idt[0].type = 0x8e;
	idt[0].offset1 = a >> 16;
	idt[0].offset2 = a >> 32;
	asm volatile("lidt %0" : : "m"(idtr));
	oracle_main();
	outl(ORACLE_PORT, out_len);
	exit(0);
}
