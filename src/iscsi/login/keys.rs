//! The operational key negotiation table (RFC 7143 section 13).
//!
//! [`Negotiation`] answers the operational keys of a login, one key text at a time,
//! with each key's RFC result function, and remembers the results. Identity keys
//! (InitiatorName, TargetName, ...) and security keys (AuthMethod, CHAP_*) are routed
//! elsewhere by [`kind`]; everything else lands here, including unknown keys, which are
//! answered `NotUnderstood`.

use super::params::{defaults, Limits, SessionParams};
use super::{LoginError, SessionType};

/// Longest value of an ordinary (non-binary) key, RFC 7143 section 6.1.
pub const MAX_SIMPLE_VALUE_LEN: usize = 255;

/// Who handles a key during login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// AuthMethod and the CHAP keys: security stage only.
    Security,
    /// Initiator declarations that identify the session (first request only).
    Identity,
    /// Everything else, answered by [`Negotiation`].
    Operational,
}

/// Classifies a key name for routing within the login machine.
pub fn kind(key: &str) -> Kind {
    match key {
        "AuthMethod" => Kind::Security,
        k if k.starts_with("CHAP_") => Kind::Security,
        "InitiatorName" | "InitiatorAlias" | "TargetName" | "SessionType" => Kind::Identity,
        _ => Kind::Operational,
    }
}

/// The answers with a special meaning (RFC 7143 section 6.2).
pub const REJECT: &str = "Reject";
pub const IRRELEVANT: &str = "Irrelevant";
pub const NOT_UNDERSTOOD: &str = "NotUnderstood";

/// Parses a numerical value: decimal, or hex with a `0x` prefix (RFC 7143 6.1).
pub fn parse_number(v: &str) -> Option<u64> {
    if v.is_empty() || v.len() > MAX_SIMPLE_VALUE_LEN {
        return None;
    }
    if let Some(hex) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        if hex.is_empty() || hex.len() > 16 {
            return None;
        }
        return u64::from_str_radix(hex, 16).ok();
    }
    if !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

/// Parses a boolean value: exactly `Yes` or `No`.
pub fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "Yes" => Some(true),
        "No" => Some(false),
        _ => None,
    }
}

fn yes_no(b: bool) -> String {
    if b { "Yes" } else { "No" }.to_string()
}

/// Parses a number and checks it against an inclusive range.
fn ranged(v: &str, min: u64, max: u64) -> Option<u64> {
    parse_number(v).filter(|n| (min..=max).contains(n))
}

/// Upper bound of the length keys (2^24 - 1).
const MAX_LEN_VALUE: u64 = (1 << 24) - 1;

/// Negotiation state for the operational keys of one login.
#[derive(Debug, Clone)]
pub struct Negotiation {
    limits: Limits,
    session_type: SessionType,
    header_digest: Option<bool>,
    data_digest: Option<bool>,
    max_connections: Option<u16>,
    initial_r2t: Option<bool>,
    immediate_data: Option<bool>,
    initiator_mrdsl: Option<u32>,
    max_burst_length: Option<u32>,
    first_burst_length: Option<u32>,
    default_time2wait: Option<u16>,
    default_time2retain: Option<u16>,
    max_outstanding_r2t: Option<u16>,
    data_pdu_in_order: Option<bool>,
    data_sequence_in_order: Option<bool>,
    error_recovery_level: Option<u8>,
}

impl Negotiation {
    pub fn new(limits: Limits, session_type: SessionType) -> Self {
        Negotiation {
            limits,
            session_type,
            header_digest: None,
            data_digest: None,
            max_connections: None,
            initial_r2t: None,
            immediate_data: None,
            initiator_mrdsl: None,
            max_burst_length: None,
            first_burst_length: None,
            default_time2wait: None,
            default_time2retain: None,
            max_outstanding_r2t: None,
            data_pdu_in_order: None,
            data_sequence_in_order: None,
            error_recovery_level: None,
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Whether the initiator declared its MaxRecvDataSegmentLength.
    pub fn initiator_declared_mrdsl(&self) -> bool {
        self.initiator_mrdsl.is_some()
    }

    fn discovery(&self) -> bool {
        self.session_type == SessionType::Discovery
    }

    fn initial_r2t_result(&self) -> bool {
        self.initial_r2t.unwrap_or(defaults::INITIAL_R2T)
    }

    fn immediate_data_result(&self) -> bool {
        self.immediate_data.unwrap_or(defaults::IMMEDIATE_DATA)
    }

    fn max_burst_result(&self) -> u32 {
        self.max_burst_length.unwrap_or(defaults::MAX_BURST_LENGTH)
    }

    /// Answers the operational keys of one key text, in order. Keys that need no answer
    /// (declarations) produce none. Fails only on violations that end the login.
    pub fn answer(
        &mut self,
        pairs: &[(String, String)],
    ) -> Result<Vec<(String, String)>, LoginError> {
        let mut out: Vec<(String, String)> = Vec::new();
        // FirstBurstLength depends on InitialR2T, ImmediateData and MaxBurstLength,
        // which may follow it in the same text, so it is answered after the others.
        let mut first_burst: Option<(usize, String)> = None;
        for (key, value) in pairs {
            let answer = match key.as_str() {
                "FirstBurstLength" => {
                    first_burst = Some((out.len(), value.clone()));
                    out.push((key.clone(), String::new()));
                    continue;
                }
                _ => self.answer_one(key, value)?,
            };
            if let Some(a) = answer {
                out.push((key.clone(), a));
            }
        }
        if let Some((slot, value)) = first_burst {
            out[slot].1 = self.answer_first_burst(&value);
        }
        Ok(out)
    }

    /// The answer to one key, or None for a declaration that needs no answer.
    fn answer_one(&mut self, key: &str, value: &str) -> Result<Option<String>, LoginError> {
        let disc = self.discovery();
        let l = &self.limits;
        let a = match key {
            "HeaderDigest" => {
                let (ans, res) = digest(value, l.allow_header_digest);
                self.header_digest = res.or(self.header_digest);
                ans
            }
            "DataDigest" => {
                let (ans, res) = digest(value, l.allow_data_digest);
                self.data_digest = res.or(self.data_digest);
                ans
            }
            "MaxConnections" if disc => IRRELEVANT.into(),
            "MaxConnections" => match ranged(value, 1, 65535) {
                Some(n) => {
                    let r = (n as u16).min(l.max_connections.max(1));
                    self.max_connections = Some(r);
                    r.to_string()
                }
                None => REJECT.into(),
            },
            // Only meaningful in a Text Request in full feature phase.
            "SendTargets" => REJECT.into(),
            // Declared by the target only; an initiator has no business sending them.
            "TargetAlias" | "TargetAddress" => REJECT.into(),
            "TargetPortalGroupTag" => {
                return Err(LoginError::Protocol(
                    "the initiator sent TargetPortalGroupTag, which only a target may declare".into(),
                ))
            }
            "InitialR2T" if disc => IRRELEVANT.into(),
            "InitialR2T" => match parse_bool(value) {
                Some(b) => {
                    let r = b || l.initial_r2t;
                    self.initial_r2t = Some(r);
                    yes_no(r)
                }
                None => REJECT.into(),
            },
            "ImmediateData" if disc => IRRELEVANT.into(),
            "ImmediateData" => match parse_bool(value) {
                Some(b) => {
                    let r = b && l.immediate_data;
                    self.immediate_data = Some(r);
                    yes_no(r)
                }
                None => REJECT.into(),
            },
            "MaxRecvDataSegmentLength" => match ranged(value, 512, MAX_LEN_VALUE) {
                // A declaration: we answer with our own value separately.
                Some(n) => {
                    self.initiator_mrdsl = Some(n as u32);
                    return Ok(None);
                }
                None => {
                    return Err(LoginError::Protocol(format!(
                        "the initiator declared MaxRecvDataSegmentLength={value:.32}, outside 512..16777215"
                    )))
                }
            },
            "MaxBurstLength" if disc => IRRELEVANT.into(),
            "MaxBurstLength" => match ranged(value, 512, MAX_LEN_VALUE) {
                Some(n) => {
                    let r = (n as u32).min(l.max_burst_length);
                    self.max_burst_length = Some(r);
                    r.to_string()
                }
                None => REJECT.into(),
            },
            "DefaultTime2Wait" => match ranged(value, 0, 3600) {
                Some(n) => {
                    let r = (n as u16).max(l.default_time2wait);
                    self.default_time2wait = Some(r);
                    r.to_string()
                }
                None => REJECT.into(),
            },
            "DefaultTime2Retain" => match ranged(value, 0, 3600) {
                Some(n) => {
                    let r = (n as u16).min(l.default_time2retain);
                    self.default_time2retain = Some(r);
                    r.to_string()
                }
                None => REJECT.into(),
            },
            "MaxOutstandingR2T" if disc => IRRELEVANT.into(),
            "MaxOutstandingR2T" => match ranged(value, 1, 65535) {
                Some(n) => {
                    let r = (n as u16).min(l.max_outstanding_r2t.max(1));
                    self.max_outstanding_r2t = Some(r);
                    r.to_string()
                }
                None => REJECT.into(),
            },
            // The data path only handles in-order data, so our value is Yes, and the OR
            // of Yes with whatever the initiator says is Yes.
            "DataPDUInOrder" | "DataSequenceInOrder" if disc => IRRELEVANT.into(),
            "DataPDUInOrder" | "DataSequenceInOrder" => match parse_bool(value) {
                Some(_) => {
                    let r = true;
                    if key == "DataPDUInOrder" {
                        self.data_pdu_in_order = Some(r);
                    } else {
                        self.data_sequence_in_order = Some(r);
                    }
                    yes_no(r)
                }
                None => REJECT.into(),
            },
            "ErrorRecoveryLevel" => match ranged(value, 0, 2) {
                Some(n) => {
                    let r = (n as u8).min(l.error_recovery_level);
                    self.error_recovery_level = Some(r);
                    r.to_string()
                }
                None => REJECT.into(),
            },
            // RFC 7143 13.23: list, we only implement the RFC 3720 task reporting.
            "TaskReporting" if disc => IRRELEVANT.into(),
            "TaskReporting" => {
                if list_items(value).any(|v| v == "RFC3720") {
                    "RFC3720".into()
                } else {
                    REJECT.into()
                }
            }
            // RFC 7143 13.24: minimum; we implement RFC 7143 (level 1), not RFC 7144 (2).
            "iSCSIProtocolLevel" if disc => IRRELEVANT.into(),
            "iSCSIProtocolLevel" => match ranged(value, 0, 31) {
                Some(n) => n.min(1).to_string(),
                None => REJECT.into(),
            },
            // RFC 7143 13.25 (obsoleted keys): markers SHOULD be answered Reject but MAY be
            // answered No, never NotUnderstood. We answer No because RFC 3720 initiators
            // (open-iscsi, libiscsi, ESXi) send IFMarker=No/OFMarker=No and a Reject can
            // make them give up, while No is exactly what they asked for.
            "IFMarker" | "OFMarker" => match parse_bool(value) {
                Some(_) => "No".into(),
                None => REJECT.into(),
            },
            // ... and the marker intervals MUST be answered Reject.
            "IFMarkInt" | "OFMarkInt" => REJECT.into(),
            // RFC 7145 (iSER): AND; we only do TCP.
            "RDMAExtensions" if disc => IRRELEVANT.into(),
            "RDMAExtensions" => match parse_bool(value) {
                Some(_) => "No".into(),
                None => REJECT.into(),
            },
            // Private (X-) and public (X#) extension keys we do not implement, and
            // anything else we do not know.
            _ => NOT_UNDERSTOOD.into(),
        };
        Ok(Some(a))
    }

    fn answer_first_burst(&mut self, value: &str) -> String {
        if self.discovery() {
            return IRRELEVANT.into();
        }
        if self.initial_r2t_result() && !self.immediate_data_result() {
            // RFC 7143 13.14: no unsolicited data at all, so no first burst.
            return IRRELEVANT.into();
        }
        match ranged(value, 512, MAX_LEN_VALUE) {
            Some(n) => {
                // FirstBurstLength must not exceed MaxBurstLength (13.14).
                let r = (n as u32)
                    .min(self.limits.first_burst_length)
                    .min(self.max_burst_result());
                self.first_burst_length = Some(r);
                r.to_string()
            }
            None => REJECT.into(),
        }
    }

    /// Our declarations for the operational stage: MaxRecvDataSegmentLength, so the
    /// initiator may send data segments as large as we accept rather than 8192.
    pub fn declarations(&self) -> Vec<(String, String)> {
        vec![(
            "MaxRecvDataSegmentLength".into(),
            self.limits.max_recv_data_segment_length.to_string(),
        )]
    }

    /// The session parameters: negotiated results, RFC defaults for the rest.
    pub fn params(
        &self,
        initiator_name: String,
        initiator_alias: Option<String>,
        target_name: Option<String>,
    ) -> SessionParams {
        let max_burst_length = self.max_burst_result();
        let first_burst_length = self
            .first_burst_length
            .unwrap_or(defaults::FIRST_BURST_LENGTH)
            .min(max_burst_length);
        SessionParams {
            session_type: self.session_type,
            initiator_name,
            initiator_alias,
            target_name,
            header_digest: self.header_digest.unwrap_or(false),
            data_digest: self.data_digest.unwrap_or(false),
            initiator_max_recv_data_segment_length: self
                .initiator_mrdsl
                .unwrap_or(defaults::MAX_RECV_DATA_SEGMENT_LENGTH),
            target_max_recv_data_segment_length: self.limits.max_recv_data_segment_length,
            max_burst_length,
            first_burst_length,
            initial_r2t: self.initial_r2t_result(),
            immediate_data: self.immediate_data_result(),
            max_outstanding_r2t: self
                .max_outstanding_r2t
                .unwrap_or(defaults::MAX_OUTSTANDING_R2T),
            data_pdu_in_order: self
                .data_pdu_in_order
                .unwrap_or(defaults::DATA_PDU_IN_ORDER),
            data_sequence_in_order: self
                .data_sequence_in_order
                .unwrap_or(defaults::DATA_SEQUENCE_IN_ORDER),
            default_time2wait: self
                .default_time2wait
                .unwrap_or(defaults::DEFAULT_TIME2WAIT),
            default_time2retain: self
                .default_time2retain
                .unwrap_or(defaults::DEFAULT_TIME2RETAIN),
            error_recovery_level: self
                .error_recovery_level
                .unwrap_or(defaults::ERROR_RECOVERY_LEVEL),
            max_connections: self.max_connections.unwrap_or(defaults::MAX_CONNECTIONS),
        }
    }
}

/// The items of a list value (comma separated).
pub fn list_items(value: &str) -> impl Iterator<Item = &str> {
    value.split(',')
}

/// HeaderDigest/DataDigest: the first of the initiator's choices we support (None
/// always, CRC32C when allowed). Returns the answer and the result if one was chosen.
fn digest(value: &str, allow_crc: bool) -> (String, Option<bool>) {
    if value.len() > MAX_SIMPLE_VALUE_LEN {
        return (REJECT.into(), None);
    }
    for item in list_items(value) {
        match item {
            "None" => return ("None".into(), Some(false)),
            "CRC32C" if allow_crc => return ("CRC32C".into(), Some(true)),
            _ => {}
        }
    }
    (REJECT.into(), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(k: &str, v: &str) -> (String, String) {
        (k.to_string(), v.to_string())
    }

    fn normal() -> Negotiation {
        Negotiation::new(Limits::default(), SessionType::Normal)
    }

    fn disc() -> Negotiation {
        Negotiation::new(Limits::default(), SessionType::Discovery)
    }

    /// Answers a single key and returns the answer value.
    fn one(n: &mut Negotiation, k: &str, v: &str) -> Option<String> {
        let out = n.answer(&[p(k, v)]).unwrap();
        assert!(out.len() <= 1);
        out.into_iter().next().map(|(key, val)| {
            assert_eq!(key, k);
            val
        })
    }

    fn params(n: &Negotiation) -> SessionParams {
        n.params("iqn.i".into(), None, Some("iqn.t".into()))
    }

    #[test]
    fn classification() {
        assert_eq!(kind("AuthMethod"), Kind::Security);
        assert_eq!(kind("CHAP_R"), Kind::Security);
        assert_eq!(kind("InitiatorName"), Kind::Identity);
        assert_eq!(kind("SessionType"), Kind::Identity);
        assert_eq!(kind("MaxBurstLength"), Kind::Operational);
        assert_eq!(kind("X-foo"), Kind::Operational);
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_number("8192"), Some(8192));
        assert_eq!(parse_number("0x2000"), Some(8192));
        assert_eq!(parse_number(""), None);
        assert_eq!(parse_number("-1"), None);
        assert_eq!(parse_number("12ab"), None);
        assert_eq!(parse_number("0x"), None);
        assert_eq!(parse_number("99999999999999999999999"), None);
    }

    #[test]
    fn header_digest_first_supported() {
        let mut n = normal();
        assert_eq!(
            one(&mut n, "HeaderDigest", "CRC32C,None").as_deref(),
            Some("CRC32C")
        );
        assert!(params(&n).header_digest);
        let mut n = normal();
        assert_eq!(
            one(&mut n, "HeaderDigest", "None,CRC32C").as_deref(),
            Some("None")
        );
        assert!(!params(&n).header_digest);
        let l = Limits {
            allow_header_digest: false,
            ..Limits::default()
        };
        let mut n = Negotiation::new(l, SessionType::Normal);
        assert_eq!(
            one(&mut n, "HeaderDigest", "CRC32C,None").as_deref(),
            Some("None")
        );
        assert_eq!(
            one(&mut n, "DataDigest", "Foo,CRC32C").as_deref(),
            Some("CRC32C")
        );
        assert!(params(&n).data_digest);
    }

    #[test]
    fn digest_reject_when_nothing_acceptable() {
        let l = Limits {
            allow_data_digest: false,
            ..Limits::default()
        };
        let mut n = Negotiation::new(l, SessionType::Normal);
        assert_eq!(
            one(&mut n, "DataDigest", "CRC32C").as_deref(),
            Some("Reject")
        );
        assert_eq!(
            one(&mut n, "HeaderDigest", "MD5").as_deref(),
            Some("Reject")
        );
        assert!(!params(&n).data_digest);
    }

    #[test]
    fn digest_relevant_in_discovery() {
        let mut n = disc();
        assert_eq!(
            one(&mut n, "HeaderDigest", "CRC32C").as_deref(),
            Some("CRC32C")
        );
    }

    #[test]
    fn max_connections_min() {
        let mut n = normal();
        assert_eq!(one(&mut n, "MaxConnections", "4").as_deref(), Some("1"));
        assert_eq!(params(&n).max_connections, 1);
        let l = Limits {
            max_connections: 8,
            ..Limits::default()
        };
        let mut n = Negotiation::new(l, SessionType::Normal);
        assert_eq!(one(&mut n, "MaxConnections", "4").as_deref(), Some("4"));
        assert_eq!(
            one(&mut normal(), "MaxConnections", "0").as_deref(),
            Some("Reject")
        );
        assert_eq!(
            one(&mut normal(), "MaxConnections", "65536").as_deref(),
            Some("Reject")
        );
        assert_eq!(
            one(&mut disc(), "MaxConnections", "1").as_deref(),
            Some("Irrelevant")
        );
    }

    #[test]
    fn send_targets_not_in_login() {
        assert_eq!(
            one(&mut normal(), "SendTargets", "All").as_deref(),
            Some("Reject")
        );
    }

    #[test]
    fn target_only_keys_from_initiator() {
        assert_eq!(
            one(&mut normal(), "TargetAlias", "x").as_deref(),
            Some("Reject")
        );
        assert_eq!(
            one(&mut normal(), "TargetAddress", "1.2.3.4").as_deref(),
            Some("Reject")
        );
        let err = normal()
            .answer(&[p("TargetPortalGroupTag", "1")])
            .unwrap_err();
        assert_eq!(err.status(), super::super::status::INITIATOR_ERROR);
    }

    #[test]
    fn initial_r2t_or() {
        let mut n = normal();
        assert_eq!(one(&mut n, "InitialR2T", "No").as_deref(), Some("No"));
        assert!(!params(&n).initial_r2t);
        let mut n = normal();
        assert_eq!(one(&mut n, "InitialR2T", "Yes").as_deref(), Some("Yes"));
        assert!(params(&n).initial_r2t);
        let l = Limits {
            initial_r2t: true,
            ..Limits::default()
        };
        let mut n = Negotiation::new(l, SessionType::Normal);
        assert_eq!(one(&mut n, "InitialR2T", "No").as_deref(), Some("Yes"));
        assert_eq!(
            one(&mut normal(), "InitialR2T", "yes").as_deref(),
            Some("Reject")
        );
        assert_eq!(
            one(&mut disc(), "InitialR2T", "No").as_deref(),
            Some("Irrelevant")
        );
        // Not sent: the RFC default (Yes) applies.
        assert!(params(&normal()).initial_r2t);
    }

    #[test]
    fn immediate_data_and() {
        let mut n = normal();
        assert_eq!(one(&mut n, "ImmediateData", "Yes").as_deref(), Some("Yes"));
        assert!(params(&n).immediate_data);
        let mut n = normal();
        assert_eq!(one(&mut n, "ImmediateData", "No").as_deref(), Some("No"));
        assert!(!params(&n).immediate_data);
        let l = Limits {
            immediate_data: false,
            ..Limits::default()
        };
        let mut n = Negotiation::new(l, SessionType::Normal);
        assert_eq!(one(&mut n, "ImmediateData", "Yes").as_deref(), Some("No"));
        assert_eq!(
            one(&mut normal(), "ImmediateData", "1").as_deref(),
            Some("Reject")
        );
        assert_eq!(
            one(&mut disc(), "ImmediateData", "Yes").as_deref(),
            Some("Irrelevant")
        );
    }

    #[test]
    fn mrdsl_is_a_declaration() {
        let mut n = normal();
        assert_eq!(one(&mut n, "MaxRecvDataSegmentLength", "65536"), None);
        let pr = params(&n);
        assert_eq!(pr.initiator_max_recv_data_segment_length, 65536);
        assert_eq!(pr.target_max_recv_data_segment_length, 262_144);
        assert_eq!(
            params(&normal()).initiator_max_recv_data_segment_length,
            8192
        );
        assert_eq!(
            n.declarations(),
            vec![p("MaxRecvDataSegmentLength", "262144")]
        );
        // Relevant in discovery sessions too.
        let mut d = disc();
        assert_eq!(one(&mut d, "MaxRecvDataSegmentLength", "0x1000"), None);
        assert_eq!(params(&d).initiator_max_recv_data_segment_length, 4096);
    }

    #[test]
    fn mrdsl_out_of_range_fails_login() {
        for v in ["511", "16777216", "abc", ""] {
            let err = normal()
                .answer(&[p("MaxRecvDataSegmentLength", v)])
                .unwrap_err();
            assert_eq!(err.status(), super::super::status::INITIATOR_ERROR, "{v}");
        }
    }

    #[test]
    fn max_burst_min() {
        let mut n = normal();
        assert_eq!(
            one(&mut n, "MaxBurstLength", "16776192").as_deref(),
            Some("1048576")
        );
        assert_eq!(params(&n).max_burst_length, 1_048_576);
        let mut n = normal();
        assert_eq!(
            one(&mut n, "MaxBurstLength", "65536").as_deref(),
            Some("65536")
        );
        assert_eq!(
            one(&mut normal(), "MaxBurstLength", "511").as_deref(),
            Some("Reject")
        );
        assert_eq!(
            one(&mut normal(), "MaxBurstLength", "16777216").as_deref(),
            Some("Reject")
        );
        assert_eq!(
            one(&mut disc(), "MaxBurstLength", "65536").as_deref(),
            Some("Irrelevant")
        );
        assert_eq!(params(&normal()).max_burst_length, 262_144);
    }

    #[test]
    fn first_burst_min_and_clipped() {
        let mut n = normal();
        assert_eq!(
            one(&mut n, "FirstBurstLength", "1048576").as_deref(),
            Some("262144")
        );
        assert_eq!(params(&n).first_burst_length, 262_144);
        // Clipped to MaxBurstLength negotiated later in the same text.
        let mut n = normal();
        let out = n
            .answer(&[
                p("FirstBurstLength", "131072"),
                p("MaxBurstLength", "65536"),
            ])
            .unwrap();
        assert_eq!(
            out,
            vec![p("FirstBurstLength", "65536"), p("MaxBurstLength", "65536")]
        );
        assert_eq!(params(&n).first_burst_length, 65536);
        assert_eq!(
            one(&mut normal(), "FirstBurstLength", "100").as_deref(),
            Some("Reject")
        );
        assert_eq!(params(&normal()).first_burst_length, 65536);
    }

    #[test]
    fn first_burst_clipped_by_later_max_burst() {
        let mut n = normal();
        one(&mut n, "FirstBurstLength", "262144");
        one(&mut n, "MaxBurstLength", "8192");
        assert_eq!(params(&n).first_burst_length, 8192);
    }

    #[test]
    fn first_burst_irrelevant() {
        let mut n = normal();
        let out = n
            .answer(&[
                p("InitialR2T", "Yes"),
                p("FirstBurstLength", "65536"),
                p("ImmediateData", "No"),
            ])
            .unwrap();
        assert_eq!(out[1], p("FirstBurstLength", "Irrelevant"));
        assert_eq!(
            one(&mut disc(), "FirstBurstLength", "65536").as_deref(),
            Some("Irrelevant")
        );
    }

    #[test]
    fn time2wait_max() {
        let mut n = normal();
        assert_eq!(one(&mut n, "DefaultTime2Wait", "0").as_deref(), Some("2"));
        assert_eq!(params(&n).default_time2wait, 2);
        let mut n = normal();
        assert_eq!(one(&mut n, "DefaultTime2Wait", "10").as_deref(), Some("10"));
        assert_eq!(params(&n).default_time2wait, 10);
        assert_eq!(
            one(&mut normal(), "DefaultTime2Wait", "3601").as_deref(),
            Some("Reject")
        );
        assert_eq!(
            one(&mut disc(), "DefaultTime2Wait", "5").as_deref(),
            Some("5")
        );
    }

    #[test]
    fn time2retain_min() {
        let mut n = normal();
        assert_eq!(one(&mut n, "DefaultTime2Retain", "0").as_deref(), Some("0"));
        assert_eq!(params(&n).default_time2retain, 0);
        let mut n = normal();
        assert_eq!(
            one(&mut n, "DefaultTime2Retain", "3600").as_deref(),
            Some("20")
        );
        assert_eq!(
            one(&mut normal(), "DefaultTime2Retain", "x").as_deref(),
            Some("Reject")
        );
    }

    #[test]
    fn max_outstanding_r2t_min() {
        let mut n = normal();
        assert_eq!(one(&mut n, "MaxOutstandingR2T", "1").as_deref(), Some("1"));
        assert_eq!(params(&n).max_outstanding_r2t, 1);
        let mut n = normal();
        assert_eq!(one(&mut n, "MaxOutstandingR2T", "64").as_deref(), Some("8"));
        assert_eq!(params(&n).max_outstanding_r2t, 8);
        assert_eq!(
            one(&mut normal(), "MaxOutstandingR2T", "0").as_deref(),
            Some("Reject")
        );
        assert_eq!(
            one(&mut disc(), "MaxOutstandingR2T", "1").as_deref(),
            Some("Irrelevant")
        );
    }

    #[test]
    fn in_order_keys_or() {
        let mut n = normal();
        assert_eq!(one(&mut n, "DataPDUInOrder", "No").as_deref(), Some("Yes"));
        assert_eq!(
            one(&mut n, "DataSequenceInOrder", "Yes").as_deref(),
            Some("Yes")
        );
        let pr = params(&n);
        assert!(pr.data_pdu_in_order && pr.data_sequence_in_order);
        assert_eq!(
            one(&mut normal(), "DataPDUInOrder", "maybe").as_deref(),
            Some("Reject")
        );
        assert_eq!(
            one(&mut disc(), "DataSequenceInOrder", "Yes").as_deref(),
            Some("Irrelevant")
        );
    }

    #[test]
    fn error_recovery_level_min() {
        let mut n = normal();
        assert_eq!(one(&mut n, "ErrorRecoveryLevel", "2").as_deref(), Some("0"));
        assert_eq!(params(&n).error_recovery_level, 0);
        let l = Limits {
            error_recovery_level: 1,
            ..Limits::default()
        };
        let mut n = Negotiation::new(l, SessionType::Normal);
        assert_eq!(one(&mut n, "ErrorRecoveryLevel", "2").as_deref(), Some("1"));
        assert_eq!(
            one(&mut normal(), "ErrorRecoveryLevel", "3").as_deref(),
            Some("Reject")
        );
        assert_eq!(
            one(&mut disc(), "ErrorRecoveryLevel", "0").as_deref(),
            Some("0")
        );
    }

    #[test]
    fn task_reporting() {
        assert_eq!(
            one(&mut normal(), "TaskReporting", "FastAbort,RFC3720").as_deref(),
            Some("RFC3720")
        );
        assert_eq!(
            one(&mut normal(), "TaskReporting", "ResponseFence,FastAbort").as_deref(),
            Some("Reject")
        );
        assert_eq!(
            one(&mut disc(), "TaskReporting", "RFC3720").as_deref(),
            Some("Irrelevant")
        );
    }

    #[test]
    fn protocol_level_min() {
        assert_eq!(
            one(&mut normal(), "iSCSIProtocolLevel", "2").as_deref(),
            Some("1")
        );
        assert_eq!(
            one(&mut normal(), "iSCSIProtocolLevel", "0").as_deref(),
            Some("0")
        );
        assert_eq!(
            one(&mut normal(), "iSCSIProtocolLevel", "32").as_deref(),
            Some("Reject")
        );
        assert_eq!(
            one(&mut disc(), "iSCSIProtocolLevel", "1").as_deref(),
            Some("Irrelevant")
        );
    }

    #[test]
    fn obsolete_marker_keys() {
        assert_eq!(one(&mut normal(), "IFMarker", "No").as_deref(), Some("No"));
        assert_eq!(one(&mut normal(), "OFMarker", "Yes").as_deref(), Some("No"));
        assert_eq!(
            one(&mut normal(), "OFMarker", "x").as_deref(),
            Some("Reject")
        );
        assert_eq!(
            one(&mut normal(), "IFMarkInt", "2048").as_deref(),
            Some("Reject")
        );
        assert_eq!(
            one(&mut normal(), "OFMarkInt", "1~65535").as_deref(),
            Some("Reject")
        );
    }

    #[test]
    fn rdma_extensions_no() {
        assert_eq!(
            one(&mut normal(), "RDMAExtensions", "Yes").as_deref(),
            Some("No")
        );
        assert_eq!(
            one(&mut normal(), "RDMAExtensions", "?").as_deref(),
            Some("Reject")
        );
        assert_eq!(
            one(&mut disc(), "RDMAExtensions", "Yes").as_deref(),
            Some("Irrelevant")
        );
    }

    #[test]
    fn unknown_and_extension_keys_not_understood() {
        for k in [
            "X-com.example.Foo",
            "X#NodeArchitecture",
            "Bogus",
            "InitiatorRecvDataSegmentLength",
        ] {
            assert_eq!(
                one(&mut normal(), k, "1").as_deref(),
                Some("NotUnderstood"),
                "{k}"
            );
        }
    }

    #[test]
    fn answers_keep_order() {
        let mut n = normal();
        let out = n
            .answer(&[
                p("X-a", "1"),
                p("MaxRecvDataSegmentLength", "8192"),
                p("ErrorRecoveryLevel", "0"),
                p("HeaderDigest", "None"),
            ])
            .unwrap();
        assert_eq!(
            out,
            vec![
                p("X-a", "NotUnderstood"),
                p("ErrorRecoveryLevel", "0"),
                p("HeaderDigest", "None")
            ]
        );
    }
}
