//! The farm's merge rule (`[cluster]`), shared by every record the relays share (holds,
//! suppressions, account suspensions): each side's record carries when it last changed.
//!
//! Rules:
//! - The later stamp wins; a tie keeps what is there.
//! - A side that has no stamp never knew the record: the other side's change stands.
//! - Removals are kept as tombstones for `TOMBSTONE_KEEP_MS`, so a node that was away for less
//!   still learns of them.

/// Removals stay in Redis this long, so a node that was away for less still learns of them.
pub const TOMBSTONE_KEEP_MS: u64 = 7 * 86_400 * 1000;

/// Which side of a merge holds the later change of one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Newer {
    Local,
    Remote,
    Same,
}

/// The merge rule: the later stamp wins; no local stamp means the node never knew the record.
pub fn newer(local_ms: Option<u64>, remote_ms: Option<u64>) -> Newer {
    match (local_ms, remote_ms) {
        (Some(l), Some(r)) if l > r => Newer::Local,
        (Some(l), Some(r)) if l < r => Newer::Remote,
        (Some(_), None) => Newer::Local,
        (None, Some(_)) => Newer::Remote,
        _ => Newer::Same,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_later_change_wins_and_a_tie_keeps_what_is_there() {
        assert_eq!(newer(Some(2), Some(1)), Newer::Local);
        assert_eq!(newer(Some(1), Some(2)), Newer::Remote);
        assert_eq!(newer(Some(2), Some(2)), Newer::Same);
        // Only one side knows the record: that side's change stands.
        assert_eq!(newer(Some(1), None), Newer::Local);
        assert_eq!(newer(None, Some(1)), Newer::Remote);
        assert_eq!(newer(None, None), Newer::Same);
    }
}
