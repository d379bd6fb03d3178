//! `conf/dreadnought.toml`: what `dreadnought up` serves. Every key is documented in
//! the shipped file with its default; errors name the offending key.

use crate::cluster::api::Protection;
use serde::{Deserialize, Deserializer};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}; pass --config PATH or create it")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where volume files and the system id live, relative to the working directory.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    #[serde(default)]
    pub iscsi: IscsiConfig,
    #[serde(default, rename = "target")]
    pub targets: Vec<TargetConfig>,
    #[serde(default, rename = "volume")]
    pub volumes: Vec<VolumeConfig>,
    /// The cluster `up` runs on one machine (MDM, SDS, the pool and its volumes).
    pub cluster: Option<ClusterConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    pub mdm_listen: SocketAddr,
    /// One SDS per address, each with one sparse file device.
    pub sds_listen: Vec<SocketAddr>,
    pub device_size: Size,
    pub protection_domain: String,
    pub storage_pool: String,
    /// HDD, SSD or CLOUD.
    pub media_type: String,
    /// The pool's copies of each chunk: `two_copies` or `single_copy` (no redundancy).
    #[serde(deserialize_with = "protection_mode")]
    pub protection_mode: Protection,
    /// The name `up`'s gateway registers with the MDM as an SDC.
    pub gateway_name: String,
    /// The declarative initiator map `up` applies at start and on every edit,
    /// relative to the config file's directory.
    pub initiator_map: PathBuf,
    #[serde(rename = "volume")]
    pub volumes: Vec<ClusterVolumeConfig>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            mdm_listen: "127.0.0.1:6611".parse().expect("literal"),
            sds_listen: ["127.0.0.1:7072", "127.0.0.1:7073", "127.0.0.1:7074"]
                .iter()
                .map(|a| a.parse().expect("literal"))
                .collect(),
            device_size: Size(64 << 30),
            protection_domain: "pd1".into(),
            storage_pool: "pool1".into(),
            media_type: "SSD".into(),
            protection_mode: Protection::TwoCopies,
            gateway_name: "gateway1".into(),
            initiator_map: PathBuf::from("initiators.toml"),
            volumes: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterVolumeConfig {
    pub name: String,
    pub size: Size,
    #[serde(default = "yes")]
    pub thin: bool,
}

impl ClusterConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        match self.protection_mode {
            Protection::TwoCopies if self.sds_listen.len() < 2 => {
                return bad("cluster.sds_listen needs at least two SDS: every chunk has two copies on different SDS (or set cluster.protection_mode = \"single_copy\")".into());
            }
            Protection::SingleCopy if self.sds_listen.is_empty() => {
                return bad("cluster.sds_listen needs at least one SDS".into());
            }
            _ => {}
        }
        if self.device_size.0 < 256 << 20 {
            return bad("cluster.device_size must be at least 256MiB".into());
        }
        if !["hdd", "ssd", "cloud"].contains(&self.media_type.to_ascii_lowercase().as_str()) {
            return bad(format!(
                "cluster.media_type {:?} must be HDD, SSD or CLOUD",
                self.media_type
            ));
        }
        let mut names = std::collections::HashSet::new();
        for v in &self.volumes {
            if !names.insert(v.name.as_str()) {
                return bad(format!("cluster volume {:?} is defined twice", v.name));
            }
            if v.size.0 == 0 {
                return bad(format!("cluster volume {:?}: size must be above 0", v.name));
            }
        }
        Ok(())
    }
}

/// `cluster.protection_mode` by its admin name; a bad one is named with the key.
fn protection_mode<'de, D: Deserializer<'de>>(d: D) -> Result<Protection, D::Error> {
    let name = String::deserialize(d)?;
    Protection::from_name(&name).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "cluster.protection_mode {name:?} must be {}",
            Protection::NAMES
        ))
    })
}

fn yes() -> bool {
    true
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IscsiConfig {
    pub listen: Vec<SocketAddr>,
    pub portal_group_tag: u16,
    pub max_recv_data_segment_length: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub max_outstanding_r2t: u16,
    pub initial_r2t: bool,
    pub immediate_data: bool,
    pub header_digest: bool,
    pub data_digest: bool,
    pub queue_depth: u32,
    pub nop_interval_secs: u64,
    pub nop_timeout_secs: u64,
    pub login_timeout_secs: u64,
    pub max_connections: usize,
    pub discovery_chap: Option<ChapConfig>,
}

impl Default for IscsiConfig {
    fn default() -> Self {
        Self {
            listen: vec!["127.0.0.1:3260".parse().expect("literal")],
            portal_group_tag: 1,
            max_recv_data_segment_length: 262_144,
            max_burst_length: 1_048_576,
            first_burst_length: 262_144,
            max_outstanding_r2t: 8,
            initial_r2t: false,
            immediate_data: true,
            header_digest: true,
            data_digest: true,
            queue_depth: 128,
            nop_interval_secs: 15,
            nop_timeout_secs: 10,
            login_timeout_secs: 15,
            max_connections: 1024,
            discovery_chap: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChapConfig {
    pub username: String,
    pub secret: String,
    pub mutual_username: Option<String>,
    pub mutual_secret: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    pub name: String,
    pub alias: Option<String>,
    #[serde(default)]
    pub demo_mode: bool,
    #[serde(default)]
    pub allowed_initiators: Vec<String>,
    /// Local volume names, exported as LUN 0, 1, ... in this order.
    #[serde(default)]
    pub volumes: Vec<String>,
    /// Export the pool volumes the MDM maps to this gateway, at their mapped LUNs.
    #[serde(default)]
    pub mapped: bool,
    pub chap: Option<ChapConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeConfig {
    pub name: String,
    /// "10GiB", "512MiB", "1TB" or a byte count.
    pub size: Size,
    /// Backing file; default `<data_dir>/volumes/<name>.img`.
    pub file: Option<PathBuf>,
    #[serde(default)]
    pub read_only: bool,
}

/// A size in bytes, written with a binary or decimal unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Size(n)),
            Raw::S(s) => parse_size(&s).map(Size).map_err(serde::de::Error::custom),
        }
    }
}

pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("size {s:?} must start with a number, e.g. \"10GiB\""))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        other => {
            return Err(format!(
                "unknown size unit {other:?} in {s:?}; use KiB, MiB, GiB or TiB"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.targets.is_empty() {
            return bad("no [[target]] defined; add one that lists the volumes to export".into());
        }
        let mut names = std::collections::HashSet::new();
        for v in &self.volumes {
            if !names.insert(v.name.as_str()) {
                return bad(format!("volume name {:?} is defined twice", v.name));
            }
            if v.size.0 < 1 << 20 || v.size.0 % 512 != 0 {
                return bad(format!(
                    "volume {:?}: size must be at least 1MiB and a multiple of 512 bytes",
                    v.name
                ));
            }
        }
        let mut tnames = std::collections::HashSet::new();
        for t in &self.targets {
            if !tnames.insert(t.name.as_str()) {
                return bad(format!("target name {:?} is defined twice", t.name));
            }
            if !(t.name.starts_with("iqn.")
                || t.name.starts_with("eui.")
                || t.name.starts_with("naa."))
            {
                return bad(format!(
                    "target name {:?} must be an iSCSI name starting with iqn., eui. or naa.",
                    t.name
                ));
            }
            if t.mapped && !t.volumes.is_empty() {
                return bad(format!(
                    "target {:?}: set either mapped = true (pool volumes from the MDM) or volumes = [...] (local volumes), not both",
                    t.name
                ));
            }
            for v in &t.volumes {
                if !names.contains(v.as_str()) {
                    return bad(format!(
                        "target {:?} exports volume {v:?}, which no [[volume]] defines",
                        t.name
                    ));
                }
            }
            if let Some(c) = &t.chap {
                c.validate(&t.name)?;
            }
        }
        if let Some(c) = &self.iscsi.discovery_chap {
            c.validate("discovery")?;
        }
        if let Some(c) = &self.cluster {
            c.validate()?;
        }
        let i = &self.iscsi;
        if !(512..=16_777_215).contains(&i.max_recv_data_segment_length) {
            return bad("iscsi.max_recv_data_segment_length must be 512..16777215".into());
        }
        if !(512..=16_777_215).contains(&i.max_burst_length)
            || !(512..=i.max_burst_length).contains(&i.first_burst_length)
        {
            return bad("iscsi.first_burst_length must be 512..=max_burst_length, max_burst_length 512..16777215".into());
        }
        if i.max_outstanding_r2t == 0 || i.queue_depth == 0 || i.listen.is_empty() {
            return bad(
                "iscsi.max_outstanding_r2t, queue_depth and listen must be non-empty/non-zero"
                    .into(),
            );
        }
        Ok(())
    }
}

impl ChapConfig {
    fn validate(&self, owner: &str) -> Result<(), ConfigError> {
        // RFC 7143 section 12.1.3: secrets should be at least 12 bytes (96 bits).
        if self.username.is_empty() || self.secret.len() < 12 || self.secret.len() > 255 {
            return Err(ConfigError::Invalid(format!(
                "{owner}: chap needs a username and a secret of 12 to 255 characters"
            )));
        }
        if self.mutual_username.is_some() != self.mutual_secret.is_some() {
            return Err(ConfigError::Invalid(format!(
                "{owner}: set both chap.mutual_username and chap.mutual_secret, or neither"
            )));
        }
        if self
            .mutual_secret
            .as_ref()
            .is_some_and(|s| s.len() < 12 || *s == self.secret)
        {
            return Err(ConfigError::Invalid(format!(
                "{owner}: chap.mutual_secret must be 12+ characters and differ from chap.secret"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_config_parses() {
        let text = include_str!("../conf/dreadnought.toml");
        let c = Config::parse(text).unwrap();
        assert!(c.targets[0].demo_mode && c.targets[0].mapped);
        let cluster = c.cluster.expect("the shipped config runs a cluster");
        assert_eq!(cluster.sds_listen.len(), 3);
        assert_eq!(cluster.volumes[0].name, "demo0");
        assert!(cluster.volumes[0].thin);
        assert_eq!(cluster.protection_mode, Protection::TwoCopies);
    }

    #[test]
    fn protection_mode_defaults_to_two_copies_and_single_copy_runs_on_one_sds() {
        let with = |cluster: &str| {
            Config::parse(&format!(
                "[[target]]\nname = \"iqn.2026-11.io.x:t\"\nmapped = true\n[cluster]\n{cluster}"
            ))
        };
        let c = with("").unwrap().cluster.unwrap();
        assert_eq!(c.protection_mode, Protection::TwoCopies);
        let one = "sds_listen = [\"127.0.0.1:7072\"]\n";
        let e = with(one).unwrap_err().to_string();
        assert!(
            e.contains("cluster.protection_mode = \"single_copy\""),
            "{e}"
        );
        let c = with(&format!("{one}protection_mode = \"single_copy\"\n"))
            .unwrap()
            .cluster
            .unwrap();
        assert_eq!(c.protection_mode, Protection::SingleCopy);
        let e = with("protection_mode = \"raid1\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cluster.protection_mode \"raid1\" must be two_copies or single_copy"),
            "{e}"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10GiB").unwrap(), 10 << 30);
        assert_eq!(parse_size("512 MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("1GB").unwrap(), 1_000_000_000);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("ten").is_err());
        assert!(parse_size("1XB").is_err());
    }

    #[test]
    fn errors_name_the_field() {
        let e = Config::parse(
            r#"
[[target]]
name = "iqn.2026-11.io.x:t"
volumes = ["nope"]
"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("\"nope\""), "{e}");
        let e = Config::parse("bogus_key = 1\n[[target]]\nname=\"iqn.x\"\nvolumes=[]").unwrap_err();
        assert!(e.to_string().contains("bogus_key"), "{e}");
        let e = Config::parse(
            r#"
[[volume]]
name = "v"
size = "1GiB"
[[target]]
name = "iqn.2026-11.io.x:t"
volumes = ["v"]
chap = { username = "u", secret = "short" }
"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("secret"), "{e}");
    }
}
