//! The typed values an admin types: object ids, sizes, ports, addresses, media types,
//! protection modes, LUNs and access modes.
//!
//! Shared by the argument parser and the installer CSV parser, which add where the
//! value came from (an option, or a line and column) to these errors.

use crate::cluster::api::{AccessMode, MediaType, Policy, Protection};
use crate::cluster::initiator_rules::{self, MAX_LUN};
use std::net::{IpAddr, SocketAddr};

/// One GB as ScaleIO counts it (2^30 bytes).
pub const GB: u64 = 1 << 30;

/// Decimal places accepted in a size; enough for sizes down to about 1 MB.
const MAX_SIZE_DECIMALS: usize = 4;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error(
        "`{0}` is not an object id; give the 16 hex digits scli prints, e.g. 5a8e5b2c00000001"
    )]
    NotId(String),
    #[error("`{0}` is not a size in GB; give a number such as 20 or 0.5")]
    NotSize(String),
    #[error("the size must be more than 0 GB")]
    ZeroSize,
    #[error("`{0}` GB is larger than any volume can be")]
    SizeTooLarge(String),
    #[error("`{0}` is not a TCP port; give a number from 1 to 65535")]
    NotPort(String),
    #[error(
        "`{0}` is not an IP address; give IPv4 such as 10.0.0.11 or IPv6 such as fd00::11, \
         optionally with a port (10.0.0.11:7072, [fd00::11]:7072)"
    )]
    NotIp(String),
    #[error("`{0}` is neither an IP address nor a host name")]
    NotHost(String),
    #[error("`{0}` lists several addresses; give exactly one")]
    SeveralAddresses(String),
    #[error("`{0}` is not a media type; use HDD, SSD or CLOUD")]
    NotMediaType(String),
    #[error("`{0}` is not a protection mode; use {names}", names = Protection::NAMES)]
    NotProtectionMode(String),
    #[error("`{0}` is not a LUN; give a number from 0 to {MAX_LUN}")]
    NotLun(String),
    #[error("`{0}` is not an access mode; use ReadWrite or ReadOnly")]
    NotAccessMode(String),
    #[error("`{0}` is not a policy; use no_limit, limit_concurrent_io, limit_bandwidth or favor_application_io")]
    NotPolicy(String),
    #[error("`{0}` is not a whole number above 0")]
    NotPositive(String),
}

/// A rebuild or rebalance policy by its scli name; the limit is filled in later.
pub fn policy(s: &str) -> Result<Policy, ValueError> {
    match s.to_ascii_lowercase().as_str() {
        "no_limit" => Ok(Policy::NoLimit),
        "limit_concurrent_io" => Ok(Policy::LimitConcurrentIo { chunks: 0 }),
        "limit_bandwidth" => Ok(Policy::LimitBandwidth { kbps: 0 }),
        "favor_application_io" => Ok(Policy::FavorApplicationIo),
        _ => Err(ValueError::NotPolicy(s.to_string())),
    }
}

/// A count or rate: a whole number above 0.
pub fn positive(s: &str) -> Result<u64, ValueError> {
    match s.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(ValueError::NotPositive(s.to_string())),
    }
}

/// Parses an object id as scli prints it: up to 16 hex digits, optionally `0x`.
pub fn id(s: &str) -> Result<u64, ValueError> {
    let hex = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    if hex.is_empty() || hex.len() > 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ValueError::NotId(s.to_string()));
    }
    u64::from_str_radix(hex, 16).map_err(|_| ValueError::NotId(s.to_string()))
}

/// Parses a size in GB (2^30 bytes) into bytes. Fractions are accepted so that small
/// test volumes can be made; a fraction of a byte rounds up.
pub fn gb(s: &str) -> Result<u64, ValueError> {
    let not_size = || ValueError::NotSize(s.to_string());
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    let digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && frac.is_empty())
        || !digits(whole)
        || !digits(frac)
        || frac.len() > MAX_SIZE_DECIMALS
    {
        return Err(not_size());
    }
    let too_large = || ValueError::SizeTooLarge(s.to_string());
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| too_large())?
    };
    let scale = 10u128.pow(frac.len() as u32);
    let frac: u128 = if frac.is_empty() {
        0
    } else {
        frac.parse().map_err(|_| not_size())?
    };
    let bytes = whole
        .checked_mul(u128::from(GB))
        .and_then(|w| w.checked_add((frac * u128::from(GB)).div_ceil(scale)))
        .ok_or_else(too_large)?;
    match u64::try_from(bytes) {
        Ok(0) => Err(ValueError::ZeroSize),
        Ok(b) => Ok(b),
        Err(_) => Err(too_large()),
    }
}

/// Parses a TCP port (1-65535).
pub fn port(s: &str) -> Result<u16, ValueError> {
    match s.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(ValueError::NotPort(s.to_string())),
    }
}

/// Parses `IP` or `IP:PORT` (`[IPv6]:PORT`) into the IP text and the port, if given.
pub fn ip_port(s: &str) -> Result<(String, Option<u16>), ValueError> {
    if s.contains(',') {
        return Err(ValueError::SeveralAddresses(s.to_string()));
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok((ip.to_string(), None));
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        if sa.port() == 0 {
            return Err(ValueError::NotPort("0".to_string()));
        }
        return Ok((sa.ip().to_string(), Some(sa.port())));
    }
    // A well-formed IP with a bad port deserves the port message, not the IP one.
    if let Some((host, p)) = s.rsplit_once(':') {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.parse::<IpAddr>().is_ok() {
            return Err(ValueError::NotPort(p.to_string()));
        }
    }
    Err(ValueError::NotIp(s.to_string()))
}

/// Parses an IP (never a host name, so that a typo cannot silently name another host).
pub fn ip(s: &str) -> Result<String, ValueError> {
    if s.contains(',') {
        return Err(ValueError::SeveralAddresses(s.to_string()));
    }
    s.parse::<IpAddr>()
        .map(|ip| ip.to_string())
        .map_err(|_| ValueError::NotIp(s.to_string()))
}

/// Parses where the MDM is: like [`ip_port`], but a host name is fine too.
pub fn host_port(s: &str) -> Result<(String, Option<u16>), ValueError> {
    match ip_port(s) {
        Err(ValueError::NotIp(_)) => {}
        other => return other,
    }
    let (host, p) = match s.rsplit_once(':') {
        Some((host, p)) => (host, Some(port(p)?)),
        None => (s, None),
    };
    let label_ok =
        |l: &str| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    let labels: Vec<&str> = host.split('.').collect();
    // All-digit last label: a mistyped IP (10.0.0.300), not a name.
    let numeric = labels
        .last()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()));
    if labels.iter().all(|l| label_ok(l)) && !numeric {
        Ok((host.to_string(), p))
    } else {
        Err(ValueError::NotHost(s.to_string()))
    }
}

/// Parses a storage pool media type, in any case.
pub fn media_type(s: &str) -> Result<MediaType, ValueError> {
    match s.to_ascii_uppercase().as_str() {
        "HDD" => Ok(MediaType::Hdd),
        "SSD" => Ok(MediaType::Ssd),
        "CLOUD" => Ok(MediaType::Cloud),
        _ => Err(ValueError::NotMediaType(s.to_string())),
    }
}

/// Parses a storage pool's protection mode, in any case.
pub fn protection_mode(s: &str) -> Result<Protection, ValueError> {
    Protection::from_name(s).ok_or_else(|| ValueError::NotProtectionMode(s.to_string()))
}

/// Parses a LUN (0-16383), in decimal as initiators show it.
pub fn lun(s: &str) -> Result<u64, ValueError> {
    match s.parse::<u64>() {
        Ok(n) if n <= MAX_LUN => Ok(n),
        _ => Err(ValueError::NotLun(s.to_string())),
    }
}

/// Parses an access mode: ReadWrite or ReadOnly in any case, or ScaleIO's READ_WRITE
/// and READ_ONLY.
pub fn access_mode(s: &str) -> Result<AccessMode, ValueError> {
    initiator_rules::access_mode(s).ok_or_else(|| ValueError::NotAccessMode(s.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_hex_as_printed() {
        assert_eq!(id("5a8e5b2c00000001"), Ok(0x5a8e_5b2c_0000_0001));
        assert_eq!(id("0x5A8E5B2C00000001"), Ok(0x5a8e_5b2c_0000_0001));
        assert_eq!(id("1f"), Ok(0x1f));
        for bad in ["", "0x", "xyz", "5a8e5b2c000000011", "-1", "1 2"] {
            assert_eq!(id(bad), Err(ValueError::NotId(bad.into())), "{bad}");
        }
    }

    #[test]
    fn sizes_are_gib_and_fractions_round_up_to_a_byte() {
        assert_eq!(gb("20"), Ok(20 * GB));
        assert_eq!(gb("0.5"), Ok(GB / 2));
        assert_eq!(gb(".5"), Ok(GB / 2));
        assert_eq!(gb("1."), Ok(GB));
        // 0.3 GB is 322122547.2 bytes.
        assert_eq!(gb("0.3"), Ok(322_122_548));
        assert_eq!(gb("0"), Err(ValueError::ZeroSize));
        assert_eq!(gb("0.0000"), Err(ValueError::ZeroSize));
        for bad in ["", ".", "abc", "1,5", "-1", "1e3", "0.00001", "20GB", " 20"] {
            assert_eq!(gb(bad), Err(ValueError::NotSize(bad.into())), "{bad}");
        }
        assert_eq!(
            gb("17179869184"),
            Err(ValueError::SizeTooLarge("17179869184".into()))
        );
        assert!(matches!(
            gb("99999999999999999999999999999999999999999"),
            Err(ValueError::SizeTooLarge(_))
        ));
    }

    #[test]
    fn ports_are_1_to_65535() {
        assert_eq!(port("7072"), Ok(7072));
        for bad in ["0", "65536", "x", ""] {
            assert_eq!(port(bad), Err(ValueError::NotPort(bad.into())));
        }
    }

    #[test]
    fn addresses_with_and_without_port() {
        assert_eq!(ip_port("10.0.0.11"), Ok(("10.0.0.11".into(), None)));
        assert_eq!(
            ip_port("10.0.0.11:7073"),
            Ok(("10.0.0.11".into(), Some(7073)))
        );
        assert_eq!(ip_port("fd00::11"), Ok(("fd00::11".into(), None)));
        assert_eq!(
            ip_port("[fd00::11]:7073"),
            Ok(("fd00::11".into(), Some(7073)))
        );
        assert_eq!(ip_port("10.0.0.11:0"), Err(ValueError::NotPort("0".into())));
        assert_eq!(ip_port("10.0.0.11:x"), Err(ValueError::NotPort("x".into())));
        assert_eq!(
            ip_port("10.0.0.300"),
            Err(ValueError::NotIp("10.0.0.300".into()))
        );
        assert_eq!(ip_port("sds1"), Err(ValueError::NotIp("sds1".into())));
        assert_eq!(
            ip_port("10.0.0.1,10.0.1.1"),
            Err(ValueError::SeveralAddresses("10.0.0.1,10.0.1.1".into()))
        );
    }

    #[test]
    fn plain_ips_and_mdm_hosts() {
        assert_eq!(ip("10.0.0.5"), Ok("10.0.0.5".into()));
        assert_eq!(ip("gw1"), Err(ValueError::NotIp("gw1".into())));
        assert_eq!(
            ip("10.0.0.5:7072"),
            Err(ValueError::NotIp("10.0.0.5:7072".into()))
        );
        assert_eq!(host_port("mdm-1.lab"), Ok(("mdm-1.lab".into(), None)));
        assert_eq!(
            host_port("localhost:7000"),
            Ok(("localhost".into(), Some(7000)))
        );
        assert_eq!(
            host_port("[fd00::1]:7000"),
            Ok(("fd00::1".into(), Some(7000)))
        );
        assert_eq!(
            host_port("localhost:x"),
            Err(ValueError::NotPort("x".into()))
        );
        assert_eq!(
            host_port("10.0.0.300"),
            Err(ValueError::NotHost("10.0.0.300".into()))
        );
        assert_eq!(
            host_port("bad host"),
            Err(ValueError::NotHost("bad host".into()))
        );
        assert_eq!(host_port(""), Err(ValueError::NotHost("".into())));
    }

    #[test]
    fn protection_modes_in_any_case() {
        assert_eq!(protection_mode("two_copies"), Ok(Protection::TwoCopies));
        assert_eq!(protection_mode("Single_Copy"), Ok(Protection::SingleCopy));
        assert_eq!(
            protection_mode("raid5").unwrap_err().to_string(),
            "`raid5` is not a protection mode; use two_copies or single_copy"
        );
    }

    #[test]
    fn media_types_in_any_case() {
        assert_eq!(media_type("hdd"), Ok(MediaType::Hdd));
        assert_eq!(media_type("SSD"), Ok(MediaType::Ssd));
        assert_eq!(media_type("Cloud"), Ok(MediaType::Cloud));
        assert_eq!(
            media_type("NVMe"),
            Err(ValueError::NotMediaType("NVMe".into()))
        );
    }

    #[test]
    fn luns_and_access_modes() {
        assert_eq!(lun("0"), Ok(0));
        assert_eq!(lun("16383"), Ok(16383));
        for bad in ["16384", "-1", "", "x", "0x1"] {
            assert_eq!(lun(bad), Err(ValueError::NotLun(bad.into())), "{bad}");
        }
        assert_eq!(access_mode("read_only"), Ok(AccessMode::ReadOnly));
        assert_eq!(access_mode("ReadWrite"), Ok(AccessMode::ReadWrite));
        assert_eq!(
            access_mode("rw").unwrap_err().to_string(),
            "`rw` is not an access mode; use ReadWrite or ReadOnly"
        );
    }
}
