//! The sending half of a connection. It alone stamps StatSN, ExpCmdSN and MaxCmdSN,
//! so status numbers follow the order PDUs really leave in, whichever task produced
//! them; PDUs queued together go out in one vectored write.

use super::pdu::{Digests, Pdu, RESERVED_TAG};
use bytes::Bytes;
use std::io::IoSlice;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// ExpCmdSN and MaxCmdSN as the receiving side last set them.
#[derive(Debug, Default)]
pub struct CmdSnState {
    pub exp_cmd_sn: AtomicU32,
    pub max_cmd_sn: AtomicU32,
}

impl CmdSnState {
    pub fn set(&self, exp: u32, max: u32) {
        self.exp_cmd_sn.store(exp, Ordering::Release);
        self.max_cmd_sn.store(max, Ordering::Release);
    }
}

#[derive(Debug)]
pub enum Outgoing {
    Pdu(Box<Pdu>),
    /// Flush what is queued, then close the connection.
    Close,
}

pub type Sender = mpsc::UnboundedSender<Outgoing>;

/// Fills in the sequence numbers of a target PDU; returns whether it used up a StatSN.
pub fn stamp(pdu: &mut Pdu, stat_sn: u32, exp: u32, max: u32) -> bool {
    macro_rules! set {
        ($p:expr) => {{
            $p.stat_sn = stat_sn;
            $p.exp_cmd_sn = exp;
            $p.max_cmd_sn = max;
        }};
    }
    match pdu {
        Pdu::ScsiResponse(p) => {
            set!(p);
            true
        }
        Pdu::TaskMgmtResponse(p) => {
            set!(p);
            true
        }
        Pdu::TextResponse(p) => {
            set!(p);
            true
        }
        Pdu::LogoutResponse(p) => {
            set!(p);
            true
        }
        Pdu::AsyncMessage(p) => {
            set!(p);
            true
        }
        Pdu::Reject(p) => {
            set!(p);
            true
        }
        Pdu::LoginResponse(p) => {
            set!(p);
            true
        }
        // A NOP-In answering a ping consumes a StatSN; our own ping only reports it.
        Pdu::NopIn(p) => {
            set!(p);
            p.itt != RESERVED_TAG
        }
        Pdu::R2t(p) => {
            set!(p);
            false
        }
        Pdu::DataIn(p) => {
            p.exp_cmd_sn = exp;
            p.max_cmd_sn = max;
            if p.status.is_some() {
                p.stat_sn = stat_sn;
                true
            } else {
                p.stat_sn = 0;
                false
            }
        }
        _ => false,
    }
}

/// How many bytes to gather before writing, so large reads don't pile up in memory.
const BATCH_BYTES: usize = 1 << 20;

/// Runs until the channel closes, `Close` is received or the socket fails.
pub async fn run<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    sn: Arc<CmdSnState>,
    mut stat_sn: u32,
    digests: Digests,
) -> std::io::Result<()> {
    let mut pieces: Vec<Bytes> = Vec::with_capacity(64);
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        let mut close = false;
        let mut bytes = 0;
        while let Some(msg) = next.take() {
            match msg {
                Outgoing::Close => {
                    close = true;
                    break;
                }
                Outgoing::Pdu(mut pdu) => {
                    let exp = sn.exp_cmd_sn.load(Ordering::Acquire);
                    let max = sn.max_cmd_sn.load(Ordering::Acquire);
                    if stamp(&mut pdu, stat_sn, exp, max) {
                        stat_sn = stat_sn.wrapping_add(1);
                    }
                    let enc = pdu.encode(digests);
                    bytes += enc.len();
                    pieces.push(enc.header);
                    if !enc.data.is_empty() {
                        pieces.push(enc.data);
                    }
                    if !enc.trailer.is_empty() {
                        pieces.push(enc.trailer);
                    }
                }
            }
            if bytes < BATCH_BYTES && pieces.len() < 512 {
                next = rx.try_recv().ok();
            }
        }
        write_all_vectored(&mut wr, &mut pieces).await?;
        if close {
            break;
        }
    }
    wr.flush().await?;
    wr.shutdown().await
}

async fn write_all_vectored<W: AsyncWrite + Unpin>(
    wr: &mut W,
    pieces: &mut Vec<Bytes>,
) -> std::io::Result<()> {
    let mut start = 0;
    while start < pieces.len() {
        let slices: Vec<IoSlice<'_>> = pieces[start..]
            .iter()
            .take(64)
            .map(|b| IoSlice::new(b))
            .collect();
        let mut n = wr.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 {
            let len = pieces[start].len();
            if n >= len {
                n -= len;
                start += 1;
            } else {
                let rest = pieces[start].slice(n..);
                pieces[start] = rest;
                n = 0;
            }
        }
    }
    pieces.clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iscsi::pdu::{DataIn, NopIn, R2t, ScsiResponse};

    #[test]
    fn only_status_pdus_consume_statsn() {
        let mut r = Pdu::ScsiResponse(ScsiResponse::default());
        assert!(stamp(&mut r, 5, 1, 9));
        let Pdu::ScsiResponse(s) = &r else { panic!() };
        assert_eq!((s.stat_sn, s.exp_cmd_sn, s.max_cmd_sn), (5, 1, 9));
        assert!(!stamp(&mut Pdu::R2t(R2t::default()), 5, 1, 9));
        assert!(!stamp(&mut Pdu::DataIn(DataIn::default()), 5, 1, 9));
        let mut last = Pdu::DataIn(DataIn {
            status: Some(0),
            ..Default::default()
        });
        assert!(stamp(&mut last, 5, 1, 9));
        let mut ping = Pdu::NopIn(NopIn {
            itt: RESERVED_TAG,
            ..Default::default()
        });
        assert!(!stamp(&mut ping, 5, 1, 9));
        let mut pong = Pdu::NopIn(NopIn {
            itt: 3,
            ..Default::default()
        });
        assert!(stamp(&mut pong, 5, 1, 9));
    }
}
