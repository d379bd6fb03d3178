//! Sense data: the one error type every handler returns, and its two wire formats.
//!
//! Handlers fail with a [`Sense`]; only the dispatcher decides between fixed (0x70) and
//! descriptor (0x72) format, because that choice belongs to the Control mode page of the
//! unit (D_SENSE) or to the DESC bit of REQUEST SENSE, not to the failing command.

use bytes::Bytes;

/// SPC-4 sense keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum SenseKey {
    NoSense = 0x0,
    RecoveredError = 0x1,
    NotReady = 0x2,
    MediumError = 0x3,
    HardwareError = 0x4,
    IllegalRequest = 0x5,
    UnitAttention = 0x6,
    DataProtect = 0x7,
    CopyAborted = 0xA,
    AbortedCommand = 0xB,
    Miscompare = 0xE,
}

/// An additional sense code and qualifier, as `(ASC << 8) | ASCQ`.
pub type AscCode = u16;

pub mod asc {
    //! ASC/ASCQ pairs the engine reports (SPC-4 annex D).
    use super::AscCode;
    pub const NO_ADDITIONAL_SENSE: AscCode = 0x0000;
    pub const OPERATION_IN_PROGRESS: AscCode = 0x0016;
    pub const LOGICAL_UNIT_COMMUNICATION_FAILURE: AscCode = 0x0800;
    pub const UNREACHABLE_COPY_TARGET: AscCode = 0x0804;
    pub const THIRD_PARTY_DEVICE_FAILURE: AscCode = 0x0D01;
    pub const COPY_TARGET_DEVICE_NOT_REACHABLE: AscCode = 0x0D02;
    pub const NOT_READY_SANITIZE_IN_PROGRESS: AscCode = 0x041B;
    pub const WRITE_ERROR: AscCode = 0x0C00;
    pub const UNRECOVERED_READ_ERROR: AscCode = 0x1100;
    pub const PARAMETER_LIST_LENGTH_ERROR: AscCode = 0x1A00;
    pub const MISCOMPARE_DURING_VERIFY: AscCode = 0x1D00;
    pub const INVALID_COMMAND_OPERATION_CODE: AscCode = 0x2000;
    pub const LBA_OUT_OF_RANGE: AscCode = 0x2100;
    pub const INVALID_FIELD_IN_CDB: AscCode = 0x2400;
    pub const LOGICAL_UNIT_NOT_SUPPORTED: AscCode = 0x2500;
    pub const INVALID_FIELD_IN_PARAMETER_LIST: AscCode = 0x2600;
    pub const INVALID_RELEASE_OF_PERSISTENT_RESERVATION: AscCode = 0x2604;
    pub const TOO_MANY_TARGET_DESCRIPTORS: AscCode = 0x2606;
    pub const UNSUPPORTED_TARGET_DESCRIPTOR_TYPE_CODE: AscCode = 0x2607;
    pub const TOO_MANY_SEGMENT_DESCRIPTORS: AscCode = 0x2608;
    pub const UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE_CODE: AscCode = 0x2609;
    pub const WRITE_PROTECTED: AscCode = 0x2700;
    pub const SOFTWARE_WRITE_PROTECTED: AscCode = 0x2702;
    pub const SPACE_ALLOCATION_FAILED_WRITE_PROTECT: AscCode = 0x2707;
    pub const POWER_ON_RESET_OR_BUS_DEVICE_RESET: AscCode = 0x2900;
    pub const POWER_ON_OCCURRED: AscCode = 0x2901;
    pub const BUS_DEVICE_RESET_FUNCTION_OCCURRED: AscCode = 0x2903;
    pub const MODE_PARAMETERS_CHANGED: AscCode = 0x2A01;
    pub const RESERVATIONS_PREEMPTED: AscCode = 0x2A03;
    pub const RESERVATIONS_RELEASED: AscCode = 0x2A04;
    pub const REGISTRATIONS_PREEMPTED: AscCode = 0x2A05;
    pub const CAPACITY_DATA_HAS_CHANGED: AscCode = 0x2A09;
    pub const SANITIZE_COMMAND_FAILED: AscCode = 0x3103;
    pub const SAVING_PARAMETERS_NOT_SUPPORTED: AscCode = 0x3900;
    pub const MEDIUM_REMOVAL_PREVENTED: AscCode = 0x5302;
    pub const REPORTED_LUNS_DATA_HAS_CHANGED: AscCode = 0x3F0E;
    pub const INTERNAL_TARGET_FAILURE: AscCode = 0x4400;
    // Transport (iSCSI) conditions that end a task with ABORTED COMMAND.
    pub const PROTOCOL_SERVICE_CRC_ERROR: AscCode = 0x4705;
    pub const DATA_PHASE_ERROR: AscCode = 0x4B00;
    pub const INVALID_TARGET_PORT_TRANSFER_TAG: AscCode = 0x4B01;
    pub const TOO_MUCH_WRITE_DATA: AscCode = 0x4B02;
    pub const DATA_OFFSET_ERROR: AscCode = 0x4B05;
}

/// A CHECK CONDITION in the making: what went wrong, before it is encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("sense key {key:?}, ASC/ASCQ {asc:04x}")]
pub struct Sense {
    pub key: SenseKey,
    pub asc: AscCode,
    /// INFORMATION field (e.g. the miscompare offset for VERIFY).
    pub info: Option<u64>,
    /// Sense-key specific bytes, SKSV already set.
    pub sks: Option<[u8; 3]>,
}

impl Sense {
    pub const fn new(key: SenseKey, asc: AscCode) -> Self {
        Self {
            key,
            asc,
            info: None,
            sks: None,
        }
    }

    pub const fn illegal(asc: AscCode) -> Self {
        Self::new(SenseKey::IllegalRequest, asc)
    }

    /// INVALID FIELD IN CDB pointing at `byte` (and `bit` when one bit is at fault),
    /// so an initiator log names the exact field it got wrong.
    pub fn invalid_cdb(byte: usize, bit: Option<u8>) -> Self {
        Self::illegal(asc::INVALID_FIELD_IN_CDB).with_pointer(true, byte, bit)
    }

    /// INVALID FIELD IN PARAMETER LIST pointing into the Data-Out buffer.
    pub fn invalid_param(byte: usize, bit: Option<u8>) -> Self {
        Self::illegal(asc::INVALID_FIELD_IN_PARAMETER_LIST).with_pointer(false, byte, bit)
    }

    /// A field pointer to byte `byte` of the parameter list. For COPY ABORTED this is
    /// the segment pointer (SD=0: relative to the start of the parameter list).
    pub fn with_param_pointer(self, byte: usize) -> Self {
        self.with_pointer(false, byte, None)
    }

    pub fn lba_out_of_range() -> Self {
        Self::illegal(asc::LBA_OUT_OF_RANGE)
    }

    pub fn with_info(mut self, info: u64) -> Self {
        self.info = Some(info);
        self
    }

    /// NOT READY with a PROGRESS INDICATION (SPC-4 4.5.2.4.4): `done` of 65536.
    pub fn with_progress(mut self, done: u16) -> Self {
        let [hi, lo] = done.to_be_bytes();
        self.sks = Some([0x80, hi, lo]);
        self
    }

    fn with_pointer(mut self, in_cdb: bool, byte: usize, bit: Option<u8>) -> Self {
        let byte = u16::try_from(byte).unwrap_or(u16::MAX);
        let mut b0 = 0x80 | if in_cdb { 0x40 } else { 0 };
        if let Some(bit) = bit {
            b0 |= 0x08 | (bit & 0x07);
        }
        let [hi, lo] = byte.to_be_bytes();
        self.sks = Some([b0, hi, lo]);
        self
    }

    /// Fixed format (response code 0x70), 18 bytes.
    pub fn fixed(&self) -> Vec<u8> {
        let mut s = vec![0u8; 18];
        s[0] = 0x70;
        s[2] = self.key as u8;
        if let Some(info) = self.info {
            // Fixed format has room for 32 bits only; VALID says whether it fits.
            if let Ok(v) = u32::try_from(info) {
                s[0] |= 0x80;
                s[3..7].copy_from_slice(&v.to_be_bytes());
            }
        }
        s[7] = 10;
        s[12] = (self.asc >> 8) as u8;
        s[13] = self.asc as u8;
        if let Some(sks) = self.sks {
            s[15..18].copy_from_slice(&sks);
        }
        s
    }

    /// Descriptor format (response code 0x72) with information and sense-key specific
    /// descriptors when present.
    pub fn descriptor(&self) -> Vec<u8> {
        let mut s = vec![0u8; 8];
        s[0] = 0x72;
        s[1] = self.key as u8;
        s[2] = (self.asc >> 8) as u8;
        s[3] = self.asc as u8;
        if let Some(info) = self.info {
            s.extend_from_slice(&[0x00, 0x0A, 0x80, 0x00]);
            s.extend_from_slice(&info.to_be_bytes());
        }
        if let Some(sks) = self.sks {
            // Sense key specific descriptor (SPC-4 4.5.2.4): two reserved bytes after
            // the length, then SKSV and the three bytes.
            s.extend_from_slice(&[0x02, 0x06, 0x00, 0x00, sks[0], sks[1], sks[2], 0x00]);
        }
        s[7] = (s.len() - 8) as u8;
        s
    }

    pub fn encode(&self, descriptor: bool) -> Bytes {
        if descriptor {
            self.descriptor().into()
        } else {
            self.fixed().into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_layout() {
        let s = Sense::invalid_cdb(2, Some(5)).fixed();
        assert_eq!(s.len(), 18);
        assert_eq!(s[0], 0x70);
        assert_eq!(s[2], 0x05);
        assert_eq!((s[12], s[13]), (0x24, 0x00));
        assert_eq!(&s[15..18], &[0xC0 | 0x08 | 5, 0, 2]);
    }

    #[test]
    fn descriptor_layout_with_info() {
        let s = Sense::new(SenseKey::Miscompare, asc::MISCOMPARE_DURING_VERIFY)
            .with_info(0x1234)
            .descriptor();
        assert_eq!(&s[..4], &[0x72, 0x0E, 0x1D, 0x00]);
        assert_eq!(s[7] as usize, s.len() - 8);
        assert_eq!(&s[8..12], &[0x00, 0x0A, 0x80, 0x00]);
        assert_eq!(u64::from_be_bytes(s[12..20].try_into().unwrap()), 0x1234);
    }

    #[test]
    fn descriptor_sense_key_specific_sits_at_byte_4() {
        let s = Sense::invalid_cdb(7, None).descriptor();
        assert_eq!(&s[8..16], &[0x02, 0x06, 0, 0, 0xC0, 0, 7, 0]);
        let s = Sense::new(SenseKey::NotReady, asc::NOT_READY_SANITIZE_IN_PROGRESS)
            .with_progress(0x8000)
            .fixed();
        assert_eq!(&s[15..18], &[0x80, 0x80, 0x00]);
    }

    #[test]
    fn fixed_info_too_large_is_not_valid() {
        let s = Sense::lba_out_of_range().with_info(1 << 40).fixed();
        assert_eq!(s[0], 0x70);
    }
}
