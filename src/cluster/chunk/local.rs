//! The local transport: besides its TCP port, an SDS listens on an abstract Unix
//! socket named for that address, and a client on the same host connects there first.
//! The chunk protocol is the same on both; a local connection also gets shared memory
//! for read data (`arena`), handed over as a file descriptor with the connection's
//! first request (Attach), which is why it needs a Unix socket.
//!
//! Abstract names live in the network namespace: a client reaches an SDS this way
//! exactly when it shares the SDS's namespace (and so its host). A client in another
//! namespace finds no such name and uses TCP, so a partition between namespaces cuts
//! both.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// The abstract socket name (leading NUL) of the SDS listening on `addr`.
pub fn socket_name(addr: SocketAddr) -> String {
    format!("\0dreadnought-sds/{addr}")
}

/// Send buffer of a local connection, each way. A Unix socket counts what the peer
/// has not read yet against the sender's buffer, and the default (208 KiB) is less
/// than the writes one connection keeps in flight (eight 1 MiB writes at QD8); TCP
/// grows its buffers to 4 MiB on its own.
const SEND_BUFFER: i32 = 4 << 20;

/// Sizes a local connection's send buffer (the kernel caps it at `wmem_max`).
pub fn tune(sock: BorrowedFd<'_>) {
    // SAFETY: setsockopt reads an i32 the size of which it is told.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&SEND_BUFFER as *const i32).cast(),
            size_of::<i32>() as u32,
        );
    }
}

/// Room for one SCM_RIGHTS message carrying one descriptor, suitably aligned.
#[repr(C)]
union Cmsg {
    buf: [u8; 64],
    _align: libc::cmsghdr,
}

/// A message header over one buffer, with `control` bytes of `space` for ancillary
/// data.
fn message(iov: &mut libc::iovec, space: &mut Cmsg, control: usize) -> libc::msghdr {
    // SAFETY: msghdr is plain data; all-zero is its empty value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    // SAFETY: every field of the union is plain bytes.
    msg.msg_control = unsafe { space.buf.as_mut_ptr().cast() };
    msg.msg_controllen = control;
    msg
}

/// Sends `bytes` with `fd` attached; returns how many bytes went (the descriptor goes
/// with the first of them). `sock` must be a Unix stream socket.
pub fn send_with_fd(sock: BorrowedFd<'_>, bytes: &[u8], fd: BorrowedFd<'_>) -> io::Result<usize> {
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut _,
        iov_len: bytes.len(),
    };
    let mut space = Cmsg { buf: [0; 64] };
    // SAFETY: msghdr points at `iov` and `space`, which outlive the call; the CMSG
    // macros stay inside the CMSG_SPACE bytes declared, which fit in `space`.
    unsafe {
        let control = libc::CMSG_SPACE(size_of::<i32>() as u32) as usize;
        let msg = message(&mut iov, &mut space, control);
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(size_of::<i32>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<i32>(), fd.as_raw_fd());
        let n = libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

/// Receives up to `buf.len()` bytes and the descriptor sent with them, if any (close
/// on exec). A message carrying anything but one descriptor is refused.
pub fn recv_with_fd(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut space = Cmsg { buf: [0; 64] };
    // SAFETY: as in `send_with_fd`; every descriptor the kernel installed is taken
    // into an `OwnedFd` (so closed) before returning.
    unsafe {
        let mut msg = message(&mut iov, &mut space, size_of::<Cmsg>());
        let n = libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut fds = Vec::new();
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c);
                let count = ((*c).cmsg_len - libc::CMSG_LEN(0) as usize) / size_of::<i32>();
                for i in 0..count {
                    let fd = std::ptr::read_unaligned(data.cast::<i32>().add(i));
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
        if msg.msg_flags & libc::MSG_CTRUNC != 0 || fds.len() > 1 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the peer sent more than one descriptor",
            ));
        }
        Ok((n as usize, fds.pop()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_descriptor_travels_with_the_first_bytes() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(b"shared").unwrap();
        assert_eq!(send_with_fd(a.as_fd(), b"hello", f.as_fd()).unwrap(), 5);
        (&a).write_all(b" world").unwrap();
        let mut buf = [0u8; 5];
        let (n, fd) = recv_with_fd(b.as_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello");
        let mut got = std::fs::File::from(fd.expect("a descriptor"));
        got.rewind().unwrap();
        let mut s = String::new();
        got.read_to_string(&mut s).unwrap();
        assert_eq!(s, "shared");
        let mut rest = [0u8; 6];
        b.read_exact(&mut rest).unwrap();
        assert_eq!(&rest, b" world");
        drop(a);
        assert_eq!(recv_with_fd(b.as_fd(), &mut buf).unwrap().0, 0);
    }

    #[test]
    fn names_differ_per_address_and_are_abstract() {
        let a = socket_name("127.0.0.1:7072".parse().unwrap());
        assert!(a.starts_with('\0'));
        assert_ne!(a, socket_name("127.0.0.1:7073".parse().unwrap()));
    }
}
