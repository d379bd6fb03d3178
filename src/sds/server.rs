//! The SDS port: accepts connections and runs each one's request loop. Requests of
//! one connection execute concurrently (up to a bound) and answer in completion
//! order, matched by tag.

use super::ops::{self, Answer};
use super::Sds;
use crate::cluster::chunk::io::{read_header, read_payload, skip, writer_loop, Outgoing};
use crate::cluster::chunk::wire::{
    encode_error, request_frame, RequestHeader, ResponseHeader, REQUEST_HEADER_LEN,
};
use crate::cluster::chunk::ChunkError;
use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::BufReader;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, warn, Instrument};

/// Requests one connection may have executing; past it the SDS stops reading from
/// that connection until one completes.
const MAX_IN_FLIGHT: usize = 256;
const READ_BUFFER: usize = 64 << 10;

/// Accepts connections until the task is aborted, which also ends every connection
/// (they live in this task's `JoinSet`).
pub async fn run(listener: TcpListener, sds: Arc<Sds>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    stream.set_nodelay(true).ok();
                    let span = tracing::info_span!("sds_conn", %peer);
                    conns.spawn(serve(sds.clone(), stream, peer).instrument(span));
                }
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn serve(sds: Arc<Sds>, stream: TcpStream, peer: SocketAddr) {
    let (rd, wr) = stream.into_split();
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
        let (sds, tx) = (sds.clone(), tx.clone());
        tokio::spawn(
            async move {
                let result = ops::execute(&sds, h, payload, peer).await;
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
