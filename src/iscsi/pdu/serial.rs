//! Serial number arithmetic (RFC 1982, 32 bits) for CmdSN, StatSN, DataSN, R2TSN.
//!
//! iSCSI sequence numbers wrap around, so plain `<` gives the wrong answer near
//! `u32::MAX`; RFC 7143 section 4.2.2.1 requires these comparisons instead. Two numbers
//! exactly 2^31 apart are incomparable in RFC 1982: every comparison below is `false`
//! for them (and so is [`in_window`]), which a window check treats as "outside".

/// `a < b` in serial arithmetic.
pub fn lt(a: u32, b: u32) -> bool {
    // The signed distance from a to b is positive exactly when b is "ahead" of a by
    // less than 2^31; a distance of 2^31 maps to i32::MIN and so counts as not less.
    (b.wrapping_sub(a) as i32) > 0
}

/// `a <= b` in serial arithmetic.
pub fn le(a: u32, b: u32) -> bool {
    a == b || lt(a, b)
}

/// `a > b` in serial arithmetic.
pub fn gt(a: u32, b: u32) -> bool {
    lt(b, a)
}

/// `a >= b` in serial arithmetic.
pub fn ge(a: u32, b: u32) -> bool {
    a == b || gt(a, b)
}

/// `low <= sn <= high` in serial arithmetic: the CmdSN window test of RFC 7143 section
/// 4.2.2.1. An empty window (`high == low - 1`, as a target announces with
/// MaxCmdSN = ExpCmdSN - 1) contains nothing.
pub fn in_window(sn: u32, low: u32, high: u32) -> bool {
    le(low, sn) && le(sn, high)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_order() {
        assert!(lt(1, 2));
        assert!(!lt(2, 1));
        assert!(!lt(5, 5));
        assert!(le(5, 5));
        assert!(ge(5, 5));
        assert!(gt(10, 3));
        assert!(!gt(3, 10));
    }

    #[test]
    fn wrap_around() {
        assert!(lt(u32::MAX, 0));
        assert!(lt(u32::MAX - 5, 3));
        assert!(gt(3, u32::MAX - 5));
        assert!(le(u32::MAX, 0));
        assert!(ge(0, u32::MAX));
        assert!(!lt(0, u32::MAX));
        // Just under half the space ahead is still "greater"...
        assert!(lt(0, 0x7fff_ffff));
        // ...but more than half ahead is "behind".
        assert!(gt(0, 0x8000_0001));
    }

    #[test]
    fn half_space_is_incomparable() {
        let (a, b) = (7u32, 7u32.wrapping_add(1 << 31));
        assert!(!lt(a, b) && !gt(a, b) && !le(a, b) && !ge(a, b));
        assert!(!lt(b, a) && !gt(b, a));
    }

    #[test]
    fn window() {
        assert!(in_window(5, 5, 5));
        assert!(in_window(6, 5, 10));
        assert!(in_window(10, 5, 10));
        assert!(!in_window(11, 5, 10));
        assert!(!in_window(4, 5, 10));
        // A window straddling the wrap.
        let low = u32::MAX - 2;
        let high = 3;
        for sn in [u32::MAX - 2, u32::MAX, 0, 1, 3] {
            assert!(in_window(sn, low, high), "{sn:#x}");
        }
        assert!(!in_window(4, low, high));
        assert!(!in_window(u32::MAX - 3, low, high));
    }

    #[test]
    fn empty_window_contains_nothing() {
        for exp in [0u32, 1, 100, u32::MAX, 1 << 31] {
            let max = exp.wrapping_sub(1);
            for d in [0u32, 1, 2, u32::MAX, 1 << 30] {
                assert!(!in_window(exp.wrapping_add(d), exp, max));
            }
        }
    }
}
