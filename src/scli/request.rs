//! What each action sends: the options of an [`Invocation`] turned into the
//! [`AdminRequest`] the MDM understands, every value checked before anything is sent,
//! so a bad command line never reaches the MDM.

use super::args::{self, Action, Invocation, Opt};
use super::value::{self, ValueError};
use crate::cluster::api::{
    AccessMode, AddSds, AdminRequest, By, Chap, DeviceSpec, MediaType, Policy, Protection,
};
use crate::cluster::initiator_rules::{self, ChapError, ChapPart};
use crate::cluster::iscsi_name::{self, NameError};
use std::path::PathBuf;

/// What an invocation turns into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Job {
    Admin(AdminRequest),
    /// `--add_sds_from_csv`: the file still has to be read and checked.
    Csv(PathBuf),
    /// `--apply_initiator_map`: the file still has to be read and checked.
    InitiatorMap(PathBuf),
    /// `--set_scsi_initiator_chap` without `--chap_username`: the username defaults to
    /// the initiator's IQN, which only the MDM knows. Everything else is checked; ask
    /// the MDM for the IQN, then [`set_chap_for_iqn`].
    NeedsIqn(By),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("{action} needs {needs}")]
    Missing { action: String, needs: String },
    #[error("give only one of {0}")]
    OneOf(String),
    #[error("{option}: {reason}")]
    BadValue { option: String, reason: ValueError },
    #[error("{option} takes one value for {action}; got {}: {}", .values.len(), .values.join(", "))]
    OneValue {
        option: String,
        action: String,
        values: Vec<String>,
    },
    #[error(
        "{devices} devices but {pools} storage pools; give one --storage_pool_name per device, \
         or one for all devices"
    )]
    PoolCount { devices: usize, pools: usize },
    #[error(
        "{paths} device paths but {names} device names; give one --device_name per \
         --device_path, or none"
    )]
    NameCount { paths: usize, names: usize },
    #[error("--sds_ip `{0}` already has a port; drop --sds_port or the :PORT")]
    SdsPortTwice(String),
    #[error(
        "--iqn: {0}; give the host's RFC 3720 name, e.g. iqn.1998-01.com.vmware:svrsan2011-4f2a \
         (ESXi: the iSCSI adapter's Name; Linux: /etc/iscsi/initiatorname.iscsi)"
    )]
    Iqn(NameError),
    #[error("{option}: {reason}")]
    Chap { option: String, reason: ChapError },
    #[error("{option} only goes with {needs}; give {needs} too, or drop {option}")]
    GoesWith { option: String, needs: String },
    #[error("give both {0} and {1}, or neither")]
    Pair(String, String),
}

/// Turns a checked command line into the request to send.
pub fn build(inv: &Invocation) -> Result<Job, RequestError> {
    let b = Builder { inv };
    let req = match inv.action {
        Action::AddProtectionDomain => AdminRequest::AddProtectionDomain {
            name: b.required(Opt::ProtectionDomainName)?,
        },
        Action::RemoveProtectionDomain => AdminRequest::RemoveProtectionDomain { pd: b.pd()? },
        Action::AddStoragePool => AdminRequest::AddStoragePool {
            pd: b.pd()?,
            name: b.required(Opt::StoragePoolName)?,
            media_type: b.media_type()?,
            protection: b.protection()?,
        },
        Action::RemoveStoragePool => AdminRequest::RemoveStoragePool {
            pd: b.pd()?,
            pool: b.pool()?,
        },
        Action::AddSds => AdminRequest::AddSds(b.add_sds()?),
        Action::AddSdsDevice => AdminRequest::AddSdsDevice {
            sds: b.sds()?,
            device: b.one_device()?,
        },
        Action::RemoveSds => AdminRequest::RemoveSds { sds: b.sds()? },
        Action::RemoveSdsDevice => AdminRequest::RemoveSdsDevice {
            sds: b.sds()?,
            device: b.one_of_device()?,
        },
        Action::SetRebuildPolicy | Action::SetRebalancePolicy => AdminRequest::SetPolicy {
            pd: b.pd()?,
            pool: b.pool()?,
            rebalance: inv.action == Action::SetRebalancePolicy,
            policy: b.policy()?,
        },
        Action::AddSdsFromCsv => {
            return match &inv.argument {
                Some(file) => Ok(Job::Csv(PathBuf::from(file))),
                None => Err(b.missing("the CSV file: --add_sds_from_csv FILE")),
            }
        }
        Action::AddVolume => AdminRequest::AddVolume {
            pd: b.pd()?,
            pool: b.pool()?,
            name: b.optional(Opt::VolumeName)?,
            size_bytes: b.size()?,
            thin: b.thin()?,
        },
        Action::RemoveVolume => AdminRequest::RemoveVolume {
            volume: b.volume()?,
        },
        Action::ModifyVolumeCapacity => AdminRequest::ModifyVolumeCapacity {
            volume: b.volume()?,
            size_bytes: b.size()?,
        },
        Action::RenameVolume => AdminRequest::RenameVolume {
            volume: b.volume()?,
            new_name: b.required(Opt::NewName)?,
        },
        Action::MapVolumeToSdc => AdminRequest::MapVolumeToSdc {
            volume: b.volume()?,
            sdc: b.sdc()?,
        },
        Action::UnmapVolumeFromSdc => AdminRequest::UnmapVolumeFromSdc {
            volume: b.volume()?,
            sdc: b.sdc()?,
        },
        Action::QueryCluster => AdminRequest::QueryCluster,
        Action::QueryAllSds => AdminRequest::QueryAllSds,
        Action::QuerySds => AdminRequest::QuerySds { sds: b.sds()? },
        Action::QueryProtectionDomain => AdminRequest::QueryProtectionDomain { pd: b.pd()? },
        Action::QueryStoragePool => AdminRequest::QueryStoragePool {
            pd: b.pd()?,
            pool: b.pool()?,
        },
        Action::QueryAllVolumes => AdminRequest::QueryAllVolumes,
        Action::QueryVolume => AdminRequest::QueryVolume {
            volume: b.volume()?,
        },
        Action::QueryAllSdc => AdminRequest::QueryAllSdc,
        Action::AddScsiInitiator => b.add_initiator()?,
        Action::RemoveScsiInitiator => AdminRequest::RemoveScsiInitiator {
            initiator: b.initiator()?,
        },
        Action::RenameScsiInitiator => AdminRequest::RenameScsiInitiator {
            initiator: b.initiator()?,
            new_name: b.required(Opt::NewName)?,
        },
        Action::SetScsiInitiatorChap => match b.chap_username()? {
            Some(username) => b.set_chap(username)?,
            None => {
                let initiator = b.initiator()?;
                b.required_secrets()?;
                return Ok(Job::NeedsIqn(initiator));
            }
        },
        Action::ClearScsiInitiatorChap => AdminRequest::SetScsiInitiatorChap {
            initiator: b.initiator()?,
            chap: None,
        },
        Action::MapVolumeToScsiInitiator => AdminRequest::MapVolumeToScsiInitiator {
            volume: b.volume()?,
            initiator: b.initiator()?,
            lun: b.lun()?,
            access: b.access_mode()?,
        },
        Action::UnmapVolumeFromScsiInitiator => AdminRequest::UnmapVolumeFromScsiInitiator {
            volume: b.volume()?,
            initiator: b.initiator()?,
        },
        Action::QueryAllScsiInitiators => AdminRequest::QueryAllScsiInitiators,
        Action::QueryScsiInitiator => AdminRequest::QueryScsiInitiator {
            initiator: b.initiator()?,
        },
        Action::ApplyInitiatorMap => {
            return match &inv.argument {
                Some(file) => Ok(Job::InitiatorMap(PathBuf::from(file))),
                None => Err(b.missing("the map file: --apply_initiator_map FILE")),
            }
        }
        Action::ExportInitiatorMap => AdminRequest::ExportInitiatorMap,
    };
    Ok(Job::Admin(req))
}

/// The request of a [`Job::NeedsIqn`], now that the MDM said the initiator's IQN.
pub fn set_chap_for_iqn(inv: &Invocation, iqn: &str) -> Result<AdminRequest, RequestError> {
    Builder { inv }.set_chap(iqn.to_string())
}

/// A CHAP secret and the optional mutual (username, secret).
type Secrets = (String, Option<(String, String)>);

struct Builder<'a> {
    inv: &'a Invocation,
}

impl Builder<'_> {
    fn missing(&self, needs: &str) -> RequestError {
        RequestError::Missing {
            action: args::action_flag(self.inv.action),
            needs: needs.to_string(),
        }
    }

    fn bad(opt: Opt, reason: ValueError) -> RequestError {
        RequestError::BadValue {
            option: args::flag(opt),
            reason,
        }
    }

    /// The single value of an option, if given; list options may hold several.
    fn optional(&self, opt: Opt) -> Result<Option<String>, RequestError> {
        match self.inv.values(opt) {
            [] => Ok(None),
            [one] => Ok(Some(one.clone())),
            many => Err(RequestError::OneValue {
                option: args::flag(opt),
                action: args::action_flag(self.inv.action),
                values: many.to_vec(),
            }),
        }
    }

    fn required(&self, opt: Opt) -> Result<String, RequestError> {
        self.optional(opt)?
            .ok_or_else(|| self.missing(&args::flag(opt)))
    }

    /// The one option of a group that the admin gave; none or several is an error.
    fn one_of(&self, group: &[Opt]) -> Result<Opt, RequestError> {
        let given: Vec<Opt> = group.iter().copied().filter(|o| self.inv.has(*o)).collect();
        let names = || group.iter().map(|o| args::flag(*o)).collect::<Vec<_>>();
        match given[..] {
            [one] => Ok(one),
            [] => {
                let mut names = names();
                let last = names.pop().unwrap_or_default();
                let needs = if names.is_empty() {
                    last
                } else {
                    format!("{} or {last}", names.join(", "))
                };
                Err(self.missing(&needs))
            }
            _ => Err(RequestError::OneOf(names().join(", "))),
        }
    }

    /// An object named by name, hex id or (SDS and SDC) IP.
    fn by(&self, name: Opt, id: Opt, ip: Option<Opt>) -> Result<By, RequestError> {
        let group: Vec<Opt> = [Some(name), Some(id), ip].into_iter().flatten().collect();
        let opt = self.one_of(&group)?;
        let v = self.required(opt)?;
        if opt == name {
            Ok(By::Name(v))
        } else if opt == id {
            value::id(&v).map(By::Id).map_err(|r| Self::bad(opt, r))
        } else {
            value::ip(&v).map(By::Ip).map_err(|r| Self::bad(opt, r))
        }
    }

    fn pd(&self) -> Result<By, RequestError> {
        self.by(Opt::ProtectionDomainName, Opt::ProtectionDomainId, None)
    }

    fn pool(&self) -> Result<By, RequestError> {
        self.by(Opt::StoragePoolName, Opt::StoragePoolId, None)
    }

    fn volume(&self) -> Result<By, RequestError> {
        self.by(Opt::VolumeName, Opt::VolumeId, None)
    }

    fn sds(&self) -> Result<By, RequestError> {
        self.by(Opt::SdsName, Opt::SdsId, Some(Opt::SdsIp))
    }

    fn sdc(&self) -> Result<By, RequestError> {
        self.by(Opt::SdcName, Opt::SdcId, Some(Opt::SdcIp))
    }

    /// An initiator by name or id. Not by IQN: the API's `By` has no IQN form, and
    /// sending one as a name would find nothing, or another initiator so named.
    fn initiator(&self) -> Result<By, RequestError> {
        self.by(Opt::InitiatorName, Opt::InitiatorId, None)
    }

    fn add_initiator(&self) -> Result<AdminRequest, RequestError> {
        let name = self.required(Opt::InitiatorName)?;
        let given = self.required(Opt::Iqn)?;
        let iqn = iscsi_name::normalize(&given).map_err(RequestError::Iqn)?;
        let username = self.chap_username()?;
        // The username defaults to the IQN as typed, copied from the host, which sends
        // it in that case when set to use its initiator name.
        let chap = self.chap_secrets()?.map(|(secret, mutual)| Chap {
            username: username.unwrap_or_else(|| given.trim().to_string()),
            secret,
            mutual,
        });
        Ok(AdminRequest::AddScsiInitiator { name, iqn, chap })
    }

    fn set_chap(&self, username: String) -> Result<AdminRequest, RequestError> {
        let initiator = self.initiator()?;
        let (secret, mutual) = self.required_secrets()?;
        Ok(AdminRequest::SetScsiInitiatorChap {
            initiator,
            chap: Some(Chap {
                username,
                secret,
                mutual,
            }),
        })
    }

    fn chap_error(reason: ChapError) -> RequestError {
        let opt = match reason.part() {
            ChapPart::Username => Opt::ChapUsername,
            ChapPart::Secret => Opt::ChapSecret,
            ChapPart::MutualUsername => Opt::MutualChapUsername,
            ChapPart::MutualSecret => Opt::MutualChapSecret,
        };
        RequestError::Chap {
            option: args::flag(opt),
            reason,
        }
    }

    fn chap_username(&self) -> Result<Option<String>, RequestError> {
        let username = self.optional(Opt::ChapUsername)?;
        if let Some(u) = &username {
            initiator_rules::check_username(u).map_err(Self::chap_error)?;
        }
        Ok(username)
    }

    /// The checked secrets; `None` without `--chap_secret`, which the other CHAP
    /// options cannot go without.
    fn chap_secrets(&self) -> Result<Option<Secrets>, RequestError> {
        let (mu, ms) = (Opt::MutualChapUsername, Opt::MutualChapSecret);
        let mutual = match (self.optional(mu)?, self.optional(ms)?) {
            (None, None) => None,
            (Some(u), Some(s)) => Some((u, s)),
            _ => return Err(RequestError::Pair(args::flag(mu), args::flag(ms))),
        };
        let Some(secret) = self.optional(Opt::ChapSecret)? else {
            return match [Opt::ChapUsername, mu, ms]
                .into_iter()
                .find(|o| self.inv.has(*o))
            {
                Some(opt) => Err(RequestError::GoesWith {
                    option: args::flag(opt),
                    needs: args::flag(Opt::ChapSecret),
                }),
                None => Ok(None),
            };
        };
        initiator_rules::check_secrets(&secret, mutual.as_ref()).map_err(Self::chap_error)?;
        Ok(Some((secret, mutual)))
    }

    fn required_secrets(&self) -> Result<Secrets, RequestError> {
        self.chap_secrets()?
            .ok_or_else(|| self.missing(&args::flag(Opt::ChapSecret)))
    }

    fn lun(&self) -> Result<Option<u64>, RequestError> {
        self.optional(Opt::Lun)?
            .map(|v| value::lun(&v).map_err(|r| Self::bad(Opt::Lun, r)))
            .transpose()
    }

    /// The one device a removal names, by name or path.
    fn one_of_device(&self) -> Result<String, RequestError> {
        let opt = self.one_of(&[Opt::DeviceName, Opt::DevicePath])?;
        self.required(opt)
    }

    /// `--policy` with the limit it needs (and no limit it does not use).
    fn policy(&self) -> Result<Policy, RequestError> {
        let kind = self.required(Opt::Policy)?;
        let number = |opt: Opt| -> Result<Option<u64>, RequestError> {
            self.optional(opt)?
                .map(|v| value::positive(&v).map_err(|r| Self::bad(opt, r)))
                .transpose()
        };
        let (io, bw) = (
            number(Opt::ConcurrentIoLimit)?,
            number(Opt::BandwidthLimitKbps)?,
        );
        let stray = |opt: Opt| RequestError::GoesWith {
            option: args::flag(opt),
            needs: match opt {
                Opt::ConcurrentIoLimit => "--policy limit_concurrent_io".into(),
                _ => "--policy limit_bandwidth".into(),
            },
        };
        let policy = value::policy(&kind).map_err(|r| Self::bad(Opt::Policy, r))?;
        match policy {
            Policy::LimitConcurrentIo { .. } => {
                if bw.is_some() {
                    return Err(stray(Opt::BandwidthLimitKbps));
                }
                let n = io.ok_or_else(|| self.missing("--concurrent_io_limit N"))?;
                Ok(Policy::LimitConcurrentIo {
                    chunks: u32::try_from(n).unwrap_or(u32::MAX),
                })
            }
            Policy::LimitBandwidth { .. } => {
                if io.is_some() {
                    return Err(stray(Opt::ConcurrentIoLimit));
                }
                let kbps = bw.ok_or_else(|| self.missing("--bandwidth_limit_kbps KB/s"))?;
                Ok(Policy::LimitBandwidth { kbps })
            }
            other => match (io, bw) {
                (Some(_), _) => Err(stray(Opt::ConcurrentIoLimit)),
                (_, Some(_)) => Err(stray(Opt::BandwidthLimitKbps)),
                _ => Ok(other),
            },
        }
    }

    /// ReadWrite unless asked otherwise: what a host expects of a datastore.
    fn access_mode(&self) -> Result<AccessMode, RequestError> {
        match self.optional(Opt::AccessMode)? {
            None => Ok(AccessMode::ReadWrite),
            Some(v) => value::access_mode(&v).map_err(|r| Self::bad(Opt::AccessMode, r)),
        }
    }

    /// Bytes from `--size_gb` or its ScaleIO synonym `--size`.
    fn size(&self) -> Result<u64, RequestError> {
        let opt = self.one_of(&[Opt::SizeGb, Opt::Size])?;
        value::gb(&self.required(opt)?).map_err(|r| Self::bad(opt, r))
    }

    /// Thin unless asked otherwise: a thin volume costs nothing until written, so the
    /// walkthrough's `--add_volume --size 20` works on any pool; thick reservations are
    /// an explicit choice.
    fn thin(&self) -> Result<bool, RequestError> {
        let (thin, thick) = (Opt::ThinProvisioned, Opt::ThickProvisioned);
        if self.inv.has(thin) && self.inv.has(thick) {
            return Err(RequestError::OneOf(format!(
                "{}, {}",
                args::flag(thin),
                args::flag(thick)
            )));
        }
        Ok(!self.inv.has(thick))
    }

    fn media_type(&self) -> Result<MediaType, RequestError> {
        match self.optional(Opt::MediaType)? {
            None => Ok(MediaType::Hdd),
            Some(v) => value::media_type(&v).map_err(|r| Self::bad(Opt::MediaType, r)),
        }
    }

    /// Two copies unless asked otherwise: a single copy gives up redundancy, which only
    /// an explicit choice may do.
    fn protection(&self) -> Result<Protection, RequestError> {
        match self.optional(Opt::ProtectionMode)? {
            None => Ok(Protection::TwoCopies),
            Some(v) => value::protection_mode(&v).map_err(|r| Self::bad(Opt::ProtectionMode, r)),
        }
    }

    /// Device paths and optional names. ScaleIO 1.x took paths in `--device_name`;
    /// 2.x takes them in `--device_path` and names in `--device_name`. Both work.
    fn devices(&self) -> Result<Vec<(String, Option<String>)>, RequestError> {
        let paths = self.inv.values(Opt::DevicePath);
        let names = self.inv.values(Opt::DeviceName);
        if paths.is_empty() {
            if names.is_empty() {
                return Err(self.missing("--device_name PATH[,PATH...] (or --device_path)"));
            }
            return Ok(names.iter().map(|p| (p.clone(), None)).collect());
        }
        if !names.is_empty() && names.len() != paths.len() {
            return Err(RequestError::NameCount {
                paths: paths.len(),
                names: names.len(),
            });
        }
        Ok(paths
            .iter()
            .enumerate()
            .map(|(i, p)| (p.clone(), names.get(i).cloned()))
            .collect())
    }

    fn add_sds(&self) -> Result<AddSds, RequestError> {
        let given = self.required(Opt::SdsIp)?;
        let (ip, own_port) = value::ip_port(&given).map_err(|r| Self::bad(Opt::SdsIp, r))?;
        let port = match (own_port, self.optional(Opt::SdsPort)?) {
            (Some(_), Some(_)) => return Err(RequestError::SdsPortTwice(given)),
            (p, None) => p,
            (None, Some(p)) => Some(value::port(&p).map_err(|r| Self::bad(Opt::SdsPort, r))?),
        };
        let protection_domain = self.required(Opt::ProtectionDomainName)?;
        let devices = self.devices()?;
        let pools = self.inv.values(Opt::StoragePoolName);
        let pool_of = |i: usize| match pools {
            [one] => one.clone(),
            many => many[i].clone(),
        };
        if pools.is_empty() {
            return Err(self.missing("--storage_pool_name POOL[,POOL...]"));
        }
        if pools.len() != 1 && pools.len() != devices.len() {
            return Err(RequestError::PoolCount {
                devices: devices.len(),
                pools: pools.len(),
            });
        }
        let devices = devices
            .into_iter()
            .enumerate()
            .map(|(i, (path, name))| DeviceSpec {
                path,
                pool: pool_of(i),
                name,
            })
            .collect();
        Ok(AddSds {
            ip,
            port,
            protection_domain,
            name: self.optional(Opt::SdsName)?,
            devices,
        })
    }

    fn one_device(&self) -> Result<DeviceSpec, RequestError> {
        let pool = self.required(Opt::StoragePoolName)?;
        let mut devices = self.devices()?;
        if devices.len() > 1 {
            let opt = if self.inv.has(Opt::DevicePath) {
                Opt::DevicePath
            } else {
                Opt::DeviceName
            };
            return Err(RequestError::OneValue {
                option: args::flag(opt),
                action: args::action_flag(self.inv.action),
                values: devices.into_iter().map(|(p, _)| p).collect(),
            });
        }
        let (path, name) = devices.remove(0);
        Ok(DeviceSpec { path, pool, name })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scli::args::Command;
    use crate::scli::value::GB;

    fn build_line(line: &str) -> Result<Job, RequestError> {
        let argv: Vec<String> = line.split_whitespace().map(String::from).collect();
        match args::parse(&argv) {
            Ok(Command::Run(inv)) => build(&inv),
            other => panic!("{line}: {other:?}"),
        }
    }

    fn req(line: &str) -> AdminRequest {
        match build_line(line) {
            Ok(Job::Admin(r)) => r,
            other => panic!("{line}: {other:?}"),
        }
    }

    fn err(line: &str) -> String {
        match build_line(line) {
            Err(e) => e.to_string(),
            other => panic!("{line}: expected an error, got {other:?}"),
        }
    }

    fn name(s: &str) -> By {
        By::Name(s.into())
    }

    fn dev(path: &str, pool: &str, name: Option<&str>) -> DeviceSpec {
        DeviceSpec {
            path: path.into(),
            pool: pool.into(),
            name: name.map(String::from),
        }
    }

    #[test]
    fn protection_domains() {
        assert_eq!(
            req("--add_protection_domain --protection_domain_name awspdomain01"),
            AdminRequest::AddProtectionDomain {
                name: "awspdomain01".into()
            }
        );
        assert_eq!(
            req("--remove_protection_domain --protection_domain_id 5a8e5b2c00000001"),
            AdminRequest::RemoveProtectionDomain {
                pd: By::Id(0x5a8e_5b2c_0000_0001)
            }
        );
        assert_eq!(
            req("--query_protection_domain --protection_domain_name pd"),
            AdminRequest::QueryProtectionDomain { pd: name("pd") }
        );
    }

    #[test]
    fn storage_pools() {
        assert_eq!(
            req("--add_storage_pool --protection_domain_name awspdomain01 --storage_pool_name pool03"),
            AdminRequest::AddStoragePool {
                pd: name("awspdomain01"),
                name: "pool03".into(),
                media_type: MediaType::Hdd,
                protection: Protection::TwoCopies,
            }
        );
        assert_eq!(
            req("--add_storage_pool --protection_domain_name pd --storage_pool_name p --media_type ssd"),
            AdminRequest::AddStoragePool {
                pd: name("pd"),
                name: "p".into(),
                media_type: MediaType::Ssd,
                protection: Protection::TwoCopies,
            }
        );
        assert_eq!(
            req(
                "--add_storage_pool --protection_domain_name pd --storage_pool_name scratch \
                 --protection_mode single_copy"
            ),
            AdminRequest::AddStoragePool {
                pd: name("pd"),
                name: "scratch".into(),
                media_type: MediaType::Hdd,
                protection: Protection::SingleCopy,
            }
        );
        assert_eq!(
            req(
                "--add_storage_pool --protection_domain_name pd --storage_pool_name p \
                 --protection_mode TWO_COPIES"
            ),
            AdminRequest::AddStoragePool {
                pd: name("pd"),
                name: "p".into(),
                media_type: MediaType::Hdd,
                protection: Protection::TwoCopies,
            }
        );
        assert_eq!(
            err(
                "--add_storage_pool --protection_domain_name pd --storage_pool_name p \
                 --protection_mode mirrored"
            ),
            "--protection_mode: `mirrored` is not a protection mode; use two_copies or single_copy"
        );

        assert_eq!(
            req("--remove_storage_pool --protection_domain_name pd --storage_pool_id 0x1f"),
            AdminRequest::RemoveStoragePool {
                pd: name("pd"),
                pool: By::Id(0x1f)
            }
        );
        assert_eq!(
            req("--query_storage_pool --protection_domain_name pd --storage_pool_name p"),
            AdminRequest::QueryStoragePool {
                pd: name("pd"),
                pool: name("p")
            }
        );
    }

    #[test]
    fn add_sds_scaleio_1_style() {
        assert_eq!(
            req(
                "--add_sds --sds_ip 10.0.0.11 --protection_domain_name awspdomain01 \
                 --device_name /dev/xvdf --storage_pool_name pool03 --sds_name aws1sds"
            ),
            AdminRequest::AddSds(AddSds {
                ip: "10.0.0.11".into(),
                port: None,
                protection_domain: "awspdomain01".into(),
                name: Some("aws1sds".into()),
                devices: vec![dev("/dev/xvdf", "pool03", None)],
            })
        );
    }

    #[test]
    fn add_sds_lists_ports_and_scaleio_2_style_names() {
        let AdminRequest::AddSds(sds) = req(
            "--add_sds --sds_ip 10.0.0.11:7073 --protection_domain_name pd \
                 --device_path /dev/sdb,/dev/sdc --device_name fast,slow --storage_pool_name p1,p2",
        ) else {
            panic!()
        };
        assert_eq!(sds.port, Some(7073));
        assert_eq!(sds.name, None);
        assert_eq!(
            sds.devices,
            [
                dev("/dev/sdb", "p1", Some("fast")),
                dev("/dev/sdc", "p2", Some("slow"))
            ]
        );
        let AdminRequest::AddSds(sds) = req("--add_sds --sds_ip fd00::11 --sds_port 7074 \
                 --protection_domain_name pd --device_name /dev/sdb --device_name /dev/sdc \
                 --storage_pool_name p1")
        else {
            panic!()
        };
        assert_eq!((sds.ip.as_str(), sds.port), ("fd00::11", Some(7074)));
        assert_eq!(
            sds.devices,
            [dev("/dev/sdb", "p1", None), dev("/dev/sdc", "p1", None)]
        );
    }

    #[test]
    fn remove_sds_device() {
        assert_eq!(
            req("--remove_sds_device --sds_name s1 --device_path /dev/xvdg"),
            AdminRequest::RemoveSdsDevice {
                sds: By::Name("s1".into()),
                device: "/dev/xvdg".into()
            }
        );
        assert!(err("--remove_sds_device --sds_name s1").contains("--device_name"));
    }

    #[test]
    fn remove_sds_and_copy_policies() {
        assert_eq!(
            req("--remove_sds --sds_name aws3sds"),
            AdminRequest::RemoveSds {
                sds: By::Name("aws3sds".into())
            }
        );
        let pool = "--protection_domain_name pd --storage_pool_name p";
        assert_eq!(
            req(&format!(
                "--set_rebuild_policy {pool} --policy limit_bandwidth --bandwidth_limit_kbps 10240"
            )),
            AdminRequest::SetPolicy {
                pd: By::Name("pd".into()),
                pool: By::Name("p".into()),
                rebalance: false,
                policy: Policy::LimitBandwidth { kbps: 10240 },
            }
        );
        let AdminRequest::SetPolicy {
            rebalance, policy, ..
        } = req(&format!(
            "--set_rebalance_policy {pool} --policy limit_concurrent_io --concurrent_io_limit 2"
        ))
        else {
            panic!()
        };
        assert_eq!(
            (rebalance, policy),
            (true, Policy::LimitConcurrentIo { chunks: 2 })
        );
        assert_eq!(
            err(&format!(
                "--set_rebuild_policy {pool} --policy limit_bandwidth"
            )),
            "--set_rebuild_policy needs --bandwidth_limit_kbps KB/s"
        );
        assert!(err(&format!(
            "--set_rebuild_policy {pool} --policy no_limit --concurrent_io_limit 3"
        ))
        .contains("--concurrent_io_limit"));
        assert!(
            err(&format!("--set_rebuild_policy {pool} --policy fast")).contains("is not a policy")
        );
        assert!(err(&format!(
            "--set_rebuild_policy {pool} --policy limit_concurrent_io --concurrent_io_limit 0"
        ))
        .contains("above 0"));
    }

    #[test]
    fn add_sds_errors() {
        let base = "--add_sds --protection_domain_name pd";
        assert_eq!(
            err(&format!("{base} --sds_ip 10.0.0.11 --device_name a,b,c --storage_pool_name p1,p2")),
            "3 devices but 2 storage pools; give one --storage_pool_name per device, or one for all devices"
        );
        assert_eq!(
            err(&format!(
                "{base} --sds_ip 10.0.0.11 --device_path a,b --device_name x --storage_pool_name p"
            )),
            "2 device paths but 1 device names; give one --device_name per --device_path, or none"
        );
        assert_eq!(
            err(&format!("{base} --sds_ip 10.0.0.11 --storage_pool_name p")),
            "--add_sds needs --device_name PATH[,PATH...] (or --device_path)"
        );
        assert_eq!(
            err(&format!("{base} --sds_ip 10.0.0.11 --device_name a")),
            "--add_sds needs --storage_pool_name POOL[,POOL...]"
        );
        assert_eq!(
            err(&format!("{base} --device_name a --storage_pool_name p")),
            "--add_sds needs --sds_ip"
        );
        assert_eq!(
            err("--add_sds --sds_ip 10.0.0.11 --device_name a --storage_pool_name p"),
            "--add_sds needs --protection_domain_name"
        );
        assert_eq!(
            err(&format!("{base} --sds_ip 10.0.0.11:7073 --sds_port 7074 --device_name a --storage_pool_name p")),
            "--sds_ip `10.0.0.11:7073` already has a port; drop --sds_port or the :PORT"
        );
        assert!(err(&format!(
            "{base} --sds_ip sds1 --device_name a --storage_pool_name p"
        ))
        .starts_with("--sds_ip: `sds1` is not an IP address"));
        assert_eq!(
            err(&format!(
                "{base} --sds_ip 10.0.0.11 --sds_port 0 --device_name a --storage_pool_name p"
            )),
            "--sds_port: `0` is not a TCP port; give a number from 1 to 65535"
        );
    }

    #[test]
    fn add_sds_device() {
        assert_eq!(
            req("--add_sds_device --sds_name aws1sds --device_name /dev/xvdg --storage_pool_name pool03"),
            AdminRequest::AddSdsDevice {
                sds: name("aws1sds"),
                device: dev("/dev/xvdg", "pool03", None)
            }
        );
        assert_eq!(
            req("--add_sds_device --sds_ip 10.0.0.11 --device_path /dev/xvdg --device_name d2 --storage_pool_name p"),
            AdminRequest::AddSdsDevice {
                sds: By::Ip("10.0.0.11".into()),
                device: dev("/dev/xvdg", "p", Some("d2"))
            }
        );
        assert_eq!(
            err("--add_sds_device --sds_id 1 --device_name /dev/a,/dev/b --storage_pool_name p"),
            "--device_name takes one value for --add_sds_device; got 2: /dev/a, /dev/b"
        );
        assert_eq!(
            err("--add_sds_device --sds_id 1 --device_name /dev/a --storage_pool_name p,q"),
            "--storage_pool_name takes one value for --add_sds_device; got 2: p, q"
        );
        assert_eq!(
            err("--add_sds_device --device_name /dev/a --storage_pool_name p"),
            "--add_sds_device needs --sds_name, --sds_id or --sds_ip"
        );
        assert_eq!(
            err("--add_sds_device --sds_name s --sds_id 1 --device_name /dev/a --storage_pool_name p"),
            "give only one of --sds_name, --sds_id, --sds_ip"
        );
    }

    #[test]
    fn add_volume_is_thin_unless_asked_and_sizes_are_gib() {
        assert_eq!(
            req(
                "--add_volume --protection_domain_name awspdomain01 --storage_pool_name pool03 \
                 --size 20 --volume_name awsvol01"
            ),
            AdminRequest::AddVolume {
                pd: name("awspdomain01"),
                pool: name("pool03"),
                name: Some("awsvol01".into()),
                size_bytes: 20 * GB,
                thin: true
            }
        );
        assert_eq!(
            req("--add_volume --protection_domain_id 1 --storage_pool_id 2 --size_gb 0.5 --thin_provisioned"),
            AdminRequest::AddVolume {
                pd: By::Id(1),
                pool: By::Id(2),
                name: None,
                size_bytes: GB / 2,
                thin: true
            }
        );
        let AdminRequest::AddVolume { thin, .. } = req("--add_volume --protection_domain_name pd \
                 --storage_pool_name p --size_gb 1 --thick_provisioned")
        else {
            panic!()
        };
        assert!(!thin);
    }

    #[test]
    fn add_volume_errors() {
        let base = "--add_volume --protection_domain_name pd --storage_pool_name p";
        assert_eq!(err(base), "--add_volume needs --size_gb or --size");
        assert_eq!(
            err(&format!("{base} --size 1 --size_gb 1")),
            "give only one of --size_gb, --size"
        );
        assert_eq!(
            err(&format!("{base} --size_gb 20GB")),
            "--size_gb: `20GB` is not a size in GB; give a number such as 20 or 0.5"
        );
        assert_eq!(
            err(&format!("{base} --size_gb 0")),
            "--size_gb: the size must be more than 0 GB"
        );
        assert_eq!(
            err(&format!(
                "{base} --size_gb 1 --thin_provisioned --thick_provisioned"
            )),
            "give only one of --thin_provisioned, --thick_provisioned"
        );
        assert_eq!(
            err("--add_volume --protection_domain_name pd --storage_pool_name p,q --size_gb 1"),
            "--storage_pool_name takes one value for --add_volume; got 2: p, q"
        );
        assert_eq!(
            err("--add_volume --storage_pool_name p --size_gb 1"),
            "--add_volume needs --protection_domain_name or --protection_domain_id"
        );
        assert_eq!(
            err("--add_volume --protection_domain_id pd --storage_pool_name p --size_gb 1"),
            "--protection_domain_id: `pd` is not an object id; give the 16 hex digits scli prints, e.g. 5a8e5b2c00000001"
        );
    }

    #[test]
    fn volume_changes() {
        assert_eq!(
            req("--remove_volume --volume_name v"),
            AdminRequest::RemoveVolume { volume: name("v") }
        );
        assert_eq!(
            req("--modify_volume_capacity --volume_id 7a5a9f1e00000001 --size_gb 30"),
            AdminRequest::ModifyVolumeCapacity {
                volume: By::Id(0x7a5a_9f1e_0000_0001),
                size_bytes: 30 * GB
            }
        );
        assert_eq!(
            req("--rename_volume --volume_name v --new_name w"),
            AdminRequest::RenameVolume {
                volume: name("v"),
                new_name: "w".into()
            }
        );
        assert_eq!(
            err("--rename_volume --volume_name v"),
            "--rename_volume needs --new_name"
        );
        assert_eq!(
            err("--modify_volume_capacity --volume_name v"),
            "--modify_volume_capacity needs --size_gb or --size"
        );
        assert_eq!(
            err("--remove_volume"),
            "--remove_volume needs --volume_name or --volume_id"
        );
    }

    #[test]
    fn mappings() {
        assert_eq!(
            req("--map_volume_to_sdc --volume_name awsvol01 --sdc_ip 10.0.0.5"),
            AdminRequest::MapVolumeToSdc {
                volume: name("awsvol01"),
                sdc: By::Ip("10.0.0.5".into())
            }
        );
        assert_eq!(
            req("--unmap_volume_from_sdc --volume_name v --sdc_name gw1"),
            AdminRequest::UnmapVolumeFromSdc {
                volume: name("v"),
                sdc: name("gw1")
            }
        );
        assert_eq!(
            req("--map_volume_to_sdc --volume_name v --sdc_id 0x2"),
            AdminRequest::MapVolumeToSdc {
                volume: name("v"),
                sdc: By::Id(2)
            }
        );
        assert_eq!(
            err("--map_volume_to_sdc --volume_name v"),
            "--map_volume_to_sdc needs --sdc_name, --sdc_id or --sdc_ip"
        );
        assert!(err("--map_volume_to_sdc --volume_name v --sdc_ip gw1")
            .starts_with("--sdc_ip: `gw1` is not an IP address"));
    }

    #[test]
    fn queries() {
        assert_eq!(req("--query_cluster"), AdminRequest::QueryCluster);
        assert_eq!(req("--query_all_sds --json"), AdminRequest::QueryAllSds);
        assert_eq!(req("--query_all_volumes"), AdminRequest::QueryAllVolumes);
        assert_eq!(req("--query_all_sdc"), AdminRequest::QueryAllSdc);
        assert_eq!(
            req("--query_sds --sds_ip 10.0.0.11"),
            AdminRequest::QuerySds {
                sds: By::Ip("10.0.0.11".into())
            }
        );
        assert_eq!(
            req("--query_volume --volume_name v"),
            AdminRequest::QueryVolume { volume: name("v") }
        );
        assert_eq!(
            err("--query_storage_pool --protection_domain_name pd"),
            "--query_storage_pool needs --storage_pool_name or --storage_pool_id"
        );
    }

    const IQN: &str = "iqn.1998-01.com.vmware:svrsan2011-4f2a";

    fn chap(username: &str, secret: &str, mutual: Option<(&str, &str)>) -> Option<Chap> {
        Some(Chap {
            username: username.into(),
            secret: secret.into(),
            mutual: mutual.map(|(u, s)| (u.into(), s.into())),
        })
    }

    #[test]
    fn add_initiator_normalizes_the_iqn_and_defaults_the_chap_username() {
        assert_eq!(
            req(&format!(
                "--add_scsi_initiator --initiator_name svrsan2011 --iqn {IQN}"
            )),
            AdminRequest::AddScsiInitiator {
                name: "svrsan2011".into(),
                iqn: IQN.into(),
                chap: None
            }
        );
        let upper = "IQN.1998-01.com.vmware:SVRSAN2011-4f2a";
        assert_eq!(
            req(&format!(
                "--add_scsi_initiator --initiator_name svrsan2011 --iqn {upper} \
                 --chap_secret twelve-bytes"
            )),
            AdminRequest::AddScsiInitiator {
                name: "svrsan2011".into(),
                iqn: IQN.into(),
                // As typed: what the host sends when it uses its initiator name.
                chap: chap(upper, "twelve-bytes", None)
            }
        );
        assert_eq!(
            req(&format!(
                "--add_scsi_initiator --initiator_name h --iqn {IQN} --chap_secret twelve-bytes \
                 --chap_username esx --mutual_chap_username dn --mutual_chap_secret other-secret"
            )),
            AdminRequest::AddScsiInitiator {
                name: "h".into(),
                iqn: IQN.into(),
                chap: chap("esx", "twelve-bytes", Some(("dn", "other-secret")))
            }
        );
    }

    #[test]
    fn add_initiator_errors_name_the_option() {
        let base = "--add_scsi_initiator --initiator_name h";
        assert_eq!(err(base), "--add_scsi_initiator needs --iqn");
        assert_eq!(
            err(&format!("{base} --iqn svrsan2011")),
            "--iqn: iSCSI name \"svrsan2011\" must start with iqn., eui. or naa.; give the \
             host's RFC 3720 name, e.g. iqn.1998-01.com.vmware:svrsan2011-4f2a (ESXi: the iSCSI \
             adapter's Name; Linux: /etc/iscsi/initiatorname.iscsi)"
        );
        let with = |extra: &str| err(&format!("{base} --iqn {IQN} {extra}"));
        assert_eq!(
            with("--chap_secret short"),
            "--chap_secret: the CHAP secret is 5 bytes long; give 12 to 255 (a shorter one can \
             be guessed from one captured login)"
        );
        assert!(with(&format!("--chap_secret {}", "s".repeat(256)))
            .starts_with("--chap_secret: the CHAP secret is 256 bytes long"));
        assert_eq!(
            with("--chap_username esx"),
            "--chap_username only goes with --chap_secret; give --chap_secret too, or drop \
             --chap_username"
        );
        assert_eq!(
            with("--chap_secret twelve-bytes --mutual_chap_secret other-secret"),
            "give both --mutual_chap_username and --mutual_chap_secret, or neither"
        );
        assert_eq!(
            with("--chap_secret twelve-bytes --mutual_chap_username dn --mutual_chap_secret short"),
            "--mutual_chap_secret: the mutual CHAP secret is 5 bytes long; give 12 to 255"
        );
        assert_eq!(
            with(
                "--chap_secret twelve-bytes --mutual_chap_username dn \
                 --mutual_chap_secret twelve-bytes"
            ),
            "--mutual_chap_secret: the mutual CHAP secret is the same as the CHAP secret; \
             RFC 7143 forbids one secret for both directions, choose another"
        );
    }

    #[test]
    fn initiators_are_named_by_name_or_id() {
        assert_eq!(
            req("--remove_scsi_initiator --initiator_name h"),
            AdminRequest::RemoveScsiInitiator {
                initiator: name("h")
            }
        );
        assert_eq!(
            req("--rename_scsi_initiator --initiator_id 00000000000000a1 --new_name h2"),
            AdminRequest::RenameScsiInitiator {
                initiator: By::Id(0xa1),
                new_name: "h2".into()
            }
        );
        assert_eq!(
            req("--clear_scsi_initiator_chap --initiator_name h"),
            AdminRequest::SetScsiInitiatorChap {
                initiator: name("h"),
                chap: None
            }
        );
        assert_eq!(
            req("--query_scsi_initiator --initiator_name h --json"),
            AdminRequest::QueryScsiInitiator {
                initiator: name("h")
            }
        );
        assert_eq!(
            req("--query_all_scsi_initiators"),
            AdminRequest::QueryAllScsiInitiators
        );
        assert_eq!(
            req("--export_initiator_map"),
            AdminRequest::ExportInitiatorMap
        );
        assert_eq!(
            err("--remove_scsi_initiator"),
            "--remove_scsi_initiator needs --initiator_name or --initiator_id"
        );
        assert_eq!(
            err("--remove_scsi_initiator --initiator_name h --initiator_id 1"),
            "give only one of --initiator_name, --initiator_id"
        );
        assert!(err("--query_scsi_initiator --initiator_id h")
            .starts_with("--initiator_id: `h` is not an object id"));
    }

    #[test]
    fn set_chap_asks_for_the_iqn_only_when_the_username_is_left_out() {
        assert_eq!(
            req(
                "--set_scsi_initiator_chap --initiator_name h --chap_secret twelve-bytes \
                 --chap_username esx"
            ),
            AdminRequest::SetScsiInitiatorChap {
                initiator: name("h"),
                chap: chap("esx", "twelve-bytes", None)
            }
        );
        let line = "--set_scsi_initiator_chap --initiator_id a1 --chap_secret twelve-bytes \
                    --mutual_chap_username dn --mutual_chap_secret other-secret";
        assert_eq!(build_line(line), Ok(Job::NeedsIqn(By::Id(0xa1))));
        let argv: Vec<String> = line.split_whitespace().map(String::from).collect();
        let Ok(Command::Run(inv)) = args::parse(&argv) else {
            panic!()
        };
        assert_eq!(
            set_chap_for_iqn(&inv, IQN),
            Ok(AdminRequest::SetScsiInitiatorChap {
                initiator: By::Id(0xa1),
                chap: chap(IQN, "twelve-bytes", Some(("dn", "other-secret")))
            })
        );
        // Checked before the MDM is asked anything.
        assert_eq!(
            err("--set_scsi_initiator_chap --initiator_name h"),
            "--set_scsi_initiator_chap needs --chap_secret"
        );
        assert!(
            err("--set_scsi_initiator_chap --initiator_name h --chap_secret short")
                .starts_with("--chap_secret: the CHAP secret is 5 bytes long")
        );
        assert_eq!(
            err("--set_scsi_initiator_chap --chap_secret twelve-bytes"),
            "--set_scsi_initiator_chap needs --initiator_name or --initiator_id"
        );
    }

    #[test]
    fn scsi_mappings_default_to_the_lowest_lun_read_write() {
        assert_eq!(
            req("--map_volume_to_scsi_initiator --volume_name awsvol01 --initiator_name h"),
            AdminRequest::MapVolumeToScsiInitiator {
                volume: name("awsvol01"),
                initiator: name("h"),
                lun: None,
                access: AccessMode::ReadWrite
            }
        );
        for mode in ["ReadOnly", "readonly", "READ_ONLY"] {
            assert_eq!(
                req(&format!(
                    "--map_volume_to_scsi_initiator --volume_id 7a5a --initiator_id a1 --lun 3 \
                     --access_mode {mode}"
                )),
                AdminRequest::MapVolumeToScsiInitiator {
                    volume: By::Id(0x7a5a),
                    initiator: By::Id(0xa1),
                    lun: Some(3),
                    access: AccessMode::ReadOnly
                }
            );
        }
        assert_eq!(
            req("--unmap_volume_from_scsi_initiator --volume_name v --initiator_name h"),
            AdminRequest::UnmapVolumeFromScsiInitiator {
                volume: name("v"),
                initiator: name("h")
            }
        );
        let base = "--map_volume_to_scsi_initiator --volume_name v --initiator_name h";
        assert_eq!(
            err(&format!("{base} --lun 16384")),
            "--lun: `16384` is not a LUN; give a number from 0 to 16383"
        );
        assert_eq!(
            err(&format!("{base} --access_mode rw")),
            "--access_mode: `rw` is not an access mode; use ReadWrite or ReadOnly"
        );
        assert_eq!(
            err("--map_volume_to_scsi_initiator --volume_name v"),
            "--map_volume_to_scsi_initiator needs --initiator_name or --initiator_id"
        );
    }

    #[test]
    fn initiator_map_file_is_read_later() {
        assert_eq!(
            build_line("--apply_initiator_map conf/initiators.toml"),
            Ok(Job::InitiatorMap(PathBuf::from("conf/initiators.toml")))
        );
    }

    #[test]
    fn csv_is_read_later() {
        assert_eq!(
            build_line("--add_sds_from_csv /tmp/hosts.csv"),
            Ok(Job::Csv(PathBuf::from("/tmp/hosts.csv")))
        );
    }
}
