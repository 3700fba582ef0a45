//! Power of two choices (Mitzenmacher 2001; tower's `balance::p2c`, linkerd's pool): pick two
//! distinct endpoints uniformly at random and send to the cheaper. Comparing two random
//! endpoints instead of scanning for the global minimum avoids the herd behaviour of
//! least-loaded (every worker piling onto the same "best" endpoint between updates) while
//! keeping the maximum load exponentially closer to the mean than random choice.
//!
//! The loser becomes the first fallback, followed by further random distinct endpoints, so
//! Envoy's override_host policy has a different endpoint for each retry.

use crate::core::rng::Rng;

/// Up to `fallbacks + 1` distinct indices in `0..n`: the P2C winner first, then the loser,
/// then random others. Empty when `n == 0`. `cost` is asked only for the two drawn, since
/// reading an endpoint's statistics is a shared-data copy.
pub fn pick_order(
    n: usize,
    fallbacks: usize,
    rng: &mut impl Rng,
    mut cost: impl FnMut(usize) -> f64,
) -> Vec<usize> {
    let mut order = Vec::with_capacity((fallbacks + 1).min(n));
    match n {
        0 => return order,
        1 => {
            order.push(0);
            return order;
        }
        _ => {}
    }
    let a = rng.below(n);
    // Draw b from the other n - 1 endpoints: distinct without a retry loop.
    let mut b = rng.below(n - 1);
    if b >= a {
        b += 1;
    }
    let (winner, loser) = if cost(b) < cost(a) { (b, a) } else { (a, b) };
    order.push(winner);
    if fallbacks == 0 {
        return order;
    }
    order.push(loser);
    // Partial Fisher-Yates over the remaining indices for the rest of the list.
    let mut rest: Vec<usize> = (0..n).filter(|&i| i != a && i != b).collect();
    let wanted = fallbacks.saturating_sub(1).min(rest.len());
    for i in 0..wanted {
        let j = i + rng.below(rest.len() - i);
        rest.swap(i, j);
        order.push(rest[i]);
    }
    order
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::core::rng::SplitMix64;

    #[test]
    fn empty_and_single_endpoint_lists() {
        let mut rng = SplitMix64::new(1);
        assert!(pick_order(0, 2, &mut rng, |_| 1.0).is_empty());
        assert_eq!(pick_order(1, 2, &mut rng, |_| 5.0), vec![0]);
    }

    #[test]
    fn order_is_distinct_and_bounded() {
        let mut rng = SplitMix64::new(3);
        for n in 2..8 {
            let costs = vec![1.0; n];
            for fallbacks in 0..10 {
                let order = pick_order(costs.len(), fallbacks, &mut rng, |i| costs[i]);
                assert_eq!(order.len(), (fallbacks + 1).min(n));
                let mut sorted = order.clone();
                sorted.sort();
                sorted.dedup();
                assert_eq!(sorted.len(), order.len(), "duplicates in {order:?}");
            }
        }
    }

    #[test]
    fn winner_is_the_cheaper_of_the_two_drawn() {
        let mut rng = SplitMix64::new(9);
        for _ in 0..200 {
            let order = pick_order(3, 1, &mut rng, |i| [3.0, 1.0, 2.0][i]);
            let (winner, loser) = (order[0], order[1]);
            assert!([3.0, 1.0, 2.0][winner] <= [3.0, 1.0, 2.0][loser]);
        }
    }

    #[test]
    fn the_most_expensive_endpoint_never_wins_and_others_share() {
        let mut rng = SplitMix64::new(42);
        let costs = [10.0, 10.0, 10.0, 10.0, 1_000.0];
        let mut wins = [0u32; 5];
        for _ in 0..10_000 {
            wins[pick_order(costs.len(), 0, &mut rng, |i| costs[i])[0]] += 1;
        }
        assert_eq!(wins[4], 0);
        assert!(
            wins[..4].iter().all(|&w| (2_200..2_800).contains(&w)),
            "{wins:?}"
        );
    }
}
