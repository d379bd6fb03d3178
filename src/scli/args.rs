//! The command line in ScaleIO's syntax: `--mdm_ip M --add_volume --volume_name v ...`,
//! exactly one action flag plus the options it takes, in any order.
//!
//! Hand-written rather than clap because ScaleIO's actions are flags, not subcommands,
//! and because admins paste commands from blog posts: en dashes, single hyphens and
//! typos get a precise hint here instead of a generic "unexpected argument".
//! This module checks syntax only; what the options mean is `request`'s job.

use super::value::{self, ValueError};
use std::collections::BTreeMap;

/// The MDM's admin port.
const DEFAULT_MDM_PORT: u16 = 6611;
const DEFAULT_MDM_IP: &str = "127.0.0.1";

/// Every option an action can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Opt {
    MdmIp,
    MdmPort,
    ApproveCertificate,
    AllowNonSecureCommunication,
    Json,
    ProtectionDomainName,
    ProtectionDomainId,
    StoragePoolName,
    StoragePoolId,
    MediaType,
    ProtectionMode,
    SdsIp,
    SdsPort,
    SdsName,
    SdsId,
    DeviceName,
    DevicePath,
    SizeGb,
    Size,
    VolumeName,
    VolumeId,
    NewName,
    ThinProvisioned,
    ThickProvisioned,
    SdcIp,
    SdcName,
    SdcId,
    InitiatorName,
    InitiatorId,
    Iqn,
    ChapUsername,
    ChapSecret,
    MutualChapUsername,
    MutualChapSecret,
    Lun,
    AccessMode,
    Policy,
    ConcurrentIoLimit,
    BandwidthLimitKbps,
}

/// Options every action accepts: where the MDM is, and ScaleIO's TLS switches, which
/// scripts pass and which mean nothing here (the MDM port is plain TCP).
const GLOBAL: &[Opt] = &[
    Opt::MdmIp,
    Opt::MdmPort,
    Opt::ApproveCertificate,
    Opt::AllowNonSecureCommunication,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Takes {
    Flag,
    Value,
    /// Comma-separated, and the option may be repeated; items accumulate.
    List,
}

struct OptSpec {
    opt: Opt,
    name: &'static str,
    takes: Takes,
    /// What the value looks like, for "needs a value" messages.
    placeholder: &'static str,
}

const fn o(opt: Opt, name: &'static str, takes: Takes, placeholder: &'static str) -> OptSpec {
    OptSpec {
        opt,
        name,
        takes,
        placeholder,
    }
}

const OPTIONS: &[OptSpec] = &[
    o(Opt::MdmIp, "mdm_ip", Takes::Value, "IP[:PORT]"),
    o(Opt::MdmPort, "mdm_port", Takes::Value, "PORT"),
    o(
        Opt::ApproveCertificate,
        "approve_certificate",
        Takes::Flag,
        "",
    ),
    o(
        Opt::AllowNonSecureCommunication,
        "allow_non_secure_communication",
        Takes::Flag,
        "",
    ),
    o(Opt::Json, "json", Takes::Flag, ""),
    o(
        Opt::ProtectionDomainName,
        "protection_domain_name",
        Takes::Value,
        "NAME",
    ),
    o(
        Opt::ProtectionDomainId,
        "protection_domain_id",
        Takes::Value,
        "ID",
    ),
    o(
        Opt::StoragePoolName,
        "storage_pool_name",
        Takes::List,
        "POOL[,POOL...]",
    ),
    o(Opt::StoragePoolId, "storage_pool_id", Takes::Value, "ID"),
    o(Opt::MediaType, "media_type", Takes::Value, "HDD|SSD|CLOUD"),
    o(
        Opt::ProtectionMode,
        "protection_mode",
        Takes::Value,
        "two_copies|single_copy",
    ),
    o(Opt::SdsIp, "sds_ip", Takes::Value, "IP[:PORT]"),
    o(Opt::SdsPort, "sds_port", Takes::Value, "PORT"),
    o(Opt::SdsName, "sds_name", Takes::Value, "NAME"),
    o(Opt::SdsId, "sds_id", Takes::Value, "ID"),
    o(
        Opt::DeviceName,
        "device_name",
        Takes::List,
        "NAME[,NAME...]",
    ),
    o(
        Opt::DevicePath,
        "device_path",
        Takes::List,
        "PATH[,PATH...]",
    ),
    o(Opt::SizeGb, "size_gb", Takes::Value, "GB"),
    o(Opt::Size, "size", Takes::Value, "GB"),
    o(Opt::VolumeName, "volume_name", Takes::Value, "NAME"),
    o(Opt::VolumeId, "volume_id", Takes::Value, "ID"),
    o(Opt::NewName, "new_name", Takes::Value, "NAME"),
    o(Opt::ThinProvisioned, "thin_provisioned", Takes::Flag, ""),
    o(Opt::ThickProvisioned, "thick_provisioned", Takes::Flag, ""),
    o(Opt::SdcIp, "sdc_ip", Takes::Value, "IP"),
    o(Opt::SdcName, "sdc_name", Takes::Value, "NAME"),
    o(Opt::SdcId, "sdc_id", Takes::Value, "ID"),
    o(Opt::InitiatorName, "initiator_name", Takes::Value, "NAME"),
    o(Opt::InitiatorId, "initiator_id", Takes::Value, "ID"),
    o(Opt::Iqn, "iqn", Takes::Value, "IQN"),
    o(Opt::ChapUsername, "chap_username", Takes::Value, "NAME"),
    o(Opt::ChapSecret, "chap_secret", Takes::Value, "SECRET"),
    o(
        Opt::MutualChapUsername,
        "mutual_chap_username",
        Takes::Value,
        "NAME",
    ),
    o(
        Opt::MutualChapSecret,
        "mutual_chap_secret",
        Takes::Value,
        "SECRET",
    ),
    o(Opt::Lun, "lun", Takes::Value, "LUN"),
    o(
        Opt::Policy,
        "policy",
        Takes::Value,
        "no_limit|limit_concurrent_io|limit_bandwidth|favor_application_io",
    ),
    o(
        Opt::ConcurrentIoLimit,
        "concurrent_io_limit",
        Takes::Value,
        "N",
    ),
    o(
        Opt::BandwidthLimitKbps,
        "bandwidth_limit_kbps",
        Takes::Value,
        "KB/s",
    ),
    o(
        Opt::AccessMode,
        "access_mode",
        Takes::Value,
        "ReadWrite|ReadOnly",
    ),
];

/// What the admin asked for; one per invocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    AddProtectionDomain,
    RemoveProtectionDomain,
    AddStoragePool,
    RemoveStoragePool,
    AddSds,
    AddSdsDevice,
    RemoveSds,
    RemoveSdsDevice,
    SetRebuildPolicy,
    SetRebalancePolicy,
    AddSdsFromCsv,
    AddVolume,
    RemoveVolume,
    ModifyVolumeCapacity,
    RenameVolume,
    MapVolumeToSdc,
    UnmapVolumeFromSdc,
    QueryCluster,
    QueryAllSds,
    QuerySds,
    QueryProtectionDomain,
    QueryStoragePool,
    QueryAllVolumes,
    QueryVolume,
    QueryAllSdc,
    AddScsiInitiator,
    RemoveScsiInitiator,
    RenameScsiInitiator,
    SetScsiInitiatorChap,
    ClearScsiInitiatorChap,
    MapVolumeToScsiInitiator,
    UnmapVolumeFromScsiInitiator,
    QueryAllScsiInitiators,
    QueryScsiInitiator,
    ApplyInitiatorMap,
    ExportInitiatorMap,
}

struct ActionSpec {
    action: Action,
    name: &'static str,
    /// The action flag's own value, e.g. the FILE of `--add_sds_from_csv FILE`.
    argument: Option<&'static str>,
    options: &'static [Opt],
    /// The options' syntax for `--help`; a test checks it names exactly `options`.
    usage: &'static str,
    summary: &'static str,
}

// The tables below name options bare, to stay readable.
use Opt::*;

const PD: &str = "(--protection_domain_name NAME | --protection_domain_id ID)";
const VOLUME: &str = "(--volume_name NAME | --volume_id ID)";
const INITIATOR: &str = "(--initiator_name NAME | --initiator_id ID)";
const POLICY: &str = "(--protection_domain_name NAME | --protection_domain_id ID) \
                      (--storage_pool_name NAME | --storage_pool_id ID) \
                      --policy no_limit|limit_concurrent_io|limit_bandwidth|favor_application_io \
                      [--concurrent_io_limit N] [--bandwidth_limit_kbps KB/s]";

const ACTIONS: &[ActionSpec] = &[
    ActionSpec {
        action: Action::AddProtectionDomain,
        name: "add_protection_domain",
        argument: None,
        options: &[ProtectionDomainName],
        usage: "--protection_domain_name NAME",
        summary: "Create a protection domain.",
    },
    ActionSpec {
        action: Action::RemoveProtectionDomain,
        name: "remove_protection_domain",
        argument: None,
        options: &[ProtectionDomainName, ProtectionDomainId],
        usage: PD,
        summary: "Remove an empty protection domain.",
    },
    ActionSpec {
        action: Action::AddStoragePool,
        name: "add_storage_pool",
        argument: None,
        options: &[ProtectionDomainName, ProtectionDomainId, StoragePoolName, MediaType, ProtectionMode],
        usage: "(--protection_domain_name NAME | --protection_domain_id ID) \
                --storage_pool_name NAME [--media_type HDD|SSD|CLOUD] \
                [--protection_mode two_copies|single_copy]",
        summary: "Create a storage pool in a protection domain (media type HDD and two copies \
                  of every chunk unless given; single_copy keeps one copy, with no redundancy, \
                  and cannot be changed later).",
    },
    ActionSpec {
        action: Action::RemoveStoragePool,
        name: "remove_storage_pool",
        argument: None,
        options: &[ProtectionDomainName, ProtectionDomainId, StoragePoolName, StoragePoolId],
        usage: "(--protection_domain_name NAME | --protection_domain_id ID) \
                (--storage_pool_name NAME | --storage_pool_id ID)",
        summary: "Remove an empty storage pool.",
    },
    ActionSpec {
        action: Action::AddSds,
        name: "add_sds",
        argument: None,
        options: &[SdsIp, SdsPort, ProtectionDomainName, DeviceName, DevicePath, StoragePoolName, SdsName],
        usage: "--sds_ip IP[:PORT] [--sds_port PORT] --protection_domain_name NAME \
                (--device_name PATH[,PATH...] | --device_path PATH[,PATH...] [--device_name NAME[,NAME...]]) \
                --storage_pool_name POOL[,POOL...] [--sds_name NAME]",
        summary: "Add an SDS and its devices; one pool per device, or one pool for all.",
    },
    ActionSpec {
        action: Action::AddSdsDevice,
        name: "add_sds_device",
        argument: None,
        options: &[SdsName, SdsId, SdsIp, DevicePath, DeviceName, StoragePoolName],
        usage: "(--sds_name NAME | --sds_id ID | --sds_ip IP) \
                (--device_name PATH | --device_path PATH [--device_name NAME]) --storage_pool_name POOL",
        summary: "Add a device to an SDS.",
    },
    ActionSpec {
        action: Action::RemoveSds,
        name: "remove_sds",
        argument: None,
        options: &[SdsName, SdsId, SdsIp],
        usage: "(--sds_name NAME | --sds_id ID | --sds_ip IP)",
        summary: "Move an SDS's chunk copies to the other SDS of its pools, then remove it \
                  (refused if they cannot hold them); follow with --query_all_sds.",
    },
    ActionSpec {
        action: Action::RemoveSdsDevice,
        name: "remove_sds_device",
        argument: None,
        options: &[SdsName, SdsId, SdsIp, DeviceName, DevicePath],
        usage: "(--sds_name NAME | --sds_id ID | --sds_ip IP) (--device_name NAME | --device_path PATH)",
        summary: "Move a device's chunk copies to other devices, then remove it (a failed \
                  device goes at once unless it holds a chunk's only copy).",
    },
    ActionSpec {
        action: Action::SetRebuildPolicy,
        name: "set_rebuild_policy",
        argument: None,
        options: &[ProtectionDomainName, ProtectionDomainId, StoragePoolName, StoragePoolId, Policy, ConcurrentIoLimit, BandwidthLimitKbps],
        usage: POLICY,
        summary: "How fast a pool rebuilds lost copies (default: 8 chunks at a time).",
    },
    ActionSpec {
        action: Action::SetRebalancePolicy,
        name: "set_rebalance_policy",
        argument: None,
        options: &[ProtectionDomainName, ProtectionDomainId, StoragePoolName, StoragePoolId, Policy, ConcurrentIoLimit, BandwidthLimitKbps],
        usage: POLICY,
        summary: "How fast a pool moves copies to even out its devices (default: 8 chunks at a time).",
    },
    ActionSpec {
        action: Action::AddSdsFromCsv,
        name: "add_sds_from_csv",
        argument: Some("FILE"),
        options: &[],
        usage: "",
        summary: "Add every SDS of a ScaleIO installer CSV (columns IP, Is SDS, SDS Name, Domain, \
                  SDS Device List, SDS Pool List), all or nothing.",
    },
    ActionSpec {
        action: Action::AddVolume,
        name: "add_volume",
        argument: None,
        options: &[
            ProtectionDomainName,
            ProtectionDomainId,
            StoragePoolName,
            StoragePoolId,
            SizeGb,
            Size,
            VolumeName,
            ThinProvisioned,
            ThickProvisioned,
        ],
        usage: "(--protection_domain_name NAME | --protection_domain_id ID) \
                (--storage_pool_name NAME | --storage_pool_id ID) (--size_gb GB | --size GB) \
                [--volume_name NAME] [--thin_provisioned | --thick_provisioned]",
        summary: "Create a volume (thin unless --thick_provisioned), rounded up to whole 1 MB chunks.",
    },
    ActionSpec {
        action: Action::RemoveVolume,
        name: "remove_volume",
        argument: None,
        options: &[VolumeName, VolumeId],
        usage: VOLUME,
        summary: "Remove an unmapped volume and free its chunks.",
    },
    ActionSpec {
        action: Action::ModifyVolumeCapacity,
        name: "modify_volume_capacity",
        argument: None,
        options: &[VolumeName, VolumeId, SizeGb, Size],
        usage: "(--volume_name NAME | --volume_id ID) (--size_gb GB | --size GB)",
        summary: "Grow a volume to the given size.",
    },
    ActionSpec {
        action: Action::RenameVolume,
        name: "rename_volume",
        argument: None,
        options: &[VolumeName, VolumeId, NewName],
        usage: "(--volume_name NAME | --volume_id ID) --new_name NAME",
        summary: "Rename a volume.",
    },
    ActionSpec {
        action: Action::MapVolumeToSdc,
        name: "map_volume_to_sdc",
        argument: None,
        options: &[VolumeName, VolumeId, SdcIp, SdcName, SdcId],
        usage: "(--volume_name NAME | --volume_id ID) (--sdc_ip IP | --sdc_name NAME | --sdc_id ID)",
        summary: "Expose a volume through an iSCSI gateway (SDC).",
    },
    ActionSpec {
        action: Action::UnmapVolumeFromSdc,
        name: "unmap_volume_from_sdc",
        argument: None,
        options: &[VolumeName, VolumeId, SdcIp, SdcName, SdcId],
        usage: "(--volume_name NAME | --volume_id ID) (--sdc_ip IP | --sdc_name NAME | --sdc_id ID)",
        summary: "Stop exposing a volume through a gateway.",
    },
    ActionSpec {
        action: Action::QueryCluster,
        name: "query_cluster",
        argument: None,
        options: &[Json],
        usage: "[--json]",
        summary: "Show the system: object counts and capacity.",
    },
    ActionSpec {
        action: Action::QueryAllSds,
        name: "query_all_sds",
        argument: None,
        options: &[Json],
        usage: "[--json]",
        summary: "List every SDS, grouped by protection domain.",
    },
    ActionSpec {
        action: Action::QuerySds,
        name: "query_sds",
        argument: None,
        options: &[SdsName, SdsId, SdsIp, Json],
        usage: "(--sds_name NAME | --sds_id ID | --sds_ip IP) [--json]",
        summary: "Show one SDS and its devices.",
    },
    ActionSpec {
        action: Action::QueryProtectionDomain,
        name: "query_protection_domain",
        argument: None,
        options: &[ProtectionDomainName, ProtectionDomainId, Json],
        usage: "(--protection_domain_name NAME | --protection_domain_id ID) [--json]",
        summary: "Show a protection domain, its pools and SDS.",
    },
    ActionSpec {
        action: Action::QueryStoragePool,
        name: "query_storage_pool",
        argument: None,
        options: &[ProtectionDomainName, ProtectionDomainId, StoragePoolName, StoragePoolId, Json],
        usage: "(--protection_domain_name NAME | --protection_domain_id ID) \
                (--storage_pool_name NAME | --storage_pool_id ID) [--json]",
        summary: "Show a storage pool's capacity and volumes.",
    },
    ActionSpec {
        action: Action::QueryAllVolumes,
        name: "query_all_volumes",
        argument: None,
        options: &[Json],
        usage: "[--json]",
        summary: "List every volume, grouped by storage pool.",
    },
    ActionSpec {
        action: Action::QueryVolume,
        name: "query_volume",
        argument: None,
        options: &[VolumeName, VolumeId, Json],
        usage: "(--volume_name NAME | --volume_id ID) [--json]",
        summary: "Show a volume and where it is mapped.",
    },
    ActionSpec {
        action: Action::QueryAllSdc,
        name: "query_all_sdc",
        argument: None,
        options: &[Json],
        usage: "[--json]",
        summary: "List every gateway (SDC) and the volumes mapped to it.",
    },
    ActionSpec {
        action: Action::AddScsiInitiator,
        name: "add_scsi_initiator",
        argument: None,
        options: &[InitiatorName, Iqn, ChapSecret, ChapUsername, MutualChapUsername, MutualChapSecret],
        usage: "--initiator_name NAME --iqn IQN [--chap_secret SECRET [--chap_username NAME] \
                [--mutual_chap_username NAME --mutual_chap_secret SECRET]]",
        summary: "Let a host (its iSCSI name) log in to the gateways, optionally with CHAP \
                  (secrets of 12 to 255 bytes; the username defaults to the IQN).",
    },
    ActionSpec {
        action: Action::RemoveScsiInitiator,
        name: "remove_scsi_initiator",
        argument: None,
        options: &[InitiatorName, InitiatorId],
        usage: INITIATOR,
        summary: "Remove an initiator and its mappings; the gateways end its sessions.",
    },
    ActionSpec {
        action: Action::RenameScsiInitiator,
        name: "rename_scsi_initiator",
        argument: None,
        options: &[InitiatorName, InitiatorId, NewName],
        usage: "(--initiator_name NAME | --initiator_id ID) --new_name NAME",
        summary: "Rename an initiator.",
    },
    ActionSpec {
        action: Action::SetScsiInitiatorChap,
        name: "set_scsi_initiator_chap",
        argument: None,
        options: &[InitiatorName, InitiatorId, ChapSecret, ChapUsername, MutualChapUsername, MutualChapSecret],
        usage: "(--initiator_name NAME | --initiator_id ID) --chap_secret SECRET \
                [--chap_username NAME] [--mutual_chap_username NAME --mutual_chap_secret SECRET]",
        summary: "Require CHAP from an initiator, or change its secrets (the username defaults \
                  to its IQN).",
    },
    ActionSpec {
        action: Action::ClearScsiInitiatorChap,
        name: "clear_scsi_initiator_chap",
        argument: None,
        options: &[InitiatorName, InitiatorId],
        usage: INITIATOR,
        summary: "Let an initiator log in without CHAP.",
    },
    ActionSpec {
        action: Action::MapVolumeToScsiInitiator,
        name: "map_volume_to_scsi_initiator",
        argument: None,
        options: &[VolumeName, VolumeId, InitiatorName, InitiatorId, Lun, AccessMode],
        usage: "(--volume_name NAME | --volume_id ID) (--initiator_name NAME | --initiator_id ID) \
                [--lun LUN] [--access_mode ReadWrite|ReadOnly]",
        summary: "Let an initiator see a volume, at the lowest free LUN unless --lun, \
                  ReadWrite unless --access_mode ReadOnly.",
    },
    ActionSpec {
        action: Action::UnmapVolumeFromScsiInitiator,
        name: "unmap_volume_from_scsi_initiator",
        argument: None,
        options: &[VolumeName, VolumeId, InitiatorName, InitiatorId],
        usage: "(--volume_name NAME | --volume_id ID) (--initiator_name NAME | --initiator_id ID)",
        summary: "Stop an initiator seeing a volume.",
    },
    ActionSpec {
        action: Action::QueryAllScsiInitiators,
        name: "query_all_scsi_initiators",
        argument: None,
        options: &[Json],
        usage: "[--json]",
        summary: "List every initiator, its CHAP mode and its LUNs.",
    },
    ActionSpec {
        action: Action::QueryScsiInitiator,
        name: "query_scsi_initiator",
        argument: None,
        options: &[InitiatorName, InitiatorId, Json],
        usage: "(--initiator_name NAME | --initiator_id ID) [--json]",
        summary: "Show one initiator, its CHAP mode and its LUNs.",
    },
    ActionSpec {
        action: Action::ApplyInitiatorMap,
        name: "apply_initiator_map",
        argument: Some("FILE"),
        options: &[],
        usage: "",
        summary: "Make the initiators and their mappings exactly those of a map file (the \
                  format of conf/initiators.toml), all or nothing.",
    },
    ActionSpec {
        action: Action::ExportInitiatorMap,
        name: "export_initiator_map",
        argument: None,
        options: &[],
        usage: "",
        summary: "Print the initiators and mappings in force as a map file (without CHAP \
                  secrets).",
    },
];

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Usage, of everything or of one action (`scli --add_sds --help`).
    Help(Option<Action>),
    Version,
    Run(Invocation),
}

/// One action with its options, checked for syntax.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub action: Action,
    /// The action flag's own value (the FILE of `--add_sds_from_csv`).
    pub argument: Option<String>,
    /// `HOST:PORT` of the MDM.
    pub mdm: String,
    pub json: bool,
    values: BTreeMap<Opt, Vec<String>>,
}

impl Invocation {
    /// The values given for an option, in order; empty if absent or a flag.
    pub fn values(&self, opt: Opt) -> &[String] {
        self.values.get(&opt).map_or(&[], Vec::as_slice)
    }

    pub fn has(&self, opt: Opt) -> bool {
        self.values.contains_key(&opt)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgsError {
    #[error("unknown option `{arg}`{}", did_you_mean(.suggestion))]
    Unknown {
        arg: String,
        suggestion: Option<String>,
    },
    #[error("`{arg}` starts with {what}, not two hyphens; type {fix}")]
    Mistyped {
        arg: String,
        what: &'static str,
        fix: String,
    },
    #[error(
        "`{0}` is not an option; options start with two hyphens and values follow their \
         option (--volume_name vol01)"
    )]
    NotAnOption(String),
    #[error("--{option} needs a value: --{option} {placeholder}")]
    MissingValue {
        option: &'static str,
        placeholder: &'static str,
    },
    #[error("--{option} `{value}` has an empty item; separate items with single commas")]
    EmptyListItem { option: &'static str, value: String },
    #[error("--{0} is given twice; give it once")]
    GivenTwice(&'static str),
    #[error("--{first} and --{second} are both actions; give one action per command")]
    TwoActions {
        first: &'static str,
        second: &'static str,
    },
    #[error("no action given; add one such as --query_all_sds (scli --help lists them all)")]
    NoAction,
    #[error("--{option} does not apply to --{action}, which takes {allowed}")]
    NotApplicable {
        option: &'static str,
        action: &'static str,
        allowed: String,
    },
    #[error("--{option}: {reason}")]
    BadValue {
        option: &'static str,
        reason: ValueError,
    },
    #[error("--mdm_ip `{0}` already has a port; drop --mdm_port or the :PORT")]
    MdmPortTwice(String),
}

fn did_you_mean(suggestion: &Option<String>) -> String {
    match suggestion {
        Some(s) => format!("; did you mean {s}?"),
        None => "; scli --help lists the actions and their options".to_string(),
    }
}

/// Parses the arguments after the program name.
pub fn parse(argv: &[String]) -> Result<Command, ArgsError> {
    // Help and version win over everything else, so a broken command line can still
    // ask how it should have looked.
    if argv.iter().any(|a| a == "--help" || a == "-h") {
        let action = argv
            .iter()
            .find_map(|a| a.strip_prefix("--").and_then(action_spec));
        return Ok(Command::Help(action.map(|s| s.action)));
    }
    if argv.iter().any(|a| a == "--version" || a == "-V") {
        return Ok(Command::Version);
    }
    if argv.is_empty() {
        return Ok(Command::Help(None));
    }
    let mut action: Option<(&ActionSpec, Option<String>)> = None;
    let mut values: BTreeMap<Opt, Vec<String>> = BTreeMap::new();
    let mut args = argv.iter();
    while let Some(arg) = args.next() {
        let name = option_name(arg)?;
        if let Some(spec) = action_spec(name) {
            if let Some((first, _)) = action {
                if first.action == spec.action {
                    return Err(ArgsError::GivenTwice(spec.name));
                }
                return Err(ArgsError::TwoActions {
                    first: first.name,
                    second: spec.name,
                });
            }
            let argument = match spec.argument {
                Some(placeholder) => Some(take_value(&mut args, spec.name, placeholder)?),
                None => None,
            };
            action = Some((spec, argument));
        } else if let Some(spec) = OPTIONS.iter().find(|s| s.name == name) {
            take_option(spec, &mut args, &mut values)?;
        } else {
            return Err(ArgsError::Unknown {
                arg: arg.clone(),
                suggestion: closest(name).map(|n| format!("--{n}")),
            });
        }
    }
    let (spec, argument) = action.ok_or(ArgsError::NoAction)?;
    if let Some(opt) = values
        .keys()
        .find(|o| !GLOBAL.contains(o) && !spec.options.contains(o))
    {
        return Err(ArgsError::NotApplicable {
            option: opt_name(*opt),
            action: spec.name,
            allowed: allowed(spec),
        });
    }
    let mdm = mdm_addr(
        values.get(&Opt::MdmIp).and_then(|v| v.first()),
        values.get(&Opt::MdmPort).and_then(|v| v.first()),
    )?;
    Ok(Command::Run(Invocation {
        action: spec.action,
        argument,
        mdm,
        json: values.contains_key(&Opt::Json),
        values,
    }))
}

fn take_option<'a>(
    spec: &OptSpec,
    args: &mut impl Iterator<Item = &'a String>,
    values: &mut BTreeMap<Opt, Vec<String>>,
) -> Result<(), ArgsError> {
    match spec.takes {
        Takes::Flag => {
            if values.insert(spec.opt, Vec::new()).is_some() {
                return Err(ArgsError::GivenTwice(spec.name));
            }
        }
        Takes::Value => {
            let v = take_value(args, spec.name, spec.placeholder)?;
            if values.insert(spec.opt, vec![v]).is_some() {
                return Err(ArgsError::GivenTwice(spec.name));
            }
        }
        Takes::List => {
            let v = take_value(args, spec.name, spec.placeholder)?;
            let items: Vec<String> = v.split(',').map(|i| i.trim().to_string()).collect();
            if items.iter().any(String::is_empty) {
                return Err(ArgsError::EmptyListItem {
                    option: spec.name,
                    value: v,
                });
            }
            values.entry(spec.opt).or_default().extend(items);
        }
    }
    Ok(())
}

/// The value after an option. Another option in its place means the value was
/// forgotten; a pasted en-dash option there gets the same hint as anywhere else.
fn take_value<'a>(
    args: &mut impl Iterator<Item = &'a String>,
    option: &'static str,
    placeholder: &'static str,
) -> Result<String, ArgsError> {
    let missing = ArgsError::MissingValue {
        option,
        placeholder,
    };
    let Some(v) = args.next() else {
        return Err(missing);
    };
    if v.starts_with("--") || v.trim().is_empty() {
        return Err(missing);
    }
    if let Some(err) = mistyped(v).filter(|(_, fix)| is_known(&fix[2..])) {
        return Err(err.0);
    }
    Ok(v.clone())
}

/// The name of an option or action argument (without its two hyphens).
fn option_name(arg: &str) -> Result<&str, ArgsError> {
    if let Some(name) = arg.strip_prefix("--").filter(|n| !n.is_empty()) {
        return Ok(name);
    }
    match mistyped(arg) {
        Some((err, fix)) if !arg.starts_with('-') || is_known(&fix[2..]) => Err(err),
        _ => Err(ArgsError::NotAnOption(arg.to_string())),
    }
}

/// Recognises an option typed with a look-alike of `--`: a typographic dash (word
/// processors turn `--` into one) or a single hyphen. Returns the error and the fix.
fn mistyped(arg: &str) -> Option<(ArgsError, String)> {
    let first = arg.chars().find(|c| *c != '-')?;
    let what = match first {
        '\u{2013}' => "an en dash (\u{2013})",
        '\u{2014}' => "an em dash (\u{2014})",
        '\u{2212}' => "a minus sign (\u{2212})",
        '\u{2010}' | '\u{2011}' => "a Unicode hyphen (\u{2010})",
        _ if arg.starts_with('-') && !arg.starts_with("--") => "a single hyphen (-)",
        _ => return None,
    };
    let rest = arg.trim_start_matches(|c| matches!(c, '-' | '\u{2010}'..='\u{2014}' | '\u{2212}'));
    if rest.is_empty() {
        return None;
    }
    let fix = format!("--{rest}");
    let err = ArgsError::Mistyped {
        arg: arg.to_string(),
        what,
        fix: fix.clone(),
    };
    Some((err, fix))
}

fn action_spec(name: &str) -> Option<&'static ActionSpec> {
    ACTIONS.iter().find(|s| s.name == name)
}

fn is_known(name: &str) -> bool {
    action_spec(name).is_some() || OPTIONS.iter().any(|s| s.name == name)
}

fn opt_name(opt: Opt) -> &'static str {
    OPTIONS
        .iter()
        .find(|s| s.opt == opt)
        .map_or("?", |s| s.name)
}

/// The name of an option as typed (`--volume_name`), for messages.
pub fn flag(opt: Opt) -> String {
    format!("--{}", opt_name(opt))
}

/// The name of an action as typed (`--add_volume`), for messages.
pub fn action_flag(action: Action) -> String {
    let spec = ACTIONS.iter().find(|s| s.action == action);
    format!("--{}", spec.map_or("?", |s| s.name))
}

fn allowed(spec: &ActionSpec) -> String {
    if spec.options.is_empty() {
        return "no options".to_string();
    }
    let names: Vec<String> = spec.options.iter().map(|o| flag(*o)).collect();
    names.join(", ")
}

/// The known name nearest to a mistyped one, if it is near enough to be a typo.
fn closest(name: &str) -> Option<&'static str> {
    let typed = name.to_ascii_lowercase();
    ACTIONS
        .iter()
        .map(|s| s.name)
        .chain(OPTIONS.iter().map(|s| s.name))
        .chain(["help", "version"])
        .map(|known| (edit_distance(&typed, known), known))
        .filter(|(d, known)| *d <= (known.len() / 3).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, known)| known)
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (diag + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            diag = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// `HOST:PORT` of the MDM from `--mdm_ip IP[:PORT]` and `--mdm_port PORT`.
fn mdm_addr(ip: Option<&String>, port: Option<&String>) -> Result<String, ArgsError> {
    let bad = |option, reason| ArgsError::BadValue { option, reason };
    let port = port
        .map(|p| value::port(p).map_err(|r| bad("mdm_port", r)))
        .transpose()?;
    let (host, port) = match ip {
        None => (DEFAULT_MDM_IP.to_string(), port),
        Some(s) => match value::host_port(s).map_err(|r| bad("mdm_ip", r))? {
            (_, Some(_)) if port.is_some() => return Err(ArgsError::MdmPortTwice(s.clone())),
            (host, own) => (host, own.or(port)),
        },
    };
    let port = port.unwrap_or(DEFAULT_MDM_PORT);
    Ok(if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    })
}

/// The usage text: every action with its options.
pub fn usage(exit_codes: &str) -> String {
    let mut out = String::from(
        "scli: the Dreadnought admin CLI, in ScaleIO's syntax: one action and its options.\n\
         \n\
         Usage: scli [--mdm_ip IP[:PORT]] [--mdm_port PORT] --ACTION [OPTIONS]\n\
         \x20      scli --ACTION --help    (one action)\n\
         \n\
         Where the MDM is (every action):\n\
         \x20 --mdm_ip IP[:PORT]     default 127.0.0.1\n\
         \x20 --mdm_port PORT        default 6611\n\
         \x20 --approve_certificate, --allow_non_secure_communication\n\
         \x20                        accepted from ScaleIO scripts and ignored\n\
         \n\
         Actions:\n",
    );
    for spec in ACTIONS {
        out.push_str(&action_usage(spec));
    }
    out.push_str(
        "\nAn object is named by its name or by its ID, the 16 hex digits scli prints\n\
         (--volume_id 7a5a9f1e00000001). --device_name, --device_path and --storage_pool_name\n\
         take comma-separated lists, or repeat the option. A GB is 2^30 bytes; volumes are\n\
         allocated in 1 MB chunks, so sizes round up to a whole number of MB. --json prints\n\
         a query's answer as JSON, for scripts.\n\
         \n\
         SCSI initiators are named by --initiator_name or --initiator_id; --iqn is only\n\
         for --add_scsi_initiator. Other local users can see secrets typed on a command\n\
         line (ps): to keep CHAP secrets private, put them in a map file only you can read\n\
         and use --apply_initiator_map.\n\
         \nExit status:\n",
    );
    out.push_str(exit_codes);
    out
}

/// The usage of one action (`scli --add_sds --help`).
pub fn usage_of(action: Action, exit_codes: &str) -> String {
    match ACTIONS.iter().find(|s| s.action == action) {
        Some(spec) => format!(
            "Usage: scli [--mdm_ip IP[:PORT]] {}\nExit status:\n{exit_codes}",
            action_usage(spec).trim_start()
        ),
        None => usage(exit_codes),
    }
}

fn action_usage(spec: &ActionSpec) -> String {
    let mut head = format!("  --{}", spec.name);
    for part in [spec.argument.unwrap_or(""), spec.usage] {
        if !part.is_empty() {
            head.push(' ');
            head.push_str(part);
        }
    }
    format!("{head}\n      {}\n", spec.summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(line: &str) -> Vec<String> {
        line.split_whitespace().map(String::from).collect()
    }

    fn run(line: &str) -> Invocation {
        match parse(&argv(line)) {
            Ok(Command::Run(inv)) => inv,
            other => panic!("{line}: {other:?}"),
        }
    }

    fn err(line: &str) -> String {
        match parse(&argv(line)) {
            Err(e) => e.to_string(),
            other => panic!("{line}: expected an error, got {other:?}"),
        }
    }

    #[test]
    fn options_in_any_order_with_lists_split_and_accumulated() {
        let inv = run(
            "--device_name /dev/xvdf,/dev/xvdg --add_sds --sds_ip 10.0.0.11 \
                       --device_name /dev/xvdh --storage_pool_name p1 --protection_domain_name pd",
        );
        assert_eq!(inv.action, Action::AddSds);
        assert_eq!(
            inv.values(DeviceName),
            ["/dev/xvdf", "/dev/xvdg", "/dev/xvdh"]
        );
        assert_eq!(inv.values(StoragePoolName), ["p1"]);
        assert_eq!(inv.values(SdsName), [] as [String; 0]);
        assert_eq!(inv.mdm, "127.0.0.1:6611");
        assert!(!inv.json);
    }

    #[test]
    fn mdm_address_forms() {
        let mdm = |l: &str| run(&format!("{l} --query_all_sds")).mdm;
        assert_eq!(mdm("--mdm_ip 10.0.0.1"), "10.0.0.1:6611");
        assert_eq!(mdm("--mdm_ip 10.0.0.1:7000"), "10.0.0.1:7000");
        assert_eq!(mdm("--mdm_ip 10.0.0.1 --mdm_port 7000"), "10.0.0.1:7000");
        assert_eq!(mdm("--mdm_port 7000"), "127.0.0.1:7000");
        assert_eq!(mdm("--mdm_ip fd00::1"), "[fd00::1]:6611");
        assert_eq!(mdm("--mdm_ip [fd00::1]:7000"), "[fd00::1]:7000");
        assert_eq!(mdm("--mdm_ip mdm1.lab"), "mdm1.lab:6611");
        assert_eq!(mdm("--mdm_ip localhost:7000"), "localhost:7000");
        assert_eq!(
            err("--mdm_ip 10.0.0.1:7000 --mdm_port 7001 --query_all_sds"),
            "--mdm_ip `10.0.0.1:7000` already has a port; drop --mdm_port or the :PORT"
        );
        assert_eq!(
            err("--mdm_port 70000 --query_all_sds"),
            "--mdm_port: `70000` is not a TCP port; give a number from 1 to 65535"
        );
        assert!(err("--mdm_ip 10.0.0.1,10.0.0.2 --query_all_sds").contains("several addresses"));
    }

    #[test]
    fn scaleio_tls_switches_are_accepted_and_ignored() {
        let inv = run("--approve_certificate --allow_non_secure_communication --query_cluster");
        assert_eq!(inv.action, Action::QueryCluster);
    }

    #[test]
    fn json_only_on_queries() {
        assert!(run("--query_all_volumes --json").json);
        assert_eq!(
            err("--add_protection_domain --protection_domain_name pd --json"),
            "--json does not apply to --add_protection_domain, which takes --protection_domain_name"
        );
    }

    #[test]
    fn csv_action_takes_its_file() {
        let inv = run("--add_sds_from_csv hosts.csv");
        assert_eq!(inv.action, Action::AddSdsFromCsv);
        assert_eq!(inv.argument.as_deref(), Some("hosts.csv"));
        assert_eq!(
            err("--add_sds_from_csv"),
            "--add_sds_from_csv needs a value: --add_sds_from_csv FILE"
        );
    }

    #[test]
    fn help_and_version() {
        assert_eq!(parse(&[]), Ok(Command::Help(None)));
        assert_eq!(parse(&argv("--help")), Ok(Command::Help(None)));
        assert_eq!(
            parse(&argv("--add_sds --bogus --help")),
            Ok(Command::Help(Some(Action::AddSds)))
        );
        assert_eq!(parse(&argv("-h")), Ok(Command::Help(None)));
        assert_eq!(parse(&argv("--version")), Ok(Command::Version));
    }

    #[test]
    fn unknown_options_suggest_the_nearest() {
        assert_eq!(
            err("--query_all_sdss"),
            "unknown option `--query_all_sdss`; did you mean --query_all_sds?"
        );
        assert_eq!(
            err("--add-sds"),
            "unknown option `--add-sds`; did you mean --add_sds?"
        );
        assert_eq!(
            err("--add_volume --Size_GB 3"),
            "unknown option `--Size_GB`; did you mean --size_gb?"
        );
        assert_eq!(
            err("--frobnicate"),
            "unknown option `--frobnicate`; scli --help lists the actions and their options"
        );
    }

    #[test]
    fn pasted_dashes_get_a_hint() {
        assert_eq!(
            err("\u{2013}add_sds"),
            "`\u{2013}add_sds` starts with an en dash (\u{2013}), not two hyphens; type --add_sds"
        );
        assert_eq!(
            err("--query_all_sds \u{2014}mdm_ip 1.2.3.4"),
            "`\u{2014}mdm_ip` starts with an em dash (\u{2014}), not two hyphens; type --mdm_ip"
        );
        assert_eq!(
            err("-add_sds"),
            "`-add_sds` starts with a single hyphen (-), not two hyphens; type --add_sds"
        );
        // In a value's place too, when it is clearly a pasted option.
        assert_eq!(
            err("--add_sds --sds_name \u{2013}device_name /dev/sdb"),
            "`\u{2013}device_name` starts with an en dash (\u{2013}), not two hyphens; type --device_name"
        );
        // A value that merely starts with a dash is a value.
        let inv = run("--rename_volume --volume_name v --new_name \u{2013}v2");
        assert_eq!(inv.values(NewName), ["\u{2013}v2"]);
    }

    #[test]
    fn structural_errors() {
        assert_eq!(
            err("vol01 --query_all_sds"),
            "`vol01` is not an option; options start with two hyphens and values follow their option (--volume_name vol01)"
        );
        assert!(err("-x").starts_with("`-x` is not an option"));
        assert_eq!(
            err("--query_volume --volume_name"),
            "--volume_name needs a value: --volume_name NAME"
        );
        assert_eq!(
            err("--query_volume --volume_name --json"),
            "--volume_name needs a value: --volume_name NAME"
        );
        assert_eq!(
            err("--query_volume --volume_name a --volume_name b"),
            "--volume_name is given twice; give it once"
        );
        assert_eq!(
            err("--add_volume --thin_provisioned --thin_provisioned"),
            "--thin_provisioned is given twice; give it once"
        );
        assert_eq!(
            err("--query_cluster --query_cluster"),
            "--query_cluster is given twice; give it once"
        );
        assert_eq!(
            err("--add_sds --add_volume"),
            "--add_sds and --add_volume are both actions; give one action per command"
        );
        assert_eq!(
            err("--mdm_ip 10.0.0.1"),
            "no action given; add one such as --query_all_sds (scli --help lists them all)"
        );
        assert_eq!(
            err("--add_volume --media_type SSD"),
            "--media_type does not apply to --add_volume, which takes --protection_domain_name, \
             --protection_domain_id, --storage_pool_name, --storage_pool_id, --size_gb, --size, \
             --volume_name, --thin_provisioned, --thick_provisioned"
        );
        // A pool's protection is chosen when it is created, never later.
        assert!(err("--set_rebuild_policy --protection_mode single_copy")
            .starts_with("--protection_mode does not apply to --set_rebuild_policy"));
        assert_eq!(
            err("--add_sds --device_name /dev/a,,/dev/b"),
            "--device_name `/dev/a,,/dev/b` has an empty item; separate items with single commas"
        );
    }

    #[test]
    fn usage_names_exactly_the_options_each_action_takes() {
        for spec in ACTIONS {
            let mut named: Vec<&str> = spec
                .usage
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
                .filter_map(|w| w.strip_prefix("--"))
                .collect();
            named.sort();
            named.dedup();
            let mut expected: Vec<&str> = spec.options.iter().map(|o| opt_name(*o)).collect();
            expected.sort();
            assert_eq!(named, expected, "--{}", spec.name);
        }
        for spec in OPTIONS {
            let used =
                GLOBAL.contains(&spec.opt) || ACTIONS.iter().any(|a| a.options.contains(&spec.opt));
            assert!(used, "--{} is in no action", spec.name);
        }
        let text = usage("  0  ok\n");
        assert!(text.contains("  --add_sds_from_csv FILE\n"));
        assert!(text.ends_with("\nExit status:\n  0  ok\n"));
        let one = usage_of(Action::QueryVolume, "  0  ok\n");
        assert!(one.starts_with(
            "Usage: scli [--mdm_ip IP[:PORT]] --query_volume (--volume_name NAME | --volume_id ID) [--json]\n"
        ));
    }

    #[test]
    fn initiator_actions_take_their_options() {
        let inv = run("--add_scsi_initiator --initiator_name svrsan2011 \
                       --iqn iqn.1998-01.com.vmware:svrsan2011-4f2a --chap_secret twelve-bytes");
        assert_eq!(inv.action, Action::AddScsiInitiator);
        assert_eq!(inv.values(ChapSecret), ["twelve-bytes"]);
        let inv = run("--apply_initiator_map conf/initiators.toml");
        assert_eq!(inv.action, Action::ApplyInitiatorMap);
        assert_eq!(inv.argument.as_deref(), Some("conf/initiators.toml"));
        assert!(run("--query_scsi_initiator --initiator_id 1f --json").json);
        assert_eq!(
            err("--apply_initiator_map"),
            "--apply_initiator_map needs a value: --apply_initiator_map FILE"
        );
        assert_eq!(
            err("--remove_scsi_initiator --iqn iqn.1998-01.com.vmware:h1"),
            "--iqn does not apply to --remove_scsi_initiator, which takes --initiator_name, \
             --initiator_id"
        );
        assert_eq!(
            err("--export_initiator_map --json"),
            "--json does not apply to --export_initiator_map, which takes no options"
        );
        assert_eq!(
            err("--add_scsi_initator"),
            "unknown option `--add_scsi_initator`; did you mean --add_scsi_initiator?"
        );
        assert_eq!(
            err("--map_volume_to_scsi_initiator --acess_mode ReadOnly"),
            "unknown option `--acess_mode`; did you mean --access_mode?"
        );
        let help = usage_of(Action::MapVolumeToScsiInitiator, "");
        assert!(help.starts_with(
            "Usage: scli [--mdm_ip IP[:PORT]] --map_volume_to_scsi_initiator (--volume_name NAME \
             | --volume_id ID) (--initiator_name NAME | --initiator_id ID) [--lun LUN] \
             [--access_mode ReadWrite|ReadOnly]\n"
        ));
    }

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("add_sds", "add_sds"), 0);
    }
}
