//! Control frames on the MDM port: a 4-byte big-endian length, then one JSON message.
//! One request and one reply per round trip; a connection may carry many.

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Large enough for the layout of a multi-terabyte volume.
pub const MAX_FRAME: usize = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("cannot reach {addr}: {source}; check the address and that the service is running")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("peer sent a {0}-byte frame, over the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("peer sent a message this version does not understand: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("no answer from {0} in time")]
    Timeout(String),
}

pub async fn write<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    msg: &T,
) -> Result<(), FrameError> {
    let body = serde_json::to_vec(msg)?;
    if body.len() > MAX_FRAME {
        return Err(FrameError::TooLarge(body.len()));
    }
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
    buf.extend_from_slice(&body);
    w.write_all(&buf).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one frame; `Ok(None)` on a clean end of stream between frames.
pub async fn read<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
) -> Result<Option<T>, FrameError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(Some(serde_json::from_slice(&body)?))
}

/// A connection for framed requests (small messages: no Nagle delay).
pub async fn connect(addr: &str) -> Result<TcpStream, FrameError> {
    let s = TcpStream::connect(addr)
        .await
        .map_err(|source| FrameError::Connect {
            addr: addr.to_string(),
            source,
        })?;
    s.set_nodelay(true).ok();
    Ok(s)
}

/// Sends one request on `s` and reads its reply; a connection closed instead is an
/// error.
pub async fn exchange<Req: Serialize, Resp: DeserializeOwned>(
    s: &mut TcpStream,
    req: &Req,
) -> Result<Resp, FrameError> {
    write(s, req).await?;
    read(s).await?.ok_or_else(|| {
        FrameError::Io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "closed the connection without answering",
        ))
    })
}

/// Connects, sends one request and waits for its reply.
pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
    addr: &str,
    req: &Req,
    timeout: Duration,
) -> Result<Resp, FrameError> {
    let work = async {
        let mut s = connect(addr).await?;
        exchange(&mut s, req).await
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| FrameError::Timeout(addr.to_string()))?
}

/// The address to reach a listener bound to `bound`: a wildcard bind is reached on
/// loopback.
pub fn reachable(bound: SocketAddr) -> SocketAddr {
    if bound.ip().is_unspecified() {
        let ip = match bound {
            SocketAddr::V4(_) => std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            SocketAddr::V6(_) => std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        };
        SocketAddr::new(ip, bound.port())
    } else {
        bound
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trip_and_clean_eof() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        write(&mut a, &vec![1u32, 2, 3]).await.unwrap();
        drop(a);
        let v: Option<Vec<u32>> = read(&mut b).await.unwrap();
        assert_eq!(v, Some(vec![1, 2, 3]));
        let end: Option<Vec<u32>> = read(&mut b).await.unwrap();
        assert_eq!(end, None);
    }

    #[tokio::test]
    async fn oversized_length_is_refused_before_allocating() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let r: Result<Option<u8>, _> = read(&mut b).await;
        assert!(matches!(r, Err(FrameError::TooLarge(_))));
    }
}
