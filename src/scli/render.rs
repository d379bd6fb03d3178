//! What scli prints: the MDM's answers in the shape ScaleIO admins and their scripts
//! know ("Query-all-SDS returned 4 SDS nodes.", "20.0 GB (20480 MB)"), or as JSON.
//!
//! The request is passed along because some answers only make sense beside the
//! question: whether a volume was rounded up, what kind of object was created.

use super::csv::Row;
use crate::cluster::api::{
    fmt_id, AddSds, AdminReply, AdminRequest, Chap, ChapMode, ClusterInfo, InitiatorInfo,
    InitiatorMap, MediaType, PdInfo, Policy, PoolInfo, Progress, Protection, SdcInfo, SdsInfo,
    SdsState, VolumeInfo, CHUNK_SIZE,
};
use crate::cluster::initiator_file;
use crate::cluster::initiator_rules::access_mode_name;
use serde::Serialize;
use serde_json::Value;

/// The answer as text, one line per fact.
pub fn text(req: &AdminRequest, reply: &AdminReply) -> String {
    let lines = match reply {
        AdminReply::Created { kind, id, name } => created(req, kind, *id, name),
        AdminReply::CreatedMany(created) => created_many(created),
        AdminReply::Done(message) => vec![message.clone()],
        AdminReply::Volume {
            id,
            name,
            size_bytes,
        } => volume_changed(req, *id, name, *size_bytes),
        AdminReply::Cluster(c) => cluster(c),
        AdminReply::AllSds(all) => all_sds(all),
        AdminReply::Sds(s) => sds(s),
        AdminReply::ProtectionDomain(pd) => protection_domain(pd),
        AdminReply::StoragePool(pool) => storage_pool(pool),
        AdminReply::AllVolumes(all) => all_volumes(all),
        AdminReply::Volume1(v) => volume(v),
        AdminReply::AllSdc(all) => all_sdc(all),
        AdminReply::AllScsiInitiators(all) => all_initiators(all),
        AdminReply::ScsiInitiator(i) => initiator(i),
        AdminReply::MapApplied(changes) => {
            return map_applied(changes, "the map sent");
        }
        AdminReply::InitiatorMap(map) => return exported_map(map),
    };
    lines.join("\n") + "\n"
}

/// The answer as pretty JSON: the bare info struct(s) of a query, so scripts need not
/// unwrap the reply enum; anything else as the whole reply.
pub fn json(reply: &AdminReply) -> String {
    let text = match reply {
        AdminReply::Cluster(c) => pretty(c),
        AdminReply::AllSds(all) => pretty(all),
        AdminReply::Sds(s) => pretty(s),
        AdminReply::ProtectionDomain(pd) => pretty(pd),
        AdminReply::StoragePool(pool) => pretty(pool),
        AdminReply::AllVolumes(all) => pretty(all),
        AdminReply::Volume1(v) => pretty(v),
        AdminReply::AllSdc(all) => pretty(all),
        AdminReply::AllScsiInitiators(all) => pretty(all),
        AdminReply::ScsiInitiator(i) => pretty(i),
        other => pretty(other),
    };
    text + "\n"
}

fn pretty<T: Serialize>(v: &T) -> String {
    // Only maps with non-string keys or failing Serialize impls can fail; the API
    // types have neither.
    let mut value = serde_json::to_value(v).expect("admin replies serialize to JSON");
    hex_ids(&mut value);
    serde_json::to_string_pretty(&value).expect("a JSON value serializes")
}

/// Writes object ids as the 16 hex digits scli prints and takes, as ScaleIO's REST API
/// does: JavaScript and jq round integers above 2^53, and a decimal id passed back to
/// `--volume_id` would be read as hex and name another object. Ids are the `id` and
/// `*_id` fields, and the first element of the API's `(id, name, ...)` tuples.
fn hex_ids(v: &mut Value) {
    let hex = |x: &mut Value| {
        if let Some(n) = x.as_u64() {
            *x = Value::String(fmt_id(n));
        }
    };
    match v {
        Value::Object(fields) => {
            for (key, x) in fields.iter_mut() {
                if key == "id" || key.ends_with("_id") {
                    hex(x);
                } else {
                    hex_ids(x);
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                match item {
                    Value::Array(tuple) => tuple.first_mut().into_iter().for_each(hex),
                    other => hex_ids(other),
                }
            }
        }
        _ => {}
    }
}

/// What `--add_sds_from_csv` did, line by line of the file. `created` holds the new
/// SDS in the order of the file's SDS rows, as the MDM answers a batch.
pub fn csv_rows(rows: &[Row], created: &[(u64, String)]) -> String {
    let mut made = created.iter();
    let mut lines = Vec::new();
    for row in rows {
        let line = row.line;
        lines.push(
            match (&row.sds, row.sds.as_ref().and_then(|_| made.next())) {
                (None, _) => format!("Row {line}: not an SDS, skipped"),
                (Some(sds), Some((id, name))) => format!(
                    "Row {line}: added SDS {} (ID {}) with {}",
                    or_na(name),
                    fmt_id(*id),
                    devices_in_pools(sds)
                ),
                (Some(sds), None) => format!(
                    "Row {line}: SDS {} was sent but the MDM reported no ID for it; check with \
                 --query_all_sds",
                    sds.ip
                ),
            },
        );
    }
    lines.push(format!(
        "Successfully added {} from {}.",
        count(created.len(), "SDS node", "SDS nodes"),
        count(rows.len(), "row", "rows")
    ));
    lines.join("\n") + "\n"
}

/// What `--apply_initiator_map` changed, one line per change; `source` names the map.
pub fn map_applied(changes: &[String], source: &str) -> String {
    if changes.is_empty() {
        return format!("No changes: the map in force already matches {source}\n");
    }
    let mut out: String = changes.iter().map(|c| format!("{c}\n")).collect();
    out.push_str(&format!(
        "Applied {} from {source}.\n",
        count(changes.len(), "change", "changes")
    ));
    out
}

/// The map in force as a map file, headed by what an admin needs to know before
/// editing and applying it.
fn exported_map(map: &InitiatorMap) -> String {
    let mut out = String::from(
        "# The SCSI initiator map in force, from scli --export_initiator_map; the format is\n\
         # described in conf/initiators.toml. CHAP secrets are never exported: chap =\n\
         # \"unchanged\" keeps the ones the MDM holds. Apply edits with\n\
         # scli --apply_initiator_map FILE.\n",
    );
    if map.initiators.is_empty() {
        out.push_str("# No initiator is registered: no host sees any volume.\n");
    } else {
        out.push('\n');
        out.push_str(&initiator_file::render(map));
    }
    out
}

/// A size the way ScaleIO prints one: `20.0 GB (20480 MB)`, in binary units, the
/// tenth truncated so that free space is never overstated.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["Bytes", "KB", "MB", "GB", "TB", "PB"];
    let Some(i) = (1..UNITS.len()).rev().find(|i| bytes >> (10 * i) > 0) else {
        return format!("{bytes} Bytes");
    };
    let unit = 1u128 << (10 * i);
    let tenths = u128::from(bytes) * 10 / unit;
    format!(
        "{}.{} {} ({} {})",
        tenths / 10,
        tenths % 10,
        UNITS[i],
        bytes >> (10 * (i - 1)),
        UNITS[i - 1]
    )
}

fn chunk_text() -> String {
    format!("{} MB", CHUNK_SIZE >> 20)
}

fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// ScaleIO's placeholder for an object without a name.
fn or_na(name: &str) -> &str {
    if name.is_empty() {
        "N/A"
    } else {
        name
    }
}

fn media(m: MediaType) -> &'static str {
    match m {
        MediaType::Hdd => "HDD",
        MediaType::Ssd => "SSD",
        MediaType::Cloud => "CLOUD",
    }
}

/// A pool's protection mode; a single copy says plainly what it gives up.
fn protection(p: Protection) -> &'static str {
    match p {
        Protection::TwoCopies => "two copies",
        Protection::SingleCopy => {
            "single copy (no redundancy: losing an SDS or device loses its chunks)"
        }
    }
}

fn state(s: SdsState) -> &'static str {
    match s {
        SdsState::Connected => "Connected, Joined",
        SdsState::Disconnected => "Disconnected, Joined",
        SdsState::Down => "Down, Joined (rebuilding its data elsewhere)",
        SdsState::Removing => "Connected, Removing",
    }
}

fn devices_in_pools(sds: &AddSds) -> String {
    let mut pools: Vec<&str> = Vec::new();
    for d in &sds.devices {
        if !pools.contains(&d.pool.as_str()) {
            pools.push(&d.pool);
        }
    }
    format!(
        "{} in {}",
        count(sds.devices.len(), "device", "devices"),
        pools.join(", ")
    )
}

/// Items grouped by a key, groups in order of first appearance.
fn group_by<T, K: PartialEq>(items: &[T], key: impl Fn(&T) -> K) -> Vec<(K, Vec<&T>)> {
    let mut groups: Vec<(K, Vec<&T>)> = Vec::new();
    for item in items {
        let k = key(item);
        match groups.iter_mut().find(|(g, _)| *g == k) {
            Some((_, members)) => members.push(item),
            None => groups.push((k, vec![item])),
        }
    }
    groups
}

/// An initiator's CHAP as a query shows it: the mode and username, never a secret.
fn chap_mode(mode: ChapMode, username: Option<&str>) -> String {
    let mode = match mode {
        ChapMode::None => return "none".to_string(),
        ChapMode::OneWay => "one-way",
        ChapMode::Mutual => "mutual",
    };
    match username {
        Some(u) => format!("{mode} (username {u})"),
        None => mode.to_string(),
    }
}

/// The CHAP mode a request asks for.
fn asked_chap(chap: Option<&Chap>) -> String {
    let mode = match chap {
        None => ChapMode::None,
        Some(c) if c.mutual.is_some() => ChapMode::Mutual,
        Some(_) => ChapMode::OneWay,
    };
    chap_mode(mode, chap.map(|c| c.username.as_str()))
}

fn created(req: &AdminRequest, kind: &str, id: u64, name: &str) -> Vec<String> {
    let id = fmt_id(id);
    let name = or_na(name);
    vec![match req {
        AdminRequest::AddProtectionDomain { .. } => {
            format!("Successfully created protection domain {name}. Object ID {id}")
        }
        AdminRequest::AddStoragePool {
            media_type,
            protection: p,
            ..
        } => format!(
            "Successfully created storage pool {name} (media type {}, {}). Object ID {id}",
            media(*media_type),
            protection(*p)
        ),
        AdminRequest::AddSds(sds) => format!(
            "Successfully created SDS {name} with {}. Object ID {id}",
            devices_in_pools(sds)
        ),
        AdminRequest::AddSdsDevice { device, .. } => format!(
            "Successfully added device {name} ({}) to storage pool {}. Object ID {id}",
            device.path, device.pool
        ),
        AdminRequest::AddScsiInitiator { iqn, chap, .. } => format!(
            "Successfully created SCSI initiator {name} (IQN {iqn}, CHAP: {}). Object ID {id}",
            asked_chap(chap.as_ref())
        ),
        _ => format!("Successfully created {kind} {name}. Object ID {id}"),
    }]
}

fn created_many(created: &[(u64, String)]) -> Vec<String> {
    let mut lines = vec![format!(
        "Successfully created {}.",
        count(created.len(), "SDS node", "SDS nodes")
    )];
    for (id, name) in created {
        lines.push(format!("SDS ID: {} Name: {}", fmt_id(*id), or_na(name)));
    }
    lines
}

fn volume_changed(req: &AdminRequest, id: u64, name: &str, got: u64) -> Vec<String> {
    let (id, name) = (fmt_id(id), or_na(name));
    let rounding = |asked: u64| {
        (got > asked).then(|| {
            format!(
                "Size {} rounded up to a multiple of {} (the chunk size): {}",
                size(asked),
                chunk_text(),
                size(got)
            )
        })
    };
    match req {
        AdminRequest::AddVolume {
            size_bytes, thin, ..
        } => {
            let provisioning = if *thin { "thin" } else { "thick" };
            let done = format!(
                "Successfully created volume {name} of size {}, {provisioning} provisioned. \
                 Object ID {id}",
                size(got)
            );
            rounding(*size_bytes).into_iter().chain([done]).collect()
        }
        AdminRequest::ModifyVolumeCapacity { size_bytes, .. } => {
            let done = format!(
                "Successfully modified the capacity of volume {name} (ID {id}) to {}",
                size(got)
            );
            rounding(*size_bytes).into_iter().chain([done]).collect()
        }
        _ => vec![format!("Volume {name} (ID {id}) has size {}", size(got))],
    }
}

fn cluster(c: &ClusterInfo) -> Vec<String> {
    let disconnected = c.sds.saturating_sub(c.sds_connected);
    vec![
        format!("System ID: {}", fmt_id(c.system_id)),
        format!("MDM: {}", c.mdm_addr),
        format!(
            "Protection Domains: {}, Storage Pools: {}",
            c.protection_domains, c.storage_pools
        ),
        format!(
            "SDS nodes: {} ({} connected, {disconnected} disconnected)",
            c.sds, c.sds_connected
        ),
        format!("Volumes: {}, SDC nodes: {}", c.volumes, c.sdc),
        format!(
            "Raw capacity: {}, in use: {}",
            size(c.raw_capacity_bytes),
            size(c.used_bytes)
        ),
    ]
    .into_iter()
    .chain((!c.events.is_empty()).then(|| "Recent events:".to_string()))
    .chain(c.events.iter().map(|e| format!("\t{e}")))
    .collect()
}

fn all_sds(all: &[SdsInfo]) -> Vec<String> {
    let mut lines = vec![format!(
        "Query-all-SDS returned {}.",
        count(all.len(), "SDS node", "SDS nodes")
    )];
    for ((pd_id, pd_name), members) in group_by(all, |s| {
        (s.protection_domain_id, s.protection_domain_name.clone())
    }) {
        lines.push(String::new());
        lines.push(format!(
            "Protection Domain {} Name: {}",
            fmt_id(pd_id),
            or_na(&pd_name)
        ));
        for s in members {
            lines.push(format!(
                "SDS ID: {} Name: {} State: {} IP: {} Port: {}",
                fmt_id(s.id),
                or_na(&s.name),
                state(s.state),
                s.ip,
                s.port
            ));
        }
    }
    lines
}

fn sds(s: &SdsInfo) -> Vec<String> {
    let total: u64 = s.devices.iter().map(|d| d.capacity_bytes).sum();
    let mut lines = vec![
        format!("SDS {} Name: {}", fmt_id(s.id), or_na(&s.name)),
        format!(
            "Protection Domain: {}, Name: {}",
            fmt_id(s.protection_domain_id),
            or_na(&s.protection_domain_name)
        ),
        format!("State: {}", state(s.state)),
        format!("IP: {} Port: {}", s.ip, s.port),
        format!("Total capacity: {}", size(total)),
        format!(
            "Device information (total {}):",
            count(s.devices.len(), "device", "devices")
        ),
    ];
    for (i, d) in s.devices.iter().enumerate() {
        let state = match (d.failed, d.removing) {
            (true, true) => "  State: Failed, Removing",
            (true, false) => "  State: Failed (its data was rebuilt elsewhere; remove it with --remove_sds_device)",
            (false, true) => "  State: Removing",
            (false, false) => "",
        };
        lines.push(format!(
            "\t{}: Name: {}  Path: {}  ID: {}{state}",
            i + 1,
            or_na(&d.name),
            d.path,
            fmt_id(d.id)
        ));
        let used = match d.used_chunks {
            Some(n) => format!(
                "{} in {}",
                size(n.saturating_mul(CHUNK_SIZE)),
                count(n as usize, "chunk copy", "chunk copies")
            ),
            None => "unknown (the SDS did not answer)".to_string(),
        };
        lines.push(format!(
            "\t\tStorage Pool: {} (ID {}), Capacity: {}, Used: {used}",
            or_na(&d.pool_name),
            fmt_id(d.pool_id),
            size(d.capacity_bytes)
        ));
    }
    lines
}

fn protection_domain(pd: &PdInfo) -> Vec<String> {
    let volumes: usize = pd.pools.iter().map(|p| p.volumes.len()).sum();
    let free: u64 = pd.pools.iter().map(|p| p.free_for_thick_bytes).sum();
    let mut lines = vec![format!(
        "Protection Domain {} (Name: {}) has {}, {}, {} and {} available for volume allocation",
        fmt_id(pd.id),
        or_na(&pd.name),
        count(pd.pools.len(), "storage pool", "storage pools"),
        count(pd.sds.len(), "SDS node", "SDS nodes"),
        count(volumes, "volume", "volumes"),
        size(free)
    )];
    if !pd.pools.is_empty() {
        lines.push("Storage Pools:".to_string());
    }
    for p in &pd.pools {
        lines.push(format!(
            "\tStorage Pool {} Name: {} Media: {} Protection: {} Total capacity: {} \
             Free for thick volumes: {} Volumes: {}",
            fmt_id(p.id),
            or_na(&p.name),
            media(p.media_type),
            protection(p.protection),
            size(p.raw_capacity_bytes),
            size(p.free_for_thick_bytes),
            p.volumes.len()
        ));
    }
    if !pd.sds.is_empty() {
        lines.push("SDS nodes:".to_string());
    }
    for (id, name) in &pd.sds {
        lines.push(format!("\tSDS ID: {} Name: {}", fmt_id(*id), or_na(name)));
    }
    lines
}

fn storage_pool(p: &PoolInfo) -> Vec<String> {
    let mut lines = vec![
        format!(
            "Storage Pool {} (ID: {}) has {} and {} available for volume allocation",
            or_na(&p.name),
            fmt_id(p.id),
            count(p.volumes.len(), "volume", "volumes"),
            size(p.free_for_thick_bytes)
        ),
        format!(
            "\tProtection Domain: {} (Name: {})",
            fmt_id(p.protection_domain_id),
            or_na(&p.protection_domain_name)
        ),
        format!("\tMedia type: {}", media(p.media_type)),
        format!("\tProtection: {}", protection(p.protection)),
        format!(
            "\t{} on {}",
            count(p.devices, "device", "devices"),
            count(p.sds, "SDS node", "SDS nodes")
        ),
        match p.protection {
            Protection::TwoCopies => {
                "\tEvery chunk has two copies, so volumes can use half of the raw capacity:"
            }
            Protection::SingleCopy => {
                "\tEvery chunk has one copy, so volumes can use all of the raw capacity:"
            }
        }
        .to_string(),
        format!("\t{} total capacity (raw)", size(p.raw_capacity_bytes)),
        format!("\t{} usable capacity", size(p.usable_capacity_bytes)),
        format!(
            "\t{} in-use capacity (raw, chunk copies stored)",
            size(p.used_bytes)
        ),
        format!(
            "\t{} unused capacity (raw)",
            size(p.raw_capacity_bytes.saturating_sub(p.used_bytes))
        ),
        format!(
            "\t{} reserved by thick volumes",
            size(p.thick_reserved_bytes)
        ),
        format!("\t{} free for thick volumes", size(p.free_for_thick_bytes)),
        "\tProtection (volume data):".to_string(),
    ];
    // Each pool shows the figures its mode can have: a single-copy pool has nothing
    // protected or degraded, a two-copy pool nothing unprotected.
    match p.protection {
        Protection::TwoCopies => lines.extend([
            format!(
                "\t{} protected (two copies)",
                size(p.health.protected_bytes)
            ),
            format!(
                "\t{} degraded (one copy: being rebuilt or moved)",
                size(p.health.degraded_bytes)
            ),
        ]),
        Protection::SingleCopy => lines.push(format!(
            "\t{} unprotected (one copy, by design)",
            size(p.health.unprotected_bytes)
        )),
    }
    lines.extend([
        format!(
            "\t{} failed (no copy on a running SDS; readable again when it returns)",
            size(p.health.failed_bytes)
        ),
        progress("Rebuild", &p.rebuild, p.rebuild_policy),
        progress("Rebalance", &p.rebalance, p.rebalance_policy),
    ]);
    if !p.volumes.is_empty() {
        lines.push("\tVolumes:".to_string());
    }
    for (id, name) in &p.volumes {
        lines.push(format!(
            "\t\tVolume ID: {} Name: {}",
            fmt_id(*id),
            or_na(name)
        ));
    }
    lines
}

/// One line of background copying: what is left, how fast, and the policy.
fn progress(what: &str, p: &Progress, policy: Policy) -> String {
    let policy = match policy {
        Policy::NoLimit => "no limit".to_string(),
        Policy::LimitConcurrentIo { chunks } => format!("at most {chunks} chunks at a time"),
        Policy::LimitBandwidth { kbps } => format!("at most {kbps} KB/s"),
        Policy::FavorApplicationIo => "favor application I/O".to_string(),
    };
    if p.chunks_left == 0 {
        return format!(
            "\t{what}: idle, {} copied since the MDM started (policy: {policy})",
            size(p.bytes_done)
        );
    }
    let eta = p
        .eta_secs
        .map_or_else(|| "unknown".to_string(), |s| format!("{s} s"));
    format!(
        "\t{what}: {} left ({} chunks) at {}/s, ETA {eta} (policy: {policy})",
        size(p.bytes_left),
        p.chunks_left,
        size(p.rate_bytes_per_sec)
    )
}

fn mapped_to(n: usize) -> String {
    if n == 0 {
        "Unmapped".to_string()
    } else {
        format!("Mapped to {}", count(n, "SDC", "SDCs"))
    }
}

fn all_volumes(all: &[VolumeInfo]) -> Vec<String> {
    let mut lines = vec![format!(
        "Query-all-volumes returned {}.",
        count(all.len(), "volume", "volumes")
    )];
    let groups = group_by(all, |v| {
        (
            v.protection_domain_name.clone(),
            v.pool_id,
            v.pool_name.clone(),
        )
    });
    for ((pd, pool_id, pool), members) in groups {
        lines.push(String::new());
        lines.push(format!(
            "Protection Domain {}, Storage Pool {} Name: {}",
            or_na(&pd),
            fmt_id(pool_id),
            or_na(&pool)
        ));
        for v in members {
            lines.push(format!(
                " Volume ID: {} Name: {} Size: {} {} {}",
                fmt_id(v.id),
                or_na(&v.name),
                size(v.size_bytes),
                if v.thin {
                    "Thin-provisioned"
                } else {
                    "Thick-provisioned"
                },
                mapped_to(v.mapped_sdc.len())
            ));
        }
    }
    lines
}

fn volume(v: &VolumeInfo) -> Vec<String> {
    let mut lines = vec![
        format!(">> Volume ID: {} Name: {}", fmt_id(v.id), or_na(&v.name)),
        format!(
            "   Size: {} in {} of {}",
            size(v.size_bytes),
            count(v.chunks as usize, "chunk", "chunks"),
            chunk_text()
        ),
        format!(
            "   {}",
            if v.thin {
                "Thin provisioned"
            } else {
                "Thick provisioned"
            }
        ),
        format!(
            "   Storage Pool {} Name: {}",
            fmt_id(v.pool_id),
            or_na(&v.pool_name)
        ),
        format!("   Protection Domain: {}", or_na(&v.protection_domain_name)),
        format!("   Layout epoch: {}", v.epoch),
    ];
    if v.mapped_sdc.is_empty() {
        lines.push("   Not mapped to any SDC".to_string());
    } else {
        lines.push("   Mapped SDC:".to_string());
    }
    for (id, name, lun) in &v.mapped_sdc {
        lines.push(format!(
            "      SDC ID: {} Name: {} LUN: {lun}",
            fmt_id(*id),
            or_na(name)
        ));
    }
    lines
}

fn all_sdc(all: &[SdcInfo]) -> Vec<String> {
    let mut lines = vec![format!(
        "Query-all-SDC returned {}.",
        count(all.len(), "SDC node", "SDC nodes")
    )];
    for s in all {
        lines.push(format!(
            "SDC ID: {} Name: {} IP: {} Portal group: {} Mapped volumes: {}",
            fmt_id(s.id),
            or_na(&s.name),
            s.ip,
            s.number,
            s.volumes.len()
        ));
        for (id, name, lun) in &s.volumes {
            lines.push(format!(
                "\tVolume ID: {} Name: {} LUN: {lun}",
                fmt_id(*id),
                or_na(name)
            ));
        }
    }
    lines
}

fn all_initiators(all: &[InitiatorInfo]) -> Vec<String> {
    let mut lines = vec![format!(
        "Query all SCSI Initiators returned {}.",
        count(all.len(), "initiator", "initiators")
    )];
    for i in all {
        lines.extend(initiator(i));
    }
    lines
}

fn initiator(i: &InitiatorInfo) -> Vec<String> {
    let mut lines = vec![format!(
        "SCSI Initiator ID: {} Name: {} IQN: {} CHAP: {}",
        fmt_id(i.id),
        or_na(&i.name),
        i.iqn,
        chap_mode(i.chap, i.chap_username.as_deref())
    )];
    if i.luns.is_empty() {
        lines.push("\tNo volumes mapped".to_string());
    }
    let mut luns: Vec<_> = i.luns.iter().collect();
    luns.sort_by_key(|l| l.lun);
    for l in luns {
        lines.push(format!(
            "\tLUN {}: volume {} (ID {}) {}",
            l.lun,
            or_na(&l.volume_name),
            fmt_id(l.volume_id),
            access_mode_name(l.access)
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::api::{
        AccessMode, By, DeviceInfo, DeviceSpec, Health, InitiatorLun, MapChap, MapEntry,
        MapInitiator,
    };

    const GB: u64 = 1 << 30;
    const MB: u64 = 1 << 20;

    fn add_sds(devices: &[(&str, &str)]) -> AddSds {
        AddSds {
            ip: "10.0.0.11".into(),
            port: None,
            protection_domain: "awspdomain01".into(),
            name: Some("aws1sds".into()),
            devices: devices
                .iter()
                .map(|(path, pool)| DeviceSpec {
                    path: path.to_string(),
                    pool: pool.to_string(),
                    name: None,
                })
                .collect(),
        }
    }

    fn sds_info(id: u64, name: &str, pd: (u64, &str), state: SdsState) -> SdsInfo {
        SdsInfo {
            id,
            name: name.into(),
            ip: format!("10.0.0.{id}"),
            port: 7072,
            protection_domain_id: pd.0,
            protection_domain_name: pd.1.into(),
            state,
            devices: vec![],
        }
    }

    fn pool_info() -> PoolInfo {
        PoolInfo {
            id: 0x9c7e,
            name: "pool03".into(),
            protection_domain_id: 0x5a8e,
            protection_domain_name: "awspdomain01".into(),
            media_type: MediaType::Hdd,
            protection: Protection::TwoCopies,
            devices: 2,
            sds: 2,
            raw_capacity_bytes: 200 * GB,
            usable_capacity_bytes: 100 * GB,
            thick_reserved_bytes: 60 * GB,
            used_bytes: 50 * GB,
            free_for_thick_bytes: 40 * GB,
            volumes: vec![(0x7a5a, "awsvol01".into())],
            health: Health {
                protected_bytes: 60 * GB,
                degraded_bytes: GB,
                unprotected_bytes: 0,
                failed_bytes: 0,
            },
            rebuild: Progress {
                chunks_left: 1024,
                bytes_left: GB,
                bytes_done: 0,
                rate_bytes_per_sec: 100 << 20,
                eta_secs: Some(11),
            },
            rebalance: Default::default(),
            rebuild_policy: Default::default(),
            rebalance_policy: Policy::NoLimit,
        }
    }

    fn volume_info(mapped: Vec<(u64, String, u64)>) -> VolumeInfo {
        VolumeInfo {
            id: 0x7a5a,
            name: "awsvol01".into(),
            size_bytes: 24 * GB,
            thin: true,
            pool_id: 0x9c7e,
            pool_name: "pool03".into(),
            protection_domain_name: "awspdomain01".into(),
            chunks: 24 * 1024,
            epoch: 7,
            mapped_sdc: mapped,
        }
    }

    #[test]
    fn sizes_as_scaleio_prints_them() {
        assert_eq!(size(0), "0 Bytes");
        assert_eq!(size(1000), "1000 Bytes");
        assert_eq!(size(1500), "1.4 KB (1500 Bytes)");
        assert_eq!(size(20 * GB), "20.0 GB (20480 MB)");
        assert_eq!(size(24 * GB), "24.0 GB (24576 MB)");
        assert_eq!(size(512 * MB), "512.0 MB (524288 KB)");
        assert_eq!(size(1371 * GB + 512 * MB), "1.3 TB (1371 GB)");
        // Truncated, never rounded up: 40.99 GB is 40.9 GB.
        assert_eq!(size(41 * GB - 10 * MB), "40.9 GB (41974 MB)");
        assert_eq!(size(u64::MAX), "16383.9 PB (16777215 TB)");
    }

    #[test]
    fn created_objects_say_what_and_which_id() {
        let pd = AdminRequest::AddProtectionDomain {
            name: "awspdomain01".into(),
        };
        let reply = AdminReply::Created {
            kind: "protection domain".into(),
            id: 0x5a8e_5b2c_0000_0000,
            name: "awspdomain01".into(),
        };
        assert_eq!(
            text(&pd, &reply),
            "Successfully created protection domain awspdomain01. Object ID 5a8e5b2c00000000\n"
        );
        let sds =
            AdminRequest::AddSds(add_sds(&[("/dev/xvdf", "pool03"), ("/dev/xvdg", "pool03")]));
        let reply = AdminReply::Created {
            kind: "SDS".into(),
            id: 0xe1,
            name: "aws1sds".into(),
        };
        assert_eq!(
            text(&sds, &reply),
            "Successfully created SDS aws1sds with 2 devices in pool03. Object ID 00000000000000e1\n"
        );
        let pool = AdminRequest::AddStoragePool {
            pd: By::Name("pd".into()),
            name: "pool03".into(),
            media_type: MediaType::Ssd,
            protection: Protection::TwoCopies,
        };
        let reply = AdminReply::Created {
            kind: "storage pool".into(),
            id: 1,
            name: "pool03".into(),
        };
        assert_eq!(
            text(&pool, &reply),
            "Successfully created storage pool pool03 (media type SSD, two copies). Object ID \
             0000000000000001\n"
        );
        let dev = AdminRequest::AddSdsDevice {
            sds: By::Id(1),
            device: DeviceSpec {
                path: "/dev/xvdg".into(),
                pool: "pool03".into(),
                name: None,
            },
        };
        let reply = AdminReply::Created {
            kind: "device".into(),
            id: 2,
            name: "".into(),
        };
        assert_eq!(
            text(&dev, &reply),
            "Successfully added device N/A (/dev/xvdg) to storage pool pool03. Object ID 0000000000000002\n"
        );
        let reply = AdminReply::Created {
            kind: "widget".into(),
            id: 3,
            name: "w".into(),
        };
        assert_eq!(
            text(&AdminRequest::QueryCluster, &reply),
            "Successfully created widget w. Object ID 0000000000000003\n"
        );
    }

    #[test]
    fn volumes_say_provisioning_and_rounding() {
        let add = |size_bytes, thin| AdminRequest::AddVolume {
            pd: By::Name("pd".into()),
            pool: By::Name("p".into()),
            name: Some("awsvol01".into()),
            size_bytes,
            thin,
        };
        let reply = |size_bytes| AdminReply::Volume {
            id: 0x7a5a_9f1e_0000_0000,
            name: "awsvol01".into(),
            size_bytes,
        };
        assert_eq!(
            text(&add(20 * GB, false), &reply(20 * GB)),
            "Successfully created volume awsvol01 of size 20.0 GB (20480 MB), thick provisioned. \
             Object ID 7a5a9f1e00000000\n"
        );
        let asked = 322_122_548; // 0.3 GB
        assert_eq!(
            text(&add(asked, true), &reply(308 * MB)),
            "Size 307.2 MB (314572 KB) rounded up to a multiple of 1 MB (the chunk size): \
             308.0 MB (315392 KB)\n\
             Successfully created volume awsvol01 of size 308.0 MB (315392 KB), thin provisioned. \
             Object ID 7a5a9f1e00000000\n"
        );
        let grow = AdminRequest::ModifyVolumeCapacity {
            volume: By::Name("awsvol01".into()),
            size_bytes: 30 * GB,
        };
        assert_eq!(
            text(&grow, &reply(30 * GB)),
            "Successfully modified the capacity of volume awsvol01 (ID 7a5a9f1e00000000) to \
             30.0 GB (30720 MB)\n"
        );
        assert_eq!(
            text(&AdminRequest::QueryAllVolumes, &reply(GB)),
            "Volume awsvol01 (ID 7a5a9f1e00000000) has size 1.0 GB (1024 MB)\n"
        );
    }

    #[test]
    fn done_is_the_mdms_own_words() {
        let req = AdminRequest::MapVolumeToSdc {
            volume: By::Name("v".into()),
            sdc: By::Ip("10.0.0.5".into()),
        };
        let reply =
            AdminReply::Done("Successfully mapped volume v to SDC 10.0.0.5 as LUN 0".into());
        assert_eq!(
            text(&req, &reply),
            "Successfully mapped volume v to SDC 10.0.0.5 as LUN 0\n"
        );
    }

    #[test]
    fn all_sds_grouped_by_protection_domain() {
        let all = vec![
            sds_info(11, "aws1sds", (0xa, "pd-a"), SdsState::Connected),
            sds_info(12, "", (0xb, "pd-b"), SdsState::Disconnected),
            sds_info(13, "aws3sds", (0xa, "pd-a"), SdsState::Connected),
        ];
        assert_eq!(
            text(&AdminRequest::QueryAllSds, &AdminReply::AllSds(all)),
            "Query-all-SDS returned 3 SDS nodes.\n\
             \n\
             Protection Domain 000000000000000a Name: pd-a\n\
             SDS ID: 000000000000000b Name: aws1sds State: Connected, Joined IP: 10.0.0.11 Port: 7072\n\
             SDS ID: 000000000000000d Name: aws3sds State: Connected, Joined IP: 10.0.0.13 Port: 7072\n\
             \n\
             Protection Domain 000000000000000b Name: pd-b\n\
             SDS ID: 000000000000000c Name: N/A State: Disconnected, Joined IP: 10.0.0.12 Port: 7072\n"
        );
        assert_eq!(
            text(&AdminRequest::QueryAllSds, &AdminReply::AllSds(vec![])),
            "Query-all-SDS returned 0 SDS nodes.\n"
        );
    }

    #[test]
    fn one_sds_with_devices() {
        let mut s = sds_info(11, "aws1sds", (0xa, "pd-a"), SdsState::Connected);
        s.devices = vec![
            DeviceInfo {
                id: 0xd1,
                name: "xvdf".into(),
                path: "/dev/xvdf".into(),
                pool_id: 0x9c7e,
                pool_name: "pool03".into(),
                capacity_bytes: 100 * GB,
                used_chunks: Some(12),
                failed: false,
                removing: false,
            },
            DeviceInfo {
                id: 0xd2,
                name: "".into(),
                path: "/dev/xvdg".into(),
                pool_id: 0x9c7e,
                pool_name: "pool03".into(),
                capacity_bytes: 50 * GB,
                used_chunks: None,
                failed: false,
                removing: false,
            },
        ];
        let out = text(
            &AdminRequest::QuerySds { sds: By::Id(11) },
            &AdminReply::Sds(s),
        );
        assert_eq!(
            out,
            "SDS 000000000000000b Name: aws1sds\n\
             Protection Domain: 000000000000000a, Name: pd-a\n\
             State: Connected, Joined\n\
             IP: 10.0.0.11 Port: 7072\n\
             Total capacity: 150.0 GB (153600 MB)\n\
             Device information (total 2 devices):\n\
             \t1: Name: xvdf  Path: /dev/xvdf  ID: 00000000000000d1\n\
             \t\tStorage Pool: pool03 (ID 0000000000009c7e), Capacity: 100.0 GB (102400 MB), \
             Used: 12.0 MB (12288 KB) in 12 chunk copies\n\
             \t2: Name: N/A  Path: /dev/xvdg  ID: 00000000000000d2\n\
             \t\tStorage Pool: pool03 (ID 0000000000009c7e), Capacity: 50.0 GB (51200 MB), \
             Used: unknown (the SDS did not answer)\n"
        );
    }

    #[test]
    fn storage_pool_capacity_lines() {
        let out = text(
            &AdminRequest::QueryAllSds,
            &AdminReply::StoragePool(pool_info()),
        );
        assert_eq!(
            out,
            "Storage Pool pool03 (ID: 0000000000009c7e) has 1 volume and 40.0 GB (40960 MB) \
             available for volume allocation\n\
             \tProtection Domain: 0000000000005a8e (Name: awspdomain01)\n\
             \tMedia type: HDD\n\
             \tProtection: two copies\n\
             \t2 devices on 2 SDS nodes\n\
             \tEvery chunk has two copies, so volumes can use half of the raw capacity:\n\
             \t200.0 GB (204800 MB) total capacity (raw)\n\
             \t100.0 GB (102400 MB) usable capacity\n\
             \t50.0 GB (51200 MB) in-use capacity (raw, chunk copies stored)\n\
             \t150.0 GB (153600 MB) unused capacity (raw)\n\
             \t60.0 GB (61440 MB) reserved by thick volumes\n\
             \t40.0 GB (40960 MB) free for thick volumes\n\
             \tProtection (volume data):\n\
             \t60.0 GB (61440 MB) protected (two copies)\n\
             \t1.0 GB (1024 MB) degraded (one copy: being rebuilt or moved)\n\
             \t0 Bytes failed (no copy on a running SDS; readable again when it returns)\n\
             \tRebuild: 1.0 GB (1024 MB) left (1024 chunks) at 100.0 MB (102400 KB)/s, ETA 11 s \
             (policy: at most 8 chunks at a time)\n\
             \tRebalance: idle, 0 Bytes copied since the MDM started (policy: no limit)\n\
             \tVolumes:\n\
             \t\tVolume ID: 0000000000007a5a Name: awsvol01\n"
        );
    }

    #[test]
    fn a_single_copy_pool_says_it_has_no_redundancy_and_counts_raw_capacity() {
        let pool = PoolInfo {
            protection: Protection::SingleCopy,
            usable_capacity_bytes: 200 * GB,
            free_for_thick_bytes: 140 * GB,
            health: Health {
                unprotected_bytes: 60 * GB,
                failed_bytes: 2 * GB,
                ..Health::default()
            },
            rebuild: Progress::default(),
            ..pool_info()
        };
        let out = text(&AdminRequest::QueryAllSds, &AdminReply::StoragePool(pool));
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[3..14],
            [
                "\tProtection: single copy (no redundancy: losing an SDS or device loses its \
                 chunks)",
                "\t2 devices on 2 SDS nodes",
                "\tEvery chunk has one copy, so volumes can use all of the raw capacity:",
                "\t200.0 GB (204800 MB) total capacity (raw)",
                "\t200.0 GB (204800 MB) usable capacity",
                "\t50.0 GB (51200 MB) in-use capacity (raw, chunk copies stored)",
                "\t150.0 GB (153600 MB) unused capacity (raw)",
                "\t60.0 GB (61440 MB) reserved by thick volumes",
                "\t140.0 GB (143360 MB) free for thick volumes",
                "\tProtection (volume data):",
                "\t60.0 GB (61440 MB) unprotected (one copy, by design)",
            ]
        );
        assert_eq!(
            lines[14],
            "\t2.0 GB (2048 MB) failed (no copy on a running SDS; readable again when it returns)"
        );
        assert!(!out.contains("protected (two copies)") && !out.contains("degraded"));
        let req = AdminRequest::AddStoragePool {
            pd: By::Name("pd".into()),
            name: "scratch".into(),
            media_type: MediaType::Ssd,
            protection: Protection::SingleCopy,
        };
        let reply = AdminReply::Created {
            kind: "storage pool".into(),
            id: 1,
            name: "scratch".into(),
        };
        assert_eq!(
            text(&req, &reply),
            "Successfully created storage pool scratch (media type SSD, single copy (no \
             redundancy: losing an SDS or device loses its chunks)). Object ID 0000000000000001\n"
        );
    }

    #[test]
    fn protection_domain_summary() {
        let pd = PdInfo {
            id: 0x5a8e,
            name: "awspdomain01".into(),
            pools: vec![pool_info()],
            sds: vec![(0xb, "aws1sds".into())],
        };
        assert_eq!(
            text(
                &AdminRequest::QueryAllSds,
                &AdminReply::ProtectionDomain(pd)
            ),
            "Protection Domain 0000000000005a8e (Name: awspdomain01) has 1 storage pool, 1 SDS \
             node, 1 volume and 40.0 GB (40960 MB) available for volume allocation\n\
             Storage Pools:\n\
             \tStorage Pool 0000000000009c7e Name: pool03 Media: HDD Protection: two copies Total \
             capacity: 200.0 GB (204800 MB) Free for thick volumes: 40.0 GB (40960 MB) Volumes: 1\n\
             SDS nodes:\n\
             \tSDS ID: 000000000000000b Name: aws1sds\n"
        );
    }

    #[test]
    fn volumes_one_and_all() {
        let mapped = volume_info(vec![(0x5, "gw1".into(), 0)]);
        assert_eq!(
            text(
                &AdminRequest::QueryAllSds,
                &AdminReply::Volume1(mapped.clone())
            ),
            ">> Volume ID: 0000000000007a5a Name: awsvol01\n   \
             Size: 24.0 GB (24576 MB) in 24576 chunks of 1 MB\n   \
             Thin provisioned\n   \
             Storage Pool 0000000000009c7e Name: pool03\n   \
             Protection Domain: awspdomain01\n   \
             Layout epoch: 7\n   \
             Mapped SDC:\n      \
             SDC ID: 0000000000000005 Name: gw1 LUN: 0\n"
        );
        let unmapped = VolumeInfo {
            thin: false,
            ..volume_info(vec![])
        };
        assert!(text(
            &AdminRequest::QueryAllSds,
            &AdminReply::Volume1(unmapped.clone())
        )
        .contains("   Thick provisioned\n"));
        assert_eq!(
            text(
                &AdminRequest::QueryAllVolumes,
                &AdminReply::AllVolumes(vec![mapped, unmapped])
            ),
            "Query-all-volumes returned 2 volumes.\n\
             \n\
             Protection Domain awspdomain01, Storage Pool 0000000000009c7e Name: pool03\n \
             Volume ID: 0000000000007a5a Name: awsvol01 Size: 24.0 GB (24576 MB) \
             Thin-provisioned Mapped to 1 SDC\n \
             Volume ID: 0000000000007a5a Name: awsvol01 Size: 24.0 GB (24576 MB) \
             Thick-provisioned Unmapped\n"
        );
    }

    #[test]
    fn sdc_and_cluster() {
        let sdc = SdcInfo {
            id: 0x5,
            name: "gw1".into(),
            ip: "10.0.0.5".into(),
            number: 1,
            volumes: vec![(0x7a5a, "awsvol01".into(), 0)],
        };
        assert_eq!(
            text(&AdminRequest::QueryAllSdc, &AdminReply::AllSdc(vec![sdc])),
            "Query-all-SDC returned 1 SDC node.\n\
             SDC ID: 0000000000000005 Name: gw1 IP: 10.0.0.5 Portal group: 1 Mapped volumes: 1\n\
             \tVolume ID: 0000000000007a5a Name: awsvol01 LUN: 0\n"
        );
        let c = ClusterInfo {
            system_id: 0x1a2b,
            mdm_addr: "10.0.0.1:6611".into(),
            protection_domains: 1,
            storage_pools: 2,
            sds: 4,
            sds_connected: 3,
            volumes: 3,
            sdc: 2,
            raw_capacity_bytes: 400 * GB,
            used_bytes: 12 * GB,
            events: Vec::new(),
        };
        assert_eq!(
            text(&AdminRequest::QueryCluster, &AdminReply::Cluster(c)),
            "System ID: 0000000000001a2b\n\
             MDM: 10.0.0.1:6611\n\
             Protection Domains: 1, Storage Pools: 2\n\
             SDS nodes: 4 (3 connected, 1 disconnected)\n\
             Volumes: 3, SDC nodes: 2\n\
             Raw capacity: 400.0 GB (409600 MB), in use: 12.0 GB (12288 MB)\n"
        );
    }

    #[test]
    fn json_is_the_bare_info_with_hex_ids() {
        let v: Value = serde_json::from_str(&json(&AdminReply::StoragePool(pool_info()))).unwrap();
        assert_eq!(v["id"], "0000000000009c7e");
        assert_eq!(v["protection_domain_id"], "0000000000005a8e");
        assert_eq!(v["name"], "pool03");
        assert_eq!(v["raw_capacity_bytes"], 200 * GB);
        assert_eq!(v["media_type"], "Hdd");
        assert_eq!(v["protection"], "TwoCopies");
        assert_eq!(v["health"]["unprotected_bytes"], 0);
        assert_eq!(v["volumes"][0][0], "0000000000007a5a");
        assert_eq!(v["volumes"][0][1], "awsvol01");

        let mut s = sds_info(11, "a", (1, "pd"), SdsState::Connected);
        s.devices.push(DeviceInfo {
            id: 0xd1,
            name: "d".into(),
            path: "/dev/d".into(),
            pool_id: 0x9c7e,
            pool_name: "p".into(),
            capacity_bytes: GB,
            used_chunks: Some(3),
            failed: false,
            removing: false,
        });
        let v: Value = serde_json::from_str(&json(&AdminReply::AllSds(vec![s]))).unwrap();
        assert_eq!(v[0]["id"], "000000000000000b");
        assert_eq!(v[0]["port"], 7072);
        assert_eq!(v[0]["state"], "Connected");
        assert_eq!(v[0]["devices"][0]["id"], "00000000000000d1");
        assert_eq!(v[0]["devices"][0]["pool_id"], "0000000000009c7e");
        assert_eq!(v[0]["devices"][0]["used_chunks"], 3);

        let v: Value = serde_json::from_str(&json(&AdminReply::Volume1(volume_info(vec![(
            0x5,
            "gw1".into(),
            9,
        )]))))
        .unwrap();
        assert_eq!(
            v["mapped_sdc"][0],
            serde_json::json!(["0000000000000005", "gw1", 9])
        );
        assert_eq!(v["epoch"], 7);

        let c = ClusterInfo {
            system_id: u64::MAX,
            mdm_addr: "m".into(),
            protection_domains: 0,
            storage_pools: 0,
            sds: 0,
            sds_connected: 0,
            volumes: 0,
            sdc: 0,
            raw_capacity_bytes: 0,
            used_bytes: 0,
            events: Vec::new(),
        };
        let v: Value = serde_json::from_str(&json(&AdminReply::Cluster(c))).unwrap();
        assert_eq!(v["system_id"], "ffffffffffffffff");

        let out = json(&AdminReply::Done("ok".into()));
        assert_eq!(out, "{\n  \"Done\": \"ok\"\n}\n");
    }

    #[test]
    fn csv_rows_line_by_line() {
        let rows = vec![
            Row {
                line: 2,
                sds: Some(add_sds(&[("/dev/xvdf", "pool03")])),
            },
            Row { line: 3, sds: None },
            Row {
                line: 4,
                sds: Some(add_sds(&[("/dev/a", "p1"), ("/dev/b", "p2")])),
            },
        ];
        assert_eq!(
            csv_rows(&rows, &[(0xe1, "aws1sds".into()), (0xe2, "sds2".into())]),
            "Row 2: added SDS aws1sds (ID 00000000000000e1) with 1 device in pool03\n\
             Row 3: not an SDS, skipped\n\
             Row 4: added SDS sds2 (ID 00000000000000e2) with 2 devices in p1, p2\n\
             Successfully added 2 SDS nodes from 3 rows.\n"
        );
        assert!(csv_rows(&rows, &[(0xe1, "aws1sds".into())]).contains(
            "Row 4: SDS 10.0.0.11 was sent but the MDM reported no ID for it; check with --query_all_sds\n"
        ));
        assert_eq!(
            text(
                &AdminRequest::QueryCluster,
                &AdminReply::CreatedMany(vec![(1, "a".into())])
            ),
            "Successfully created 1 SDS node.\nSDS ID: 0000000000000001 Name: a\n"
        );
    }

    fn initiator_info(
        id: u64,
        name: &str,
        chap: ChapMode,
        luns: Vec<InitiatorLun>,
    ) -> InitiatorInfo {
        InitiatorInfo {
            id,
            name: name.into(),
            iqn: format!("iqn.1998-01.com.vmware:{name}-4f2a"),
            chap,
            chap_username: (chap != ChapMode::None).then(|| name.to_string()),
            luns,
        }
    }

    fn lun(lun: u64, volume_id: u64, volume_name: &str, access: AccessMode) -> InitiatorLun {
        InitiatorLun {
            lun,
            volume_id,
            volume_name: volume_name.into(),
            access,
        }
    }

    #[test]
    fn initiators_show_chap_mode_and_luns_never_secrets() {
        let all = vec![
            initiator_info(
                0xa1,
                "svrsan2011",
                ChapMode::Mutual,
                vec![
                    lun(1, 0x7a5b, "awsvol02", AccessMode::ReadOnly),
                    lun(0, 0x7a5a, "awsvol01", AccessMode::ReadWrite),
                ],
            ),
            initiator_info(0xa2, "svrsan2012", ChapMode::None, vec![]),
            initiator_info(0xa3, "svrsan2013", ChapMode::OneWay, vec![]),
        ];
        assert_eq!(
            text(
                &AdminRequest::QueryAllScsiInitiators,
                &AdminReply::AllScsiInitiators(all.clone())
            ),
            "Query all SCSI Initiators returned 3 initiators.\n\
             SCSI Initiator ID: 00000000000000a1 Name: svrsan2011 IQN: \
             iqn.1998-01.com.vmware:svrsan2011-4f2a CHAP: mutual (username svrsan2011)\n\
             \tLUN 0: volume awsvol01 (ID 0000000000007a5a) ReadWrite\n\
             \tLUN 1: volume awsvol02 (ID 0000000000007a5b) ReadOnly\n\
             SCSI Initiator ID: 00000000000000a2 Name: svrsan2012 IQN: \
             iqn.1998-01.com.vmware:svrsan2012-4f2a CHAP: none\n\
             \tNo volumes mapped\n\
             SCSI Initiator ID: 00000000000000a3 Name: svrsan2013 IQN: \
             iqn.1998-01.com.vmware:svrsan2013-4f2a CHAP: one-way (username svrsan2013)\n\
             \tNo volumes mapped\n"
        );
        assert_eq!(
            text(
                &AdminRequest::QueryAllScsiInitiators,
                &AdminReply::AllScsiInitiators(vec![])
            ),
            "Query all SCSI Initiators returned 0 initiators.\n"
        );
        assert_eq!(
            text(
                &AdminRequest::QueryScsiInitiator {
                    initiator: By::Id(0xa2)
                },
                &AdminReply::ScsiInitiator(all[1].clone())
            ),
            "SCSI Initiator ID: 00000000000000a2 Name: svrsan2012 IQN: \
             iqn.1998-01.com.vmware:svrsan2012-4f2a CHAP: none\n\
             \tNo volumes mapped\n"
        );
        let v: Value = serde_json::from_str(&json(&AdminReply::AllScsiInitiators(all))).unwrap();
        assert_eq!(v[0]["id"], "00000000000000a1");
        assert_eq!(v[0]["chap"], "Mutual");
        assert_eq!(v[0]["chap_username"], "svrsan2011");
        assert_eq!(v[0]["luns"][0]["volume_id"], "0000000000007a5b");
        assert_eq!(v[0]["luns"][0]["access"], "ReadOnly");
        assert_eq!(v[1]["chap_username"], Value::Null);
        let v: Value = serde_json::from_str(&json(&AdminReply::ScsiInitiator(initiator_info(
            0xa3,
            "h",
            ChapMode::OneWay,
            vec![],
        ))))
        .unwrap();
        assert_eq!(v["id"], "00000000000000a3");
    }

    #[test]
    fn a_new_initiator_says_its_chap_mode() {
        let add = |chap: Option<Chap>| AdminRequest::AddScsiInitiator {
            name: "svrsan2011".into(),
            iqn: "iqn.1998-01.com.vmware:svrsan2011-4f2a".into(),
            chap,
        };
        let reply = AdminReply::Created {
            kind: "SCSI initiator".into(),
            id: 0xa1,
            name: "svrsan2011".into(),
        };
        assert_eq!(
            text(&add(None), &reply),
            "Successfully created SCSI initiator svrsan2011 (IQN \
             iqn.1998-01.com.vmware:svrsan2011-4f2a, CHAP: none). Object ID 00000000000000a1\n"
        );
        let mutual = Chap {
            username: "esx".into(),
            secret: "twelve-bytes".into(),
            mutual: Some(("dn".into(), "other-secret".into())),
        };
        let out = text(&add(Some(mutual)), &reply);
        assert!(out.contains("CHAP: mutual (username esx))"), "{out}");
        assert!(!out.contains("twelve-bytes") && !out.contains("other-secret"));
    }

    #[test]
    fn applied_maps_list_their_changes() {
        assert_eq!(
            map_applied(&[], "conf/initiators.toml"),
            "No changes: the map in force already matches conf/initiators.toml\n"
        );
        let changes = vec![
            "Added SCSI initiator svrsan2011".to_string(),
            "Mapped volume awsvol01 to svrsan2011 as LUN 0 (ReadWrite)".to_string(),
        ];
        assert_eq!(
            map_applied(&changes, "m.toml"),
            "Added SCSI initiator svrsan2011\n\
             Mapped volume awsvol01 to svrsan2011 as LUN 0 (ReadWrite)\n\
             Applied 2 changes from m.toml.\n"
        );
        assert_eq!(
            text(
                &AdminRequest::ExportInitiatorMap,
                &AdminReply::MapApplied(vec![])
            ),
            "No changes: the map in force already matches the map sent\n"
        );
    }

    #[test]
    fn exports_are_map_files_that_parse_back() {
        let map = InitiatorMap {
            initiators: vec![MapInitiator {
                name: "svrsan2011".into(),
                iqn: "iqn.1998-01.com.vmware:svrsan2011-4f2a".into(),
                chap: MapChap::Keep,
                mappings: vec![MapEntry {
                    volume: "awsvol01".into(),
                    lun: Some(0),
                    access: AccessMode::ReadWrite,
                }],
            }],
        };
        let out = text(
            &AdminRequest::ExportInitiatorMap,
            &AdminReply::InitiatorMap(map.clone()),
        );
        assert!(
            out.starts_with("# The SCSI initiator map in force"),
            "{out}"
        );
        assert!(out.ends_with(&format!("\n\n{}", initiator_file::render(&map))));
        assert_eq!(initiator_file::parse(&out).unwrap().map, map);
        let empty = InitiatorMap { initiators: vec![] };
        let out = text(
            &AdminRequest::ExportInitiatorMap,
            &AdminReply::InitiatorMap(empty.clone()),
        );
        assert!(out.ends_with("# No initiator is registered: no host sees any volume.\n"));
        assert_eq!(initiator_file::parse(&out).unwrap().map, empty);
    }
}
