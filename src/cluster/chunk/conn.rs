//! One pipelined TCP connection to an SDS: any number of requests in flight, told
//! apart by tag. A writer task sends queued requests; a reader task hands each
//! response to the waiter registered under its tag. When either side fails, every
//! waiter learns at once and the connection reports itself dead so the pool replaces
//! it.

use super::io::{fill_to, read_header, read_payload, writer_loop, Outgoing};
use super::wire::{RequestHeader, ResponseHeader, Status, RESPONSE_HEADER_LEN};
use super::ChunkError;
use crate::backend::spliced::{Filled, Part, Pipe};
use crate::backend::SgList;
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufRead, BufReader};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;

/// A response: header and payload (as read from the socket, or left in a pipe).
pub(super) type Reply = (ResponseHeader, Part);

struct Waiter {
    done: oneshot::Sender<Result<Reply, ChunkError>>,
    /// The caller can take the payload in a pipe.
    pipe: bool,
}

/// Payloads smaller than this are read into memory even when a pipe would do: the
/// pipe's system calls cost more than copying them.
const PIPE_MIN: u32 = 64 << 10;

/// Bytes buffered per read: many small responses per system call, while a large
/// payload is read past the buffer straight into its own allocation.
const READ_BUFFER: usize = 64 << 10;

pub(super) struct Conn {
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Outgoing>,
    next_tag: AtomicU64,
    tasks: [AbortHandle; 2],
}

struct Shared {
    addr: SocketAddr,
    state: Mutex<State>,
    /// Cleared when a payload did not fit a pipe: this network delivers in frags too
    /// small for splicing to pay, so the connection reads into memory from then on.
    splice: AtomicBool,
}

#[derive(Default)]
struct State {
    waiters: HashMap<u64, Waiter>,
    /// Why the connection died; set once, never cleared.
    dead: Option<String>,
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
        for (_, w) in waiters {
            let _ = w.done.send(Err(self.unreachable(&reason)));
        }
    }
}

impl Conn {
    pub(super) async fn connect(addr: SocketAddr) -> Result<Self, ChunkError> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| ChunkError::Unreachable {
                addr,
                reason: format!("connect failed: {e}"),
            })?;
        stream.set_nodelay(true).ok();
        let (rd, wr) = stream.into_split();
        let shared = Arc::new(Shared {
            addr,
            state: Mutex::new(State::default()),
            splice: AtomicBool::new(true),
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
        Ok(Self {
            shared,
            tx,
            next_tag: AtomicU64::new(1),
            tasks: [reader, writer],
        })
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

    /// Sends one request (its tag is assigned here) and waits for the response; with
    /// `pipe`, a large successful payload may be left in a pipe.
    pub(super) async fn call(
        &self,
        mut header: RequestHeader,
        payload: &SgList,
        pipe: bool,
    ) -> Result<Reply, ChunkError> {
        header.tag = self.next_tag.fetch_add(1, Ordering::Relaxed);
        let (done, answer) = oneshot::channel();
        {
            let mut s = self.shared.lock();
            if let Some(reason) = &s.dead {
                return Err(self.shared.unreachable(reason));
            }
            s.waiters.insert(header.tag, Waiter { done, pipe });
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
        self.shared.lock().waiters.remove(&self.tag);
    }
}

type Reader = BufReader<OwnedReadHalf>;

async fn read_responses(rd: OwnedReadHalf, shared: Arc<Shared>) {
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
        let len = h.payload_len as usize;
        let piped = h.status == Status::Ok
            && h.payload_len >= PIPE_MIN
            && shared.splice.load(Ordering::Relaxed)
            && shared.lock().waiters.get(&h.tag).is_some_and(|w| w.pipe);
        let payload = if piped {
            read_piped(&mut r, len, &shared).await
        } else {
            read_payload(&mut r, len).await.map(Part::Mem)
        };
        let payload = match payload {
            Ok(p) => p,
            Err(e) => break format!("receive failed: {e}"),
        };
        // No waiter: the request timed out or its caller went away.
        let waiter = shared.lock().waiters.remove(&h.tag);
        if let Some(w) = waiter {
            let _ = w.done.send(Ok((h, payload)));
        }
    };
    shared.fail(reason);
}

/// Reads a `len`-byte payload into a pipe: what the buffer already holds by copy, the
/// rest spliced from the socket. Finishes in memory when no pipe can be had or it runs
/// out of slots.
async fn read_piped(r: &mut Reader, len: usize, shared: &Shared) -> std::io::Result<Part> {
    let Ok(mut pipe) = Pipe::new() else {
        return read_payload(r, len).await.map(Part::Mem);
    };
    let ahead = r.buffer().len().min(len);
    let pushed = pipe.push(&r.buffer()[..ahead])?;
    Pin::new(&mut *r).consume(pushed);
    let full =
        pushed < ahead || pipe.fill_from(r.get_ref().as_ref(), len - pushed).await? != Filled::All;
    if !full {
        return Ok(Part::Pipe(pipe));
    }
    if shared.splice.swap(false, Ordering::Relaxed) {
        tracing::info!(sds = %shared.addr, "payloads from this SDS arrive in frags too small to splice; reading them into memory");
    }
    let mut buf = BytesMut::with_capacity(len);
    pipe.read_into(&mut buf)?;
    fill_to(r, &mut buf, len).await?;
    Ok(Part::Mem(buf.freeze()))
}
