// Ports the emu test guests use to talk to the test (tools/guests/oracle, tools/guests/selftest).
/** OUT: the oracle guest's output length; the bytes are in guest RAM at 4 MiB. */
export const GUEST_OUTPUT = 0x510;
/** OUT gsi: pulse / raise / lower that GSI (a device's interrupt line). */
export const PULSE_GSI = 0x520, RAISE_GSI = 0x521, LOWER_GSI = 0x522;
