//! The EXTENDED COPY (LID1) parameter list: pure decoding and checking, no I/O.
//!
//! ```text
//! 0       list identifier
//! 1       STR (bit 5), LIST ID USAGE (bits 4:3), PRIORITY (bits 2:0)
//! 2..4    CSCD (target) descriptor list length, 32 bytes per descriptor
//! 4..8    reserved
//! 8..12   segment descriptor list length
//! 12..16  inline data length
//! 16..    target descriptors, then segment descriptors, then inline data
//! ```
//!
//! We take one kind of each: the identification descriptor target (0xE4), which names
//! a logical unit by a designator from its VPD page 0x83, and the block → block
//! segment (0x02). Everything is checked before a block moves; the errors found here
//! are ILLEGAL REQUEST (SPC-4 6.4.3: nothing has been processed yet). Whether a target
//! names a reachable logical unit, and whether a segment's ranges fit, depend on the
//! nexus and are checked by the caller (`copy`), as COPY ABORTED.

use super::cdb::be;
use super::sense::{asc, Sense};

/// Target (CSCD) descriptors per command (VPD 0x8F, OPERATING PARAMETERS). A copy
/// names a source and a destination; a few more let an initiator reuse one list.
pub const MAX_TARGET_DESCRIPTORS: u16 = 8;

/// Segment descriptors per command. Each moves at most 65535 blocks (the field is 16
/// bits), so a command moves up to 2 GiB; that bounds how long one command runs.
pub const MAX_SEGMENT_DESCRIPTORS: u16 = 64;

/// MAXIMUM DESCRIPTOR LIST LENGTH: room for the most descriptors of both kinds.
pub const MAX_DESCRIPTOR_LIST_LENGTH: u32 =
    MAX_TARGET_DESCRIPTORS as u32 * TARGET_LEN as u32 + MAX_SEGMENT_DESCRIPTORS as u32 * 28;

/// Bytes in a target descriptor.
pub const TARGET_LEN: usize = 32;
/// Parameter list header.
pub const HEADER_LEN: usize = 16;

/// The identification descriptor target descriptor.
pub const IDENTIFICATION_TARGET: u8 = 0xE4;
/// The block device to block device segment descriptor.
pub const BLOCK_TO_BLOCK: u8 = 0x02;
/// Its DESCRIPTOR LENGTH (bytes after the first four).
const BLOCK_TO_BLOCK_LEN: usize = 0x18;

/// What happens to the command's results once it completes (LIST ID USAGE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListIdUsage {
    /// 00b: hold them for RECEIVE COPY RESULTS.
    Hold,
    /// 10b: the list identifier is unique among running copies; hold nothing.
    Discard,
    /// 11b: the list identifier is zero and means nothing.
    None,
}

/// A target descriptor: a logical unit named by one designator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Designator type (VPD 0x83 byte 1, bits 3:0), code set and association.
    pub designator_type: u8,
    pub code_set: u8,
    pub association: u8,
    pub designator: Vec<u8>,
    /// DISK BLOCK LENGTH the initiator expects.
    pub block_len: u32,
    /// Offset of the descriptor in the parameter list, for sense pointers.
    pub at: usize,
}

/// A block → block segment: `blocks` blocks from `src_lba` of target `src` to
/// `dst_lba` of target `dst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub src: u16,
    pub dst: u16,
    pub blocks: u16,
    pub src_lba: u64,
    pub dst_lba: u64,
    /// Offset of the descriptor in the parameter list, for sense pointers.
    pub at: usize,
}

/// A decoded parameter list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyList {
    pub list_id: u8,
    pub usage: ListIdUsage,
    pub targets: Vec<Target>,
    pub segments: Vec<Segment>,
}

/// Decodes an EXTENDED COPY parameter list of the length the CDB gave (`list`, which
/// may hold more than that if the initiator sent more). `Ok(None)`: an empty list,
/// which asks for nothing and is not an error.
pub fn parse(list: &[u8], param_len: usize) -> Result<Option<CopyList>, Sense> {
    if param_len == 0 {
        return Ok(None);
    }
    let list = &list[..list.len().min(param_len)];
    if list.len() < HEADER_LEN {
        return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR));
    }
    let field = |off, len| be(list, off, len).unwrap_or(0) as usize;
    let list_id = list[0];
    let usage = match (list[1] >> 3) & 0x03 {
        0b00 => ListIdUsage::Hold,
        0b10 => ListIdUsage::Discard,
        0b11 => ListIdUsage::None,
        _ => return Err(Sense::invalid_param(1, Some(4))),
    };
    if usage == ListIdUsage::None && list_id != 0 {
        return Err(Sense::invalid_param(0, None));
    }
    let tgt_len = field(2, 2);
    let seg_len = field(8, 4);
    let inline_len = field(12, 4);
    if tgt_len + seg_len > MAX_DESCRIPTOR_LIST_LENGTH as usize {
        return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR));
    }
    // MAXIMUM INLINE DATA LENGTH is 0: no segment type we take uses inline data.
    if inline_len != 0 {
        return Err(Sense::invalid_param(12, None));
    }
    if HEADER_LEN + tgt_len + seg_len > list.len() {
        return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR));
    }
    if tgt_len % TARGET_LEN != 0 {
        return Err(Sense::invalid_param(2, None));
    }
    if tgt_len / TARGET_LEN > MAX_TARGET_DESCRIPTORS as usize {
        return Err(Sense::illegal(asc::TOO_MANY_TARGET_DESCRIPTORS));
    }
    let targets = (0..tgt_len / TARGET_LEN)
        .map(|i| target(list, HEADER_LEN + i * TARGET_LEN))
        .collect::<Result<Vec<_>, _>>()?;
    let start = HEADER_LEN + tgt_len;
    let segments = segments(list, start, start + seg_len)?;
    Ok(Some(CopyList {
        list_id,
        usage,
        targets,
        segments,
    }))
}

fn target(list: &[u8], at: usize) -> Result<Target, Sense> {
    let d = &list[at..at + TARGET_LEN];
    if d[0] != IDENTIFICATION_TARGET {
        return Err(
            Sense::illegal(asc::UNSUPPORTED_TARGET_DESCRIPTOR_TYPE_CODE).with_param_pointer(at)
        );
    }
    // Byte 1: LU ID TYPE (bits 7:6) is ignored for this descriptor (SPC-4); NUL (bit 5,
    // a null copy target) is not something we copy to or from; the peripheral device
    // type (bits 4:0) must be a block device.
    if d[1] & 0x20 != 0 {
        return Err(Sense::invalid_param(at + 1, Some(5)));
    }
    if d[1] & 0x1F != 0 {
        return Err(Sense::invalid_param(at + 1, None));
    }
    let len = usize::from(d[7]);
    // The designator (a VPD 0x83 designation descriptor) has 20 bytes of room.
    if len > 20 {
        return Err(Sense::invalid_param(at + 7, None));
    }
    Ok(Target {
        code_set: d[4] & 0x0F,
        association: (d[5] >> 4) & 0x03,
        designator_type: d[5] & 0x0F,
        designator: d[8..8 + len].to_vec(),
        block_len: be(d, 29, 3).unwrap_or(0) as u32,
        at,
    })
}

fn segments(list: &[u8], start: usize, end: usize) -> Result<Vec<Segment>, Sense> {
    let mut out = Vec::new();
    let mut at = start;
    while at < end {
        if out.len() == MAX_SEGMENT_DESCRIPTORS as usize {
            return Err(Sense::illegal(asc::TOO_MANY_SEGMENT_DESCRIPTORS));
        }
        if list[at] != BLOCK_TO_BLOCK {
            return Err(
                Sense::illegal(asc::UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE_CODE)
                    .with_param_pointer(at),
            );
        }
        if at + 4 + BLOCK_TO_BLOCK_LEN > end {
            return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR));
        }
        let field = |off, len| be(list, at + off, len).unwrap_or(0);
        if field(2, 2) as usize != BLOCK_TO_BLOCK_LEN {
            return Err(Sense::invalid_param(at + 2, None));
        }
        // Byte 1 holds DC and CAT, which only matter when the block lengths differ;
        // both targets must have our 512-byte blocks (checked by the caller).
        out.push(Segment {
            src: field(4, 2) as u16,
            dst: field(6, 2) as u16,
            blocks: field(10, 2) as u16,
            src_lba: field(12, 8),
            dst_lba: field(20, 8),
            at,
        });
        at += 4 + BLOCK_TO_BLOCK_LEN;
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::scsi::SenseKey;

    pub(crate) const NAA: [u8; 16] = [
        0x6A, 0xD7, 0xEA, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x12, 0x34,
    ];

    /// An identification target descriptor naming an NAA designator, 512-byte blocks.
    pub(crate) fn target_desc(naa: &[u8]) -> Vec<u8> {
        let mut d = vec![0u8; TARGET_LEN];
        d[0] = IDENTIFICATION_TARGET;
        d[4] = 0x01; // binary
        d[5] = 0x03; // NAA, associated with the logical unit
        d[7] = naa.len() as u8;
        d[8..8 + naa.len()].copy_from_slice(naa);
        d[29..32].copy_from_slice(&[0, 0x02, 0x00]);
        d
    }

    pub(crate) fn segment_desc(
        src: u16,
        dst: u16,
        blocks: u16,
        src_lba: u64,
        dst_lba: u64,
    ) -> Vec<u8> {
        let mut d = vec![0u8; 28];
        d[0] = BLOCK_TO_BLOCK;
        d[3] = 0x18;
        d[4..6].copy_from_slice(&src.to_be_bytes());
        d[6..8].copy_from_slice(&dst.to_be_bytes());
        d[10..12].copy_from_slice(&blocks.to_be_bytes());
        d[12..20].copy_from_slice(&src_lba.to_be_bytes());
        d[20..28].copy_from_slice(&dst_lba.to_be_bytes());
        d
    }

    /// A whole parameter list: header (list id, usage bits) then the descriptors.
    pub(crate) fn list(id: u8, usage: u8, targets: &[Vec<u8>], segments: &[Vec<u8>]) -> Vec<u8> {
        let t: Vec<u8> = targets.concat();
        let s: Vec<u8> = segments.concat();
        let mut l = vec![0u8; HEADER_LEN];
        l[0] = id;
        l[1] = usage << 3;
        l[2..4].copy_from_slice(&(t.len() as u16).to_be_bytes());
        l[8..12].copy_from_slice(&(s.len() as u32).to_be_bytes());
        l.extend(t);
        l.extend(s);
        l
    }

    fn asc_of(s: &Sense) -> (SenseKey, u16) {
        (s.key, s.asc)
    }

    fn err(l: &[u8]) -> (SenseKey, u16) {
        asc_of(&parse(l, l.len()).unwrap_err())
    }

    const ILLEGAL: SenseKey = SenseKey::IllegalRequest;

    #[test]
    fn decodes_a_simple_list() {
        let l = list(
            7,
            0,
            &[target_desc(&NAA)],
            &[segment_desc(0, 0, 2048, 1, 0x1_0000_0000)],
        );
        let c = parse(&l, l.len()).unwrap().unwrap();
        assert_eq!(c.list_id, 7);
        assert_eq!(c.usage, ListIdUsage::Hold);
        assert_eq!(c.targets.len(), 1);
        let t = &c.targets[0];
        assert_eq!((t.designator_type, t.code_set, t.association), (3, 1, 0));
        assert_eq!(t.designator, NAA);
        assert_eq!((t.block_len, t.at), (512, 16));
        assert_eq!(
            c.segments,
            vec![Segment {
                src: 0,
                dst: 0,
                blocks: 2048,
                src_lba: 1,
                dst_lba: 0x1_0000_0000,
                at: 48
            }]
        );
        // Extra bytes past the parameter list length are not looked at.
        let mut longer = l.clone();
        longer.extend([0xFF; 40]);
        assert_eq!(parse(&longer, l.len()).unwrap().unwrap(), c);
    }

    #[test]
    fn empty_list_is_nothing_to_do_and_short_header_is_a_length_error() {
        assert_eq!(parse(&[], 0).unwrap(), None);
        assert_eq!(err(&[0u8; 15]), (ILLEGAL, asc::PARAMETER_LIST_LENGTH_ERROR));
        // Descriptors announced but the CDB's length stops short of them.
        let l = list(1, 0, &[target_desc(&NAA)], &[segment_desc(0, 0, 1, 0, 1)]);
        for cut in [HEADER_LEN + TARGET_LEN - 1, l.len() - 1] {
            let e = parse(&l, cut).unwrap_err();
            assert_eq!(asc_of(&e), (ILLEGAL, asc::PARAMETER_LIST_LENGTH_ERROR));
        }
    }

    #[test]
    fn list_id_usage() {
        let t = [target_desc(&NAA)];
        let s = [segment_desc(0, 0, 1, 0, 1)];
        let usage = |id, u| parse(&list(id, u, &t, &s), 1000).map(|c| c.unwrap().usage);
        assert_eq!(usage(3, 0b10), Ok(ListIdUsage::Discard));
        assert_eq!(usage(0, 0b11), Ok(ListIdUsage::None));
        let e = usage(3, 0b11).unwrap_err();
        assert_eq!(e.asc, asc::INVALID_FIELD_IN_PARAMETER_LIST);
        assert_eq!(e.sks, Some([0x80, 0, 0]));
        let e = usage(3, 0b01).unwrap_err();
        assert_eq!(e.sks, Some([0x80 | 0x08 | 4, 0, 1]));
    }

    #[test]
    fn limits() {
        let seg = segment_desc(0, 0, 1, 0, 1);
        let too_many_targets = vec![target_desc(&NAA); MAX_TARGET_DESCRIPTORS as usize + 1];
        let l = list(1, 0, &too_many_targets, std::slice::from_ref(&seg));
        assert_eq!(err(&l), (ILLEGAL, asc::TOO_MANY_TARGET_DESCRIPTORS));
        let too_many_segments = vec![seg.clone(); MAX_SEGMENT_DESCRIPTORS as usize + 1];
        let l = list(1, 0, &[target_desc(&NAA)], &too_many_segments);
        assert_eq!(err(&l), (ILLEGAL, asc::TOO_MANY_SEGMENT_DESCRIPTORS));
        let most = vec![seg.clone(); MAX_SEGMENT_DESCRIPTORS as usize];
        let l = list(1, 0, &vec![target_desc(&NAA); 8], &most);
        assert_eq!(parse(&l, l.len()).unwrap().unwrap().segments.len(), 64);
        // Longer than the maximum descriptor list length: checked before the counts.
        let over = vec![seg; MAX_SEGMENT_DESCRIPTORS as usize + 10];
        let l = list(1, 0, &too_many_targets, &over);
        assert_eq!(err(&l), (ILLEGAL, asc::PARAMETER_LIST_LENGTH_ERROR));
    }

    #[test]
    fn unsupported_descriptor_types() {
        let mut fc = target_desc(&NAA);
        fc[0] = 0xE0;
        let l = list(
            1,
            0,
            &[target_desc(&NAA), fc],
            &[segment_desc(0, 0, 1, 0, 1)],
        );
        let e = parse(&l, l.len()).unwrap_err();
        assert_eq!(
            asc_of(&e),
            (ILLEGAL, asc::UNSUPPORTED_TARGET_DESCRIPTOR_TYPE_CODE)
        );
        assert_eq!(e.sks, Some([0x80, 0, 48]));
        let mut stream = vec![0u8; 20];
        stream[0] = 0x03;
        stream[3] = 0x10;
        let l = list(1, 0, &[target_desc(&NAA)], &[stream]);
        assert_eq!(
            err(&l),
            (ILLEGAL, asc::UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE_CODE)
        );
    }

    #[test]
    fn malformed_descriptors() {
        let seg = [segment_desc(0, 0, 1, 0, 1)];
        // Target list length not a multiple of 32.
        let mut l = list(1, 0, &[target_desc(&NAA)], &seg);
        l[3] = 33;
        l.push(0);
        let e = parse(&l, l.len()).unwrap_err();
        assert_eq!(e.sks, Some([0x80, 0, 2]));
        // NUL bit, a non-block peripheral type, an oversized designator.
        for (byte, val, at) in [(1, 0x20, 17), (1, 0x01, 17), (7, 21, 23)] {
            let mut t = target_desc(&NAA);
            t[byte] = val;
            let e = parse(&list(1, 0, &[t], &seg), 1000).unwrap_err();
            assert_eq!(e.asc, asc::INVALID_FIELD_IN_PARAMETER_LIST);
            assert_eq!(e.sks.unwrap()[2], at);
        }
        // A block → block descriptor with the wrong length.
        let mut s = segment_desc(0, 0, 1, 0, 1);
        s[3] = 0x14;
        let e = parse(&list(1, 0, &[target_desc(&NAA)], &[s]), 1000).unwrap_err();
        assert_eq!(e.asc, asc::INVALID_FIELD_IN_PARAMETER_LIST);
        assert_eq!(e.sks, Some([0x80, 0, 48 + 2]));
        // The segment list length cuts a descriptor short.
        let mut l = list(1, 0, &[target_desc(&NAA)], &seg);
        l[11] -= 1;
        assert_eq!(err(&l), (ILLEGAL, asc::PARAMETER_LIST_LENGTH_ERROR));
        // Inline data is not taken.
        let mut l = list(1, 0, &[target_desc(&NAA)], &seg);
        l[15] = 4;
        l.extend([0; 4]);
        let e = parse(&l, l.len()).unwrap_err();
        assert_eq!(e.sks, Some([0x80, 0, 12]));
    }

    #[test]
    fn lu_id_type_is_ignored() {
        let mut t = target_desc(&NAA);
        t[1] = 0x80; // LU ID TYPE 10b, reserved in SPC-3
        let l = list(1, 0, &[t], &[segment_desc(0, 0, 1, 0, 1)]);
        assert!(parse(&l, l.len()).is_ok());
    }
}
