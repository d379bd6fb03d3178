//! The background loop: declares silent SDS down, commits finished copies, plans and
//! starts new ones within each pool's policy, completes removals and sweeps left-over
//! copies. One loop per MDM, so planning never races itself.
//!
//! A copy is made in two steps. First a layout naming the target as the chunk's
//! syncing secondary is committed with a new epoch, so from then on every write
//! reaches it. Then the primary is sent a Replicate, which copies the chunk under its
//! exclusive lock and raises the primary's epoch mark, so a write routed with the old
//! layout either finished before the copy (and is in it) or is refused after it.
//!
//! A copy leaving a layout that gateways may still read or write through an older
//! layout (a move's replaced primary: at the start of a move in a two-copy pool, at
//! its end in a single-copy pool, where the only copy stays primary until its target
//! is whole) is fenced first (`Mdm::fence`).

use super::plan::{self, Start};
use super::progress::{concurrency, Kind};
use super::{Done, Tasks};
use crate::cluster::api::{fmt_id, Protection, SdsControl, CHUNK_SIZE};
use crate::cluster::chunk::{ChunkRef, Mirror};
use crate::mdm::change::{self, ChunkId};
use crate::mdm::link::{self, Peer};
use crate::mdm::model::{Pool, State};
use crate::mdm::service::{Mdm, ServiceError};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::warn;

const TICK: Duration = Duration::from_millis(200);
const RETRY_AFTER: Duration = Duration::from_secs(1);
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn run(mdm: Arc<Mdm>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = mdm.recovery.wake.notified() => {}
        }
        if let Err(e) = step(&mdm).await {
            warn!(error = %e, "recovery step failed; retrying");
            tokio::time::sleep(RETRY_AFTER).await;
        }
    }
}

async fn step(mdm: &Arc<Mdm>) -> Result<(), ServiceError> {
    let st = mdm.current();
    for s in st.sds.values() {
        if s.down {
            continue;
        }
        if mdm.recovery.liveness.silent(s.id) {
            let why = format!(
                "no heartbeat for {:.1} s",
                mdm.recovery.liveness.silence(s.id).as_secs_f64()
            );
            mdm.declare_down(s.id, &why, true).await?;
        } else if mdm.recovery.liveness.unheard(s.id) && mdm.recovery.tasks().probing.insert(s.id) {
            let (mdm, id) = (mdm.clone(), s.id);
            tokio::spawn(async move {
                let r = mdm
                    .report_sds_failure(id, "it has not heartbeated since the MDM started")
                    .await;
                if let Err(e) = r {
                    warn!(sds = %fmt_id(id), error = %e, "could not probe a silent SDS");
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
                mdm.recovery.tasks().probing.remove(&id);
            });
        }
    }
    collect(mdm).await?;
    start(mdm).await?;
    mdm.finish_removals().await?;
    sweep(mdm).await;
    Ok(())
}

/// Commits the copies that finished. The copies moves replaced are left to the sweep;
/// an old primary a finish replaces (a single copy moving) is fenced first.
async fn collect(mdm: &Arc<Mdm>) -> Result<(), ServiceError> {
    let mut finished: Vec<(ChunkId, u64)> = Vec::new();
    {
        let mut rx = mdm.recovery.done_rx.lock().await;
        while let Ok(d) = rx.try_recv() {
            let done: Done = d;
            let kind = {
                let mut t = mdm.recovery.tasks();
                let kind = t.running.remove(&done.chunk).map(|(_, k)| k);
                match &done.result {
                    Ok(_) => {
                        if t.moving.remove(&done.chunk).is_some() {
                            t.sweep = true;
                        }
                        t.retry_after.remove(&done.chunk);
                    }
                    Err(_) => {
                        t.retry_after
                            .insert(done.chunk, Instant::now() + RETRY_AFTER);
                    }
                }
                kind.unwrap_or(Kind::Rebuild)
            };
            match done.result {
                Ok(bytes) => {
                    mdm.recovery.tally().add(done.pool, kind, bytes);
                    finished.push((done.chunk, done.target));
                }
                Err(e) => warn!(volume = %fmt_id(done.chunk.0), chunk = done.chunk.1,
                    target = %fmt_id(done.target), error = %e, "chunk copy failed; retrying"),
            }
        }
    }
    {
        // A move whose target failed became an ordinary degraded chunk.
        let st = mdm.current();
        mdm.recovery
            .tasks()
            .moving
            .retain(|(v, c), _| st.volumes.get(v).is_some_and(|v| v.syncing.contains(c)));
    }
    if finished.is_empty() {
        return Ok(());
    }
    let st = mdm.current();
    let replaced = change::replaced_by_finish(&st, &finished);
    if !replaced.is_empty() {
        mdm.recovery.tasks().sweep = true;
    }
    let fenced = mdm.fence(&st, &replaced).await;
    mdm.apply::<_, ServiceError>(|st, _| {
        // A volume whose layout moved since its old primaries were fenced keeps its
        // copies syncing: they are replicated and finished again on the new layout.
        let done: Vec<(ChunkId, u64)> = finished
            .iter()
            .filter(|((v, _), _)| {
                fenced
                    .get(v)
                    .is_none_or(|&e| st.volumes.get(v).is_some_and(|v| v.epoch + 1 == e))
            })
            .copied()
            .collect();
        change::finish_copies(st, &done);
        reach_fenced(st, &fenced);
        Ok(())
    })
    .await?;
    Ok(())
}

/// Which policy a syncing copy runs under: a move's (rebalance, and every copy in a
/// single-copy pool, which only ever moves copies), else a rebuild's.
fn kind_of(t: &Tasks, pool: &Pool, key: &ChunkId) -> Kind {
    if t.moving.contains_key(key) || pool.protection == Protection::SingleCopy {
        Kind::Rebalance
    } else {
        Kind::Rebuild
    }
}

/// Starts Replicates for syncing copies, after planning new ones where policies allow.
async fn start(mdm: &Arc<Mdm>) -> Result<(), ServiceError> {
    let st = mdm.current();
    for pool in st.pools.values() {
        let (rebuild, rebalance) = (pool.rebuild_policy, pool.rebalance_policy);
        // Copies started but not yet made (running or waiting for the policy's
        // turn) count against the policy too, so a throttled pool does not commit
        // more targets than it fills: a returning SDS takes back its copies only for
        // chunks no target was committed for.
        let pending = |kind| {
            let t = mdm.recovery.tasks();
            st.volumes
                .values()
                .filter(|v| v.pool == pool.id)
                .flat_map(|v| v.syncing.iter().map(move |&c| (v.id, c)))
                .filter(|key| !t.checking.contains(key))
                .filter(|key| kind_of(&t, pool, key) == kind)
                .count()
        };
        let busy: HashSet<ChunkId> = {
            let t = mdm.recovery.tasks();
            t.running.keys().chain(t.checking.iter()).copied().collect()
        };
        let room = concurrency(rebuild).saturating_sub(pending(Kind::Rebuild));
        if room > 0 {
            let starts = plan::rebuilds(&st, pool.id, room, &busy);
            if !starts.is_empty() {
                mdm.start_copies(&starts, None).await?;
            }
        }
        let st = mdm.current();
        let room = concurrency(rebalance).saturating_sub(pending(Kind::Rebalance));
        if room > 0 && plan::settled(&st, pool.id) {
            let starts = plan::moves(&st, pool.id, room);
            if !starts.is_empty() {
                mdm.start_copies(&starts, Some(Kind::Rebalance)).await?;
            }
        }
    }
    replicate_syncing(mdm);
    Ok(())
}

/// Sends a Replicate for every syncing copy that is not already being made, checked
/// or waiting to retry, within its pool's policy.
fn replicate_syncing(mdm: &Arc<Mdm>) {
    let st = mdm.current();
    let now = Instant::now();
    for v in st.volumes.values() {
        let Some(pool) = st.pools.get(&v.pool) else {
            continue;
        };
        for &c in &v.syncing {
            let key = (v.id, c);
            {
                let mut t = mdm.recovery.tasks();
                if t.running.contains_key(&key)
                    || t.checking.contains(&key)
                    || t.retry_after.get(&key).is_some_and(|at| *at > now)
                {
                    continue;
                }
                let kind = kind_of(&t, pool, &key);
                let policy = match kind {
                    Kind::Rebuild => pool.rebuild_policy,
                    Kind::Rebalance => pool.rebalance_policy,
                };
                let running = t
                    .running
                    .values()
                    .filter(|(p, k)| *p == pool.id && *k == kind)
                    .count();
                if running >= concurrency(policy)
                    || !mdm.recovery.tally().admit(pool.id, kind, policy)
                {
                    continue;
                }
                t.running.insert(key, (pool.id, kind));
            }
            spawn_replicate(mdm, &st, key);
        }
    }
}

/// One Replicate to the chunk's primary; its answer goes to the driver.
fn spawn_replicate(mdm: &Arc<Mdm>, st: &State, key: ChunkId) {
    let v = &st.volumes[&key.0];
    let [p, s] = v.copies(key.1 as usize);
    let (Some(p), Some(s)) = (p, s) else {
        mdm.recovery.tasks().running.remove(&key);
        return;
    };
    let (Some(psds), Some(tsds)) = (st.sds_of(p), st.sds_of(s)) else {
        mdm.recovery.tasks().running.remove(&key);
        return;
    };
    let at = ChunkRef {
        volume: v.id,
        chunk: key.1,
        device: p,
        epoch: v.epoch,
    };
    let target = Mirror {
        sds: tsds.id,
        device: s,
    };
    let thick = (!v.thin).then(|| {
        (
            change::peer(tsds),
            SdsControl::AllocateThick {
                volume: v.id,
                chunks: vec![(key.1, s)],
            },
        )
    });
    let (addr, pool, link, tx, mdm2) = (
        psds.addr(),
        v.pool,
        mdm.link.clone(),
        mdm.recovery.done_tx.clone(),
        mdm.clone(),
    );
    tokio::spawn(async move {
        let mut result = Ok(());
        if let Some((peer, msg)) = thick {
            let r = link::call(link.as_ref(), &peer, &msg, CONTROL_TIMEOUT).await;
            result = link::expect_ok(&peer, &msg, r).map_err(|e| e.to_string());
        }
        let result = match result {
            Ok(()) => link.replicate(addr, at, target).await,
            Err(e) => Err(e),
        };
        let _ = tx.send(Done {
            pool,
            chunk: key,
            target: s,
            result,
        });
        mdm2.recovery.poke();
    });
}

/// Frees every copy an SDS holds that no layout names: copies replaced by a rebuild
/// while their SDS was down, or moved away (a returning SDS full of them would
/// otherwise have no room for the copies rebalance sends it). Holds the writer lock
/// from the inventories to the last free, so no change can name a copy meanwhile (a
/// thick volume reserves its slots before its commit, under that lock).
async fn sweep(mdm: &Arc<Mdm>) {
    if !mdm.recovery.tasks().sweep {
        return;
    }
    let _writer = mdm.writer.lock().await;
    let st = mdm.current();
    let up: Vec<Peer> = st
        .sds
        .values()
        .filter(|s| !s.down)
        .map(change::peer)
        .collect();
    let calls = up
        .iter()
        .map(|p| (p.clone(), SdsControl::Inventory))
        .collect();
    let answers = link::fan_out(&mdm.link, calls, CONTROL_TIMEOUT).await;
    let st = mdm.current();
    let named = named_copies(&st);
    let mut frees: BTreeMap<u64, (Peer, Vec<CopyAt>)> = BTreeMap::new();
    let mut complete = true;
    for (peer, _, r) in answers {
        let Ok(crate::cluster::api::SdsControlReply::Inventory(inv)) = r else {
            complete = false;
            continue;
        };
        for d in inv.devices {
            for (v, c) in d.chunks {
                if !named.contains(&(v, c, d.device_id)) {
                    frees
                        .entry(peer.id)
                        .or_insert_with(|| (peer.clone(), Vec::new()))
                        .1
                        .push((v, c, d.device_id));
                }
            }
        }
    }
    let mut freed = 0;
    for (_, (peer, chunks)) in frees {
        let n = chunks.len();
        let msg = SdsControl::FreeChunks { chunks };
        let r = link::call(mdm.link.as_ref(), &peer, &msg, CONTROL_TIMEOUT).await;
        match link::expect_ok(&peer, &msg, r) {
            Ok(()) => freed += n,
            Err(e) => {
                complete = false;
                warn!(sds = %peer.name, error = %e, "could not free left-over chunk copies");
            }
        }
    }
    if freed > 0 {
        mdm.recovery.event(
            false,
            format!(
                "freed {freed} left-over chunk copies ({} MB)",
                freed as u64 * CHUNK_SIZE / 1_000_000
            ),
        );
    }
    if complete {
        mdm.recovery.tasks().sweep = false;
    }
}

/// A chunk copy: (volume, chunk, device).
type CopyAt = (u64, u64, u64);

/// Every copy a layout names: copies and remembered copies.
fn named_copies(st: &State) -> HashSet<CopyAt> {
    let mut out = HashSet::new();
    for v in st.volumes.values() {
        for c in 0..v.chunks.len() {
            for d in v.copies(c).into_iter().flatten() {
                out.insert((v.id, c as u64, d));
            }
        }
        for (&c, &x) in &v.absent {
            out.insert((v.id, c, v.devices[x as usize]));
        }
    }
    out
}

/// Moves each fenced volume's epoch at least to the one its replaced copies were
/// fenced with, in the commit that takes them out.
fn reach_fenced(st: &mut State, fenced: &BTreeMap<u64, u64>) {
    for (&volume, &epoch) in fenced {
        if let Some(v) = st.volumes.get_mut(&volume) {
            v.epoch = v.epoch.max(epoch);
        }
    }
}

impl Mdm {
    /// Fences copies (volume, device) a commit is about to take out of the layouts:
    /// gateways still holding the old layout would go on reading and writing them. So
    /// each one's SDS is told its volume's coming epoch first (`Dirty` raises the mark
    /// and lets admitted writes finish). Returns per volume the epoch it was fenced
    /// with, which the commit must reach (`reach_fenced`).
    async fn fence(&self, st: &State, leaving: &[(u64, u64)]) -> BTreeMap<u64, u64> {
        let mut fence: BTreeMap<(u64, u64), u64> = BTreeMap::new();
        for &(v, old) in leaving {
            let Some(vol) = st.volumes.get(&v) else {
                continue;
            };
            if let Some(sds) = st.sds_of(old).filter(|s| !s.down) {
                fence.insert((sds.id, v), vol.epoch + 1);
            }
        }
        for (&(sds, volume), &epoch) in &fence {
            let peer = change::peer(&st.sds[&sds]);
            let msg = SdsControl::Dirty { volume, epoch };
            let r = link::call(self.link.as_ref(), &peer, &msg, CONTROL_TIMEOUT).await;
            if let Err(e) = r {
                // It cannot serve anyone it cannot answer either; its lease ends.
                warn!(sds = %peer.name, error = %e, "could not fence the copy a move replaces");
            }
        }
        fence.into_iter().map(|((_, v), e)| (v, e)).collect()
    }

    /// Commits new copies (rebuild targets or moves) as syncing secondaries.
    ///
    /// A move in a two-copy pool takes the copy it replaces out of the layout at once,
    /// so that copy is fenced first; the commit moves every such volume's epoch at
    /// least that far, whether or not its moves still apply. (A single copy moving
    /// stays primary until its target is whole; fencing it here too only makes
    /// gateways fetch the layout that names the target.)
    pub(in crate::mdm) async fn start_copies(
        &self,
        starts: &[Start],
        kind: Option<Kind>,
    ) -> Result<(), ServiceError> {
        let st = self.current();
        let leaving: Vec<(u64, u64)> = starts
            .iter()
            .filter_map(|&((v, _), from, _)| from.map(|old| (v, old)))
            .collect();
        let fenced = self.fence(&st, &leaving).await;
        let applied = self
            .apply::<_, ServiceError>(|st, _| {
                let applied = change::start_copies(st, starts);
                reach_fenced(st, &fenced);
                Ok(applied)
            })
            .await?;
        if kind == Some(Kind::Rebalance) {
            let mut t = self.recovery.tasks();
            for (chunk, from, _) in applied {
                if let Some(old) = from {
                    t.moving.insert(chunk, old);
                }
            }
        }
        Ok(())
    }
}
