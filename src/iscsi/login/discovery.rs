//! Text Requests in full feature phase (RFC 7143 sections 6.2, 11.10, 13.3 and
//! appendix C): SendTargets, plus the few keys that may be negotiated after login.
//!
//! The caller reassembles continued (C=1) Text Requests before calling, and splits the
//! answer over several Text Responses (C bit, Target Transfer Tag) when it is longer
//! than the initiator's MaxRecvDataSegmentLength; a long SendTargets list can be.

use std::collections::HashSet;

use bytes::Bytes;

use crate::iscsi::text::{encode_keys, parse_keys, TextError};

use super::keys::{parse_number, NOT_UNDERSTOOD, REJECT};
use super::{SessionParams, SessionType, TargetDirectory};

/// The full result of a Text Request: the answer, and parameter changes the
/// connection must apply once the answer is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextOutcome {
    pub data: Bytes,
    /// A new MaxRecvDataSegmentLength declared by the initiator (RFC 7143 13.12 allows
    /// it in full feature phase): the largest data segment we may send from now on.
    pub initiator_max_recv_data_segment_length: Option<u32>,
}

/// Text Request in full feature phase (SendTargets, and any other key answered per RFC): returns response key data.
pub fn text_request(
    dir: &dyn TargetDirectory,
    params: &SessionParams,
    data: &[u8],
) -> Result<Bytes, TextError> {
    text_negotiate(dir, params, data).map(|o| o.data)
}

/// Like [`text_request`], but also reports parameter changes (see [`TextOutcome`]).
pub fn text_negotiate(
    dir: &dyn TargetDirectory,
    params: &SessionParams,
    data: &[u8],
) -> Result<TextOutcome, TextError> {
    let pairs = parse_keys(data)?;
    let mut seen = HashSet::new();
    let mut out: Vec<(String, String)> = Vec::new();
    let mut mrdsl = None;
    for (key, value) in &pairs {
        if !seen.insert(key.as_str()) {
            return Err(TextError::DuplicateKey { key: key.clone() });
        }
        match key.as_str() {
            "SendTargets" => send_targets(dir, params, value, &mut out),
            // Declarative and allowed in full feature phase (Use: ALL); no answer.
            "MaxRecvDataSegmentLength" if params.session_type == SessionType::Normal => {
                match parse_number(value).filter(|n| (512..(1 << 24)).contains(n)) {
                    Some(n) => mrdsl = Some(n as u32),
                    None => out.push((key.clone(), REJECT.into())),
                }
            }
            // Every other RFC 7143 key may only be negotiated during login ("Use: LO"
            // or "IO"), so renegotiating it is refused; unknown and extension keys are
            // not understood.
            k if is_login_only_key(k) => out.push((key.clone(), REJECT.into())),
            _ => out.push((key.clone(), NOT_UNDERSTOOD.into())),
        }
    }
    Ok(TextOutcome {
        data: encode_keys(&out),
        initiator_max_recv_data_segment_length: mrdsl,
    })
}

/// Whether `name` has the form of an iSCSI name (RFC 7143 section 4.2.7: `iqn.`,
/// `eui.` or `naa.` followed by something). Values such as "Alle" are typos, not names.
fn looks_like_iscsi_name(name: &str) -> bool {
    name.len() > 4
        && name.len() <= super::machine::MAX_NAME_LEN
        && ["iqn.", "eui.", "naa."].iter().any(|p| name.starts_with(p))
}

/// Keys RFC 7143 defines for the login phase only (plus MaxRecvDataSegmentLength in a
/// discovery session, where there is nothing it could change).
fn is_login_only_key(k: &str) -> bool {
    matches!(
        k,
        "HeaderDigest"
            | "DataDigest"
            | "MaxConnections"
            | "TargetName"
            | "InitiatorName"
            | "TargetAlias"
            | "InitiatorAlias"
            | "TargetAddress"
            | "TargetPortalGroupTag"
            | "InitialR2T"
            | "ImmediateData"
            | "MaxRecvDataSegmentLength"
            | "MaxBurstLength"
            | "FirstBurstLength"
            | "DefaultTime2Wait"
            | "DefaultTime2Retain"
            | "MaxOutstandingR2T"
            | "DataPDUInOrder"
            | "DataSequenceInOrder"
            | "ErrorRecoveryLevel"
            | "SessionType"
            | "AuthMethod"
            | "TaskReporting"
            | "iSCSIProtocolLevel"
            | "IFMarker"
            | "OFMarker"
            | "IFMarkInt"
            | "OFMarkInt"
            | "RDMAExtensions"
    ) || k.starts_with("CHAP_")
}

/// SendTargets (RFC 7143 appendix C): `All` lists every target the initiator may see;
/// an iSCSI name lists that target if visible (an unknown or forbidden name gives an
/// empty answer, so names cannot be probed); an empty value, in a normal session,
/// lists the session's own target. Anything else is answered `Reject`.
///
/// `All` is also answered in normal sessions: libiscsi's conformance test sends it
/// there and expects the list, and the directory only returns targets this initiator
/// may see anyway.
fn send_targets(
    dir: &dyn TargetDirectory,
    params: &SessionParams,
    value: &str,
    out: &mut Vec<(String, String)>,
) {
    let targets = match (value, params.session_type) {
        ("All", _) => dir.send_targets(&params.initiator_name, None),
        ("", SessionType::Normal) => match &params.target_name {
            Some(t) => dir.send_targets(&params.initiator_name, Some(t)),
            None => Vec::new(),
        },
        (name, _) if !looks_like_iscsi_name(name) => {
            out.push(("SendTargets".into(), REJECT.into()));
            return;
        }
        (name, _) => dir
            .send_targets(&params.initiator_name, Some(name))
            .into_iter()
            .filter(|t| t.name == name)
            .collect(),
    };
    for t in targets {
        out.push(("TargetName".into(), t.name));
        for a in t.addresses {
            out.push(("TargetAddress".into(), a));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{discovery_params, normal_params, TestDir};
    use super::*;

    fn keys(b: &[u8]) -> Vec<(String, String)> {
        parse_keys(b).unwrap()
    }

    fn p(k: &str, v: &str) -> (String, String) {
        (k.to_string(), v.to_string())
    }

    #[test]
    fn send_targets_all() {
        let dir = TestDir::new();
        let out = text_request(&dir, &discovery_params(), b"SendTargets=All\0").unwrap();
        assert_eq!(
            keys(&out),
            vec![
                p("TargetName", "iqn.2024-01.test:disk1"),
                p("TargetAddress", "127.0.0.1:3260,1"),
                p("TargetAddress", "[::1]:3260,1"),
                p("TargetName", "iqn.2024-01.test:chap"),
                p("TargetAddress", "127.0.0.1:3260,1"),
                p("TargetName", "iqn.2024-01.test:chap1"),
                p("TargetAddress", "127.0.0.1:3260,1"),
            ]
        );
    }

    #[test]
    fn send_targets_named() {
        let dir = TestDir::new();
        let out = text_request(
            &dir,
            &discovery_params(),
            b"SendTargets=iqn.2024-01.test:chap\0",
        )
        .unwrap();
        assert_eq!(
            keys(&out),
            vec![
                p("TargetName", "iqn.2024-01.test:chap"),
                p("TargetAddress", "127.0.0.1:3260,1"),
            ]
        );
        let out = text_request(&dir, &discovery_params(), b"SendTargets=iqn.nope\0").unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn send_targets_empty_in_normal_session() {
        let dir = TestDir::new();
        let out = text_request(&dir, &normal_params(), b"SendTargets=\0").unwrap();
        assert_eq!(
            keys(&out),
            vec![
                p("TargetName", "iqn.2024-01.test:disk1"),
                p("TargetAddress", "127.0.0.1:3260,1"),
                p("TargetAddress", "[::1]:3260,1"),
            ]
        );
    }

    #[test]
    fn send_targets_misuse_rejected() {
        // The invalid requests of libiscsi's SendTargets test must all fail.
        let dir = TestDir::new();
        for (req, answer) in [
            (&b"SendTargets=\0"[..], p("SendTargets", "Reject")),
            (b"SendTargets=Alle\0", p("SendTargets", "Reject")),
            (b"SendTargets=A\0", p("SendTargets", "Reject")),
            (
                b"SendTargetsPlease=All\0",
                p("SendTargetsPlease", "NotUnderstood"),
            ),
            (b"sENDtARGETS=aLL\0", p("sENDtARGETS", "NotUnderstood")),
        ] {
            let out = text_request(&dir, &discovery_params(), req).unwrap();
            assert_eq!(keys(&out), vec![answer]);
        }
    }

    #[test]
    fn send_targets_all_in_normal_session() {
        let dir = TestDir::new();
        let out = text_request(&dir, &normal_params(), b"SendTargets=All\0").unwrap();
        assert_eq!(
            keys(&out).iter().filter(|(k, _)| k == "TargetName").count(),
            3
        );
    }

    #[test]
    fn other_keys_in_ffp() {
        let dir = TestDir::new();
        let out = text_negotiate(
            &dir,
            &normal_params(),
            b"X-foo=1\0MaxBurstLength=512\0MaxRecvDataSegmentLength=4096\0",
        )
        .unwrap();
        assert_eq!(
            keys(&out.data),
            vec![p("X-foo", "NotUnderstood"), p("MaxBurstLength", "Reject")]
        );
        assert_eq!(out.initiator_max_recv_data_segment_length, Some(4096));
        let out = text_negotiate(
            &dir,
            &discovery_params(),
            b"MaxRecvDataSegmentLength=4096\0",
        )
        .unwrap();
        assert_eq!(
            keys(&out.data),
            vec![p("MaxRecvDataSegmentLength", "Reject")]
        );
        assert_eq!(out.initiator_max_recv_data_segment_length, None);
    }

    #[test]
    fn malformed_and_duplicate() {
        let dir = TestDir::new();
        assert!(text_request(&dir, &discovery_params(), b"SendTargets").is_err());
        assert!(matches!(
            text_request(
                &dir,
                &discovery_params(),
                b"SendTargets=All\0SendTargets=All\0"
            ),
            Err(TextError::DuplicateKey { .. })
        ));
    }
}
