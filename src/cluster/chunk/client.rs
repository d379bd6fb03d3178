//! The client side: a small pool of pipelined connections to one SDS, opened on first
//! use and replaced when they die, with requests spread round robin over them.

use super::conn::{Conn, Reply};
use super::wire::{
    self, AtomicKind, CopySource, Op, RequestHeader, FLAG_FUA, FLAG_MAPPED, FLAG_MISCOMPARE,
    FLAG_UNMAP,
};
use super::{ChunkError, ChunkRef, Mirror, Secondary};
use crate::backend::SgList;
use crate::cluster::api::{SdsControl, SdsControlReply, CHUNK_SIZE};
use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// Requests carrying at least this much data (a Read's length, a write's payload) go
/// on the bulk connection, the SDS's local socket when it shares this host: there a
/// 1 MiB read crosses no socket at all and 1 MiB writes took 15% less CPU than over
/// TCP. Smaller ones stay on TCP: 4 KiB QD32 writes were 5-15% slower over the Unix
/// socket (its wakeups keep sender and receiver on one CPU, leaving the other idle),
/// and 4 KiB reads gained nothing from shared memory.
///
/// One connection of each kind per SDS: every request shares it, so the writer and
/// reader tasks on both ends find several messages per system call (the SDS still
/// executes a connection's requests concurrently). With 4 TCP connections, QD32 4 KiB
/// pool writes went about one message per `writev`; with 1 (and the writer's yield in
/// `io`) the standalone pool went from about 28k to 35k IOPS.
const BULK: u32 = 64 << 10;

/// A data request (including connecting) unanswered this long fails as unreachable,
/// and the connection it was on is presumed dead. Short, so a hung or partitioned SDS
/// is reported to the MDM well inside a gateway's failover deadline (25 s, below the
/// 30 s initiators commonly wait for a command), leaving time for the MDM to take it
/// out of the layouts and for the retry. A healthy SDS answers in milliseconds; 8 s
/// only ever passes for an SDS that is gone or stuck.
const DATA_TIMEOUT: Duration = Duration::from_secs(8);

/// A primary's write that names a mirror: the primary itself waits up to
/// [`DATA_TIMEOUT`] for the secondary, and must still have time to answer that the
/// mirror failed (so the gateway reports the secondary, not the primary).
const MIRRORED_TIMEOUT: Duration = Duration::from_secs(12);

/// SYNCHRONIZE CACHE: an fdatasync of every device of an SDS, which can take seconds
/// when much is dirty in its page cache, yet must leave room in the failover deadline
/// to report a hung SDS and flush the rest again.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(15);

/// Control requests from the MDM (claiming and formatting devices, thick allocation,
/// inventories), whole-chunk Replicate, and Copy (which may try two sources, each for
/// up to [`DATA_TIMEOUT`], then mirror): slow by nature, and none is waited for by an
/// initiator against a 30 s clock (EXTENDED COPY's own timeouts are longer).
const CONTROL_TIMEOUT: Duration = Duration::from_secs(30);

/// How long `h` may go unanswered.
fn timeout_for(h: &RequestHeader) -> Duration {
    match h.op {
        Op::Read | Op::Status | Op::StatusMany | Op::Attach => DATA_TIMEOUT,
        Op::Write | Op::WriteZeroes | Op::Atomic if h.mirror.is_none() => DATA_TIMEOUT,
        Op::Write | Op::WriteZeroes | Op::Atomic => MIRRORED_TIMEOUT,
        Op::Flush => FLUSH_TIMEOUT,
        Op::Control | Op::Copy | Op::Replicate => CONTROL_TIMEOUT,
    }
}

/// A pipelined client for one SDS.
pub struct ChunkClient {
    addr: SocketAddr,
    /// Small requests and control messages: TCP.
    tcp: Mutex<Option<Arc<Conn>>>,
    /// Large reads and writes ([`BULK`]): the SDS's local socket if it has one here
    /// (see `local`), else TCP. `None`: everything goes on `tcp`.
    bulk: Option<Mutex<Option<Arc<Conn>>>>,
    /// Caps every request's timeout (tests shorten it); `Duration::MAX` otherwise.
    cap: Duration,
}

impl std::fmt::Debug for ChunkClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkClient")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl ChunkClient {
    /// A client that connects over TCP only, lazily: creating one costs nothing and
    /// never fails. The MDM's control connections use this: the SDS learns the MDM's
    /// address from where they come from.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            tcp: Mutex::new(None),
            bulk: None,
            cap: Duration::MAX,
        }
    }

    /// A client for data: large reads and writes go through the SDS's local socket,
    /// reads landing in shared memory, when the SDS shares this host and network
    /// namespace; everything else over TCP.
    pub fn local_first(addr: SocketAddr) -> Self {
        Self {
            bulk: Some(Mutex::new(None)),
            ..Self::new(addr)
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Reads `len` bytes at `offset` of a chunk copy; a chunk never written reads as
    /// zeros.
    pub async fn read(&self, at: ChunkRef, offset: u32, len: u32) -> Result<Bytes, ChunkError> {
        let mut h = RequestHeader::new(Op::Read, 0);
        h.at = at;
        h.offset = offset;
        h.length = len;
        let (_, data) = self.call(h, &SgList::new()).await?;
        if data.len() != len as usize {
            return Err(ChunkError::Protocol(format!(
                "asked {} for {len} bytes, got {}",
                self.addr,
                data.len()
            )));
        }
        Ok(data)
    }

    /// Writes `data` at `offset`; with a mirror as `secondary` the SDS also writes the
    /// second copy there and answers only when both are written.
    pub async fn write(
        &self,
        at: ChunkRef,
        offset: u32,
        data: SgList,
        fua: bool,
        secondary: Secondary,
    ) -> Result<(), ChunkError> {
        let len = u32::try_from(data.len())
            .map_err(|_| ChunkError::Protocol(format!("{}-byte write", data.len())))?;
        let mut h = RequestHeader::new(Op::Write, 0);
        h.at = at;
        h.offset = offset;
        h.length = len;
        h.payload_len = len;
        h.set_secondary(secondary);
        if fua {
            h.flags |= FLAG_FUA;
        }
        self.call(h, &data).await.map(drop)
    }

    /// Runs an atomic read-modify-write on a range of the chunk's primary copy (see
    /// [`wire`]); with a mirror as `secondary` the SDS writes the result to the second
    /// copy as well before answering. `payload` is compare data then write data for
    /// compare-and-write, the data otherwise. `Ok(Some(offset))` is a miscompare at
    /// that byte of the range: nothing was written.
    pub async fn atomic(
        &self,
        at: ChunkRef,
        offset: u32,
        kind: AtomicKind,
        payload: SgList,
        fua: bool,
        secondary: Secondary,
    ) -> Result<Option<u64>, ChunkError> {
        let total = u32::try_from(payload.len())
            .map_err(|_| ChunkError::Protocol(format!("{}-byte payload", payload.len())))?;
        let mut h = RequestHeader::new(Op::Atomic, 0);
        h.at = at;
        h.offset = offset;
        h.length = match kind {
            AtomicKind::CompareAndWrite => total / 2,
            AtomicKind::Or | AtomicKind::Write => total,
        };
        h.payload_len = total;
        h.flags = kind.flags() | if fua { FLAG_FUA } else { 0 };
        h.set_secondary(secondary);
        let (resp, _) = self.call(h, &payload).await?;
        Ok((resp.flags & FLAG_MISCOMPARE != 0).then_some(resp.aux))
    }

    /// Zeroes a range; with `unmap` the SDS may release it (a whole chunk frees its
    /// slot).
    pub async fn write_zeroes(
        &self,
        at: ChunkRef,
        offset: u32,
        len: u32,
        unmap: bool,
        secondary: Secondary,
    ) -> Result<(), ChunkError> {
        let mut h = RequestHeader::new(Op::WriteZeroes, 0);
        h.at = at;
        h.offset = offset;
        h.length = len;
        h.set_secondary(secondary);
        if unmap {
            h.flags |= FLAG_UNMAP;
        }
        self.call(h, &SgList::new()).await.map(drop)
    }

    /// Asks the SDS holding `at` (the destination chunk's primary copy) to copy `len`
    /// bytes from `src` to `offset` of it, and to its `secondary`: the data moves between SDS
    /// and never through this client. With `unmap` a never-written source range may
    /// leave the destination deallocated (thin) instead of written with zeros.
    #[allow(clippy::too_many_arguments)]
    pub async fn copy(
        &self,
        at: ChunkRef,
        offset: u32,
        len: u32,
        src: &CopySource,
        fua: bool,
        unmap: bool,
        secondary: Secondary,
    ) -> Result<(), ChunkError> {
        let mut h = RequestHeader::new(Op::Copy, 0);
        h.at = at;
        h.offset = offset;
        h.length = len;
        h.set_secondary(secondary);
        h.payload_len = wire::COPY_SOURCE_LEN as u32;
        if fua {
            h.flags |= FLAG_FUA;
        }
        if unmap {
            h.flags |= FLAG_UNMAP;
        }
        let body = Bytes::copy_from_slice(&src.encode());
        self.call(h, &SgList::from(body)).await.map(drop)
    }

    /// Asks the SDS holding the chunk copy `at` (the MDM sends this to the primary) to
    /// copy the whole chunk to `target`, under the chunk's exclusive lock. Returns the
    /// bytes of data it sent (never-written ranges are sent as deallocations).
    pub async fn replicate(&self, at: ChunkRef, target: Mirror) -> Result<u64, ChunkError> {
        let mut h = RequestHeader::new(Op::Replicate, 0);
        h.at = at;
        h.length = CHUNK_SIZE as u32;
        h.mirror = Some(target);
        let (resp, _) = self.call(h, &SgList::new()).await?;
        Ok(resp.aux)
    }

    /// Makes every write the SDS has acknowledged durable on all its devices.
    pub async fn flush(&self) -> Result<(), ChunkError> {
        self.call(RequestHeader::new(Op::Flush, 0), &SgList::new())
            .await
            .map(drop)
    }

    /// Whether the byte at `offset` of a chunk copy is allocated, and how many bytes
    /// from there (within the chunk) share that state.
    pub async fn status(&self, at: ChunkRef, offset: u32) -> Result<(bool, u32), ChunkError> {
        let mut h = RequestHeader::new(Op::Status, 0);
        h.at = at;
        h.offset = offset;
        let (resp, _) = self.call(h, &SgList::new()).await?;
        let run = u32::try_from(resp.aux).map_err(|_| {
            ChunkError::Protocol(format!("{} reported a {}-byte run", self.addr, resp.aux))
        })?;
        Ok((resp.flags & FLAG_MAPPED != 0, run))
    }

    /// The allocation of many chunk copies of `volume` on this SDS, each from its
    /// offset 0, in one request: `(chunk index, device id)` in, `(mapped, run in
    /// bytes)` out, in the same order.
    pub async fn status_many(
        &self,
        volume: u64,
        epoch: u64,
        entries: &[(u64, u64)],
    ) -> Result<Vec<(bool, u32)>, ChunkError> {
        let payload = wire::encode_status_entries(entries);
        let mut h = RequestHeader::new(Op::StatusMany, 0);
        h.at.volume = volume;
        h.at.epoch = epoch;
        h.length = u32::try_from(entries.len()).unwrap_or(u32::MAX);
        h.payload_len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        let (_, reply) = self.call(h, &SgList::from(payload)).await?;
        wire::decode_status_runs(&reply, entries.len()).map_err(|e| {
            ChunkError::Protocol(format!("{} answered StatusMany badly: {e}", self.addr))
        })
    }

    /// Sends an MDM control message; the SDS's refusal comes back as `Refused`.
    pub async fn control(&self, msg: &SdsControl) -> Result<SdsControlReply, ChunkError> {
        let body = serde_json::to_vec(msg)
            .map_err(|e| ChunkError::Protocol(format!("cannot encode {msg:?}: {e}")))?;
        let mut h = RequestHeader::new(Op::Control, 0);
        h.payload_len = u32::try_from(body.len()).unwrap_or(u32::MAX);
        let (_, reply) = self.call(h, &SgList::from(body)).await?;
        let reply: Result<SdsControlReply, String> =
            serde_json::from_slice(&reply).map_err(|e| {
                ChunkError::Protocol(format!(
                    "{} sent an unreadable control reply: {e}",
                    self.addr
                ))
            })?;
        reply.map_err(ChunkError::Refused)
    }

    /// Sends a request built elsewhere, as is: how a primary SDS forwards a write to
    /// its mirror with the original flags and epoch.
    pub(crate) async fn send(&self, h: RequestHeader, payload: &SgList) -> Result<(), ChunkError> {
        self.call(h, payload).await.map(drop)
    }

    /// Sends one request on its connection and turns an error status into its
    /// [`ChunkError`].
    async fn call(&self, h: RequestHeader, payload: &SgList) -> Result<Reply, ChunkError> {
        h.check()
            .map_err(|e| ChunkError::Protocol(format!("request not sent: {e}")))?;
        let timeout = timeout_for(&h).min(self.cap);
        let deadline = Instant::now() + timeout;
        let late = || ChunkError::Unreachable {
            addr: self.addr,
            reason: format!("no answer within {} s", timeout.as_secs_f32()),
        };
        let conn = tokio::time::timeout_at(deadline, self.conn(&h))
            .await
            .map_err(|_| late())??;
        let (resp, body) = match tokio::time::timeout_at(deadline, conn.call(h, payload)).await {
            Ok(r) => r?,
            Err(_) => {
                conn.kill(late().to_string());
                return Err(late());
            }
        };
        match wire::decode_error(&resp, &body, h.at.epoch) {
            Some(e) => Err(e),
            None => Ok((resp, body)),
        }
    }

    /// The connection for `h`, (re)connecting it if needed.
    async fn conn(&self, h: &RequestHeader) -> Result<Arc<Conn>, ChunkError> {
        let size = match h.op {
            Op::Read => h.length,
            _ => h.payload_len,
        };
        let (slot, local) = match &self.bulk {
            Some(bulk) if size >= BULK => (bulk, true),
            _ => (&self.tcp, false),
        };
        let mut slot = slot.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| c.is_alive()) {
            return Ok(c.clone());
        }
        let c = Arc::new(Conn::connect(self.addr, local).await?);
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Whether large requests go over the local socket with shared memory.
    #[cfg(test)]
    pub(crate) async fn bulk_is_local(&self) -> bool {
        match &self.bulk {
            Some(b) => b.lock().await.as_ref().is_some_and(|c| c.is_local()),
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::chunk::arena::Mapping;
    use crate::cluster::chunk::io::{read_header, read_payload};
    use crate::cluster::chunk::local;
    use crate::cluster::chunk::wire::{ResponseHeader, FLAG_IN_ARENA, REQUEST_HEADER_LEN};
    use std::os::fd::AsFd;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
    use tokio::net::{TcpListener, UnixListener, UnixStream};

    fn at() -> ChunkRef {
        ChunkRef {
            volume: 1,
            chunk: 2,
            device: 3,
            epoch: 4,
        }
    }

    async fn next_request<S: AsyncRead + Unpin>(s: &mut S) -> Option<(RequestHeader, Bytes)> {
        let raw = read_header::<_, REQUEST_HEADER_LEN>(s).await.unwrap()?;
        let h = RequestHeader::decode(&raw).unwrap();
        let p = read_payload(s, h.payload_len as usize).await.unwrap();
        Some((h, p))
    }

    async fn answer<S: AsyncWrite + Unpin>(s: &mut S, h: ResponseHeader, payload: &[u8]) {
        s.write_all(&h.encode()).await.unwrap();
        s.write_all(payload).await.unwrap();
    }

    #[tokio::test]
    async fn responses_out_of_order_reach_their_callers() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let (a, _) = next_request(&mut s).await.unwrap();
            let (b, _) = next_request(&mut s).await.unwrap();
            for h in [b, a] {
                let body = vec![h.offset as u8; h.length as usize];
                answer(&mut s, ResponseHeader::ok(h.tag, h.length), &body).await;
            }
        });
        let c = ChunkClient::new(addr);
        let (x, y) = tokio::join!(c.read(at(), 1, 10), c.read(at(), 2, 20));
        assert_eq!(x.unwrap(), vec![1u8; 10]);
        assert_eq!(y.unwrap(), vec![2u8; 20]);
        server.await.unwrap();
    }

    #[tokio::test]
    async fn error_statuses_become_chunk_errors() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            while let Some((h, _)) = next_request(&mut s).await {
                let err = match h.op {
                    Op::Write => ChunkError::StaleEpoch {
                        sent: 0,
                        current: 9,
                    },
                    _ => ChunkError::NoSpace,
                };
                let (r, text) = wire::encode_error(h.tag, &err);
                answer(&mut s, r, &text).await;
            }
        });
        let c = ChunkClient::new(addr);
        let e = c
            .write(at(), 0, vec![1u8; 512].into(), false, Secondary::Missing)
            .await
            .unwrap_err();
        assert!(matches!(
            e,
            ChunkError::StaleEpoch {
                sent: 4,
                current: 9
            }
        ));
        let e = c
            .write_zeroes(at(), 0, 512, false, Secondary::Missing)
            .await
            .unwrap_err();
        assert!(matches!(e, ChunkError::NoSpace));
    }

    #[tokio::test]
    async fn dead_connection_fails_in_flight_requests_then_reconnects() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            // First connection: read one request, then hang up without answering.
            let (mut s, _) = l.accept().await.unwrap();
            next_request(&mut s).await.unwrap();
            drop(s);
            let (mut s, _) = l.accept().await.unwrap();
            while let Some((h, _)) = next_request(&mut s).await {
                answer(&mut s, ResponseHeader::ok(h.tag, 0), &[]).await;
            }
        });
        let c = ChunkClient::new(addr);
        let e = c.flush().await.unwrap_err();
        assert!(matches!(e, ChunkError::Unreachable { .. }), "{e}");
        c.flush().await.unwrap();
    }

    #[tokio::test]
    async fn silence_times_out_as_unreachable() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let _server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            while next_request(&mut s).await.is_some() {}
        });
        let mut c = ChunkClient::new(addr);
        c.cap = Duration::from_millis(200);
        let e = c.flush().await.unwrap_err();
        assert!(e.to_string().contains("no answer"), "{e}");
    }

    #[tokio::test]
    async fn nonsense_is_refused_before_sending_and_nobody_listening_is_unreachable() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let c = ChunkClient::new(addr);
        let e = c.read(at(), u32::MAX, 1).await.unwrap_err();
        assert!(matches!(e, ChunkError::Protocol(_)), "{e}");
        let e = c.flush().await.unwrap_err();
        assert!(matches!(e, ChunkError::Unreachable { .. }), "{e}");
    }

    /// A fake SDS's local connection: the Attach taken, the shared memory mapped.
    async fn fake_local_sds(l: UnixListener) -> (UnixStream, Arc<Mapping>) {
        let (mut s, _) = l.accept().await.unwrap();
        let mut raw = [0u8; REQUEST_HEADER_LEN];
        let (n, fd) = s
            .async_io(tokio::io::Interest::READABLE, || {
                local::recv_with_fd(s.as_fd(), &mut raw)
            })
            .await
            .unwrap();
        s.read_exact(&mut raw[n..]).await.unwrap();
        let h = RequestHeader::decode(&raw).unwrap();
        assert_eq!(h.op, Op::Attach);
        let map = Arc::new(Mapping::adopt(fd.unwrap()).unwrap());
        answer(&mut s, ResponseHeader::ok(h.tag, 0), &[]).await;
        (s, map)
    }

    fn fill(map: &Arc<Mapping>, h: &RequestHeader, byte: u8) -> ResponseHeader {
        let mut d = map.dest(h.arena.unwrap(), h.length as usize).unwrap();
        // SAFETY: `d` is valid for its size.
        unsafe { std::ptr::write_bytes(d.as_mut_ptr(), byte, d.size()) };
        let mut r = ResponseHeader::ok(h.tag, 0);
        r.flags = FLAG_IN_ARENA;
        r
    }

    /// An SDS that refuses the Attach is still reached, over TCP, and its reads carry
    /// their data in the reply.
    #[tokio::test]
    async fn a_refused_attach_falls_back_to_tcp() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let ul = UnixListener::bind(local::socket_name(addr)).unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = ul.accept().await.unwrap();
            let (h, _) = next_request(&mut s).await.unwrap();
            assert_eq!(h.op, Op::Attach);
            let (r, text) = wire::encode_error(h.tag, &ChunkError::Refused("no".into()));
            answer(&mut s, r, &text).await;
            let (mut t, _) = l.accept().await.unwrap();
            let (h, _) = next_request(&mut t).await.unwrap();
            assert_eq!((h.op, h.arena), (Op::Read, None));
            let data = vec![0x5A; h.length as usize];
            answer(&mut t, ResponseHeader::ok(h.tag, h.length), &data).await;
        });
        let c = ChunkClient::local_first(addr);
        let data = c.read(at(), 0, BULK).await.unwrap();
        assert!(data.len() == BULK as usize && data.iter().all(|&b| b == 0x5A));
        assert!(!c.bulk_is_local().await);
        server.await.unwrap();
    }

    /// The memory lent to a read stays lent until its answer, even when the caller
    /// gave up first: the SDS may still be writing it, so a later read must not get
    /// it (and see its bytes overwritten) before then.
    #[tokio::test]
    async fn a_cancelled_reads_memory_is_not_lent_again_before_its_answer() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let ul = UnixListener::bind(local::socket_name(addr)).unwrap();
        let server = tokio::spawn(async move {
            let (mut s, map) = fake_local_sds(ul).await;
            let (first, _) = next_request(&mut s).await.unwrap();
            let (second, _) = next_request(&mut s).await.unwrap();
            assert_ne!(first.arena, second.arena, "memory lent twice");
            // The late answer to the abandoned read, then the second read's.
            let r = fill(&map, &first, 0xEE);
            answer(&mut s, r, &[]).await;
            let r = fill(&map, &second, 0xAA);
            answer(&mut s, r, &[]).await;
            // Answered, the first read's memory is lent again; an SDS may also answer
            // with the data itself.
            let (third, _) = next_request(&mut s).await.unwrap();
            assert_eq!(third.arena, first.arena);
            let data = vec![0x33; third.length as usize];
            answer(&mut s, ResponseHeader::ok(third.tag, third.length), &data).await;
        });
        let c = ChunkClient::local_first(addr);
        let gave_up = tokio::time::timeout(Duration::from_millis(100), c.read(at(), 0, BULK)).await;
        assert!(gave_up.is_err());
        let second = c.read(at(), 0, 2 * BULK).await.unwrap();
        let third = c.read(at(), 0, BULK).await.unwrap();
        assert!(second.iter().all(|&b| b == 0xAA));
        assert!(third.iter().all(|&b| b == 0x33));
        server.await.unwrap();
    }

    #[test]
    fn data_requests_time_out_well_before_an_initiator_gives_up() {
        let h = |op, mirror: Option<Mirror>| {
            let mut h = RequestHeader::new(op, 0);
            h.mirror = mirror;
            timeout_for(&h)
        };
        let m = Some(Mirror { sds: 2, device: 3 });
        assert_eq!(h(Op::Read, None), DATA_TIMEOUT);
        assert_eq!(h(Op::Write, None), DATA_TIMEOUT);
        assert_eq!(h(Op::Write, m), MIRRORED_TIMEOUT);
        assert_eq!(h(Op::Atomic, m), MIRRORED_TIMEOUT);
        assert_eq!(h(Op::Control, None), CONTROL_TIMEOUT);
        // The primary's wait for its mirror ends before the gateway's wait for it, so
        // the gateway hears which copy failed.
        assert!(DATA_TIMEOUT + Duration::from_secs(2) < MIRRORED_TIMEOUT);
        // A failed request, its report and a retry fit in the failover deadline.
        let deadline = crate::sdc::FAILOVER_DEADLINE;
        assert!(MIRRORED_TIMEOUT + DATA_TIMEOUT < deadline);
        assert!(FLUSH_TIMEOUT < deadline);
    }
}
