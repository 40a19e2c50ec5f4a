//! How work is cut: Distributed's `splitrange` (the static split of
//! `@distributed`), the batch size `pmap` picks for `batch_size=:auto`,
//! and the chunks of a dynamically balanced range.

/// `first..=last` cut into at most `np` contiguous chunks whose lengths
/// differ by at most one, the longer ones first: Distributed's
/// `splitrange` (1:11 over 3 gives 1:4, 5:8, 9:11). Fewer elements than
/// `np` give one chunk per element; an empty range gives none.
pub fn splitrange(first: i64, last: i64, np: usize) -> Vec<(i64, i64)> {
    if last < first || np == 0 {
        return Vec::new();
    }
    let len = (last as i128 - first as i128 + 1) as u128;
    let np = np as u128;
    let (each, mut extras) = (len / np, len % np);
    let nchunks = if each > 0 { np } else { extras };
    let mut out = Vec::with_capacity(nchunks as usize);
    let mut lo = first as i128;
    for _ in 0..nchunks {
        let mut hi = lo + each as i128 - 1;
        if extras > 0 {
            hi += 1;
            extras -= 1;
        }
        out.push((lo as i64, hi as i64));
        lo = hi + 1;
    }
    out
}

/// `first..=last` in consecutive chunks of `chunk` elements (the last may
/// be shorter), for chunks handed out as workers finish.
pub fn chunks(first: i64, last: i64, chunk: usize) -> Vec<(i64, i64)> {
    if last < first || chunk == 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut lo = first as i128;
    while lo <= last as i128 {
        let hi = (lo + chunk as i128 - 1).min(last as i128);
        out.push((lo as i64, hi as i64));
        lo = hi + 1;
    }
    out
}

/// The largest batch `batch_size=:auto` makes.
pub const AUTO_MAX_BATCH: usize = 100;

/// The batch size of Distributed's `pmap(...; batch_size=:auto)`: at
/// least three batches per worker (`batchsplit(c, min_batch_count =
/// 3 * nworkers)`), of at most 100 elements. With fewer than that many
/// batches of 100, the batch size is `n ÷ (3 * nworkers)`, at least 1.
pub fn auto_batch_size(n: usize, nworkers: usize) -> usize {
    let min_batches = 3 * nworkers.max(1);
    if n.div_ceil(AUTO_MAX_BATCH) >= min_batches {
        AUTO_MAX_BATCH
    } else {
        (n / min_batches).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitrange_is_distributed_s() {
        assert_eq!(splitrange(1, 11, 3), vec![(1, 4), (5, 8), (9, 11)]);
        assert_eq!(splitrange(1, 12, 3), vec![(1, 4), (5, 8), (9, 12)]);
        assert_eq!(splitrange(1, 10, 4), vec![(1, 3), (4, 6), (7, 8), (9, 10)]);
        // Fewer elements than processes: one chunk each.
        assert_eq!(splitrange(1, 2, 4), vec![(1, 1), (2, 2)]);
        assert_eq!(splitrange(5, 5, 3), vec![(5, 5)]);
        assert_eq!(splitrange(0, -1, 3), vec![]);
        assert_eq!(splitrange(1, 10, 0), vec![]);
        assert_eq!(splitrange(-3, 3, 2), vec![(-3, 0), (1, 3)]);
        // The chunks cover the range exactly, in order, at any size.
        for n in 1..40i64 {
            for np in 1..9 {
                let c = splitrange(10, 10 + n - 1, np);
                assert_eq!(c.len(), (n as usize).min(np));
                assert_eq!(c[0].0, 10);
                assert_eq!(c.last().unwrap().1, 10 + n - 1);
                for w in c.windows(2) {
                    assert_eq!(w[0].1 + 1, w[1].0);
                    let (a, b) = (w[0].1 - w[0].0, w[1].1 - w[1].0);
                    assert!(a == b || a == b + 1, "longer chunks first, by one at most");
                }
            }
        }
        assert_eq!(splitrange(i64::MIN, i64::MAX, 2), vec![(i64::MIN, -1), (0, i64::MAX)]);
    }

    #[test]
    fn chunks_cover_the_range() {
        assert_eq!(chunks(1, 10, 4), vec![(1, 4), (5, 8), (9, 10)]);
        assert_eq!(chunks(1, 3, 5), vec![(1, 3)]);
        assert_eq!(chunks(3, 1, 5), vec![]);
    }

    #[test]
    fn auto_batches_are_distributed_s_batchsplit() {
        // Few elements: at least 3 batches per worker, batches of n ÷ 3w.
        assert_eq!(auto_batch_size(10, 2), 1);
        assert_eq!(auto_batch_size(500, 2), 83);
        assert_eq!(auto_batch_size(599, 2), 100, "6 batches of up to 100 are enough");
        assert_eq!(auto_batch_size(501, 2), 100);
        // Enough for 3w batches of 100: batches of 100.
        assert_eq!(auto_batch_size(600, 2), 100);
        assert_eq!(auto_batch_size(100_000, 2), 100);
        assert_eq!(auto_batch_size(1000, 4), 83);
        assert_eq!(auto_batch_size(0, 3), 1);
        assert_eq!(auto_batch_size(7, 0), 2, "no worker counts as one");
    }
}
