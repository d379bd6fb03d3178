//! SDS coming and going as the MDM sees it: heartbeats (and the lease they renew),
//! failure reports from gateways, declaring an SDS down, taking it back, removing it,
//! and the pools' copy policies.

use super::liveness::{DOWN_AFTER, LEASE};
use super::plan;
use crate::cluster::api::{fmt_id, By, MdmReply, Policy, SdsControl, SdsControlReply, CHUNK_SIZE};
use crate::mdm::admin::AdminError;
use crate::mdm::change::{self, ChangeError, ChunkId};
use crate::mdm::link::{self, LinkError};
use crate::mdm::model::{Sds, State};
use crate::mdm::service::{Mdm, ServiceError};
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tracing::info;

/// How long a failure report's probe of the SDS may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);

impl Mdm {
    /// An SDS is alive: renew its lease with every volume's epoch, follow it if it
    /// moved, and take it back if it was down.
    pub(in crate::mdm) async fn sds_heartbeat(
        self: &Arc<Self>,
        sds_id: u64,
        system_id: u64,
        addr: SocketAddr,
        failed_devices: &[u64],
        from: SocketAddr,
    ) -> Result<MdmReply, ServiceError> {
        // An SDS bound to a wildcard address is reached where it connected from.
        let addr = if addr.ip().is_unspecified() {
            SocketAddr::new(from.ip(), addr.port())
        } else {
            addr
        };
        let st = self.current();
        let sds = change::heartbeat_sds(&st, sds_id, system_id)?;
        if self.recovery.liveness.beat(sds_id) {
            // The peer table may have changed while it, or this MDM, was away.
            self.push_peers();
        }
        if self.recovery.tasks().declaring.contains(&sds_id) {
            return Err(ChangeError::Refused(format!(
                "SDS {} is being declared down; no lease until that is committed",
                sds.name
            ))
            .into());
        }
        if sds.addr() != addr {
            let moved = self
                .apply::<_, ServiceError>(|st, _| change::sds_hello(st, sds_id, system_id, addr))
                .await?;
            if moved {
                info!(sds = %fmt_id(sds_id), %addr, "SDS moved");
                self.push_peers();
            }
        }
        for &d in failed_devices {
            let known = sds.devices.iter().find(|x| x.id == d);
            if known.is_some_and(|x| !x.failed) {
                self.declare_device_failed(sds_id, d).await?;
            }
        }
        if sds.down && self.recovery.tasks().returning.insert(sds_id) {
            let mdm = self.clone();
            tokio::spawn(async move {
                if let Err(e) = mdm.sds_returned(sds_id).await {
                    tracing::warn!(sds = %fmt_id(sds_id), error = %e, "could not take the SDS back; retrying on its next heartbeat");
                }
                mdm.recovery.tasks().returning.remove(&sds_id);
            });
        }
        let st = self.current();
        Ok(MdmReply::Lease {
            lease_ms: LEASE.as_millis() as u64,
            epochs: st.volumes.values().map(|v| (v.id, v.epoch)).collect(),
        })
    }

    /// A gateway could not get an answer from an SDS. Answers `down: true` once layouts
    /// without it are committed; `down: false` if it answers the MDM (retry).
    pub(in crate::mdm) async fn report_sds_failure(
        &self,
        sds_id: u64,
        reason: &str,
    ) -> Result<MdmReply, ServiceError> {
        let deadline = tokio::time::Instant::now() + DOWN_AFTER + Duration::from_secs(1);
        loop {
            let st = self.current();
            let sds = st.sds_by(&By::Id(sds_id))?;
            if sds.down {
                return Ok(MdmReply::SdsVerdict { down: true });
            }
            let peer = change::peer(sds);
            let probe =
                link::call(self.link.as_ref(), &peer, &SdsControl::Ping, PROBE_TIMEOUT).await;
            match probe {
                Ok(SdsControlReply::Pong {
                    system_id,
                    sds_id: id,
                }) if system_id == st.system_id && id == sds_id => {
                    return Ok(MdmReply::SdsVerdict { down: false });
                }
                // Its host refuses the connection (nothing listens: the SDS process
                // is gone) or something else answers there: it serves no one and can
                // be declared down at once.
                Ok(_) | Err(LinkError::Unexpected { .. }) => {
                    let why = format!(
                        "a gateway reported: {reason}; another process answers at its address"
                    );
                    self.declare_down(sds_id, &why, false).await?;
                    return Ok(MdmReply::SdsVerdict { down: true });
                }
                Err(LinkError::Failed { reason: r, .. }) if refused(&r) => {
                    let why =
                        format!("a gateway reported: {reason}; the MDM cannot reach it either");
                    self.declare_down(sds_id, &why, false).await?;
                    return Ok(MdmReply::SdsVerdict { down: true });
                }
                // It may be alive behind a partition (no answer, no route), serving
                // on its lease: only its silence past the lease makes it safe to move
                // on.
                Err(_) => {
                    let l = &self.recovery.liveness;
                    if l.silent(sds_id) || l.unheard(sds_id) {
                        let why = format!("a gateway reported: {reason}; no heartbeat either");
                        self.declare_down(sds_id, &why, true).await?;
                        return Ok(MdmReply::SdsVerdict { down: true });
                    }
                    if tokio::time::Instant::now() > deadline {
                        return Ok(MdmReply::SdsVerdict { down: false });
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    }

    /// Commits layouts without `sds` (see `change::fail_sds`); nothing if it is down
    /// already.
    /// `for_silence`: the reason is missed heartbeats, so one arriving meanwhile
    /// calls it off.
    pub(in crate::mdm) async fn declare_down(
        &self,
        sds_id: u64,
        why: &str,
        for_silence: bool,
    ) -> Result<(), ServiceError> {
        self.recovery.tasks().declaring.insert(sds_id);
        let liveness = &self.recovery.liveness;
        let failed = self
            .apply::<_, ServiceError>(|st, _| {
                if st.sds.get(&sds_id).is_none_or(|s| s.down) {
                    return Ok(None);
                }
                if for_silence && !liveness.silent(sds_id) && !liveness.unheard(sds_id) {
                    return Ok(None);
                }
                change::fail_sds(st, sds_id).map(Some)
            })
            .await;
        self.recovery.tasks().declaring.remove(&sds_id);
        let failed = failed?;
        if let Some(f) = failed {
            let name = self.sds_name(sds_id);
            self.recovery.event(
                true,
                format!(
                    "SDS {name} is down ({why}): {} chunks degraded, {} with no running copy; {}",
                    f.degraded,
                    f.unavailable,
                    next_step(&f)
                ),
            );
            self.recovery.poke();
        }
        Ok(())
    }

    /// Commits layouts without a device its SDS says fails I/O.
    async fn declare_device_failed(&self, sds_id: u64, device: u64) -> Result<(), ServiceError> {
        let failed = self
            .apply::<_, ServiceError>(|st, _| {
                let already = st
                    .sds
                    .get(&sds_id)
                    .and_then(|s| s.devices.iter().find(|d| d.id == device))
                    .is_none_or(|d| d.failed);
                if already {
                    return Ok(None);
                }
                change::fail_device(st, device).map(Some)
            })
            .await?;
        if let Some(f) = failed {
            let st = self.current();
            let path = st
                .device(device)
                .map_or_else(|| fmt_id(device), |(_, d)| d.path.clone());
            let lost = change::last_copies_on(&st, &HashSet::from([device]));
            let then = if lost.is_empty() {
                "replace it and remove it with --remove_sds_device".to_string()
            } else {
                format!(
                    "the data of those is lost: {}",
                    lost_way_out(&lost, "remove the device (--remove_sds_device)")
                )
            };
            self.recovery.event(
                true,
                format!(
                    "device {path} of SDS {} failed I/O: {} chunks degraded, {} with no other copy; {}; {then}",
                    self.sds_name(sds_id),
                    f.degraded,
                    f.unavailable,
                    if f.degraded > 0 { "rebuilding" } else { "nothing to rebuild" },
                ),
            );
            self.recovery.poke();
        }
        Ok(())
    }

    /// `--remove_sds_device`: like `--remove_sds` for one device. A failed device
    /// goes at once unless it holds a chunk's last copy; a healthy one is drained
    /// first, refused if the rest of its pool cannot hold its copies.
    pub(in crate::mdm) async fn remove_sds_device(
        &self,
        sds: &By,
        device: &str,
    ) -> Result<String, AdminError> {
        // `nothing_to_move`: no layout names it (or it failed: its copies are out).
        let (name, nothing_to_move) = self
            .apply::<_, AdminError>(|st, _| {
                let s = st.sds_by(sds)?.clone();
                let d = s
                    .devices
                    .iter()
                    .find(|d| d.name == device || d.path == device)
                    .ok_or_else(|| {
                        ChangeError::Refused(format!(
                            "SDS {} has no device named {device} (--device_name); see its devices with --query_sds",
                            s.name
                        ))
                    })?
                    .clone();
                let name = format!("{} of SDS {}", d.path, s.name);
                if d.removing {
                    return Ok((name, false));
                }
                let named = change::referenced_devices(st);
                keeps_no_last_copy(st, &s, Some(d.id), &format!("device {name}"))?;
                let dev = st
                    .sds
                    .get_mut(&s.id)
                    .and_then(|s| s.devices.iter_mut().find(|x| x.id == d.id))
                    .expect("found");
                dev.removing = true;
                if !d.failed && named.contains(&d.id) {
                    plan::removal_fits(st, s.id, Some(d.id)).map_err(|e| {
                        ChangeError::Refused(format!("device {name} cannot be removed: {e}"))
                    })?;
                }
                Ok((name, !named.contains(&d.id) || d.failed))
            })
            .await?;
        self.recovery.poke();
        let text = if nothing_to_move {
            format!("device {name} is being removed")
        } else {
            format!(
                "device {name} is being removed: its chunk copies move to other devices; follow with --query_sds"
            )
        };
        self.recovery.event(false, text.clone());
        Ok(text)
    }

    /// A down SDS heartbeats again. Its remembered copies of chunks still degraded
    /// come back as syncing secondaries; each one's primary then says whether it wrote
    /// the chunk meanwhile: untouched copies are whole again without moving data, the
    /// others are refilled by the driver (backward rebuild).
    async fn sds_returned(&self, sds_id: u64) -> Result<(), ServiceError> {
        let back = self
            .apply::<_, ServiceError>(|st, _| change::return_sds(st, sds_id))
            .await?;
        // It may have missed SDS added while it was away.
        self.push_peers();
        let chunks: Vec<ChunkId> = back.iter().map(|(c, _)| *c).collect();
        {
            let mut t = self.recovery.tasks();
            t.checking.extend(chunks.iter().copied());
            t.sweep = true;
        }
        let name = self.sds_name(sds_id);
        self.recovery.event(
            false,
            format!("SDS {name} is back: {} chunk copies to check", back.len()),
        );
        let clean = self.unwritten(&back).await;
        let confirmed = self
            .apply::<_, ServiceError>(|st, _| {
                change::confirm_whole(st, &clean);
                Ok(())
            })
            .await;
        // Whatever happened, the copies are no longer held back from the driver: an
        // unconfirmed one is simply replicated whole.
        {
            let mut t = self.recovery.tasks();
            for c in &chunks {
                t.checking.remove(c);
            }
        }
        self.recovery.poke();
        confirmed?;
        self.recovery.event(
            false,
            format!(
                "SDS {name}: {} copies whole again without copying, {} to resync ({} MB)",
                clean.len(),
                back.len() - clean.len(),
                (back.len() - clean.len()) as u64 * CHUNK_SIZE / 1_000_000
            ),
        );
        Ok(())
    }

    /// Of copies given back (chunk, device), those whose chunk's primary took no
    /// write without its mirror since it was last replicated. A primary that does not
    /// answer counts as having written everything.
    async fn unwritten(&self, back: &[(ChunkId, u64)]) -> Vec<(ChunkId, u64)> {
        let st = self.current();
        // (primary SDS, volume) → (chunk, device given back).
        let mut ask: BTreeMap<(u64, u64), Vec<(u64, u64)>> = BTreeMap::new();
        for &((v, c), device) in back {
            let Some(vol) = st.volumes.get(&v) else {
                continue;
            };
            if let Some(p) = vol.copies(c as usize)[0].and_then(|d| st.sds_of(d)) {
                ask.entry((p.id, v)).or_default().push((c, device));
            }
        }
        let mut clean = Vec::new();
        for ((sds, volume), chunks) in ask {
            let peer = change::peer(&st.sds[&sds]);
            let epoch = st.volumes[&volume].epoch;
            let msg = SdsControl::Dirty { volume, epoch };
            match link::call(self.link.as_ref(), &peer, &msg, CONTROL_TIMEOUT).await {
                Ok(SdsControlReply::Dirty(dirty)) => {
                    let dirty: HashSet<u64> = dirty.into_iter().collect();
                    clean.extend(
                        chunks
                            .into_iter()
                            .filter(|(c, _)| !dirty.contains(c))
                            .map(|(c, d)| ((volume, c), d)),
                    );
                }
                other => {
                    tracing::warn!(sds = %peer.name, volume = %fmt_id(volume), answer = ?other,
                    "cannot learn which chunks were written while their copy was away; resyncing them whole")
                }
            }
        }
        clean
    }

    /// `--remove_sds`: refused if its copies cannot fit elsewhere; else it is marked
    /// removing and the driver drains it. A down SDS is forgotten at once unless it
    /// holds the last copy of a chunk.
    pub(in crate::mdm) async fn remove_sds(&self, by: &By) -> Result<String, AdminError> {
        let (name, gone) = self
            .apply::<_, AdminError>(|st, _| {
                let sds = st.sds_by(by)?.clone();
                if sds.removing {
                    return Ok((sds.name, false));
                }
                keeps_no_last_copy(st, &sds, None, &format!("SDS {}", sds.name))?;
                if sds.down {
                    change::forget_absent_on(st, sds.id);
                    for v in st.volumes.values_mut() {
                        v.compact();
                    }
                    st.sds.remove(&sds.id);
                    return Ok((sds.name, true));
                }
                plan::removal_fits(st, sds.id, None).map_err(|e| {
                    ChangeError::Refused(format!("SDS {} cannot be removed: {e}", sds.name))
                })?;
                change::forget_absent_on(st, sds.id);
                st.sds.get_mut(&sds.id).expect("found").removing = true;
                Ok((sds.name, false))
            })
            .await?;
        if gone {
            self.recovery
                .event(false, format!("SDS {name} (down) removed"));
            self.push_peers();
            return Ok(format!("SDS {name} removed"));
        }
        self.recovery.event(
            false,
            format!("removing SDS {name}: moving its chunk copies to the other SDS"),
        );
        self.recovery.poke();
        Ok(format!(
            "SDS {name} is being removed: its chunk copies move to the other SDS of its pools; follow with --query_all_sds"
        ))
    }

    /// Forgets every SDS or device being removed that no layout names any more, and
    /// releases it.
    pub(in crate::mdm) async fn finish_removals(&self) -> Result<(), ServiceError> {
        self.finish_device_removals().await?;
        let st = self.current();
        let named = change::referenced_devices(&st);
        let done: Vec<_> = st
            .sds
            .values()
            .filter(|s| s.removing && !s.devices.iter().any(|d| named.contains(&d.id)))
            .cloned()
            .collect();
        for sds in done {
            let removed = self
                .apply::<_, ServiceError>(|st, _| {
                    let named = change::referenced_devices(st);
                    let empty = st.sds.get(&sds.id).is_some_and(|s| {
                        s.removing && !s.devices.iter().any(|d| named.contains(&d.id))
                    });
                    if empty {
                        for v in st.volumes.values_mut() {
                            v.compact();
                        }
                        st.sds.remove(&sds.id);
                    }
                    Ok(empty)
                })
                .await?;
            if !removed {
                continue;
            }
            let peer = change::peer(&sds);
            let r = link::call(
                self.link.as_ref(),
                &peer,
                &SdsControl::Release,
                CONTROL_TIMEOUT,
            )
            .await;
            if let Err(e) = link::expect_ok(&peer, &SdsControl::Release, r) {
                tracing::warn!(sds = %sds.name, error = %e, "removed SDS was not told to release its devices");
            }
            self.recovery.event(
                false,
                format!("SDS {} removed: its data moved away", sds.name),
            );
            self.push_peers();
        }
        Ok(())
    }

    async fn finish_device_removals(&self) -> Result<(), ServiceError> {
        let st = self.current();
        let named = change::referenced_devices(&st);
        let done: Vec<(crate::mdm::model::Sds, u64, String)> = st
            .sds
            .values()
            .filter(|s| !s.removing)
            .flat_map(|s| {
                s.devices
                    .iter()
                    .filter(|d| d.removing && !named.contains(&d.id))
                    .map(move |d| (s.clone(), d.id, d.path.clone()))
            })
            .collect();
        for (sds, device, path) in done {
            let removed = self
                .apply::<_, ServiceError>(|st, _| {
                    let named = change::referenced_devices(st);
                    if named.contains(&device) {
                        return Ok(false);
                    }
                    for v in st.volumes.values_mut() {
                        v.compact();
                    }
                    if let Some(s) = st.sds.get_mut(&sds.id) {
                        s.devices.retain(|d| d.id != device);
                    }
                    Ok(true)
                })
                .await?;
            if !removed {
                continue;
            }
            let peer = change::peer(&sds);
            let msg = SdsControl::ReleaseDevice { device };
            let r = link::call(self.link.as_ref(), &peer, &msg, CONTROL_TIMEOUT).await;
            if let Err(e) = link::expect_ok(&peer, &msg, r) {
                tracing::warn!(sds = %sds.name, %path, error = %e, "removed device was not released by its SDS");
            }
            self.recovery
                .event(false, format!("device {path} of SDS {} removed", sds.name));
        }
        Ok(())
    }

    /// `--set_rebuild_policy` / `--set_rebalance_policy`.
    pub(in crate::mdm) async fn set_policy(
        &self,
        pd: &By,
        pool: &By,
        rebalance: bool,
        policy: Policy,
    ) -> Result<String, AdminError> {
        let name = self
            .apply::<_, AdminError>(|st, _| {
                let id = st.pool(pd, pool)?.id;
                let p = st.pools.get_mut(&id).expect("found");
                if rebalance {
                    p.rebalance_policy = policy;
                } else {
                    p.rebuild_policy = policy;
                }
                Ok(p.name.clone())
            })
            .await?;
        let what = if rebalance { "rebalance" } else { "rebuild" };
        self.recovery.event(
            false,
            format!("{what} policy of storage pool {name}: {policy:?}"),
        );
        self.recovery.poke();
        Ok(format!(
            "{what} policy of storage pool {name} set to {policy:?}"
        ))
    }

    fn sds_name(&self, id: u64) -> String {
        self.current()
            .sds
            .get(&id)
            .map_or_else(|| fmt_id(id), |s| s.name.clone())
    }
}

/// What follows an SDS failure: a rebuild of the degraded chunks, or (nothing
/// degraded, e.g. a single-copy pool's) only waiting for the failed copies' return.
fn next_step(f: &change::Failed) -> &'static str {
    if f.degraded > 0 {
        "rebuilding"
    } else {
        "nothing to rebuild"
    }
}

/// Refuses removing `what` (`sds`, or its one `device`) while a chunk's only copy is on
/// it: on a failed device that data is lost, and the admin must remove its volumes
/// first (nothing removes data behind their back); on a down SDS it waits for the SDS
/// to return.
fn keeps_no_last_copy(
    st: &State,
    sds: &Sds,
    device: Option<u64>,
    what: &str,
) -> Result<(), ChangeError> {
    let on = |failed: bool| -> HashSet<u64> {
        let devices = sds.devices.iter();
        let devices = devices.filter(|d| device.is_none_or(|x| x == d.id));
        devices
            .filter(|d| d.failed == failed && (d.failed || sds.down))
            .map(|d| d.id)
            .collect()
    };
    let lost = change::last_copies_on(st, &on(true));
    if !lost.is_empty() {
        let n: u64 = lost.values().sum();
        let failed = sds
            .devices
            .iter()
            .filter(|d| d.failed && !change::last_copies_on(st, &HashSet::from([d.id])).is_empty());
        let failed: Vec<&str> = failed.map(|d| d.path.as_str()).collect();
        return Err(ChangeError::Refused(format!(
            "{what} cannot be removed: {n} chunks had their only copy on {}, which failed, and their data is lost; {}",
            failed.join(", "),
            lost_way_out(&lost, &format!("remove {what} again"))
        )));
    }
    let waiting: u64 = change::last_copies_on(st, &on(false)).values().sum();
    if waiting > 0 {
        return Err(ChangeError::Refused(format!(
            "{what} cannot be removed: SDS {} is down and holds the only copy of {waiting} chunks; bring it back first",
            sds.name
        )));
    }
    Ok(())
}

/// How an admin gets past chunks lost on a failed device: remove their volumes, then
/// `then`.
fn lost_way_out(lost: &BTreeMap<String, u64>, then: &str) -> String {
    let names: Vec<&str> = lost.keys().map(String::as_str).collect();
    let noun = if names.len() == 1 {
        "volume"
    } else {
        "volumes"
    };
    format!(
        "remove {noun} {} (--remove_volume, after unmapping), then {then}",
        names.join(", ")
    )
}

/// A connection refused by the SDS's host: proof nothing listens there, unlike a
/// timeout or an unreachable network, which a live SDS behind a partition also gives.
fn refused(reason: &str) -> bool {
    reason.contains("refused")
}
