//! The SDS port, and its local socket: accepts connections and runs each one's request
//! loop. Requests of one connection execute concurrently (up to a bound) and answer in
//! completion order, matched by tag. A local connection first lends shared memory for
//! reads (Attach, see `chunk::local`).

use super::ops::{self, Answer, Origin};
use super::Sds;
use crate::cluster::chunk::arena::Mapping;
use crate::cluster::chunk::io::{read_header, read_payload, skip, writer_loop, Outgoing};
use crate::cluster::chunk::local::{recv_with_fd, tune};
use crate::cluster::chunk::wire::{
    encode_error, request_frame, Op, RequestHeader, ResponseHeader, REQUEST_HEADER_LEN,
};
use crate::cluster::chunk::ChunkError;
use bytes::Bytes;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, info, warn, Instrument};

/// Requests one connection may have executing; past it the SDS stops reading from
/// that connection until one completes.
const MAX_IN_FLIGHT: usize = 256;
const READ_BUFFER: usize = 64 << 10;

/// Accepts connections until the task is aborted, which also ends every connection
/// (they live in this task's `JoinSet`).
pub async fn run(listener: TcpListener, local: Option<UnixListener>, sds: Arc<Sds>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    stream.set_nodelay(true).ok();
                    let span = tracing::info_span!("sds_conn", %peer);
                    let (rd, wr) = stream.into_split();
                    let origin = Origin { peer: Some(peer), arena: None };
                    conns.spawn(serve(sds.clone(), rd, wr, origin).instrument(span));
                }
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            accepted = async { local.as_ref()?.accept().await.ok() }, if local.is_some() => {
                if let Some((stream, _)) = accepted {
                    let span = tracing::info_span!("sds_conn", peer = "local");
                    conns.spawn(serve_local(sds.clone(), stream).instrument(span));
                }
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// A local connection: its first request must be Attach, carrying the shared memory
/// its reads go to; refused, the client moves to TCP.
async fn serve_local(sds: Arc<Sds>, mut stream: UnixStream) {
    tune(stream.as_fd());
    let mut raw = [0u8; REQUEST_HEADER_LEN];
    let first = stream
        .async_io(tokio::io::Interest::READABLE, || {
            recv_with_fd(stream.as_fd(), &mut raw)
        })
        .await;
    let (n, fd) = match first {
        Ok((0, _)) => return,
        Ok(got) => got,
        Err(e) => {
            debug!(error = %e, "receive failed");
            return;
        }
    };
    if stream.read_exact(&mut raw[n..]).await.is_err() {
        return;
    }
    let attached = match RequestHeader::decode(&raw) {
        Ok(h) if h.op == Op::Attach => match fd {
            Some(fd) => Mapping::adopt(fd)
                .map_err(|e| ChunkError::Refused(e.to_string()))
                .and_then(|m| match m.size() == h.length as usize {
                    true => Ok((h.tag, m)),
                    false => Err(ChunkError::Refused(format!(
                        "Attach names {} bytes of shared memory; the memfd has {}",
                        h.length,
                        m.size()
                    ))),
                }),
            None => Err(ChunkError::Refused(
                "Attach carries no shared memory descriptor".into(),
            )),
        },
        Ok(h) => Err(ChunkError::Protocol(format!(
            "{:?} before Attach on the local socket",
            h.op
        ))),
        Err(e) => Err(ChunkError::Protocol(e.to_string())),
    };
    let (reply, map) = match attached {
        Ok((tag, map)) => (respond(tag, Ok(Answer::default())), Some(map)),
        Err(e) => {
            warn!(error = %e, "local connection refused");
            let tag = request_frame(&raw).map(|(tag, _)| tag).unwrap_or(0);
            (respond(tag, Err(e)), None)
        }
    };
    for part in reply {
        if stream.write_all(&part).await.is_err() {
            return;
        }
    }
    let Some(map) = map else { return };
    info!(
        shared_bytes = map.size(),
        "local client attached; its large reads go through shared memory"
    );
    let (rd, wr) = stream.into_split();
    let origin = Origin {
        peer: None,
        arena: Some(Arc::new(map)),
    };
    serve(sds, rd, wr, origin).await
}

async fn serve<R, W>(sds: Arc<Sds>, rd: R, wr: W, origin: Origin)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let origin = Arc::new(origin);
    let (tx, rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(writer_loop(wr, rx));
    let limit = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut r = BufReader::with_capacity(READ_BUFFER, rd);
    loop {
        let raw = match read_header::<_, REQUEST_HEADER_LEN>(&mut r).await {
            Ok(Some(raw)) => raw,
            Ok(None) => break,
            Err(e) => {
                debug!(error = %e, "receive failed");
                break;
            }
        };
        let h = match RequestHeader::decode(&raw) {
            Ok(h) => h,
            Err(e) => match request_frame(&raw) {
                Ok((tag, len)) => {
                    warn!(error = %e, tag, "malformed request refused");
                    if skip(&mut r, len.into()).await.is_err() {
                        break;
                    }
                    let _ = tx.send(respond(tag, Err(ChunkError::Protocol(e.to_string()))));
                    continue;
                }
                Err(_) => {
                    warn!(error = %e, "unreadable request; closing the connection");
                    break;
                }
            },
        };
        let payload = match read_payload(&mut r, h.payload_len as usize).await {
            Ok(p) => p,
            Err(e) => {
                debug!(error = %e, "receive failed");
                break;
            }
        };
        let permit = limit
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let (sds, tx, origin) = (sds.clone(), tx.clone(), origin.clone());
        tokio::spawn(
            async move {
                let result = ops::execute(&sds, h, payload, &origin).await;
                let _ = tx.send(respond(h.tag, result));
                drop(permit);
            }
            .in_current_span(),
        );
    }
    drop(tx);
    if let Ok(Err(e)) = writer.await {
        debug!(error = %e, "send failed");
    }
}

fn respond(tag: u64, result: Result<Answer, ChunkError>) -> Outgoing {
    let (header, payload) = match result {
        Ok(a) => {
            let mut h = ResponseHeader::ok(tag, a.payload.len() as u32);
            h.flags = a.flags;
            h.aux = a.aux;
            (h, a.payload)
        }
        Err(e) => {
            let (h, text) = encode_error(tag, &e);
            (h, Bytes::from(text))
        }
    };
    vec![Bytes::copy_from_slice(&header.encode()), payload]
}
