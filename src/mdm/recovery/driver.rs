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
//! A primary leaving a layout while gateways may still read it through an older
//! layout (at the start of a move in a two-copy pool, at its end in a single-copy
//! pool, where the only copy stays primary until its target is whole) is fenced first
//! (`Mdm::fence`).

use super::plan::{self, Start};
use super::progress::{concurrency, Kind};
use super::{Done, Tasks};
use crate::cluster::api::{fmt_id, Protection, SdsControl, SdsControlReply, CHUNK_SIZE};
use crate::cluster::chunk::{ChunkRef, Mirror};
use crate::mdm::change::{self, ChunkId};
use crate::mdm::link::{self, Peer};
use crate::mdm::model::{Pool, State};
use crate::mdm::service::{Mdm, ServiceError};
use std::collections::{BTreeMap, BTreeSet, HashSet};
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
    if !mdm.recovery.tasks().owed.is_empty() {
        mdm.apply_fenced(|_| ()).await?;
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
    let fences = mdm.fence(&st, &replaced).await;
    mdm.apply_fenced(|st| {
        // A handover whose old primary's fence does not hold keeps its copy syncing:
        // it is replicated and finished again on the new layout.
        let done: Vec<(ChunkId, u64)> = finished
            .iter()
            .filter(|&&(chunk, target)| {
                change::replaced_by_finish(st, &[(chunk, target)]).is_empty()
                    || fences.hold(st, chunk.0)
            })
            .copied()
            .collect();
        change::finish_copies(st, &done);
    })
    .await
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

/// Fences sent before a commit that takes copies out of the layouts.
#[derive(Debug, Default)]
struct Fences {
    /// Per volume, the epoch its leaving copies' SDS were told (or, for an SDS marked
    /// down, which holds no lease, would have been).
    epochs: BTreeMap<u64, u64>,
    /// Volumes with a leaving copy whose SDS did not confirm its fence (no answer, or
    /// an error): it may serve gateways on the old layout until its lease ends.
    unconfirmed: BTreeSet<u64>,
}

impl Fences {
    /// Whether a commit from `st` may take volume `v`'s fenced copies out of its layout:
    /// only if every fence was confirmed, with the epoch this commit gives it. Had
    /// another commit moved the epoch since, their SDS would admit that commit's
    /// layout, which still names them, while gateways on the new one write elsewhere:
    /// a stale read. (Moves and handovers are never urgent: one that does not hold
    /// waits for the next tick.)
    fn hold(&self, st: &State, v: u64) -> bool {
        let next = st.volumes.get(&v).map(|vol| vol.epoch + 1);
        next.is_some() && self.epochs.get(&v) == next.as_ref() && !self.unconfirmed.contains(&v)
    }
}

/// Moves each volume's epoch at least to the one `owed` lists for it.
fn reach(st: &mut State, owed: &BTreeMap<u64, u64>) {
    for (&volume, &epoch) in owed {
        if let Some(v) = st.volumes.get_mut(&volume) {
            v.epoch = v.epoch.max(epoch);
        }
    }
}

impl Mdm {
    /// Fences copies (volume, device) a commit is about to take out of the layouts:
    /// gateways still holding the old layout would go on reading and writing them. So
    /// each one's SDS is told its volume's coming epoch first (`Dirty` raises the mark
    /// and lets admitted writes finish). Every epoch sent is owed (`apply_fenced`).
    async fn fence(&self, st: &State, leaving: &[(u64, u64)]) -> Fences {
        let mut fences = Fences::default();
        let mut calls: BTreeMap<(u64, u64), u64> = BTreeMap::new();
        for &(v, old) in leaving {
            let (Some(vol), Some(sds)) = (st.volumes.get(&v), st.sds_of(old)) else {
                continue;
            };
            fences.epochs.insert(v, vol.epoch + 1);
            if !sds.down {
                calls.insert((sds.id, v), vol.epoch + 1);
            }
        }
        {
            let mut t = self.recovery.tasks();
            for (&v, &e) in &fences.epochs {
                let owed = t.owed.entry(v).or_default();
                *owed = (*owed).max(e);
            }
        }
        for (&(sds, volume), &epoch) in &calls {
            let peer = change::peer(&st.sds[&sds]);
            let msg = SdsControl::Dirty { volume, epoch };
            match link::call(self.link.as_ref(), &peer, &msg, CONTROL_TIMEOUT).await {
                Ok(SdsControlReply::Dirty(_)) => {}
                other => {
                    warn!(sds = %peer.name, answer = ?other, "could not fence the copy a move replaces; the move waits");
                    fences.unconfirmed.insert(volume);
                }
            }
        }
        fences
    }

    /// Applies `f` and, in the same commit, moves every volume a fence was sent for at
    /// least to the epoch it was fenced with. A fence raises its SDS's mark before the
    /// commit, so until a commit reaches that epoch the SDS refuses the volume's I/O at
    /// the current one: what a failed commit (a store error) leaves owed, the driver's
    /// next commit pays.
    async fn apply_fenced<T>(&self, f: impl FnOnce(&mut State) -> T) -> Result<T, ServiceError> {
        let owed = self.recovery.tasks().owed.clone();
        let out = self
            .apply::<_, ServiceError>(|st, _| {
                let out = f(st);
                reach(st, &owed);
                Ok(out)
            })
            .await?;
        self.recovery
            .tasks()
            .owed
            .retain(|v, e| owed.get(v) != Some(e));
        Ok(out)
    }

    /// Commits new copies (rebuild targets or moves) as syncing secondaries.
    ///
    /// A move in a two-copy pool takes the copy it replaces out of the layout at once;
    /// a replaced primary, which gateways on the old layout still read, is fenced
    /// first, and its move is left for the next plan if the fence does not hold at the
    /// commit (`Fences::hold`). Nothing else is fenced (`change::replaced_by_start`):
    /// a single copy moving stays primary while its target fills, which every write
    /// routed with the new layout reaches, and its Replicate raises the copy's mark
    /// under the chunk's exclusive lock, after the writes of the old layout and before
    /// any later one; a fence would only drain every lock of the SDS.
    pub(in crate::mdm) async fn start_copies(
        &self,
        starts: &[Start],
        kind: Option<Kind>,
    ) -> Result<(), ServiceError> {
        let st = self.current();
        let fences = self
            .fence(&st, &change::replaced_by_start(&st, starts))
            .await;
        let applied = self
            .apply_fenced(|st| {
                let starts: Vec<Start> = starts
                    .iter()
                    .filter(|&&start| {
                        change::replaced_by_start(st, &[start]).is_empty()
                            || fences.hold(st, start.0 .0)
                    })
                    .copied()
                    .collect();
                change::start_copies(st, &starts)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::chunk::ChunkRef;
    use crate::mdm::change::tests::World;
    use crate::mdm::link::SdsLink;
    use crate::mdm::store::Store;
    use crate::mdm::testutil::FakeSds;
    use async_trait::async_trait;
    use std::net::SocketAddr;
    use tokio::sync::Notify;

    const ADDRS: [&str; 3] = ["10.0.0.1", "10.0.0.2", "10.0.0.3"];

    /// Three SDS with one device each, and thin volumes `v` and `w` of 4 chunks.
    fn world(single_copy: bool) -> (World, [u64; 2]) {
        let mut w = World::new();
        if single_copy {
            w.single_copy();
        }
        for ip in ADDRS {
            w.sds(ip, &[100]);
        }
        let vols = [w.volume("v", 4, true), w.volume("w", 4, true)];
        (w, vols)
    }

    /// A fake SDS behind every address of `world`.
    fn fake() -> Arc<FakeSds> {
        let fake = Arc::new(FakeSds::default());
        for ip in ADDRS {
            fake.node(&format!("{ip}:7072"), 100);
        }
        fake
    }

    fn mdm(w: &World, dir: &std::path::Path, link: Arc<dyn SdsLink>) -> Arc<Mdm> {
        let (store, _) = Store::open(dir).unwrap();
        let addr = "127.0.0.1:6611".parse().unwrap();
        Arc::new(Mdm::new(w.st.clone(), store, link, addr, TICK))
    }

    fn addr_of(st: &State, device: u64) -> String {
        st.sds_of(device).unwrap().addr().to_string()
    }

    /// The epochs `device`'s SDS was fenced with.
    fn fenced(fake: &FakeSds, st: &State, device: u64) -> Vec<u64> {
        fake.received(&addr_of(st, device))
            .into_iter()
            .filter_map(|m| match m {
                SdsControl::Dirty { epoch, .. } => Some(epoch),
                _ => None,
            })
            .collect()
    }

    /// A device of the SDS holding neither copy of chunk `c` of `v`.
    fn third(st: &State, v: u64, c: usize) -> u64 {
        let held: Vec<u64> = st.volumes[&v].copies(c).into_iter().flatten().collect();
        let on = |d: u64| st.sds_of(d).unwrap().id;
        st.sds
            .values()
            .find(|s| held.iter().all(|&h| on(h) != s.id))
            .map(|s| s.devices[0].id)
            .unwrap()
    }

    /// `FakeSds`, holding each fence until the test lets it go on.
    struct Held {
        fake: Arc<FakeSds>,
        fencing: Notify,
        go_on: Notify,
    }

    #[async_trait]
    impl SdsLink for Held {
        async fn control(
            &self,
            addr: SocketAddr,
            msg: &SdsControl,
        ) -> Result<SdsControlReply, String> {
            if matches!(msg, SdsControl::Dirty { .. }) {
                self.fencing.notify_one();
                self.go_on.notified().await;
            }
            self.fake.control(addr, msg).await
        }

        async fn replicate(
            &self,
            addr: SocketAddr,
            at: ChunkRef,
            target: Mirror,
        ) -> Result<u64, String> {
            self.fake.replicate(addr, at, target).await
        }
    }

    #[tokio::test]
    async fn a_primary_move_is_left_when_the_epoch_moved_after_its_fence() {
        let (w, [v, _]) = world(false);
        let [p, s] = w.st.volumes[&v].copies(0).map(Option::unwrap);
        let t = third(&w.st, v, 0);
        let fake = fake();
        let held = Arc::new(Held {
            fake: fake.clone(),
            fencing: Notify::new(),
            go_on: Notify::new(),
        });
        let dir = tempfile::tempdir().unwrap();
        let m = mdm(&w, dir.path(), held.clone());
        let e = w.st.volumes[&v].epoch;
        let moving = {
            let m = m.clone();
            tokio::spawn(async move {
                m.start_copies(&[((v, 0), Some(p), t)], Some(Kind::Rebalance))
                    .await
            })
        };
        held.fencing.notified().await;
        // Another commit (a failure report, a growth) moves the epoch meanwhile, with
        // p still the primary: p's mark, e + 1, admits that layout.
        m.apply::<_, ServiceError>(|st, _| {
            st.volumes.get_mut(&v).unwrap().epoch += 1;
            Ok(())
        })
        .await
        .unwrap();
        held.go_on.notify_one();
        moving.await.unwrap().unwrap();
        let st = m.current();
        assert_eq!(fenced(&fake, &st, p), [e + 1]);
        // Committed at e + 2, the move would let a gateway on e + 1 read p after
        // writes at e + 2 went to s and t alone.
        assert_eq!(st.volumes[&v].copies(0), [Some(p), Some(s)]);
        assert_eq!(st.volumes[&v].epoch, e + 1);
        assert!(st.volumes[&v].syncing.is_empty());
        // Planned again from the new state, it goes through.
        held.go_on.notify_one();
        m.start_copies(&[((v, 0), Some(p), t)], Some(Kind::Rebalance))
            .await
            .unwrap();
        assert_eq!(m.current().volumes[&v].copies(0), [Some(s), Some(t)]);
    }

    #[tokio::test]
    async fn an_epoch_fenced_before_a_failed_commit_is_reached_by_the_next() {
        let (w, [v, other]) = world(false);
        let p = w.st.volumes[&v].copies(0)[0].unwrap();
        let t = third(&w.st, v, 0);
        let fake = fake();
        let dir = tempfile::tempdir().unwrap();
        let m = mdm(&w, dir.path(), fake.clone());
        let e = w.st.volumes[&v].epoch;
        // The state cannot be saved: the fence went out, the commit failed.
        std::fs::remove_dir_all(dir.path()).unwrap();
        let r = m
            .start_copies(&[((v, 0), Some(p), t)], Some(Kind::Rebalance))
            .await;
        assert!(matches!(r, Err(ServiceError::Store(_))), "{r:?}");
        assert_eq!(fenced(&fake, &m.current(), p), [e + 1]);
        assert_eq!(m.current().volumes[&v].epoch, e);
        // p now refuses v's I/O at e; the next commit, for another volume, moves v's
        // epoch to the mark.
        std::fs::create_dir_all(dir.path()).unwrap();
        let q = w.st.volumes[&other].copies(1)[1].unwrap();
        let t2 = third(&w.st, other, 1);
        m.start_copies(&[((other, 1), Some(q), t2)], Some(Kind::Rebalance))
            .await
            .unwrap();
        assert_eq!(m.current().volumes[&v].epoch, e + 1);
        assert!(m.recovery.tasks().owed.is_empty());
    }

    #[tokio::test]
    async fn a_single_copy_hands_over_only_once_its_old_primary_is_fenced() {
        let (mut w, [v, _]) = world(true);
        let p = w.st.volumes[&v].copies(0)[0].unwrap();
        let to = third(&w.st, v, 0);
        change::start_copies(&mut w.st, &[((v, 0), Some(p), to)]);
        let fake = fake();
        let dir = tempfile::tempdir().unwrap();
        let m = mdm(&w, dir.path(), fake.clone());
        let pool = w.st.volumes[&v].pool;
        let replicated = || {
            let chunk = (v, 0);
            let result = Ok(CHUNK_SIZE);
            m.recovery
                .done_tx
                .send(Done {
                    pool,
                    chunk,
                    target: to,
                    result,
                })
                .unwrap();
        };
        // p does not answer its fence: it may still serve gateways on the layout that
        // names it as the primary, so the copy stays syncing and is made again.
        fake.fail(&addr_of(&w.st, p), "Dirty", "timed out");
        replicated();
        collect(&m).await.unwrap();
        let st = m.current();
        assert_eq!(st.volumes[&v].copies(0), [Some(p), Some(to)]);
        assert!(st.volumes[&v].syncing.contains(&0));
        fake.heal(&addr_of(&w.st, p));
        replicated();
        collect(&m).await.unwrap();
        let st = m.current();
        assert_eq!(st.volumes[&v].copies(0), [Some(to), None]);
        assert_eq!(fenced(&fake, &st, p).len(), 2);
    }

    #[tokio::test]
    async fn only_a_primary_leaving_the_layout_is_fenced() {
        // A single copy starting to move stays primary: no fence.
        let (w, [v, _]) = world(true);
        let p = w.st.volumes[&v].copies(0)[0].unwrap();
        let to = third(&w.st, v, 0);
        let (sds, dir) = (fake(), tempfile::tempdir().unwrap());
        let m = mdm(&w, dir.path(), sds.clone());
        m.start_copies(&[((v, 0), Some(p), to)], Some(Kind::Rebalance))
            .await
            .unwrap();
        let st = m.current();
        assert_eq!(st.volumes[&v].copies(0), [Some(p), Some(to)]);
        assert!(fenced(&sds, &st, p).is_empty());
        // Two copies: a replaced secondary is never read; a replaced primary is.
        let (w, [v, _]) = world(false);
        let [p, s] = w.st.volumes[&v].copies(0).map(Option::unwrap);
        let [p1, s1] = w.st.volumes[&v].copies(1).map(Option::unwrap);
        let (t, t1) = (third(&w.st, v, 0), third(&w.st, v, 1));
        let (sds, dir) = (fake(), tempfile::tempdir().unwrap());
        let m = mdm(&w, dir.path(), sds.clone());
        let e = w.st.volumes[&v].epoch;
        let starts = [((v, 0), Some(s), t), ((v, 1), Some(p1), t1)];
        m.start_copies(&starts, Some(Kind::Rebalance))
            .await
            .unwrap();
        let st = m.current();
        assert_eq!(st.volumes[&v].copies(0), [Some(p), Some(t)]);
        assert_eq!(st.volumes[&v].copies(1), [Some(s1), Some(t1)]);
        // One fence in all, to p1's SDS.
        let fences: usize = ADDRS
            .iter()
            .map(|ip| {
                let to = sds.received(&format!("{ip}:7072"));
                to.iter()
                    .filter(|m| matches!(m, SdsControl::Dirty { .. }))
                    .count()
            })
            .sum();
        assert_eq!(fences, 1);
        assert_eq!(fenced(&sds, &st, p1), [e + 1]);
    }
}
