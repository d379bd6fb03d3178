//! CRC32C header and data digests (RFC 7143 sections 11.2.4 and 13.1).
//!
//! Byte order: the RFC's bit-numbering prose is easy to misread, so we follow what
//! deployed stacks put on the wire. Both the Linux initiator/target and libiscsi compute
//! the standard (Castagnoli, reflected, init/xor-out `0xffffffff`) CRC32C and store the
//! resulting `u32` least-significant byte first (libiscsi `lib/socket.c`
//! `iscsi_pdu_update_headerdigest` writes `crc`, `crc >> 8`, ... at offsets 0..3 and
//! `lib/pdu.c` reads it back the same way). Getting this wrong breaks interop only
//! when digests are negotiated, which makes it easy to miss, hence the pinned test.

/// Size of either digest on the wire.
pub const DIGEST_LEN: usize = 4;

/// The header digest over the BHS and any AHS, in wire byte order.
pub fn header(header: &[u8]) -> [u8; DIGEST_LEN] {
    crc32c::crc32c(header).to_le_bytes()
}

/// The data digest over the data segment and its padding, in wire byte order.
///
/// Padding is always zeros, so it is folded in here rather than materialised.
pub fn data(data: &[u8]) -> [u8; DIGEST_LEN] {
    let pad = super::pad_len(data.len());
    crc32c::crc32c_append(crc32c::crc32c(data), &[0u8; 3][..pad]).to_le_bytes()
}

/// Whether `wire` (4 bytes as received) is the digest of `covered` (header, or data
/// segment with its padding already included).
pub fn matches(covered: &[u8], wire: &[u8]) -> bool {
    crc32c::crc32c(covered).to_le_bytes() == wire
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_crc32c_check_value() {
        // The CRC32C check value from RFC 3720 Appendix B.4 / the iSCSI test vectors:
        // 32 bytes of zeros give 0x8a9136aa, sent as aa 36 91 8a.
        assert_eq!(crc32c::crc32c(&[0u8; 32]), 0x8a91_36aa);
        assert_eq!(header(&[0u8; 32]), [0xaa, 0x36, 0x91, 0x8a]);
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn data_digest_covers_padding() {
        let d = b"abcde";
        let mut padded = d.to_vec();
        padded.extend_from_slice(&[0, 0, 0]);
        assert_eq!(data(d), header(&padded));
        assert!(matches(&padded, &data(d)));
        assert_eq!(data(b"abcd"), header(b"abcd"));
    }
}
