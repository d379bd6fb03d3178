//! One pipelined connection to an SDS: any number of requests in flight, told apart
//! by tag. A writer task sends queued requests; a reader task hands each response to
//! the waiter registered under its tag. When either side fails, every waiter learns at
//! once and the connection reports itself dead so the pool replaces it.
//!
//! The connection is local (the SDS's Unix socket, with shared memory for reads: see
//! `local` and `arena`) when the SDS is on this host and lets it, TCP otherwise.

use super::arena::{Arena, Region, ARENA_LEN};
use super::io::{read_header, read_payload, writer_loop, Outgoing};
use super::local::{self, send_with_fd};
use super::wire::{
    decode_error, Op, RequestHeader, ResponseHeader, FLAG_ARENA, FLAG_IN_ARENA, RESPONSE_HEADER_LEN,
};
use super::ChunkError;
use crate::backend::SgList;
use bytes::Bytes;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;

/// A response: header and payload (one buffer, as read from the socket).
pub(super) type Reply = (ResponseHeader, Bytes);
type Waiter = oneshot::Sender<Result<Reply, ChunkError>>;

/// Bytes buffered per read: a few small responses per system call, while a large
/// payload is read past the buffer straight into its own allocation (what the buffer
/// read ahead of it is copied once more). In A/B runs 8 KiB was as fast as 64 KiB for
/// 4 KiB reads at QD32 and about 1.5% faster for 1 MiB reads.
const READ_BUFFER: usize = 8 << 10;

pub(super) struct Conn {
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Outgoing>,
    next_tag: AtomicU64,
    tasks: [AbortHandle; 2],
    /// Shared memory the SDS reads into (local connections only).
    arena: Option<Arc<Arena>>,
}

struct Shared {
    addr: SocketAddr,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    waiters: HashMap<u64, Pending>,
    /// Why the connection died; set once, never cleared.
    dead: Option<String>,
}

/// A request in flight: who waits for it (nobody once the caller gave up), and the
/// shared memory lent for its data, kept until the answer even if nobody waits: the
/// SDS may write it until then.
struct Pending {
    waiter: Option<Waiter>,
    region: Option<Region>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn unreachable(&self, reason: &str) -> ChunkError {
        ChunkError::Unreachable {
            addr: self.addr,
            reason: reason.to_string(),
        }
    }

    /// Marks the connection dead and fails every request in flight on it.
    fn fail(&self, reason: String) {
        let waiters = {
            let mut s = self.lock();
            s.dead.get_or_insert(reason.clone());
            std::mem::take(&mut s.waiters)
        };
        if !waiters.is_empty() {
            tracing::debug!(sds = %self.addr, %reason, in_flight = waiters.len(), "chunk connection failed");
        }
        for w in waiters.into_values().filter_map(|p| p.waiter) {
            let _ = w.send(Err(self.unreachable(&reason)));
        }
    }
}

impl Conn {
    /// Connects to the SDS at `addr`: locally first when `local`, else (or if that
    /// fails) over TCP.
    pub(super) async fn connect(addr: SocketAddr, local: bool) -> Result<Self, ChunkError> {
        if local {
            match connect_local(addr).await {
                Ok(Some((stream, arena))) => {
                    let (rd, wr) = stream.into_split();
                    return Ok(Self::start(addr, rd, wr, Some(arena)));
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(sds = %addr, error = %e, "local connection refused; using TCP")
                }
            }
        }
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| ChunkError::Unreachable {
                addr,
                reason: format!("connect failed: {e}"),
            })?;
        stream.set_nodelay(true).ok();
        let (rd, wr) = stream.into_split();
        Ok(Self::start(addr, rd, wr, None))
    }

    fn start<R, W>(addr: SocketAddr, rd: R, wr: W, arena: Option<Arc<Arena>>) -> Self
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let shared = Arc::new(Shared {
            addr,
            state: Mutex::new(State::default()),
        });
        let reader = tokio::spawn(read_responses(rd, shared.clone())).abort_handle();
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = {
            let shared = shared.clone();
            let reader = reader.clone();
            tokio::spawn(async move {
                if let Err(e) = writer_loop(wr, rx).await {
                    reader.abort();
                    shared.fail(format!("send failed: {e}"));
                }
            })
            .abort_handle()
        };
        Self {
            shared,
            tx,
            next_tag: AtomicU64::new(1),
            tasks: [reader, writer],
            arena,
        }
    }

    /// A local connection with shared memory for reads.
    #[cfg(test)]
    pub(super) fn is_local(&self) -> bool {
        self.arena.is_some()
    }

    pub(super) fn is_alive(&self) -> bool {
        self.shared.lock().dead.is_none()
    }

    /// Declares the connection dead (e.g. it left a request unanswered too long).
    pub(super) fn kill(&self, reason: String) {
        for t in &self.tasks {
            t.abort();
        }
        self.shared.fail(reason);
    }

    /// Sends one request (its tag is assigned here) and waits for the response. A
    /// Read on a local connection asks for its data in shared memory when there is
    /// room; the reply's payload is then that memory, not a copy.
    pub(super) async fn call(
        &self,
        mut header: RequestHeader,
        payload: &SgList,
    ) -> Result<Reply, ChunkError> {
        header.tag = self.next_tag.fetch_add(1, Ordering::Relaxed);
        let region = match (&self.arena, header.op) {
            (Some(a), Op::Read) => a.lend(header.length as usize),
            _ => None,
        };
        if let Some(r) = &region {
            header.flags |= FLAG_ARENA;
            header.arena = Some(r.offset());
        }
        let (done, answer) = oneshot::channel();
        {
            let mut s = self.shared.lock();
            if let Some(reason) = &s.dead {
                return Err(self.shared.unreachable(reason));
            }
            let waiter = Some(done);
            s.waiters.insert(header.tag, Pending { waiter, region });
        }
        let guard = Registered {
            shared: &self.shared,
            tag: header.tag,
        };
        let mut msg = Vec::with_capacity(1 + payload.segments().len());
        msg.push(Bytes::copy_from_slice(&header.encode()));
        msg.extend(payload.segments().iter().cloned());
        if self.tx.send(msg).is_err() {
            return Err(self
                .shared
                .unreachable("the connection's writer has stopped"));
        }
        let reply = answer
            .await
            .unwrap_or_else(|_| Err(self.shared.unreachable("the connection was closed")));
        drop(guard);
        reply
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Removes a request's waiter if the caller stops waiting (timeout, cancellation), so
/// a late response is dropped instead of leaking the entry.
struct Registered<'a> {
    shared: &'a Shared,
    tag: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        let mut s = self.shared.lock();
        if let Some(p) = s.waiters.get_mut(&self.tag) {
            match p.region {
                // Unanswered: the SDS may still write the region, so it stays lent
                // until the answer comes (or the connection dies).
                Some(_) => p.waiter = None,
                None => drop(s.waiters.remove(&self.tag)),
            }
        }
    }
}

/// A local connection with its shared memory attached, `None` if the SDS has no local
/// socket (another host or network namespace, or `--no-local-socket`).
async fn connect_local(addr: SocketAddr) -> std::io::Result<Option<(UnixStream, Arc<Arena>)>> {
    let mut stream = match UnixStream::connect(local::socket_name(addr)).await {
        Ok(s) => s,
        Err(_) => return Ok(None),
    };
    local::tune(stream.as_fd());
    let arena = Arena::new(ARENA_LEN).map_err(std::io::Error::other)?;
    let mut attach = RequestHeader::new(Op::Attach, 0);
    attach.length = ARENA_LEN as u32;
    let head = attach.encode();
    let fd = arena.mapping().fd();
    let sent = stream
        .async_io(tokio::io::Interest::WRITABLE, || {
            send_with_fd(stream.as_fd(), &head, fd)
        })
        .await?;
    stream.write_all(&head[sent..]).await?;
    let raw = read_header::<_, RESPONSE_HEADER_LEN>(&mut stream)
        .await?
        .ok_or(std::io::ErrorKind::UnexpectedEof)?;
    let h = ResponseHeader::decode(&raw).map_err(std::io::Error::other)?;
    let body = read_payload(&mut stream, h.payload_len as usize).await?;
    if let Some(refused) = decode_error(&h, &body, 0) {
        return Err(std::io::Error::other(refused));
    }
    Ok(Some((stream, arena)))
}

async fn read_responses<R: AsyncRead + Unpin>(rd: R, shared: Arc<Shared>) {
    let mut r = BufReader::with_capacity(READ_BUFFER, rd);
    let reason = loop {
        let raw = match read_header::<_, RESPONSE_HEADER_LEN>(&mut r).await {
            Ok(Some(raw)) => raw,
            Ok(None) => break "the SDS closed the connection".to_string(),
            Err(e) => break format!("receive failed: {e}"),
        };
        let h = match ResponseHeader::decode(&raw) {
            Ok(h) => h,
            Err(e) => break format!("the SDS sent a bad response: {e}"),
        };
        let payload = match read_payload(&mut r, h.payload_len as usize).await {
            Ok(p) => p,
            Err(e) => break format!("receive failed: {e}"),
        };
        let Some(pending) = shared.lock().waiters.remove(&h.tag) else {
            continue;
        };
        let payload = match (h.flags & FLAG_IN_ARENA != 0, pending.region) {
            (false, _) => payload,
            (true, Some(r)) if payload.is_empty() => r.into_bytes(),
            (true, _) => break "the SDS answered in shared memory it was not lent".to_string(),
        };
        // No waiter: the request timed out or its caller went away.
        if let Some(w) = pending.waiter {
            let _ = w.send(Ok((h, payload)));
        }
    };
    shared.fail(reason);
}
