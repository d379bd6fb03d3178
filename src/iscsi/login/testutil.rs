//! Test helpers: an in-memory [`TargetDirectory`] and Login Request builders.

use bytes::Bytes;

use crate::iscsi::pdu::LoginRequest;
use crate::iscsi::text::{encode_keys, parse_keys};

use super::params::defaults;
use super::{ChapSecrets, Lookup, SendTarget, SessionParams, SessionType, TargetDirectory};

pub const INITIATOR: &str = "iqn.2024-01.test:initiator";
pub const EVIL: &str = "iqn.2024-01.test:evil";
pub const DISK1: &str = "iqn.2024-01.test:disk1";
pub const CHAP_TARGET: &str = "iqn.2024-01.test:chap";
pub const CHAP1_TARGET: &str = "iqn.2024-01.test:chap1";

pub fn mutual_secrets() -> ChapSecrets {
    ChapSecrets {
        username: "alice".into(),
        secret: "alice-secret-12".into(),
        mutual: Some(("target-bob".into(), "bob-secret-3456".into())),
    }
}

pub fn one_way_secrets() -> ChapSecrets {
    ChapSecrets {
        username: "carol".into(),
        secret: "carol-secret-12".into(),
        mutual: None,
    }
}

struct Entry {
    name: &'static str,
    chap: Option<ChapSecrets>,
    alias: Option<&'static str>,
    addresses: Vec<&'static str>,
}

pub struct TestDir {
    targets: Vec<Entry>,
    pub discovery_chap: Option<ChapSecrets>,
}

impl TestDir {
    pub fn new() -> Self {
        TestDir {
            targets: vec![
                Entry {
                    name: DISK1,
                    chap: None,
                    alias: Some("disk one"),
                    addresses: vec!["127.0.0.1:3260,1", "[::1]:3260,1"],
                },
                Entry {
                    name: CHAP_TARGET,
                    chap: Some(mutual_secrets()),
                    alias: None,
                    addresses: vec!["127.0.0.1:3260,1"],
                },
                Entry {
                    name: CHAP1_TARGET,
                    chap: Some(one_way_secrets()),
                    alias: None,
                    addresses: vec!["127.0.0.1:3260,1"],
                },
            ],
            discovery_chap: None,
        }
    }
}

impl TestDir {
    /// A directory whose CHAP1_TARGET uses the given one-way credentials.
    pub fn with_chap_user(username: &str, secret: &str) -> Self {
        let mut d = TestDir::new();
        d.targets[2].chap = Some(ChapSecrets {
            username: username.into(),
            secret: secret.into(),
            mutual: None,
        });
        d
    }
}

impl TargetDirectory for TestDir {
    fn lookup(&self, target_name: &str, initiator_name: &str) -> Lookup {
        match self.targets.iter().find(|t| t.name == target_name) {
            None => Lookup::NotFound,
            Some(_) if initiator_name == EVIL => Lookup::NotAuthorized,
            Some(t) => Lookup::Found {
                chap: t.chap.clone(),
            },
        }
    }

    fn target_alias(&self, target_name: &str) -> Option<String> {
        self.targets
            .iter()
            .find(|t| t.name == target_name)
            .and_then(|t| t.alias.map(str::to_string))
    }

    fn portal_group_tag(&self) -> u16 {
        1
    }

    fn send_targets(&self, initiator_name: &str, which: Option<&str>) -> Vec<SendTarget> {
        if initiator_name == EVIL {
            return Vec::new();
        }
        self.targets
            .iter()
            .filter(|t| which.is_none_or(|w| w == t.name))
            .map(|t| SendTarget {
                name: t.name.to_string(),
                addresses: t.addresses.iter().map(|a| a.to_string()).collect(),
            })
            .collect()
    }

    fn discovery_chap(&self) -> Option<ChapSecrets> {
        self.discovery_chap.clone()
    }
}

pub fn normal_params() -> SessionParams {
    SessionParams {
        session_type: SessionType::Normal,
        initiator_name: INITIATOR.into(),
        initiator_alias: None,
        target_name: Some(DISK1.into()),
        header_digest: false,
        data_digest: false,
        initiator_max_recv_data_segment_length: defaults::MAX_RECV_DATA_SEGMENT_LENGTH,
        target_max_recv_data_segment_length: 262_144,
        max_burst_length: defaults::MAX_BURST_LENGTH,
        first_burst_length: defaults::FIRST_BURST_LENGTH,
        initial_r2t: true,
        immediate_data: true,
        max_outstanding_r2t: 1,
        data_pdu_in_order: true,
        data_sequence_in_order: true,
        default_time2wait: 2,
        default_time2retain: 20,
        error_recovery_level: 0,
        max_connections: 1,
    }
}

pub fn discovery_params() -> SessionParams {
    SessionParams {
        session_type: SessionType::Discovery,
        target_name: None,
        ..normal_params()
    }
}

pub const ISID: [u8; 6] = [0x80, 0, 0x02, 0x3d, 0, 1];
pub const ITT: u32 = 0x1234;

/// A Login Request with the test ISID/ITT and the given stage bits and keys.
pub fn req(csg: u8, nsg: u8, transit: bool, keys: &[(&str, &str)]) -> LoginRequest {
    let pairs: Vec<(String, String)> = keys
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    LoginRequest {
        transit,
        cont: false,
        csg,
        nsg,
        version_max: 0,
        version_min: 0,
        isid: ISID,
        tsih: 0,
        itt: ITT,
        cid: 0,
        cmd_sn: 1,
        exp_stat_sn: 0,
        data: encode_keys(&pairs),
    }
}

/// A Login Request carrying raw key text bytes (for continuation tests).
pub fn raw_req(csg: u8, nsg: u8, transit: bool, cont: bool, data: &[u8]) -> LoginRequest {
    LoginRequest {
        cont,
        data: Bytes::copy_from_slice(data),
        ..req(csg, nsg, transit, &[])
    }
}

/// The response's keys.
pub fn keys_of(data: &Bytes) -> Vec<(String, String)> {
    parse_keys(data).expect("response key text must parse")
}

/// The value of key `k` in `keys`, if present.
pub fn get<'a>(keys: &'a [(String, String)], k: &str) -> Option<&'a str> {
    keys.iter()
        .find(|(key, _)| key == k)
        .map(|(_, v)| v.as_str())
}
