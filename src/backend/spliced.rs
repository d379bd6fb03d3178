//! Read data that may still sit in kernel pipes.
//!
//! A large read from an SDS is spliced from the SDS socket into a pipe, and from the
//! pipe into the initiator's socket after its Data-In header: the pages the SDS's bytes
//! arrived in are handed on by reference, so the gateway never copies the payload.
//! Received into memory and sent again, each byte cost the gateway two copies, which
//! made pool reads copy-bound. Whatever needs the bytes themselves (a data digest,
//! a transport without a socket) reads them out with [`Spliced::into_bytes`].
//!
//! The bytes in a pipe are a private snapshot: the SDS read them from its device into
//! its own buffer before sending, so nothing written later can change them.

use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Pipe size asked for: fs.pipe-max-size's default, the most an unprivileged process
/// may set. Its 256 slots hold a chunk-sized read arriving in the large page frags of
/// loopback or GRO; a read that needs more slots finishes in memory.
const PIPE_BYTES: i32 = 1 << 20;

/// A pipe holding `len` bytes of payload, in order.
pub struct Pipe {
    rd: OwnedFd,
    wr: OwnedFd,
    len: usize,
}

/// What moving bytes from a socket into a pipe achieved.
#[derive(Debug, PartialEq, Eq)]
pub enum Filled {
    All,
    /// The pipe ran out of slots after taking this many bytes; the rest is still in
    /// the socket.
    Full(usize),
}

fn check(rc: isize) -> io::Result<usize> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as usize)
    }
}

/// Bytes waiting in a socket's receive queue.
fn queued(fd: RawFd) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer.
    let rc = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
    if rc < 0 {
        0
    } else {
        n as usize
    }
}

impl Pipe {
    /// A new empty pipe; fails when the kernel will not give it [`PIPE_BYTES`] (the
    /// user's pipe-buffer limit is reached): the caller reads into memory instead.
    pub fn new() -> io::Result<Pipe> {
        Self::sized(PIPE_BYTES)
    }

    fn sized(bytes: i32) -> io::Result<Pipe> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two descriptors into the array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just created and are owned by nothing else.
        let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: plain fcntl on a descriptor we own.
        if unsafe { libc::fcntl(wr.as_raw_fd(), libc::F_SETPIPE_SZ, bytes) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Pipe { rd, wr, len: 0 })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies bytes already in memory (what a buffered reader read ahead) into the
    /// pipe; returns how many fit.
    pub fn push(&mut self, b: &[u8]) -> io::Result<usize> {
        let mut done = 0;
        while done < b.len() {
            let rest = &b[done..];
            // SAFETY: writes from a valid slice.
            let rc = unsafe { libc::write(self.wr.as_raw_fd(), rest.as_ptr().cast(), rest.len()) };
            match check(rc) {
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        self.len += done;
        Ok(done)
    }

    /// Moves `want` bytes from `sock` into the pipe, waiting for them to arrive.
    pub async fn fill_from(&mut self, sock: &TcpStream, want: usize) -> io::Result<Filled> {
        let (fd, wr) = (sock.as_raw_fd(), self.wr.as_raw_fd());
        let mut moved = 0;
        while moved < want {
            sock.readable().await?;
            let step = sock.try_io(Interest::READABLE, || {
                // SAFETY: splice between two descriptors we hold open.
                let rc = unsafe {
                    libc::splice(
                        fd,
                        std::ptr::null_mut(),
                        wr,
                        std::ptr::null_mut(),
                        want - moved,
                        libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
                    )
                };
                match check(rc) {
                    // EAGAIN with bytes waiting in the socket: the pipe is out of
                    // slots. Not WouldBlock, so the socket stays marked readable.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock && queued(fd) > 0 => Ok(None),
                    r => r.map(Some),
                }
            });
            match step {
                Ok(Some(0)) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(Some(n)) => {
                    moved += n;
                    self.len += n;
                }
                Ok(None) => return Ok(Filled::Full(moved)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Filled::All)
    }

    /// Moves the first `n` bytes of the pipe into `sock`, waiting for room in its send
    /// buffer. `more`: further data follows at once, so the kernel may hold back a
    /// partial segment.
    pub async fn drain_to(&mut self, sock: &TcpStream, n: usize, more: bool) -> io::Result<()> {
        debug_assert!(n <= self.len);
        let (fd, rd) = (sock.as_raw_fd(), self.rd.as_raw_fd());
        let flags = libc::SPLICE_F_MOVE
            | libc::SPLICE_F_NONBLOCK
            | if more { libc::SPLICE_F_MORE } else { 0 };
        let mut left = n;
        while left > 0 {
            sock.writable().await?;
            let step = sock.try_io(Interest::WRITABLE, || {
                // SAFETY: splice between two descriptors we hold open.
                check(unsafe {
                    libc::splice(
                        rd,
                        std::ptr::null_mut(),
                        fd,
                        std::ptr::null_mut(),
                        left,
                        flags,
                    )
                })
            });
            match step {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(k) => {
                    left -= k;
                    self.len -= k;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads the whole content out into `out`. Never waits: the bytes are already in
    /// the pipe.
    pub fn read_into(&mut self, out: &mut BytesMut) -> io::Result<()> {
        out.reserve(self.len);
        while self.len > 0 {
            let spare = out.spare_capacity_mut();
            let want = spare.len().min(self.len);
            // SAFETY: reads into uninitialised spare capacity, then marks what was read
            // as initialised.
            let n =
                check(unsafe { libc::read(self.rd.as_raw_fd(), spare.as_mut_ptr().cast(), want) })?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            unsafe { out.set_len(out.len() + n) };
            self.len -= n;
        }
        Ok(())
    }
}

/// One stretch of read data: in memory, or in a pipe.
pub enum Part {
    Mem(Bytes),
    Pipe(Pipe),
}

impl Part {
    pub fn len(&self) -> usize {
        match self {
            Part::Mem(b) => b.len(),
            Part::Pipe(p) => p.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes in memory (read out of the pipe if need be).
    pub fn into_bytes(self) -> io::Result<Bytes> {
        match self {
            Part::Mem(b) => Ok(b),
            Part::Pipe(mut p) => {
                let mut out = BytesMut::with_capacity(p.len());
                p.read_into(&mut out)?;
                Ok(out.freeze())
            }
        }
    }
}

/// Read data as parts in order, consumed from the front as it is sent.
#[derive(Default)]
pub struct Spliced {
    parts: VecDeque<Part>,
    len: usize,
}

impl std::fmt::Debug for Spliced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let piped = self
            .parts
            .iter()
            .filter(|p| matches!(p, Part::Pipe(_)))
            .count();
        write!(
            f,
            "Spliced({} bytes, {} parts, {piped} in pipes)",
            self.len,
            self.parts.len()
        )
    }
}

impl From<Bytes> for Spliced {
    fn from(b: Bytes) -> Self {
        std::iter::once(Part::Mem(b)).collect()
    }
}

impl FromIterator<Part> for Spliced {
    fn from_iter<I: IntoIterator<Item = Part>>(iter: I) -> Self {
        let parts: VecDeque<Part> = iter.into_iter().filter(|p| !p.is_empty()).collect();
        let len = parts.iter().map(Part::len).sum();
        Spliced { parts, len }
    }
}

impl Spliced {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether any of the data is in a pipe (otherwise sending it as memory is as
    /// cheap).
    pub fn in_pipes(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Pipe(_)))
    }

    /// All of it in one buffer; without a copy when it is one part in memory.
    pub fn into_bytes(mut self) -> io::Result<Bytes> {
        if self.parts.len() <= 1 {
            return self
                .parts
                .pop_front()
                .map_or(Ok(Bytes::new()), Part::into_bytes);
        }
        let mut out = BytesMut::with_capacity(self.len);
        for p in self.parts {
            match p {
                Part::Mem(b) => out.extend_from_slice(&b),
                Part::Pipe(mut p) => p.read_into(&mut out)?,
            }
        }
        Ok(out.freeze())
    }

    /// Sends the next `n` bytes to `sock`. `more`: further data follows at once.
    pub async fn send_to(&mut self, sock: &TcpStream, n: usize, more: bool) -> io::Result<()> {
        if n > self.len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{n} bytes asked of {} bytes of read data", self.len),
            ));
        }
        let mut left = n;
        while left > 0 {
            let front = self.parts.front_mut().expect("len counts the parts' bytes");
            let k = left.min(front.len());
            match front {
                Part::Mem(b) => {
                    let mut chunk = b.split_to(k);
                    while !chunk.is_empty() {
                        sock.writable().await?;
                        match sock.try_write(&chunk) {
                            Ok(w) => {
                                let _ = chunk.split_to(w);
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                            Err(e) => return Err(e),
                        }
                    }
                }
                Part::Pipe(p) => p.drain_to(sock, k, more || k < left).await?,
            }
            if front.is_empty() {
                self.parts.pop_front();
            }
            left -= k;
            self.len -= k;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn socket_pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(7) ^ seed).collect()
    }

    /// Bytes go socket → pipe → socket unchanged, mixed with parts in memory, and can
    /// be sent in pieces that cut across parts.
    #[tokio::test]
    async fn spliced_bytes_arrive_in_order() {
        let (mut sds, from_sds) = socket_pair().await;
        let (to_initiator, mut initiator) = socket_pair().await;
        let piped = pattern(300_000, 1);
        let sender = {
            let piped = piped.clone();
            tokio::spawn(async move { sds.write_all(&piped).await.unwrap() })
        };
        let mut pipe = Pipe::new().unwrap();
        let head = pattern(1000, 9);
        assert_eq!(pipe.push(&head).unwrap(), 1000);
        assert_eq!(
            pipe.fill_from(&from_sds, piped.len()).await.unwrap(),
            Filled::All
        );
        sender.await.unwrap();
        let mem = pattern(5000, 2);
        let mut data: Spliced = [Part::Mem(Bytes::from(mem.clone())), Part::Pipe(pipe)]
            .into_iter()
            .collect();
        assert_eq!(data.len(), 306_000);
        assert!(data.in_pipes());
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; 306_000];
            initiator.read_exact(&mut got).await.unwrap();
            got
        });
        data.send_to(&to_initiator, 4000, true).await.unwrap();
        data.send_to(&to_initiator, 200_000, true).await.unwrap();
        data.send_to(&to_initiator, 102_000, false).await.unwrap();
        assert!(data.is_empty());
        let got = reader.await.unwrap();
        assert_eq!(&got[..5000], &mem[..]);
        assert_eq!(&got[5000..6000], &head[..]);
        assert_eq!(&got[6000..], &piped[..]);
    }

    #[tokio::test]
    async fn asking_for_more_than_there_is_is_an_error() {
        let (a, _b) = socket_pair().await;
        let mut data = Spliced::from(Bytes::from_static(b"abc"));
        assert!(data.send_to(&a, 4, false).await.is_err());
        assert_eq!(data.len(), 3);
    }

    #[test]
    fn into_bytes_reads_pipes_back_in_order() {
        let mut pipe = Pipe::new().unwrap();
        pipe.push(b"world").unwrap();
        let data: Spliced = [Part::Mem(Bytes::from_static(b"hello ")), Part::Pipe(pipe)]
            .into_iter()
            .collect();
        assert_eq!(&data.into_bytes().unwrap()[..], b"hello world");
        let one = Spliced::from(Bytes::from_static(b"x"));
        assert!(!one.in_pipes());
        assert_eq!(&one.into_bytes().unwrap()[..], b"x");
    }

    /// A socket with more bytes than the pipe has slots for stops at `Full` instead of
    /// waiting forever, and the rest stays readable in the socket.
    #[tokio::test]
    async fn a_full_pipe_is_reported_not_waited_on() {
        let (mut sds, mut from_sds) = socket_pair().await;
        let big = pattern(3 << 20, 3);
        let sender = {
            let big = big.clone();
            tokio::spawn(async move { sds.write_all(&big).await.unwrap() })
        };
        // One slot: any payload longer than one page frag overflows it.
        let mut pipe = Pipe::sized(4096).unwrap();
        let Filled::Full(moved) = pipe.fill_from(&from_sds, big.len()).await.unwrap() else {
            panic!("3 MiB cannot fit a one-slot pipe");
        };
        assert_eq!(moved, pipe.len());
        let mut got = BytesMut::new();
        pipe.read_into(&mut got).unwrap();
        let mut rest = vec![0u8; big.len() - moved];
        from_sds.read_exact(&mut rest).await.unwrap();
        got.extend_from_slice(&rest);
        assert_eq!(&got[..], &big[..]);
        sender.await.unwrap();
    }
}
