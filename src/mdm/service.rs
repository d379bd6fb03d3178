//! The MDM's core: the current state, one writer at a time, durable commits, and the
//! requests gateways and SDS make. Admin requests are in `admin`.

use super::admin::AdminError;
use super::change::{self, ChangeError};
use super::ids::IdGen;
use super::link::{self, SdsLink};
use super::model::{ModelError, ScsiBlob, State};
use super::query;
use super::recovery::Recovery;
use super::scsi_hub::{ScsiHub, ACK_WAIT};
use super::store::{Store, StoreError};
use crate::cluster::api::{fmt_id, By, MdmReply, MdmRequest, MdmResponse, ScsiView, SdsControl};
use crate::scsi::shared::SharedEvent;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Mutex, MutexGuard};
use tracing::{info, warn};

/// How long a `Peers` push may take per SDS; it is best effort.
const PEERS_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error(transparent)]
    Change(#[from] ChangeError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct Mdm {
    /// The committed state. A watch channel so `WatchMappings` can wait for changes.
    pub(super) state: watch::Sender<Arc<State>>,
    /// Held from reading the state to committing the change made from it, SDS round
    /// trips included, so changes never interleave.
    pub(super) writer: Mutex<()>,
    pub(super) store: Store,
    pub(super) link: Arc<dyn SdsLink>,
    /// Where we listen; SDS are told our port when claimed.
    pub(super) addr: SocketAddr,
    /// How long `WatchMappings` waits for a change before answering anyway.
    pub(super) watch_wait: Duration,
    /// Shared SCSI state changes on their way to the gateways.
    pub(super) scsi: ScsiHub,
    /// Failure detection and background copying.
    pub(super) recovery: Recovery,
}

impl Mdm {
    pub fn new(
        state: State,
        store: Store,
        link: Arc<dyn SdsLink>,
        addr: SocketAddr,
        watch_wait: Duration,
    ) -> Self {
        Self {
            state: watch::Sender::new(Arc::new(state)),
            writer: Mutex::new(()),
            store,
            link,
            addr,
            watch_wait,
            scsi: ScsiHub::new(watch_wait),
            recovery: Recovery::default(),
        }
    }

    pub fn current(&self) -> Arc<State> {
        self.state.borrow().clone()
    }

    /// Persists `next`, then makes it current. The guard proves the caller is the writer.
    pub(super) async fn commit(
        &self,
        _writer: &MutexGuard<'_, ()>,
        next: State,
    ) -> Result<(), StoreError> {
        self.store.save(&next).await?;
        self.state.send_replace(Arc::new(next));
        Ok(())
    }

    /// Applies a pure change to a copy of the state and commits it if it succeeded and
    /// changed anything.
    pub(super) async fn apply<T, E>(
        &self,
        f: impl FnOnce(&mut State, &mut IdGen) -> Result<T, ChangeError>,
    ) -> Result<T, E>
    where
        E: From<ChangeError> + From<StoreError>,
    {
        let writer = self.writer.lock().await;
        let cur = self.current();
        let mut next = (*cur).clone();
        let mut ids = IdGen::new(&next);
        let out = f(&mut next, &mut ids)?;
        if next != *cur {
            self.commit(&writer, next).await?;
        }
        Ok(out)
    }

    /// Tells every SDS where the others are, in the background; failures are logged.
    pub(super) fn push_peers(&self) {
        let st = self.current();
        let peers = change::all_peers(&st);
        let list: Vec<(u64, SocketAddr)> = peers.iter().map(|p| (p.id, p.addr)).collect();
        let calls = peers
            .into_iter()
            .map(|p| {
                (
                    p,
                    SdsControl::Peers {
                        peers: list.clone(),
                    },
                )
            })
            .collect();
        let link = self.link.clone();
        tokio::spawn(async move {
            for (peer, msg, r) in link::fan_out(&link, calls, PEERS_TIMEOUT).await {
                if let Err(e) = link::expect_ok(&peer, &msg, r) {
                    warn!(sds = %peer.name, error = %e, "could not send the SDS its peers");
                }
            }
        });
    }

    pub async fn handle(self: &Arc<Self>, req: MdmRequest, from: SocketAddr) -> MdmResponse {
        let r = match req {
            MdmRequest::Admin(a) => self.admin(a).await.map(MdmReply::Admin).map_err(Into::into),
            MdmRequest::RegisterSdc { name, ip } => self.register_sdc(&name, &ip, from).await,
            MdmRequest::WatchMappings { sdc_id, since } => self.watch_mappings(sdc_id, since).await,
            MdmRequest::GetLayout { volume_id } => {
                let st = self.current();
                st.volume(&By::Id(volume_id))
                    .map(|v| MdmReply::Layout(query::layout(&st, v)))
                    .map_err(Into::into)
            }
            MdmRequest::SdsHeartbeat {
                sds_id,
                system_id,
                addr,
                failed_devices,
            } => {
                self.sds_heartbeat(sds_id, system_id, addr, &failed_devices, from)
                    .await
            }
            MdmRequest::ReportSdsFailure { sds_id, reason } => {
                self.report_sds_failure(sds_id, &reason).await
            }
            MdmRequest::StoreScsiState {
                volume_id,
                sdc_id,
                version,
                state,
                events,
            } => {
                self.store_scsi_state(volume_id, sdc_id, version, state, events)
                    .await
            }
            MdmRequest::PublishScsiEvents {
                volume_id,
                sdc_id,
                events,
            } => self.publish_scsi_events(volume_id, sdc_id, events).await,
            MdmRequest::GetScsiState { volume_id } => {
                let st = self.current();
                st.volume(&By::Id(volume_id))
                    .map(|_| MdmReply::ScsiState {
                        stored: false,
                        state: query::volume_scsi(&st, volume_id),
                    })
                    .map_err(Into::into)
            }
            MdmRequest::WatchScsi { sdc_id, since } => self.watch_scsi(sdc_id, since).await,
        };
        r.map_err(|e: ServiceError| {
            info!(error = %e, "request refused");
            e.to_string()
        })
    }

    async fn register_sdc(
        &self,
        name: &str,
        ip: &str,
        from: SocketAddr,
    ) -> Result<MdmReply, ServiceError> {
        // A gateway that does not know its address is reached where it connected from.
        let ip = match ip.parse::<std::net::IpAddr>() {
            Ok(a) if a.is_unspecified() => from.ip().to_string(),
            _ if ip.is_empty() => from.ip().to_string(),
            _ => ip.to_string(),
        };
        let (sdc_id, changed) = self
            .apply::<_, ServiceError>(|st, ids| change::register_sdc(st, ids, name, &ip))
            .await?;
        if changed {
            info!(sdc = name, id = %fmt_id(sdc_id), %ip, "SDC registered");
        }
        let st = self.current();
        Ok(MdmReply::Registered {
            sdc_id,
            system_id: st.system_id,
            number: st.sdc.get(&sdc_id).map_or(0, |s| s.number),
        })
    }

    /// Answers at once if the gateway's generation is not the SDC's (it missed a change,
    /// or it talked to another MDM), else when the next change lands or time runs out.
    async fn watch_mappings(&self, sdc_id: u64, since: u64) -> Result<MdmReply, ServiceError> {
        let mut rx = self.state.subscribe();
        let deadline = tokio::time::Instant::now() + self.watch_wait;
        loop {
            let st = rx.borrow_and_update().clone();
            let sdc = st.sdc_by(&By::Id(sdc_id))?;
            if sdc.generation != since {
                return Ok(MdmReply::Mappings(query::mapped_view(&st, sdc)));
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => return Ok(MdmReply::Mappings(query::mapped_view(&st, sdc))),
            }
        }
    }

    /// Compare-and-swap of a volume's shared SCSI state, answered once the other
    /// gateways serving the volume have it (see `scsi_hub`).
    async fn store_scsi_state(
        &self,
        volume_id: u64,
        sdc_id: u64,
        version: u64,
        state: String,
        events: Vec<SharedEvent>,
    ) -> Result<MdmReply, ServiceError> {
        let generation = {
            let writer = self.writer.lock().await;
            let cur = self.current();
            cur.volume(&By::Id(volume_id))?;
            let have = query::volume_scsi(&cur, volume_id);
            if have.version != version {
                return Ok(MdmReply::ScsiState {
                    stored: false,
                    state: have,
                });
            }
            let mut next = (*cur).clone();
            next.scsi.insert(
                volume_id,
                ScsiBlob {
                    version: version + 1,
                    state,
                },
            );
            self.commit(&writer, next).await?;
            self.scsi.record(volume_id, sdc_id, events)
        };
        self.await_gateways(volume_id, sdc_id, generation).await;
        let st = self.current();
        Ok(MdmReply::ScsiState {
            stored: true,
            state: query::volume_scsi(&st, volume_id),
        })
    }

    async fn publish_scsi_events(
        &self,
        volume_id: u64,
        sdc_id: u64,
        events: Vec<SharedEvent>,
    ) -> Result<MdmReply, ServiceError> {
        self.current().volume(&By::Id(volume_id))?;
        let generation = self.scsi.record(volume_id, sdc_id, events);
        self.await_gateways(volume_id, sdc_id, generation).await;
        Ok(MdmReply::Ok)
    }

    /// Waits for every other gateway serving the volume to acknowledge `generation`.
    async fn await_gateways(&self, volume_id: u64, origin: u64, generation: u64) {
        let st = self.current();
        let who: Vec<u64> = st
            .sdc
            .values()
            .filter(|s| s.id != origin && query::serves(&st, s, volume_id))
            .map(|s| s.id)
            .collect();
        for sdc in self.scsi.wait_acked(generation, &who, ACK_WAIT).await {
            let name = st.sdc.get(&sdc).map_or("?", |s| s.name.as_str());
            warn!(sdc = name, volume = %fmt_id(volume_id), "gateway did not confirm a reservation change or reset in time; until it polls again it may serve the volume on stale reservations");
        }
    }

    /// Long poll for shared SCSI state; see `scsi_hub`.
    async fn watch_scsi(&self, sdc_id: u64, since: u64) -> Result<MdmReply, ServiceError> {
        self.current().sdc_by(&By::Id(sdc_id))?;
        self.scsi.ack(sdc_id, since);
        let mut rx = self.scsi.subscribe();
        let deadline = tokio::time::Instant::now() + self.watch_wait;
        loop {
            let generation = *rx.borrow_and_update();
            if generation != since
                || tokio::time::timeout_at(deadline, rx.changed())
                    .await
                    .is_err()
            {
                let st = self.current();
                let sdc = st.sdc_by(&By::Id(sdc_id))?;
                let volumes = st
                    .volumes
                    .keys()
                    .filter(|&&v| query::serves(&st, sdc, v))
                    .map(|&v| query::volume_scsi(&st, v))
                    .collect();
                let events = self
                    .scsi
                    .events_since(sdc_id, since, |v| query::serves(&st, sdc, v));
                return Ok(MdmReply::ScsiView(ScsiView {
                    generation,
                    volumes,
                    events,
                }));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::change::map_volume;
    use super::super::change::tests::{by, World};
    use super::super::testutil::FakeSds;
    use super::*;
    use crate::cluster::api::MappedView;

    fn mdm(w: &World, dir: &std::path::Path, wait: Duration) -> Arc<Mdm> {
        let (store, _) = Store::open(dir).unwrap();
        Arc::new(Mdm::new(
            w.st.clone(),
            store,
            Arc::new(FakeSds::default()),
            "127.0.0.1:6611".parse().unwrap(),
            wait,
        ))
    }

    fn view(r: MdmResponse) -> MappedView {
        match r {
            Ok(MdmReply::Mappings(v)) => v,
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_watch_answers_on_change_or_when_time_runs_out() {
        let mut w = World::new();
        w.sds("10.0.0.1", &[100]);
        w.sds("10.0.0.2", &[100]);
        w.volume("v", 1, true);
        let gw = w.sdc("gw", "10.0.1.1");
        let dir = tempfile::tempdir().unwrap();
        let m = mdm(&w, dir.path(), Duration::from_millis(200));
        let from: SocketAddr = "10.0.1.1:5000".parse().unwrap();
        let watch = move |since| MdmRequest::WatchMappings { sdc_id: gw, since };

        let v = view(m.handle(watch(0), from).await);
        assert_eq!((v.generation, v.volumes.len()), (1, 0));
        let start = tokio::time::Instant::now();
        let v = view(m.handle(watch(1), from).await);
        assert!(start.elapsed() >= Duration::from_millis(200));
        assert_eq!(v.generation, 1);

        let waiter = {
            let m = m.clone();
            tokio::spawn(async move { m.handle(watch(1), from).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        m.apply::<_, ServiceError>(|st, _| map_volume(st, &by("v"), &by("gw")))
            .await
            .unwrap();
        let v = view(waiter.await.unwrap());
        assert_eq!((v.generation, v.volumes.len()), (2, 1));
        assert_eq!(v.volumes[0].lun, Some(0));

        let e = m
            .handle(
                MdmRequest::WatchMappings {
                    sdc_id: 9,
                    since: 0,
                },
                from,
            )
            .await;
        assert!(e
            .unwrap_err()
            .contains("SDC 0000000000000009 (--sdc_id) does not exist"));
    }

    #[tokio::test]
    async fn a_scsi_state_change_is_answered_once_the_other_gateway_has_it() {
        let mut w = World::new();
        w.sds("10.0.0.1", &[100]);
        w.sds("10.0.0.2", &[100]);
        let vol = w.volume("v", 1, true);
        let gw1 = w.sdc("gw1", "10.0.1.1");
        let gw2 = w.sdc("gw2", "10.0.1.2");
        map_volume(&mut w.st, &by("v"), &by("gw1")).unwrap();
        map_volume(&mut w.st, &by("v"), &by("gw2")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let m = mdm(&w, dir.path(), Duration::from_secs(2));
        let from: SocketAddr = "10.0.1.2:5000".parse().unwrap();
        let watch = move |since| MdmRequest::WatchScsi { sdc_id: gw2, since };
        let scsi_view = |r: MdmResponse| match r {
            Ok(MdmReply::ScsiView(v)) => v,
            other => panic!("{other:?}"),
        };
        let store = move |version, state: &str| MdmRequest::StoreScsiState {
            volume_id: vol,
            sdc_id: gw1,
            version,
            state: state.into(),
            events: vec![SharedEvent::Reset { asc: 0x2903 }],
        };

        // First poll: at once, no old events.
        let v = scsi_view(m.handle(watch(u64::MAX), from).await);
        assert_eq!((v.generation, v.events.len()), (0, 0));
        assert_eq!(v.volumes[0].version, 0);

        let writer = {
            let m = m.clone();
            tokio::spawn(async move { m.handle(store(0, "a"), from).await })
        };
        // gw2 gets the state and the event...
        let v = scsi_view(m.handle(watch(0), from).await);
        assert_eq!(v.generation, 1);
        assert_eq!(
            (v.volumes[0].version, v.volumes[0].state.as_str()),
            (1, "a")
        );
        assert_eq!(v.events, vec![(vol, SharedEvent::Reset { asc: 0x2903 })]);
        tokio::time::sleep(Duration::from_millis(50)).await;
        // ...but the writer is answered only once gw2 asks again (its acknowledgement).
        assert!(!writer.is_finished());
        let again = {
            let m = m.clone();
            tokio::spawn(async move { m.handle(watch(1), from).await })
        };
        match writer.await.unwrap() {
            Ok(MdmReply::ScsiState { stored, state }) => {
                assert!(stored);
                assert_eq!(state.version, 1);
            }
            other => panic!("{other:?}"),
        }
        // A writer that read version 0 lost the race and gets the winner's state.
        match m.handle(store(0, "b"), from).await {
            Ok(MdmReply::ScsiState { stored, state }) => {
                assert!(!stored);
                assert_eq!((state.version, state.state.as_str()), (1, "a"));
            }
            other => panic!("{other:?}"),
        }
        again.abort();
        // Durable: it is in the state file.
        let saved: State = serde_json::from_slice(&std::fs::read(m.store.path()).unwrap()).unwrap();
        assert_eq!(saved.scsi[&vol].version, 1);
    }

    #[tokio::test]
    async fn a_refused_change_is_neither_applied_nor_saved() {
        let w = World::new();
        let dir = tempfile::tempdir().unwrap();
        let m = mdm(&w, dir.path(), Duration::from_secs(1));
        let before = m.current();
        let r = m
            .apply::<_, ServiceError>(|st, ids| change::add_pd(st, ids, "pd1"))
            .await;
        assert!(r.is_err());
        assert_eq!(*m.current(), *before);
        assert!(!m.store.path().exists());
        m.apply::<_, ServiceError>(|st, ids| change::add_pd(st, ids, "pd3"))
            .await
            .unwrap();
        assert!(m.store.path().exists());
    }

    #[tokio::test]
    async fn register_takes_the_peer_address_when_none_is_given() {
        let w = World::new();
        let dir = tempfile::tempdir().unwrap();
        let m = mdm(&w, dir.path(), Duration::from_secs(1));
        let from: SocketAddr = "10.9.9.9:4000".parse().unwrap();
        for ip in ["", "0.0.0.0"] {
            let req = MdmRequest::RegisterSdc {
                name: "gw".into(),
                ip: ip.into(),
            };
            assert!(matches!(
                m.handle(req, from).await,
                Ok(MdmReply::Registered { .. })
            ));
            assert_eq!(m.current().sdc.values().next().unwrap().ip, "10.9.9.9");
        }
    }
}
