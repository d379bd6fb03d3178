//! Control-plane messages: what scli, gateways and SDS say to the MDM (port 6611), and
//! what the MDM says to an SDS (as `Control` frames on the SDS port 7072).
//!
//! Kept in one place because every component speaks some of it; all sizes are bytes
//! and all ids are the MDM's 64-bit object ids (printed as 16 hex digits).

use crate::scsi::shared::SharedEvent;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// Every volume is cut into chunks of this size; each chunk has the copies its pool
/// keeps ([`Protection`]).
pub const CHUNK_SIZE: u64 = 1 << 20;

/// In a layout's `[primary, secondary]` pair: no such copy (a degraded chunk has no
/// secondary until rebuild gives it one; a single-copy pool's chunks never have one).
pub const NO_COPY: u32 = u32::MAX;

/// How often a claimed SDS heartbeats to the MDM.
pub const HEARTBEAT_EVERY_MS: u64 = 500;

/// Formats an object id the way scli prints it.
pub fn fmt_id(id: u64) -> String {
    format!("{id:016x}")
}

/// How an admin names an object: by id (hex), by name, or (SDS and SDC) by IP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum By {
    Id(u64),
    Name(String),
    Ip(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MediaType {
    Hdd,
    Ssd,
    Cloud,
}

/// How many copies a storage pool keeps of each chunk. Chosen when the pool is created
/// and never changed: every layout, capacity figure and recovery rule of the pool
/// follows from it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Protection {
    /// Two copies on two SDS: losing one SDS or device loses no acknowledged write,
    /// and rebuild restores the second copy. The default.
    #[default]
    TwoCopies,
    /// One copy, for data that needs no redundancy here (scratch, benchmarks, data
    /// protected elsewhere): twice the usable capacity, but losing the SDS or device
    /// that holds a chunk loses the chunk, and nothing is ever rebuilt.
    SingleCopy,
}

impl Protection {
    /// The names an admin types (scli `--protection_mode`, `cluster.protection_mode`).
    pub const NAMES: &'static str = "two_copies or single_copy";

    /// Parses an admin's name for a mode, in any case.
    pub fn from_name(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "two_copies" => Some(Protection::TwoCopies),
            "single_copy" => Some(Protection::SingleCopy),
            _ => None,
        }
    }

    /// The name an admin types for the mode.
    pub fn name(self) -> &'static str {
        match self {
            Protection::TwoCopies => "two_copies",
            Protection::SingleCopy => "single_copy",
        }
    }

    /// Copies of each chunk, hence also the SDS a volume needs at least (copies of a
    /// chunk never share an SDS).
    pub fn copies(self) -> u64 {
        match self {
            Protection::TwoCopies => 2,
            Protection::SingleCopy => 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSpec {
    /// Block device or file path on the SDS host.
    pub path: String,
    /// Storage pool (by name, inside the SDS's protection domain).
    pub pool: String,
    /// Optional device name; defaults to the path.
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddSds {
    /// `IP` or `IP:PORT` (port defaults to 7072).
    pub ip: String,
    pub port: Option<u16>,
    pub protection_domain: String,
    pub name: Option<String>,
    pub devices: Vec<DeviceSpec>,
}

/// Admin operations (scli). Each is applied atomically and made durable before the
/// reply; a refused request changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminRequest {
    AddProtectionDomain {
        name: String,
    },
    RemoveProtectionDomain {
        pd: By,
    },
    AddStoragePool {
        pd: By,
        name: String,
        media_type: MediaType,
        /// Absent from older clients: two copies.
        #[serde(default)]
        protection: Protection,
    },
    RemoveStoragePool {
        pd: By,
        pool: By,
    },
    AddSds(AddSds),
    /// Several SDS at once (installer CSV): all are validated and contacted before any
    /// is committed, so one bad row changes nothing.
    AddSdsBatch(Vec<AddSds>),
    AddSdsDevice {
        sds: By,
        device: DeviceSpec,
    },
    /// Migrates every chunk copy off the SDS (rebalance rules), then forgets it and
    /// releases its devices. Refused if the rest of its pools cannot hold the copies.
    RemoveSds {
        sds: By,
    },
    /// Like `RemoveSds` for one device.
    RemoveSdsDevice {
        sds: By,
        /// The device's name or path.
        device: String,
    },
    /// How fast a pool may rebuild lost copies (`rebalance: false`) or move copies to
    /// even out capacity (`rebalance: true`).
    SetPolicy {
        pd: By,
        pool: By,
        rebalance: bool,
        policy: Policy,
    },
    AddVolume {
        pd: By,
        pool: By,
        name: Option<String>,
        size_bytes: u64,
        thin: bool,
    },
    RemoveVolume {
        volume: By,
    },
    ModifyVolumeCapacity {
        volume: By,
        size_bytes: u64,
    },
    RenameVolume {
        volume: By,
        new_name: String,
    },
    MapVolumeToSdc {
        volume: By,
        sdc: By,
    },
    UnmapVolumeFromSdc {
        volume: By,
        sdc: By,
    },
    QueryCluster,
    QueryAllSds,
    QuerySds {
        sds: By,
    },
    QueryProtectionDomain {
        pd: By,
    },
    QueryStoragePool {
        pd: By,
        pool: By,
    },
    QueryAllVolumes,
    QueryVolume {
        volume: By,
    },
    QueryAllSdc,
    /// Register a SCSI initiator (a hypervisor host) under an admin-friendly name.
    AddScsiInitiator {
        name: String,
        /// IQN, EUI or NAA name (RFC 3720 section 3.2.6); stored normalized.
        iqn: String,
        chap: Option<Chap>,
    },
    /// Removes the initiator and its mappings; gateways end its sessions.
    RemoveScsiInitiator {
        initiator: By,
    },
    RenameScsiInitiator {
        initiator: By,
        new_name: String,
    },
    /// Sets (Some) or clears (None) the initiator's CHAP secrets.
    SetScsiInitiatorChap {
        initiator: By,
        chap: Option<Chap>,
    },
    MapVolumeToScsiInitiator {
        volume: By,
        initiator: By,
        /// Default: the lowest LUN free for that initiator.
        lun: Option<u64>,
        access: AccessMode,
    },
    UnmapVolumeFromScsiInitiator {
        volume: By,
        initiator: By,
    },
    QueryAllScsiInitiators,
    QueryScsiInitiator {
        initiator: By,
    },
    /// Replace the whole initiator registry and its mappings with this map, atomically.
    ApplyInitiatorMap(InitiatorMap),
    /// The registry and mappings in force, in the declarative map's shape (no secrets).
    ExportInitiatorMap,
}

/// A rebuild or rebalance policy (scli `--set_rebuild_policy` /
/// `--set_rebalance_policy`): how much of the pool's I/O the background copying may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Policy {
    /// As fast as the SDS go.
    NoLimit,
    /// At most this many chunks copied at once.
    LimitConcurrentIo { chunks: u32 },
    /// At most this many KiB/s of chunk data.
    LimitBandwidth { kbps: u64 },
    /// One chunk at a time: the least load background copying can put on the pool
    /// while still making progress.
    FavorApplicationIo,
}

impl Default for Policy {
    fn default() -> Self {
        Policy::LimitConcurrentIo { chunks: 8 }
    }
}

/// Background copying of one kind in a pool, as queries show it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Chunk copies still to make.
    pub chunks_left: u64,
    pub bytes_left: u64,
    /// Bytes copied since the MDM started.
    pub bytes_done: u64,
    /// Over the last few seconds.
    pub rate_bytes_per_sec: u64,
    /// None when idle or not yet measurable.
    pub eta_secs: Option<u64>,
}

/// How an initiator may use a mapped volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccessMode {
    ReadWrite,
    ReadOnly,
}

/// CHAP secrets of one initiator: it proves itself with `username`/`secret`; with
/// `mutual` the target proves itself back with that (username, secret).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chap {
    pub username: String,
    pub secret: String,
    pub mutual: Option<(String, String)>,
}

/// Secrets never reach a log or a query: Debug shows only the usernames.
impl std::fmt::Debug for Chap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chap")
            .field("username", &self.username)
            .field("secret", &"<hidden>")
            .field(
                "mutual",
                &self.mutual.as_ref().map(|(u, _)| (u, "<hidden>")),
            )
            .finish()
    }
}

/// What a query says of an initiator's CHAP: whether it is set, never the secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChapMode {
    None,
    OneWay,
    Mutual,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InitiatorInfo {
    pub id: u64,
    pub name: String,
    pub iqn: String,
    pub chap: ChapMode,
    pub chap_username: Option<String>,
    pub luns: Vec<InitiatorLun>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitiatorLun {
    pub lun: u64,
    pub volume_id: u64,
    pub volume_name: String,
    pub access: AccessMode,
}

/// The declarative initiator map (`conf/initiators.toml`), as sent to the MDM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitiatorMap {
    pub initiators: Vec<MapInitiator>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapInitiator {
    pub name: String,
    pub iqn: String,
    pub chap: MapChap,
    pub mappings: Vec<MapEntry>,
}

/// CHAP in the declarative map: absent (none), "unchanged" (keep what the MDM holds:
/// exports say this, since they never contain secrets), or the secrets to set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MapChap {
    None,
    Keep,
    Set(Chap),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapEntry {
    /// Volume name.
    pub volume: String,
    pub lun: Option<u64>,
    pub access: AccessMode,
}

/// Successful answers to [`AdminRequest`]s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AdminReply {
    /// An object was created.
    Created {
        kind: String,
        id: u64,
        name: String,
    },
    /// Several SDS were created (batch), in request order.
    CreatedMany(Vec<(u64, String)>),
    /// Done; the text says what changed.
    Done(String),
    /// A volume was created or resized; size after rounding to the granularity.
    Volume {
        id: u64,
        name: String,
        size_bytes: u64,
    },
    Cluster(ClusterInfo),
    AllSds(Vec<SdsInfo>),
    Sds(SdsInfo),
    ProtectionDomain(PdInfo),
    StoragePool(PoolInfo),
    AllVolumes(Vec<VolumeInfo>),
    Volume1(VolumeInfo),
    AllSdc(Vec<SdcInfo>),
    AllScsiInitiators(Vec<InitiatorInfo>),
    ScsiInitiator(InitiatorInfo),
    /// An initiator map was applied: one line per change (empty: nothing changed).
    MapApplied(Vec<String>),
    InitiatorMap(InitiatorMap),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub system_id: u64,
    pub mdm_addr: String,
    pub protection_domains: usize,
    pub storage_pools: usize,
    pub sds: usize,
    pub sds_connected: usize,
    pub volumes: usize,
    pub sdc: usize,
    pub raw_capacity_bytes: u64,
    pub used_bytes: u64,
    /// The MDM's recent failure, rebuild and rebalance events, oldest first.
    #[serde(default)]
    pub events: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SdsState {
    /// Heartbeating and in the layouts.
    Connected,
    /// Missed a heartbeat or a query, but the MDM has not taken it out of the layouts.
    Disconnected,
    /// Declared failed: its copies are out of every layout and being rebuilt elsewhere.
    Down,
    /// Being removed (`--remove_sds`): its copies are moving to the other SDS.
    Removing,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceInfo {
    pub id: u64,
    pub name: String,
    pub path: String,
    pub pool_id: u64,
    pub pool_name: String,
    pub capacity_bytes: u64,
    /// Chunk copies stored, as the SDS reports them (None if it did not answer).
    pub used_chunks: Option<u64>,
    /// Its SDS reported it failing I/O; its data was rebuilt elsewhere.
    #[serde(default)]
    pub failed: bool,
    /// `--remove_sds_device` is draining it.
    #[serde(default)]
    pub removing: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SdsInfo {
    pub id: u64,
    pub name: String,
    pub ip: String,
    pub port: u16,
    pub protection_domain_id: u64,
    pub protection_domain_name: String,
    pub state: SdsState,
    pub devices: Vec<DeviceInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PdInfo {
    pub id: u64,
    pub name: String,
    pub pools: Vec<PoolInfo>,
    pub sds: Vec<(u64, String)>,
}

/// Protection state of a pool's data, in bytes of volume address space. Every chunk
/// counts in exactly one figure.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// Chunks with both copies whole (two-copy pools).
    pub protected_bytes: u64,
    /// Chunks with one whole copy where their pool keeps two (a copy lost, or being
    /// rebuilt or moved): a second failure would lose them.
    pub degraded_bytes: u64,
    /// Chunks of a single-copy pool with their one copy on a running SDS: whole, and
    /// without redundancy by design (a copy being moved still counts here).
    #[serde(default)]
    pub unprotected_bytes: u64,
    /// Chunks whose every copy is on a failed SDS: unreadable until one returns.
    pub failed_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolInfo {
    pub id: u64,
    pub name: String,
    pub protection_domain_id: u64,
    pub protection_domain_name: String,
    pub media_type: MediaType,
    /// Absent from older MDM: two copies.
    #[serde(default)]
    pub protection: Protection,
    pub devices: usize,
    pub sds: usize,
    /// Sum of device capacities (every copy lives in it).
    pub raw_capacity_bytes: u64,
    /// What volumes can use: raw divided by the copies the pool keeps (2 or 1).
    pub usable_capacity_bytes: u64,
    /// Reserved by thick volumes (usable bytes).
    pub thick_reserved_bytes: u64,
    /// Chunk copies the SDS report as stored, in bytes (raw).
    pub used_bytes: u64,
    /// Usable bytes a new thick volume could still reserve.
    pub free_for_thick_bytes: u64,
    pub volumes: Vec<(u64, String)>,
    #[serde(default)]
    pub health: Health,
    #[serde(default)]
    pub rebuild: Progress,
    #[serde(default)]
    pub rebalance: Progress,
    #[serde(default)]
    pub rebuild_policy: Policy,
    #[serde(default)]
    pub rebalance_policy: Policy,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolumeInfo {
    pub id: u64,
    pub name: String,
    pub size_bytes: u64,
    pub thin: bool,
    pub pool_id: u64,
    pub pool_name: String,
    pub protection_domain_name: String,
    pub chunks: u64,
    pub epoch: u64,
    /// SDC (gateways) the volume is mapped to: (id, name, LUN).
    pub mapped_sdc: Vec<(u64, String, u64)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SdcInfo {
    pub id: u64,
    pub name: String,
    pub ip: String,
    /// Its number: the gateway's portal group tag and ALUA target port group.
    #[serde(default)]
    pub number: u16,
    /// Volumes mapped to it: (volume id, volume name, LUN).
    pub volumes: Vec<(u64, String, u64)>,
}

/// Everything that arrives on the MDM port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MdmRequest {
    Admin(AdminRequest),
    /// A gateway (SDC role) announces itself; creates or refreshes its SDC object.
    RegisterSdc {
        name: String,
        ip: String,
    },
    /// Returns at once if the mapping generation is past `since`, else waits (up to
    /// about 20 s) for a change, then returns the SDC's mapped volumes.
    WatchMappings {
        sdc_id: u64,
        since: u64,
    },
    /// The chunk placement of one volume, for a gateway's cache.
    GetLayout {
        volume_id: u64,
    },
    /// Replaces a volume's shared SCSI state (reservations) if it is still at
    /// `version`, and hands `events` to the other gateways serving the volume; answered
    /// once they have it (see `mdm::scsi_hub`).
    StoreScsiState {
        volume_id: u64,
        sdc_id: u64,
        version: u64,
        state: String,
        events: Vec<SharedEvent>,
    },
    /// Hands `events` to the other gateways serving the volume, like `StoreScsiState`
    /// without a state change (a LUN reset).
    PublishScsiEvents {
        volume_id: u64,
        sdc_id: u64,
        events: Vec<SharedEvent>,
    },
    /// One volume's shared SCSI state, for a gateway that starts serving it.
    GetScsiState {
        volume_id: u64,
    },
    /// Long poll: answers once the shared SCSI state of any volume moved past `since`
    /// (or after about 20 s). Asking with `since` = g also tells the MDM this gateway
    /// has applied everything up to g.
    WatchScsi {
        sdc_id: u64,
        since: u64,
    },
    /// Every claimed SDS, every `HEARTBEAT_EVERY_MS`: it is alive and listens at
    /// `addr`. The answer (`Lease`) renews its lease to serve chunk I/O.
    SdsHeartbeat {
        sds_id: u64,
        system_id: u64,
        addr: SocketAddr,
        /// Devices that failed I/O since the SDS started: the MDM moves their copies.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        failed_devices: Vec<u64>,
    },
    /// A gateway got no answer from an SDS (or a primary reported its mirror failed).
    /// The MDM checks the SDS; if it is down, the answer comes once layouts without
    /// it are committed.
    ReportSdsFailure {
        sds_id: u64,
        reason: String,
    },
}

// A reply is built once and serialised at once; boxing the large admin replies would
// only add allocations (and change the contract's types).
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MdmReply {
    Admin(AdminReply),
    Registered {
        sdc_id: u64,
        system_id: u64,
        /// The SDC's number: the gateway's portal group tag and ALUA target port group.
        #[serde(default)]
        number: u16,
    },
    Mappings(MappedView),
    Layout(Layout),
    /// A volume's shared SCSI state: the answer to `GetScsiState`, to a successful
    /// `StoreScsiState` (the new version), and to one that lost the race (the state
    /// that won, to re-run the command against).
    ScsiState {
        stored: bool,
        state: VolumeScsi,
    },
    ScsiView(ScsiView),
    /// Answer to `SdsHeartbeat`: the SDS may serve chunk I/O for `lease_ms` from when
    /// it sent the heartbeat, and must refuse any request routed with an epoch older
    /// than its volume's entry in `epochs` (volume id, epoch).
    Lease {
        lease_ms: u64,
        epochs: Vec<(u64, u64)>,
    },
    /// Answer to `ReportSdsFailure`: `down` when the SDS is (now) out of the layouts;
    /// otherwise it answered the MDM and the caller should simply retry.
    SdsVerdict {
        down: bool,
    },
    Ok,
}

/// Shared SCSI state of one volume (an opaque blob the gateways' SCSI engine encodes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeScsi {
    pub volume_id: u64,
    /// 0 and empty: never written.
    pub version: u64,
    pub state: String,
}

/// What changed in shared SCSI state since a gateway's last `WatchScsi`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScsiView {
    pub generation: u64,
    /// The current state of every volume this gateway serves.
    pub volumes: Vec<VolumeScsi>,
    /// Events other gateways published since `since`, oldest first: (volume, event).
    pub events: Vec<(u64, SharedEvent)>,
}

/// The MDM's answer on its port: a reply or a message for the admin.
pub type MdmResponse = Result<MdmReply, String>;

/// What one gateway (SDC) exports: the volumes mapped to it, every volume mapped to
/// an initiator (any gateway serves those), and the initiator map it enforces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MappedView {
    pub generation: u64,
    pub system_id: u64,
    pub volumes: Vec<MappedVolume>,
    pub initiators: Vec<InitiatorAccess>,
    /// Every gateway serving any of `volumes` (this one included), by number.
    #[serde(default)]
    pub gateways: Vec<GatewayPort>,
}

/// A gateway as ALUA shows it: its SDC number (portal group tag, target port group and
/// relative target port) and SDC name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayPort {
    pub number: u16,
    pub name: String,
}

/// One registered initiator as a gateway needs it to admit and serve it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitiatorAccess {
    pub name: String,
    /// Normalized (lower-case) iSCSI name.
    pub iqn: String,
    pub chap: Option<Chap>,
    /// (LUN, volume id, access mode).
    pub luns: Vec<(u64, u64, AccessMode)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MappedVolume {
    pub id: u64,
    pub name: String,
    /// The LUN of its mapping to this SDC (what demo-mode targets export); None when
    /// the volume is here only because initiators are mapped to it.
    pub lun: Option<u64>,
    pub size_bytes: u64,
    pub thin: bool,
    /// Layout epoch; a gateway refetches the layout when it moves.
    pub epoch: u64,
    /// Numbers of the gateways serving it: those it is mapped to, or all when an
    /// initiator is mapped to it.
    #[serde(default)]
    pub gateways: Vec<u16>,
}

/// Where every chunk of a volume lives. `chunks[i]` = indices into `devices` of the
/// primary and the secondary copy of chunk `i`; the secondary is `NO_COPY` while the
/// chunk is degraded, and always in a single-copy pool unless a move is filling it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub volume_id: u64,
    pub epoch: u64,
    pub size_bytes: u64,
    pub thin: bool,
    /// The volume's pool's: tells a chunk without a secondary that is degraded from
    /// one that keeps a single copy by design. Absent from older MDM: two copies.
    #[serde(default)]
    pub protection: Protection,
    pub devices: Vec<DeviceLoc>,
    pub chunks: Vec<[u32; 2]>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceLoc {
    pub sds_id: u64,
    pub device_id: u64,
    pub addr: SocketAddr,
    /// Its SDS is down: a chunk whose primary is here has no readable copy until the
    /// SDS returns (the MDM keeps a chunk's last copy in its layout).
    #[serde(default)]
    pub down: bool,
}

/// MDM → SDS control messages (JSON in a `Control` frame of the chunk protocol).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SdsControl {
    /// Take ownership of devices: write (or verify) each header naming system, SDS
    /// and device. A device with another system's header is refused.
    Claim {
        system_id: u64,
        sds_id: u64,
        sds_name: String,
        /// The MDM's port; the SDS reaches it at the connection's peer IP.
        mdm_port: u16,
        devices: Vec<ClaimDevice>,
    },
    /// Addresses of the other SDS, for forwarding mirror writes.
    Peers {
        peers: Vec<(u64, SocketAddr)>,
    },
    /// Reserve slots for a thick volume's chunk copies on this SDS.
    AllocateThick {
        volume: u64,
        chunks: Vec<(u64, u64)>, // (chunk index, device id)
    },
    /// Release every chunk copy of a removed volume.
    FreeVolume {
        volume: u64,
    },
    /// Every chunk copy held, per device, from the SDS's own tables.
    Inventory,
    Ping,
    /// Release these chunk copies (volume, chunk, device): moved away, or made stale
    /// by a rebuild elsewhere.
    FreeChunks {
        chunks: Vec<(u64, u64, u64)>,
    },
    /// The chunks of `volume` this SDS wrote (as primary) without their mirror since
    /// each was last replicated whole: what a returning SDS's copy lacks. The SDS
    /// first raises its epoch mark for the volume to `epoch` and lets writes already
    /// admitted finish, so no degraded write can mark a chunk after it answered.
    Dirty {
        volume: u64,
        #[serde(default)]
        epoch: u64,
    },
    /// The MDM has removed this SDS: forget the claim and stop heartbeating. Its
    /// devices keep their data but no longer belong to the system.
    Release,
    /// The MDM has removed one device (`--remove_sds_device`): stop using it and make
    /// it blank again, like `Release` does for all of them.
    ReleaseDevice {
        device: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimDevice {
    pub device_id: u64,
    pub path: String,
    pub pool_id: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SdsControlReply {
    Claimed {
        devices: Vec<DeviceReport>,
    },
    Inventory(SdsInventory),
    Pong {
        system_id: u64,
        sds_id: u64,
    },
    /// Answer to `Dirty`: chunk indices.
    Dirty(Vec<u64>),
    Ok,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceReport {
    pub device_id: u64,
    pub path: String,
    pub capacity_bytes: u64,
    /// Chunk slots the device can hold.
    pub slots: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SdsInventory {
    pub system_id: u64,
    pub sds_id: u64,
    pub devices: Vec<DeviceInventory>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInventory {
    pub device_id: u64,
    pub path: String,
    pub slots: u64,
    /// (volume id, chunk index) of every copy stored.
    pub chunks: Vec<(u64, u64)>,
}
