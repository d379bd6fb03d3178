//! Serial number arithmetic (RFC 1982, 32 bits) for CmdSN, StatSN, DataSN, R2TSN.
