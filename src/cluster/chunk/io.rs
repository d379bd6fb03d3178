//! Moving chunk-protocol messages over a byte stream, for both ends: reading a header
//! and its payload, and a writer loop that sends queued messages as vectored writes so
//! payload `Bytes` go to the socket without being gathered into a new buffer.

use bytes::{Buf, Bytes, BytesMut};
use std::collections::VecDeque;
use std::io::IoSlice;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// One message to send: its encoded header followed by payload segments.
pub(crate) type Outgoing = Vec<Bytes>;

/// Segments handed to one `writev` at most (Linux allows 1024).
const MAX_IOV: usize = 64;
/// Messages gathered into one batch before writing, so a burst of small replies costs
/// few system calls.
const MAX_BATCH: usize = 32;

/// Reads one fixed-size header; `Ok(None)` when the peer closed the stream instead.
pub(crate) async fn read_header<R: AsyncRead + Unpin, const N: usize>(
    r: &mut R,
) -> std::io::Result<Option<[u8; N]>> {
    let mut b = [0u8; N];
    match r.read_exact(&mut b).await {
        Ok(_) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads exactly `len` payload bytes into one new buffer (no zero-fill first).
pub(crate) async fn read_payload<R: AsyncRead + Unpin>(
    r: &mut R,
    len: usize,
) -> std::io::Result<Bytes> {
    let mut buf = BytesMut::with_capacity(len);
    while buf.len() < len {
        let want = (len - buf.len()) as u64;
        if (&mut *r).take(want).read_buf(&mut buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(buf.freeze())
}

/// Reads and drops `len` bytes (the payload of a request that is answered with an
/// error without being executed).
pub(crate) async fn skip<R: AsyncRead + Unpin>(r: &mut R, len: u64) -> std::io::Result<()> {
    let n = tokio::io::copy(&mut (&mut *r).take(len), &mut tokio::io::sink()).await?;
    if n < len {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// Writes every queued message until the channel closes; returns the first write error.
pub(crate) async fn writer_loop<W: AsyncWrite + Unpin>(
    mut w: W,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
) -> std::io::Result<()> {
    let mut segs = VecDeque::new();
    while let Some(first) = rx.recv().await {
        segs.extend(first);
        if rx.is_empty() {
            // Lets the tasks already woken on this worker (other requests completing,
            // other responses arriving) queue their messages first, so they share this
            // `writev`: under load that halves the system calls per message; idle, it
            // costs one extra poll.
            tokio::task::yield_now().await;
        }
        for _ in 1..MAX_BATCH {
            match rx.try_recv() {
                Ok(more) => segs.extend(more),
                Err(_) => break,
            }
        }
        write_segments(&mut w, &mut segs).await?;
    }
    w.shutdown().await.ok();
    Ok(())
}

async fn write_segments<W: AsyncWrite + Unpin>(
    w: &mut W,
    segs: &mut VecDeque<Bytes>,
) -> std::io::Result<()> {
    segs.retain(|s| !s.is_empty());
    while !segs.is_empty() {
        let mut n = {
            let slices: Vec<IoSlice<'_>> =
                segs.iter().take(MAX_IOV).map(|s| IoSlice::new(s)).collect();
            w.write_vectored(&slices).await?
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 {
            let front = segs
                .front_mut()
                .expect("written bytes come from queued segments");
            if n >= front.len() {
                n -= front.len();
                segs.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writer_sends_messages_in_order_and_reader_splits_them() {
        let (a, mut b) = tokio::io::duplex(7);
        let (tx, rx) = mpsc::unbounded_channel();
        let w = tokio::spawn(writer_loop(a, rx));
        tx.send(vec![
            Bytes::from_static(b"head"),
            Bytes::from_static(b"payload"),
        ])
        .unwrap();
        tx.send(vec![Bytes::new(), Bytes::from(vec![7u8; 100])])
            .unwrap();
        drop(tx);
        let h: [u8; 4] = read_header(&mut b).await.unwrap().unwrap();
        assert_eq!(&h, b"head");
        assert_eq!(&read_payload(&mut b, 7).await.unwrap()[..], b"payload");
        skip(&mut b, 50).await.unwrap();
        assert_eq!(read_payload(&mut b, 50).await.unwrap(), vec![7u8; 50]);
        assert_eq!(read_header::<_, 4>(&mut b).await.unwrap(), None);
        w.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn truncated_payload_is_an_error() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(b"abc").await.unwrap();
        drop(a);
        assert!(read_payload(&mut b, 10).await.is_err());
    }
}
