//! Power of two choices (Mitzenmacher 2001; tower's `balance::p2c`, linkerd's pool): pick two
//! distinct endpoints uniformly at random and send to the cheaper. Comparing two random
//! endpoints instead of scanning for the global minimum avoids the herd behaviour of
//! least-loaded (every worker piling onto the same "best" endpoint between updates) while
//! keeping the maximum load exponentially closer to the mean than random choice.
//!
//! The two are drawn with probability proportional to a weight, which is how slow start works
//! here: a new or returning endpoint (weight ramping from 0.1 to 1) is *considered* less often,
//! but when drawn it competes on cost like any other. (Folding the ramp into the cost instead
//! would starve it: P2C always prefers the cheaper, so an endpoint that costs more than every
//! other gets nothing, ramp or not.)
//!
//! The loser becomes the first fallback, followed by further random distinct endpoints, so
//! Envoy's override_host policy has a different endpoint for each retry.

use crate::core::rng::Rng;

/// Index drawn with probability proportional to `weights`, skipping `skip`.
fn draw(weights: &[f64], skip: Option<usize>, rng: &mut impl Rng) -> usize {
    let weight = |i: usize| {
        if Some(i) == skip {
            0.0
        } else {
            weights[i].max(0.0)
        }
    };
    let total: f64 = (0..weights.len()).map(weight).sum();
    let mut target = rng.unit() * total;
    let mut last = 0;
    for i in 0..weights.len() {
        let w = weight(i);
        if w <= 0.0 {
            continue;
        }
        last = i;
        if target < w {
            return i;
        }
        target -= w;
    }
    last
}

/// Up to `fallbacks + 1` distinct indices into `weights`: the P2C winner first, then the
/// loser, then random others. Empty when `weights` is. `cost` is asked only for the two
/// drawn, since reading an endpoint's statistics is a shared-data copy. Weights must be
/// positive.
pub fn pick_order(
    weights: &[f64],
    fallbacks: usize,
    rng: &mut impl Rng,
    mut cost: impl FnMut(usize) -> f64,
) -> Vec<usize> {
    let n = weights.len();
    let mut order = Vec::with_capacity((fallbacks + 1).min(n));
    match n {
        0 => return order,
        1 => {
            order.push(0);
            return order;
        }
        _ => {}
    }
    let a = draw(weights, None, rng);
    let b = draw(weights, Some(a), rng);
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
        assert!(pick_order(&[], 2, &mut rng, |_| 1.0).is_empty());
        assert_eq!(pick_order(&[1.0], 2, &mut rng, |_| 5.0), vec![0]);
    }

    #[test]
    fn order_is_distinct_and_bounded() {
        let mut rng = SplitMix64::new(3);
        for n in 2..8 {
            let costs = vec![1.0; n];
            for fallbacks in 0..10 {
                let order = pick_order(&vec![1.0; n], fallbacks, &mut rng, |i| costs[i]);
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
            let order = pick_order(&[1.0; 3], 1, &mut rng, |i| [3.0, 1.0, 2.0][i]);
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
            wins[pick_order(&[1.0; 5], 0, &mut rng, |i| costs[i])[0]] += 1;
        }
        assert_eq!(wins[4], 0);
        assert!(
            wins[..4].iter().all(|&w| (2_200..2_800).contains(&w)),
            "{wins:?}"
        );
    }

    #[test]
    fn a_ramping_endpoint_is_drawn_less_but_wins_when_cheaper() {
        let mut rng = SplitMix64::new(5);
        // Endpoint 0 is new (weight 0.1) and as cheap as the others.
        let weights = [0.1, 1.0, 1.0, 1.0];
        let mut wins = [0u32; 4];
        for _ in 0..20_000 {
            wins[pick_order(&weights, 0, &mut rng, |_| 1.0)[0]] += 1;
        }
        let share = f64::from(wins[0]) / 20_000.0;
        assert!(share > 0.01 && share < 0.06, "{share}");
        // Cheaper than all: it wins whenever it is drawn (as a or b), ~6% of requests.
        let mut wins0 = 0;
        for _ in 0..20_000 {
            if pick_order(&weights, 0, &mut rng, |i| if i == 0 { 0.5 } else { 1.0 })[0] == 0 {
                wins0 += 1;
            }
        }
        let share = f64::from(wins0) / 20_000.0;
        assert!(share > 0.04 && share < 0.10, "{share}");
    }
}
