//! One initiator connection: the login phase, then the full-feature phase loop that
//! routes PDUs to the CmdSN window, write collectors, the SCSI engine and task
//! management. The socket reader lives here; the writer is a task of its own
//! ([`super::writer`]).

use super::cmdsn::{Admit, CmdWindow};
use super::dataout::{BurstParams, DataOutError, WriteCollector};
use super::login::{self, LoginMachine, SessionParams, SessionType, StepOutcome};
use super::pdu::{
    self, opcode, reject_reason, tmf, tmf_response, AsyncMessage, DataOut, Digests, LoginRequest,
    LoginResponse, LogoutRequest, LogoutResponse, NopIn, NopOut, Pdu, PduError, Reject,
    ScsiCommand, TaskMgmtRequest, TaskMgmtResponse, TextRequest, TextResponse, RESERVED_TAG,
};
use super::response::{self, DataInLimits, Finished};
use super::server::ServerCtx;
use super::session::{SessionGuard, SessionKey};
use super::target::Target;
use super::writer::{self, CmdSnState, Outgoing};
use crate::backend::SgList;
use crate::scsi::sense::{asc, Sense, SenseKey};
use crate::scsi::{self, ItNexus, LogicalUnit, LunMap, ResetKind};
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Waker};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};
use tracing::{debug, info, warn, Instrument};

/// Why a connection ended early.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
    #[error("initiator closed the connection")]
    Closed,
    #[error("unrecoverable PDU error: {0}")]
    Pdu(#[from] PduError),
    #[error("protocol error at ErrorRecoveryLevel 0, ending the session: {0}")]
    Protocol(String),
    #[error("login did not complete within {0} s")]
    LoginTimeout(u64),
    #[error("initiator did not answer a NOP-In ping within {0} s")]
    PingTimeout(u64),
}

/// The largest data segment accepted during login, before anything is negotiated.
const LOGIN_MAX_DATA: usize = 64 * 1024;

/// Reads one PDU: `Ok(None)` on a clean end of stream. Cancel-safe: partial data stays
/// in `buf`.
async fn read_pdu<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    digests: Digests,
    max_data: usize,
) -> Result<Option<Result<Pdu, PduError>>, std::io::Error> {
    loop {
        match pdu::check(buf, digests, max_data) {
            Ok(Some(n)) => {
                let frame = buf.split_to(n).freeze();
                return Ok(Some(pdu::parse_initiator(frame, digests)));
            }
            Ok(None) => {}
            Err(e) => {
                // The frame can't be delimited; nothing after it can be trusted.
                buf.clear();
                return Ok(Some(Err(e)));
            }
        }
        if buf.capacity() - buf.len() < 16 * 1024 {
            buf.reserve(256 * 1024);
        }
        if rd.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

/// Serves one accepted TCP connection to the end.
pub async fn serve(stream: TcpStream, ctx: Arc<ServerCtx>) {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let span = tracing::info_span!("conn", %peer, initiator = tracing::field::Empty, isid = tracing::field::Empty, tsih = tracing::field::Empty);
    async move {
        let _ = stream.set_nodelay(true);
        match run(stream, ctx).await {
            Ok(()) | Err(ConnectionError::Closed) => debug!("connection closed"),
            Err(e) => warn!("connection ended: {e}"),
        }
    }
    .instrument(span)
    .await
}

struct LoggedIn {
    params: SessionParams,
    isid: [u8; 6],
    target: Option<Arc<Target>>,
    guard: SessionGuard,
    cmd_sn: u32,
    stat_sn: u32,
}

async fn run(mut stream: TcpStream, ctx: Arc<ServerCtx>) -> Result<(), ConnectionError> {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let secs = ctx.timing.login_timeout.as_secs();
    let logged = tokio::time::timeout(ctx.timing.login_timeout, login(&mut stream, &mut buf, &ctx))
        .await
        .map_err(|_| ConnectionError::LoginTimeout(secs))??;
    let Some(li) = logged else { return Ok(()) };
    let span = tracing::Span::current();
    span.record("initiator", li.params.initiator_name.as_str());
    span.record("isid", format!("{:02x?}", li.isid).as_str());
    span.record("tsih", li.guard.tsih);
    info!(
        target = li.params.target_name.as_deref().unwrap_or("(discovery)"),
        header_digest = li.params.header_digest,
        data_digest = li.params.data_digest,
        "login complete"
    );
    full_feature(stream, buf, ctx, li).await
}

fn login_reject(req: &LoginRequest, class: u8, detail: u8) -> LoginResponse {
    LoginResponse {
        isid: req.isid,
        itt: req.itt,
        status_class: class,
        status_detail: detail,
        csg: req.csg,
        nsg: req.nsg,
        ..Default::default()
    }
}

async fn send_login(
    stream: &mut TcpStream,
    mut resp: LoginResponse,
    stat_sn: &mut u32,
    cmd_sn: u32,
    depth: u32,
) -> Result<(), ConnectionError> {
    resp.stat_sn = *stat_sn;
    resp.exp_cmd_sn = cmd_sn;
    resp.max_cmd_sn = cmd_sn.wrapping_add(depth - 1);
    *stat_sn = stat_sn.wrapping_add(1);
    let enc = Pdu::LoginResponse(resp).encode(Digests::default());
    stream.write_all(&enc.to_vec()).await?;
    Ok(())
}

/// The login phase. `Ok(None)` when it ended without a session (refused, or closed).
async fn login(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    ctx: &Arc<ServerCtx>,
) -> Result<Option<LoggedIn>, ConnectionError> {
    let mut machine = LoginMachine::new(ctx.targets.clone(), ctx.limits.clone());
    let mut stat_sn: u32 = rand::random::<u16>() as u32;
    let mut first: Option<LoginRequest> = None;
    let depth = ctx.queue_depth;
    loop {
        let req = match read_pdu(stream, buf, Digests::default(), LOGIN_MAX_DATA).await? {
            None => return Err(ConnectionError::Closed),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(Pdu::LoginRequest(r))) => r,
            Some(Ok(other)) => {
                return Err(ConnectionError::Protocol(format!(
                    "expected a Login Request, got opcode {:#04x}",
                    other.opcode()
                )))
            }
        };
        let first_req = first.get_or_insert_with(|| req.clone()).clone();
        if req.isid != first_req.isid || req.tsih != first_req.tsih {
            let r = login_reject(&req, 0x02, 0x00);
            send_login(stream, r, &mut stat_sn, first_req.cmd_sn, depth).await?;
            return Ok(None);
        }
        if req.tsih != 0 {
            // We negotiate MaxConnections=1 and ERL 0: there is no session to join.
            let detail = if ctx.sessions.contains(req.tsih) {
                0x06
            } else {
                0x0a
            };
            let r = login_reject(&req, 0x02, detail);
            send_login(stream, r, &mut stat_sn, first_req.cmd_sn, depth).await?;
            return Ok(None);
        }
        let step = machine.step(&req);
        let mut resp = step.response;
        match step.outcome {
            StepOutcome::Continue => {
                send_login(stream, resp, &mut stat_sn, first_req.cmd_sn, depth).await?;
            }
            StepOutcome::Failed => {
                info!(
                    class = resp.status_class,
                    detail = resp.status_detail,
                    "login refused"
                );
                send_login(stream, resp, &mut stat_sn, first_req.cmd_sn, depth).await?;
                return Ok(None);
            }
            StepOutcome::Complete(params) => {
                let target = match params.session_type {
                    SessionType::Normal => params
                        .target_name
                        .as_deref()
                        .and_then(|n| ctx.targets.get(n))
                        .cloned(),
                    SessionType::Discovery => None,
                };
                if params.session_type == SessionType::Normal && target.is_none() {
                    let r = login_reject(&req, 0x02, 0x03);
                    send_login(stream, r, &mut stat_sn, first_req.cmd_sn, depth).await?;
                    return Ok(None);
                }
                let guard = ctx
                    .sessions
                    .register(SessionKey {
                        initiator: params.initiator_name.clone(),
                        isid: req.isid,
                        target: params.target_name.clone().filter(|_| target.is_some()),
                    })
                    .await;
                resp.tsih = guard.tsih;
                send_login(stream, resp, &mut stat_sn, first_req.cmd_sn, depth).await?;
                return Ok(Some(LoggedIn {
                    params,
                    isid: req.isid,
                    target,
                    guard,
                    cmd_sn: first_req.cmd_sn,
                    stat_sn,
                }));
            }
        }
    }
}

/// A command the CmdSN window holds until its turn.
#[derive(Debug)]
enum Ordered {
    Scsi(u32),
    Tmf(TaskMgmtRequest),
    Text(TextRequest),
    Logout(LogoutRequest),
    Nop(NopOut),
}

/// A Text exchange spanning several PDUs.
struct TextExchange {
    itt: u32,
    ttt: u32,
    /// Request text gathered from C=1 PDUs.
    request: BytesMut,
    /// Answer text not yet sent.
    reply: Bytes,
}

/// A SCSI task from its command PDU to its response.
struct Task {
    lun_raw: u64,
    lun: u64,
    cmd: ScsiCommand,
    collector: Option<WriteCollector>,
    /// The transport already failed it (bad Data-Out, digest error): it is answered
    /// with this sense when its CmdSN turn comes, and its data is discarded.
    failed: Option<Bytes>,
    /// Its CmdSN turn has come.
    delivered: bool,
    running: Option<JoinHandle<()>>,
    /// Whoever sets this first owns the task's ending: the task (by responding) or
    /// task management (by aborting it silently).
    claimed: Arc<AtomicBool>,
}

struct Conn {
    ctx: Arc<ServerCtx>,
    params: SessionParams,
    target: Option<Arc<Target>>,
    luns: Arc<LunMap>,
    nexus: ItNexus,
    tx: writer::Sender,
    sn: Arc<CmdSnState>,
    window: CmdWindow<Ordered>,
    tasks: HashMap<u32, Task>,
    /// Tasks report their end with their claim flag, which identifies the task even
    /// after its ITT was reused.
    done_tx: mpsc::UnboundedSender<(u32, Arc<AtomicBool>)>,
    next_ttt: u32,
    /// Tag of our outstanding NOP-In ping and when it times out.
    ping: Option<(u32, Instant)>,
    text: Option<TextExchange>,
    closing: bool,
    /// Set when we asked the initiator to log out (it was removed from the map): past
    /// this instant the connection is dropped.
    logout_by: Option<Instant>,
}

/// Seconds an initiator removed from the map has to log out (Async Message
/// Parameter3) before its connection is dropped.
const LOGOUT_GRACE_SECS: u16 = 5;

async fn full_feature(
    stream: TcpStream,
    mut buf: BytesMut,
    ctx: Arc<ServerCtx>,
    li: LoggedIn,
) -> Result<(), ConnectionError> {
    let (mut rd, wr) = stream.into_split();
    let digests = Digests {
        header: li.params.header_digest,
        data: li.params.data_digest,
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let sn = Arc::new(CmdSnState::default());
    let window = CmdWindow::new(li.cmd_sn, ctx.queue_depth);
    sn.set(window.exp_cmd_sn(), window.max_cmd_sn());
    let writer = tokio::spawn(
        writer::run(wr, rx, sn.clone(), li.stat_sn, digests).instrument(tracing::Span::current()),
    );
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let luns = li
        .target
        .as_ref()
        .and_then(|t| t.luns_for(&li.params.initiator_name))
        .unwrap_or_default();
    let mut access = li.target.as_ref().map(|t| t.subscribe());
    let nexus = ItNexus {
        initiator: li.params.initiator_name.as_str().into(),
        isid: li.isid,
        tpgt: ctx.targets.portal_group_tag,
    };
    let max_data = li.params.target_max_recv_data_segment_length as usize;
    let kill = li.guard.kill.clone();
    let mut c = Conn {
        ctx: ctx.clone(),
        params: li.params,
        target: li.target,
        luns,
        nexus,
        tx,
        sn,
        window,
        tasks: HashMap::new(),
        done_tx,
        next_ttt: 1,
        ping: None,
        text: None,
        closing: false,
        logout_by: None,
    };
    let interval = ctx.timing.nop_interval;
    let mut idle_deadline = Instant::now() + interval;
    let result = loop {
        let deadline = c.ping.map(|(_, t)| t).unwrap_or(idle_deadline);
        let deadline = c.logout_by.map_or(deadline, |l| l.min(deadline));
        tokio::select! {
            r = read_pdu(&mut rd, &mut buf, digests, max_data) => {
                idle_deadline = Instant::now() + interval;
                let r = match r {
                    Err(e) => break Err(e.into()),
                    Ok(None) => break Err(ConnectionError::Closed),
                    Ok(Some(r)) => r,
                };
                if let Err(e) = c.on_pdu(r).await {
                    break Err(e);
                }
                if c.closing {
                    break Ok(());
                }
            }
            Some((itt, claim)) = done_rx.recv() => {
                if c.tasks.get(&itt).is_some_and(|t| Arc::ptr_eq(&t.claimed, &claim)) {
                    c.tasks.remove(&itt);
                }
            }
            _ = kill.notified() => {
                info!("session closed by the target (reinstated or reset)");
                break Ok(());
            }
            changed = async {
                match access.as_mut() {
                    Some(rx) => rx.changed().await,
                    None => std::future::pending().await,
                }
            } => {
                match changed {
                    Ok(()) => c.access_changed(),
                    // The target is gone with the server; nothing more will change.
                    Err(_) => access = None,
                }
            }
            _ = sleep_until(deadline) => {
                if c.logout_by.is_some_and(|l| Instant::now() >= l) {
                    info!("initiator did not log out when asked; dropping the connection");
                    break Ok(());
                }
                if c.ping.is_some() {
                    break Err(ConnectionError::PingTimeout(ctx.timing.nop_timeout.as_secs()));
                }
                c.send_ping();
                idle_deadline = Instant::now() + interval;
            }
        }
    };
    c.abort_all();
    let _ = c.tx.send(Outgoing::Close);
    drop(c.tx);
    // Before the session's guard goes: a reinstating login waits for it, so the new
    // nexus cannot lose state (an SPC-2 RESERVE) to the old one's cleanup.
    for lu in c.luns.values() {
        lu.nexus_lost(&c.nexus).await;
    }
    drop(li.guard);
    let _ = writer.await;
    result
}

/// Hands out Target Transfer Tags, never the reserved 0xffffffff.
fn next_tag(next: &mut u32) -> u32 {
    let t = *next;
    *next = next.wrapping_add(1);
    if *next == RESERVED_TAG {
        *next = 1;
    }
    t
}

impl Conn {
    /// The target's map changed: pick up this initiator's LUNs. Mapped or unmapped
    /// LUNs raise REPORTED LUNS DATA HAS CHANGED; an unmapped LUN refuses the next
    /// command at once; an initiator no longer admitted is asked to log out.
    fn access_changed(&mut self) {
        let Some(t) = &self.target else { return };
        let Some(new) = t.luns_for(&self.params.initiator_name) else {
            if self.logout_by.is_none() {
                info!("initiator removed from the target's map; asking it to log out");
                self.set_luns(Arc::default());
                self.send(Pdu::AsyncMessage(AsyncMessage {
                    event: 1,
                    param3: LOGOUT_GRACE_SECS,
                    ..Default::default()
                }));
                self.logout_by = Some(
                    Instant::now() + std::time::Duration::from_secs(LOGOUT_GRACE_SECS as u64 + 1),
                );
            }
            return;
        };
        let same = new.len() == self.luns.len()
            && new
                .iter()
                .zip(self.luns.iter())
                .all(|((a, ua), (b, ub))| a == b && Arc::ptr_eq(ua, ub));
        if !same {
            info!(
                luns = new.len(),
                "LUN map changed; reporting it with a unit attention"
            );
            self.set_luns(new);
            for lu in self.luns.values() {
                lu.luns_changed(&self.nexus);
            }
        }
    }

    /// Replaces the LUN map; units this nexus no longer reaches forget it.
    fn set_luns(&mut self, new: Arc<LunMap>) {
        let old = std::mem::replace(&mut self.luns, new);
        let lost: Vec<Arc<LogicalUnit>> = old
            .values()
            .filter(|lu| !self.luns.values().any(|n| Arc::ptr_eq(n, lu)))
            .cloned()
            .collect();
        if !lost.is_empty() {
            // Releasing an SPC-2 RESERVE goes through the volume's shared store.
            let nexus = self.nexus.clone();
            tokio::spawn(async move {
                for lu in lost {
                    lu.nexus_lost(&nexus).await;
                }
            });
        }
    }

    fn send(&self, pdu: Pdu) {
        let _ = self.tx.send(Outgoing::Pdu(Box::new(pdu)));
    }

    fn alloc_ttt(&mut self) -> u32 {
        next_tag(&mut self.next_ttt)
    }

    fn send_ping(&mut self) {
        let ttt = self.alloc_ttt();
        self.ping = Some((ttt, Instant::now() + self.ctx.timing.nop_timeout));
        self.send(Pdu::NopIn(NopIn {
            itt: RESERVED_TAG,
            ttt,
            ..Default::default()
        }));
    }

    fn reject(&self, reason: u8, header: Bytes) {
        self.send(Pdu::Reject(Reject {
            reason,
            data_sn: 0,
            data: header,
            ..Default::default()
        }));
    }

    fn burst(&self) -> BurstParams {
        BurstParams {
            initial_r2t: self.params.initial_r2t,
            immediate_data: self.params.immediate_data,
            first_burst_length: self.params.first_burst_length,
            max_burst_length: self.params.max_burst_length,
            max_outstanding_r2t: self.params.max_outstanding_r2t,
        }
    }

    fn publish_window(&self) {
        self.sn
            .set(self.window.exp_cmd_sn(), self.window.max_cmd_sn());
    }

    async fn on_pdu(&mut self, r: Result<Pdu, PduError>) -> Result<(), ConnectionError> {
        let pdu = match r {
            Ok(p) => p,
            Err(e) => return self.on_pdu_error(e),
        };
        let discovery = self.params.session_type == SessionType::Discovery;
        match pdu {
            Pdu::ScsiCommand(cmd) if !discovery => self.on_command(cmd).await,
            Pdu::DataOut(d) if !discovery => self.on_data_out(d).await,
            Pdu::NopOut(n) => {
                if n.itt == RESERVED_TAG {
                    // The answer to our ping (or a bare CmdSN-free keepalive).
                    if self.ping.is_some_and(|(t, _)| t == n.ttt) {
                        self.ping = None;
                    }
                    return Ok(());
                }
                self.admit(n.cmd_sn, n.immediate, Ordered::Nop(n)).await?;
                Ok(())
            }
            Pdu::TaskMgmtRequest(t) if !discovery => {
                self.admit(t.cmd_sn, t.immediate, Ordered::Tmf(t)).await?;
                Ok(())
            }
            Pdu::TextRequest(t) => {
                self.admit(t.cmd_sn, t.immediate, Ordered::Text(t)).await?;
                Ok(())
            }
            Pdu::LogoutRequest(l) => {
                self.admit(l.cmd_sn, l.immediate, Ordered::Logout(l))
                    .await?;
                Ok(())
            }
            Pdu::SnackRequest(s) => {
                // SNACK needs ErrorRecoveryLevel > 0, which we never negotiate.
                let hdr = Pdu::SnackRequest(s).encode(Digests::default()).header;
                self.reject(reject_reason::PROTOCOL_ERROR, hdr.slice(..pdu::BHS_LEN));
                Ok(())
            }
            other => {
                let hdr = other.encode(Digests::default()).header;
                let reason = if discovery {
                    // Discovery sessions carry only Text, NOP and Logout.
                    reject_reason::PROTOCOL_ERROR
                } else {
                    reject_reason::COMMAND_NOT_SUPPORTED
                };
                self.reject(reason, hdr.slice(..pdu::BHS_LEN));
                Ok(())
            }
        }
    }

    fn on_pdu_error(&mut self, e: PduError) -> Result<(), ConnectionError> {
        warn!("bad PDU from initiator: {e}");
        if let (Some(reason), Some(hdr)) = (e.reject_reason(), e.header()) {
            self.reject(reason, hdr.slice(..hdr.len().min(pdu::BHS_LEN)));
        }
        if e.fatal() {
            return Err(e.into());
        }
        if let PduError::DataDigest { header, itt } = &e {
            match header.first().map(|b| b & 0x3f) {
                // A command whose immediate data is lost leaves a CmdSN hole we
                // cannot fill at ERL 0: session recovery.
                Some(opcode::SCSI_COMMAND) => return Err(e.into()),
                // Lost write data ends its task with CHECK CONDITION (RFC 7143
                // section 7.8, option b).
                Some(opcode::DATA_OUT) => {
                    if let Some(task) = self.tasks.get_mut(itt) {
                        if task.running.is_none() {
                            let sense = Sense::new(
                                SenseKey::AbortedCommand,
                                asc::PROTOCOL_SERVICE_CRC_ERROR,
                            );
                            task.failed = Some(sense.encode(false));
                            task.collector = None;
                            self.progress(*itt);
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Passes an ordered PDU through the CmdSN window and delivers what it releases.
    /// Returns false when the window ignored it.
    async fn admit(
        &mut self,
        cmd_sn: u32,
        immediate: bool,
        item: Ordered,
    ) -> Result<bool, ConnectionError> {
        let admit = self.window.admit(cmd_sn, immediate, item);
        self.publish_window();
        match admit {
            Admit::Dropped => {
                debug!(
                    cmd_sn,
                    exp = self.window.exp_cmd_sn(),
                    "CmdSN outside the window: ignored"
                );
                Ok(false)
            }
            Admit::Queued => Ok(true),
            Admit::Deliver(items) => {
                for it in items {
                    self.deliver(it).await?;
                    if self.closing {
                        break;
                    }
                }
                Ok(true)
            }
        }
    }

    async fn deliver(&mut self, item: Ordered) -> Result<(), ConnectionError> {
        match item {
            Ordered::Scsi(itt) => {
                if let Some(t) = self.tasks.get_mut(&itt) {
                    t.delivered = true;
                }
                self.progress(itt);
                Ok(())
            }
            Ordered::Nop(n) => {
                self.send(Pdu::NopIn(NopIn {
                    lun: n.lun,
                    itt: n.itt,
                    ttt: RESERVED_TAG,
                    data: n.data,
                    ..Default::default()
                }));
                Ok(())
            }
            Ordered::Text(t) => {
                self.on_text(t);
                Ok(())
            }
            Ordered::Tmf(t) => {
                self.on_tmf(t).await;
                Ok(())
            }
            Ordered::Logout(l) => {
                self.on_logout(l).await;
                Ok(())
            }
        }
    }

    async fn on_command(&mut self, cmd: ScsiCommand) -> Result<(), ConnectionError> {
        // An initiator may reuse an ITT as soon as it has the response, which can be
        // before the finished task has been reaped here.
        if self
            .tasks
            .get(&cmd.itt)
            .is_some_and(|t| t.claimed.load(Ordering::Acquire))
        {
            self.tasks.remove(&cmd.itt);
        }
        if self.tasks.contains_key(&cmd.itt) {
            let hdr = Pdu::ScsiCommand(cmd).encode(Digests::default()).header;
            self.reject(reject_reason::TASK_IN_PROGRESS, hdr.slice(..pdu::BHS_LEN));
            return Ok(());
        }
        let mut failed = None;
        let collector = if cmd.write && cmd.edtl > scsi::MAX_TRANSFER_BYTES {
            // Gathering it would let one command pin unbounded memory.
            warn!(
                itt = cmd.itt,
                edtl = cmd.edtl,
                "write longer than the maximum transfer length refused"
            );
            failed = Some(Sense::invalid_cdb(0, None).encode(false));
            None
        } else if cmd.write && cmd.edtl > 0 {
            match WriteCollector::new(
                cmd.itt,
                cmd.edtl,
                cmd.data.clone(),
                cmd.final_,
                self.burst(),
            ) {
                Ok(c) => Some(c),
                Err(e) => {
                    warn!(itt = cmd.itt, "write refused: {e}");
                    failed = Some(e.sense().encode(false));
                    None
                }
            }
        } else {
            None
        };
        let itt = cmd.itt;
        let (cmd_sn, immediate) = (cmd.cmd_sn, cmd.immediate);
        let task = Task {
            lun_raw: cmd.lun,
            lun: scsi::decode_lun(cmd.lun),
            cmd: ScsiCommand {
                data: Bytes::new(),
                ..cmd
            },
            collector,
            failed,
            delivered: false,
            running: None,
            claimed: Arc::new(AtomicBool::new(false)),
        };
        self.tasks.insert(itt, task);
        if !self.admit(cmd_sn, immediate, Ordered::Scsi(itt)).await? {
            self.tasks.remove(&itt);
        }
        Ok(())
    }

    async fn on_data_out(&mut self, d: DataOut) -> Result<(), ConnectionError> {
        let Some(task) = self.tasks.get_mut(&d.itt) else {
            // Data for a task we aborted (or never knew): discard it.
            debug!(itt = d.itt, "Data-Out for no active task: discarded");
            return Ok(());
        };
        if task.failed.is_some() || task.running.is_some() {
            // The rest of a write we already failed (or one complete and running).
            return Ok(());
        }
        let result = match task.collector.as_mut() {
            Some(col) => col.accept(&d),
            None => Err(DataOutError::UnsolicitedNotAllowed),
        };
        if let Err(e) = result {
            warn!(itt = d.itt, "write ended with ABORTED COMMAND: {e}");
            task.failed = Some(e.sense().encode(false));
            task.collector = None;
        }
        self.progress(d.itt);
        Ok(())
    }

    /// Moves a delivered task on: more R2Ts while data is missing, execution once it
    /// is all here.
    fn progress(&mut self, itt: u32) {
        let mut r2ts = Vec::new();
        let ready = {
            let Some(task) = self.tasks.get(&itt) else {
                return;
            };
            if !task.delivered || task.running.is_some() {
                return;
            }
            if task.failed.is_some() {
                self.fail(itt);
                return;
            }
            match &task.collector {
                None => true,
                Some(c) => c.is_complete(),
            }
        };
        if !ready {
            let next_ttt = &mut self.next_ttt;
            let task = self.tasks.get_mut(&itt).expect("present");
            let col = task
                .collector
                .as_mut()
                .expect("incomplete implies collector");
            for r in col.next_r2ts(|| next_tag(next_ttt)) {
                r2ts.push(pdu::R2t {
                    lun: task.lun_raw,
                    itt,
                    ttt: r.ttt,
                    r2t_sn: r.r2t_sn,
                    buffer_offset: r.offset,
                    desired_length: r.length,
                    ..Default::default()
                });
            }
            for r in r2ts {
                self.send(Pdu::R2t(r));
            }
            return;
        }
        self.start(itt);
    }

    /// Answers a task the transport failed, without running it.
    fn fail(&mut self, itt: u32) {
        let Some(task) = self.tasks.remove(&itt) else {
            return;
        };
        let fin = Finished {
            itt,
            lun: task.cmd.lun,
            edtl: task.cmd.edtl,
            write: task.cmd.write,
            status: scsi::status::CHECK_CONDITION,
            data_in: Bytes::new(),
            sense: task.failed.unwrap_or_default(),
            data_out_len: 0,
            r2ts: 0,
        };
        for p in response::complete(fin, self.data_in_limits()) {
            self.send(p);
        }
    }

    fn data_in_limits(&self) -> DataInLimits {
        DataInLimits {
            max_segment: self.params.initiator_max_recv_data_segment_length,
            max_burst: self.params.max_burst_length,
        }
    }

    fn start(&mut self, itt: u32) {
        let limits = self.data_in_limits();
        let luns = self.luns.clone();
        let nexus = self.nexus.clone();
        let tx = self.tx.clone();
        let done = self.done_tx.clone();
        let Some(task) = self.tasks.get_mut(&itt) else {
            return;
        };
        let (data, r2ts) = match task.collector.take() {
            Some(c) => {
                let n = c.r2ts_sent();
                (c.into_data(), n)
            }
            None => (SgList::new(), 0),
        };
        let cmd = task.cmd.clone();
        let lun = task.lun;
        let claimed = task.claimed.clone();
        let inline = luns
            .get(&lun)
            .is_none_or(|u| u.backend().completes_inline());
        let mut run = Box::pin(async move {
            let cdb = cmd.cdb.clone();
            let resp = scsi::execute(
                &luns,
                &nexus,
                scsi::Request {
                    lun,
                    cdb: cdb.clone(),
                    data_out: data,
                },
            )
            .await;
            if claimed.swap(true, Ordering::AcqRel) {
                // Aborted by task management while running: no response.
                let _ = done.send((itt, claimed));
                return;
            }
            let data_out_len = if cmd.write {
                scsi::data_out_length(&cdb).unwrap_or(cmd.edtl)
            } else {
                0
            };
            let fin = Finished {
                itt,
                lun: cmd.lun,
                edtl: cmd.edtl,
                write: cmd.write && !cmd.read,
                status: resp.status,
                data_in: resp.data_in,
                sense: resp.sense,
                data_out_len,
                r2ts,
            };
            for p in response::complete(fin, limits) {
                let _ = tx.send(Outgoing::Pdu(Box::new(p)));
            }
            let _ = done.send((itt, claimed));
        });
        // A command on a unit whose I/O seldom waits (a cached read or write of a local
        // volume) finishes right here: spawning it cost a task and the wakeup of an idle
        // worker thread to look for it, on the QD1 latency path. One that does wait goes
        // on as a task of its own, which polls it again with its own waker.
        let mut cx = Context::from_waker(Waker::noop());
        if !inline || run.as_mut().poll(&mut cx).is_pending() {
            task.running = Some(tokio::spawn(run));
        }
    }

    /// Ends tasks without a response; returns how many were still ours to end.
    async fn abort_where(&mut self, pred: impl Fn(&Task) -> bool) -> usize {
        let itts: Vec<u32> = self
            .tasks
            .iter()
            .filter(|(_, t)| pred(t))
            .map(|(i, _)| *i)
            .collect();
        let mut aborted = 0;
        for itt in itts {
            if let Some(t) = self.tasks.remove(&itt) {
                if !t.claimed.swap(true, Ordering::AcqRel) {
                    aborted += 1;
                }
                if let Some(h) = t.running {
                    h.abort();
                    let _ = h.await;
                }
            }
        }
        aborted
    }

    fn abort_all(&mut self) {
        for (_, t) in self.tasks.drain() {
            t.claimed.store(true, Ordering::Release);
            if let Some(h) = t.running {
                h.abort();
            }
        }
    }

    async fn on_tmf(&mut self, t: TaskMgmtRequest) {
        let lun = scsi::decode_lun(t.lun);
        let lun_known = self.luns.contains_key(&lun);
        let response = match t.function {
            tmf::ABORT_TASK => {
                let rtt = t.rtt;
                // A task that already answered counts as not existing.
                if self.abort_where(|task| task.cmd.itt == rtt).await > 0 {
                    info!(itt = rtt, "task aborted");
                    tmf_response::COMPLETE
                } else {
                    tmf_response::TASK_DOES_NOT_EXIST
                }
            }
            tmf::ABORT_TASK_SET | tmf::CLEAR_TASK_SET if !lun_known => {
                tmf_response::LUN_DOES_NOT_EXIST
            }
            tmf::ABORT_TASK_SET | tmf::CLEAR_TASK_SET => {
                let n = self.abort_where(|task| task.lun == lun).await;
                info!(lun, aborted = n, "task set aborted");
                tmf_response::COMPLETE
            }
            tmf::LOGICAL_UNIT_RESET if !lun_known => tmf_response::LUN_DOES_NOT_EXIST,
            tmf::LOGICAL_UNIT_RESET => {
                let n = self.abort_where(|task| task.lun == lun).await;
                if let Some(lu) = self.luns.get(&lun) {
                    lu.reset(ResetKind::LogicalUnit).await;
                }
                info!(lun, aborted = n, "logical unit reset");
                tmf_response::COMPLETE
            }
            tmf::TARGET_WARM_RESET | tmf::TARGET_COLD_RESET => {
                let cold = t.function == tmf::TARGET_COLD_RESET;
                let n = self.abort_where(|_| true).await;
                let kind = if cold {
                    ResetKind::TargetCold
                } else {
                    ResetKind::TargetWarm
                };
                for lu in self.luns.values() {
                    lu.reset(kind).await;
                }
                info!(aborted = n, cold, "target reset");
                if cold {
                    // Answer, then drop every connection of the target (RFC 7143
                    // section 11.5.1).
                    self.send(Pdu::TaskMgmtResponse(TaskMgmtResponse {
                        response: tmf_response::COMPLETE,
                        itt: t.itt,
                        ..Default::default()
                    }));
                    if let Some(target) = &self.target {
                        self.ctx.sessions.kill_target(&target.name);
                    }
                    self.closing = true;
                    return;
                }
                tmf_response::COMPLETE
            }
            tmf::TASK_REASSIGN => tmf_response::REASSIGNMENT_NOT_SUPPORTED,
            _ => tmf_response::NOT_SUPPORTED,
        };
        self.send(Pdu::TaskMgmtResponse(TaskMgmtResponse {
            response,
            itt: t.itt,
            ..Default::default()
        }));
    }

    /// Text Request in full feature phase, with continuation both ways: requests
    /// split with C=1 are gathered; answers longer than the initiator's
    /// MaxRecvDataSegmentLength go out in pieces it asks for with the TTT we give.
    fn on_text(&mut self, t: TextRequest) {
        let pending = self.text.take().filter(|p| p.itt == t.itt);
        let mut state = match pending {
            Some(p) if !p.reply.is_empty() && t.ttt == p.ttt && t.data.is_empty() => p,
            other => {
                let mut request = other.map(|p| p.request).unwrap_or_default();
                request.extend_from_slice(&t.data);
                let ttt = self.alloc_ttt();
                if t.cont {
                    self.text = Some(TextExchange {
                        itt: t.itt,
                        ttt,
                        request,
                        reply: Bytes::new(),
                    });
                    self.send_text(&t, ttt, false, false, Bytes::new());
                    return;
                }
                match login::text_negotiate(&*self.ctx.targets, &self.params, &request) {
                    Ok(o) => {
                        if let Some(n) = o.initiator_max_recv_data_segment_length {
                            self.params.initiator_max_recv_data_segment_length = n;
                        }
                        TextExchange {
                            itt: t.itt,
                            ttt,
                            request: BytesMut::new(),
                            reply: o.data,
                        }
                    }
                    Err(e) => {
                        warn!("malformed Text Request: {e}");
                        let hdr = Pdu::TextRequest(t).encode(Digests::default()).header;
                        self.reject(reject_reason::PROTOCOL_ERROR, hdr.slice(..pdu::BHS_LEN));
                        return;
                    }
                }
            }
        };
        let max = self.params.initiator_max_recv_data_segment_length as usize;
        if state.reply.len() <= max {
            let reply = std::mem::take(&mut state.reply);
            self.send_text(&t, RESERVED_TAG, true, false, reply);
        } else {
            let piece = state.reply.split_to(max);
            self.send_text(&t, state.ttt, false, true, piece);
            self.text = Some(state);
        }
    }

    fn send_text(&self, t: &TextRequest, ttt: u32, final_: bool, cont: bool, data: Bytes) {
        self.send(Pdu::TextResponse(TextResponse {
            final_,
            cont,
            lun: t.lun,
            itt: t.itt,
            ttt,
            data,
            ..Default::default()
        }));
    }

    async fn on_logout(&mut self, l: LogoutRequest) {
        let response = if l.reason == 2 {
            // Removing a connection for recovery needs ERL 2.
            2
        } else {
            // Let commands already running finish so their responses go out first.
            let running: Vec<JoinHandle<()>> = self
                .tasks
                .values_mut()
                .filter_map(|t| t.running.take())
                .collect();
            for h in running {
                let _ = h.await;
            }
            // The nexus ends here (one connection per session): release what it held
            // before the initiator hears the logout is done.
            for lu in self.luns.values() {
                lu.nexus_lost(&self.nexus).await;
            }
            self.closing = true;
            0
        };
        self.send(Pdu::LogoutResponse(LogoutResponse {
            response,
            itt: l.itt,
            time2wait: self.params.default_time2wait,
            time2retain: self.params.default_time2retain,
            ..Default::default()
        }));
        info!(reason = l.reason, "logout");
    }
}
