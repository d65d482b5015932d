// Ports the emu test guests use to talk to the test (tools/guests/oracle, tools/guests/selftest).
/** OUT: the oracle guest's output length; the bytes are in guest RAM at 4 MiB. */
export const GUEST_OUTPUT = 0x510;
/** OUT gsi: pulse / raise / lower that GSI (a device's interrupt line). */
export const PULSE_GSI = 0x520, RAISE_GSI = 0x521, LOWER_GSI = 0x522;
/** OUT: write the irqfd; IN: read (and reset) the MMIO / port ioeventfd's count. */
export const SIGNAL_IRQFD = 0x523, MMIO_EVENTS = 0x524, PIO_EVENTS = 0x525;
/** The guest's port doorbell (a port ioeventfd) and MMIO doorbell (datamatch 7). */
export const PIO_DOORBELL = 0x530, MMIO_DOORBELL = 0xd0001000;
