//! The CmdSN window (RFC 7143 section 4.2.2.1): commands reach the SCSI layer in
//! CmdSN order whatever order they arrive in; immediate commands skip the queue.

use super::pdu::serial;
use std::collections::BTreeMap;

/// What to do with an arriving command.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit<T> {
    /// Deliver these now, in this order (the arriving one, then any queued ones it
    /// unblocked).
    Deliver(Vec<T>),
    /// Held until the gap before it is filled.
    Queued,
    /// Outside [ExpCmdSN, MaxCmdSN]: the RFC says to ignore it silently.
    Dropped,
}

/// Tracks ExpCmdSN and holds out-of-order non-immediate commands.
#[derive(Debug)]
pub struct CmdWindow<T> {
    exp_cmd_sn: u32,
    depth: u32,
    /// Keyed by the offset from `exp_cmd_sn`, which is ordered even across wrap-around.
    pending: BTreeMap<u32, T>,
}

impl<T> CmdWindow<T> {
    /// `first` is the CmdSN the login carried; `depth` how many commands the initiator
    /// may have queued (MaxCmdSN = ExpCmdSN + depth - 1).
    pub fn new(first: u32, depth: u32) -> Self {
        Self {
            exp_cmd_sn: first,
            depth: depth.max(1),
            pending: BTreeMap::new(),
        }
    }

    pub fn exp_cmd_sn(&self) -> u32 {
        self.exp_cmd_sn
    }

    pub fn max_cmd_sn(&self) -> u32 {
        self.exp_cmd_sn.wrapping_add(self.depth - 1)
    }

    /// Admits a command with `cmd_sn`. Immediate commands are delivered at once if
    /// their CmdSN lies in the window (they do not advance ExpCmdSN).
    pub fn admit(&mut self, cmd_sn: u32, immediate: bool, item: T) -> Admit<T> {
        if !serial::in_window(cmd_sn, self.exp_cmd_sn, self.max_cmd_sn()) {
            // Immediate commands may carry a CmdSN one below the window only in the
            // sense of being ExpCmdSN; anything else outside is ignored.
            return Admit::Dropped;
        }
        if immediate {
            return Admit::Deliver(vec![item]);
        }
        if cmd_sn != self.exp_cmd_sn {
            let off = cmd_sn.wrapping_sub(self.exp_cmd_sn);
            if self.pending.contains_key(&off) {
                return Admit::Dropped;
            }
            self.pending.insert(off, item);
            return Admit::Queued;
        }
        let mut out = vec![item];
        self.advance();
        while let Some(next) = self.pending.remove(&0) {
            out.push(next);
            self.advance();
        }
        Admit::Deliver(out)
    }

    fn advance(&mut self) {
        self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
        self.pending = std::mem::take(&mut self.pending)
            .into_iter()
            .map(|(k, v)| (k - 1, v))
            .collect();
    }

    /// How many commands wait for a gap to be filled.
    pub fn queued(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_delivery_advances() {
        let mut w = CmdWindow::new(10, 4);
        assert_eq!(w.admit(10, false, 'a'), Admit::Deliver(vec!['a']));
        assert_eq!(w.exp_cmd_sn(), 11);
        assert_eq!(w.max_cmd_sn(), 14);
    }

    #[test]
    fn out_of_order_is_held_then_released_in_order() {
        let mut w = CmdWindow::new(1, 8);
        assert_eq!(w.admit(3, false, 'c'), Admit::Queued);
        assert_eq!(w.admit(2, false, 'b'), Admit::Queued);
        assert_eq!(w.queued(), 2);
        assert_eq!(w.admit(1, false, 'a'), Admit::Deliver(vec!['a', 'b', 'c']));
        assert_eq!(w.exp_cmd_sn(), 4);
        assert_eq!(w.queued(), 0);
    }

    #[test]
    fn outside_window_is_dropped() {
        let mut w = CmdWindow::new(100, 4);
        assert_eq!(w.admit(99, false, 'x'), Admit::Dropped);
        assert_eq!(w.admit(104, false, 'x'), Admit::Dropped);
        assert_eq!(w.exp_cmd_sn(), 100);
    }

    #[test]
    fn immediate_does_not_advance() {
        let mut w = CmdWindow::new(5, 4);
        assert_eq!(w.admit(5, true, 'i'), Admit::Deliver(vec!['i']));
        assert_eq!(w.exp_cmd_sn(), 5);
    }

    #[test]
    fn wraps_around_zero() {
        let mut w = CmdWindow::new(u32::MAX, 4);
        assert_eq!(w.admit(0, false, 'b'), Admit::Queued);
        assert_eq!(
            w.admit(u32::MAX, false, 'a'),
            Admit::Deliver(vec!['a', 'b'])
        );
        assert_eq!(w.exp_cmd_sn(), 1);
    }

    #[test]
    fn duplicate_queued_cmdsn_is_dropped() {
        let mut w = CmdWindow::new(1, 8);
        assert_eq!(w.admit(3, false, 'c'), Admit::Queued);
        assert_eq!(w.admit(3, false, 'd'), Admit::Dropped);
    }
}
