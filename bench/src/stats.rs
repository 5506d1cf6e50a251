//! The exact one-sided Mann-Whitney U (Wilcoxon rank-sum) test the gate decides with: pure
//! arithmetic, no I/O.
//!
//! With `n` runs on one side and `m` on the other, `U` counts the (x, y) pairs in which the x
//! side's run is worse (ties count half). Under the null hypothesis (identical servers, so the
//! `n + m` runs are exchangeable) every one of the `C(n + m, n)` rank arrangements is equally
//! likely, and [`u_counts`] counts, by dynamic programming over them, how many give each `U`.
//! That is the exact null distribution: no normal approximation, which is poor at 5 runs a side.

/// The false-failure rate the gate accepts per metric: a regression needs a one-sided exact
/// p-value at most this, so a metric is gated only when its exact size can be at most this.
pub const ALPHA: f64 = 0.01;

/// `counts[u]` = how many of the `C(n + m, n)` arrangements of `n` x's and `m` y's have exactly
/// `u` (x, y) pairs with x above y, for `u` in `0..=n*m`.
///
/// Recurrence on the largest of the `n + m` values: an x there is above all `m` y's, a y there
/// is above no x: `f(n, m, u) = f(n - 1, m, u - m) + f(n, m - 1, u)`, `f(0, m) = f(n, 0) = [1]`.
pub fn u_counts(n: usize, m: usize) -> Vec<u128> {
    // table[i][j] = counts for (i, j); built row by row.
    let mut table: Vec<Vec<Vec<u128>>> = Vec::with_capacity(n + 1);
    for i in 0..=n {
        let mut row: Vec<Vec<u128>> = Vec::with_capacity(m + 1);
        for j in 0..=m {
            if i == 0 || j == 0 {
                row.push(vec![1]);
                continue;
            }
            let mut c = vec![0u128; i * j + 1];
            // x largest: f(i-1, j, u - j)
            for (u, k) in table[i - 1][j].iter().enumerate() {
                c[u + j] += k;
            }
            // y largest: f(i, j-1, u)
            for (u, k) in row[j - 1].iter().enumerate() {
                c[u] += k;
            }
            row.push(c);
        }
        table.push(row);
    }
    table.swap_remove(n).swap_remove(m)
}

/// `P(U >= u)` under the null hypothesis, for `n` vs `m` runs. A half-integer `u` (from ties)
/// is rounded down, so a tie never buys significance.
pub fn p_at_least(n: usize, m: usize, u: f64) -> f64 {
    let counts = u_counts(n, m);
    let total: u128 = counts.iter().sum();
    let from = u.floor().max(0.0) as usize;
    let tail: u128 = counts.iter().skip(from).sum();
    tail as f64 / total as f64
}

/// The critical value for `n` vs `m` runs at level `alpha`: the smallest `u*` with
/// `P(U >= u*) <= alpha`, and that probability (the exact size of the test: its false-failure
/// rate under the null hypothesis). `None` when even `U = n*m` (complete separation,
/// probability `1 / C(n + m, n)`) is more likely than `alpha`: too few runs to decide.
pub fn critical(n: usize, m: usize, alpha: f64) -> Option<(usize, f64)> {
    if n == 0 || m == 0 {
        return None;
    }
    let counts = u_counts(n, m);
    let total: u128 = counts.iter().sum();
    let mut tail: u128 = 0;
    let mut best = None;
    for u in (0..counts.len()).rev() {
        tail += counts[u];
        let p = tail as f64 / total as f64;
        if p > alpha {
            break;
        }
        best = Some((u, p));
    }
    best
}

/// The smallest probability any outcome of `n` vs `m` runs can have: `1 / C(n + m, n)`.
pub fn smallest_p(n: usize, m: usize) -> f64 {
    let counts = u_counts(n, m);
    1.0 / counts.iter().sum::<u128>() as f64
}

/// `U` of `x` against `y`: pairs with the x value above the y value, ties counting half.
pub fn u_above(x: &[f64], y: &[f64]) -> f64 {
    let mut u = 0.0;
    for &a in x {
        for &b in y {
            if a > b {
                u += 1.0;
            } else if a == b {
                u += 0.5;
            }
        }
    }
    u
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binom(n: u128, k: u128) -> u128 {
        (1..=k).fold(1, |acc, i| acc * (n - k + i) / i)
    }

    #[test]
    fn distribution_is_exact() {
        for (n, m) in [(1, 1), (3, 3), (4, 5), (5, 5), (2, 7), (10, 10)] {
            let c = u_counts(n, m);
            assert_eq!(c.len(), n * m + 1);
            assert_eq!(
                c.iter().sum::<u128>(),
                binom((n + m) as u128, n as u128),
                "{n} vs {m}"
            );
            // Symmetric about n*m/2.
            let r: Vec<u128> = c.iter().rev().copied().collect();
            assert_eq!(c, r);
        }
        assert_eq!(u_counts(2, 2), [1, 1, 2, 1, 1]);
        // n = m = 3: P(U = 9) = 1/20.
        assert!((p_at_least(3, 3, 9.0) - 1.0 / 20.0).abs() < 1e-12);
        // n = m = 5: P(U = 25) = 1/252, P(U >= 24) = 2/252, P(U >= 23) = 4/252.
        assert!((p_at_least(5, 5, 25.0) - 1.0 / 252.0).abs() < 1e-12);
        assert!((p_at_least(5, 5, 24.0) - 2.0 / 252.0).abs() < 1e-12);
        assert!((p_at_least(5, 5, 23.0) - 4.0 / 252.0).abs() < 1e-12);
        // n = 4, m = 5: P(U = 20) = 1/126.
        assert!((p_at_least(4, 5, 20.0) - 1.0 / 126.0).abs() < 1e-12);
        assert!((p_at_least(5, 4, 20.0) - 1.0 / 126.0).abs() < 1e-12);
        assert_eq!(p_at_least(5, 5, 0.0), 1.0);
        // A tie never buys significance: 23.5 counts as 23.
        assert_eq!(p_at_least(5, 5, 23.5), p_at_least(5, 5, 23.0));
    }

    #[test]
    fn critical_values() {
        let (u, p) = critical(5, 5, ALPHA).unwrap();
        assert_eq!(u, 24);
        assert!((p - 2.0 / 252.0).abs() < 1e-12);
        let (u, p) = critical(4, 5, ALPHA).unwrap();
        assert_eq!(u, 20);
        assert!((p - 1.0 / 126.0).abs() < 1e-12);
        assert_eq!(critical(5, 4, ALPHA).map(|c| c.0), Some(20));
        // 4 vs 4: 1/70 = 1.4% > 1%; 3 vs 5: 1/56; 2 vs 2: 1/6.
        assert_eq!(critical(4, 4, ALPHA), None);
        assert_eq!(critical(3, 5, ALPHA), None);
        assert_eq!(critical(2, 2, ALPHA), None);
        assert_eq!(critical(0, 5, ALPHA), None);
        // 3 vs 7: 1/120 = 0.83%.
        assert_eq!(critical(3, 7, ALPHA).map(|c| c.0), Some(21));
        assert!((smallest_p(2, 2) - 1.0 / 6.0).abs() < 1e-12);
    }

    #[test]
    fn u_counts_pairs_and_ties() {
        assert_eq!(u_above(&[3.0, 4.0], &[1.0, 2.0]), 4.0);
        assert_eq!(u_above(&[1.0, 2.0], &[3.0, 4.0]), 0.0);
        assert_eq!(u_above(&[2.0], &[2.0, 1.0]), 1.5);
    }
}
