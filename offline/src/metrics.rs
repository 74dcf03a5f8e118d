//! Ranking metrics with binary relevance, and the top-k selection they are computed on.

/// The `k` best indices by score (highest first, ties by lower index), skipping `excluded`
/// (sorted). Partial selection: `O(n + k log k)`.
pub fn top_k(scores: &[f32], k: usize, excluded: &[u32]) -> Vec<u32> {
    let mut candidates: Vec<(f32, u32)> = Vec::with_capacity(scores.len());
    for (i, &s) in scores.iter().enumerate() {
        if excluded.binary_search(&(i as u32)).is_err() {
            candidates.push((s, i as u32));
        }
    }
    let better = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
    let k = k.min(candidates.len());
    if k == 0 {
        return Vec::new();
    }
    if k < candidates.len() {
        candidates.select_nth_unstable_by(k - 1, better);
        candidates.truncate(k);
    }
    candidates.sort_unstable_by(better);
    candidates.into_iter().map(|(_, i)| i).collect()
}

/// Targets among the first `k` of `ranked`; `target` sorted.
fn hits_at(ranked: &[u32], target: &[u32], k: usize) -> usize {
    ranked
        .iter()
        .take(k)
        .filter(|i| target.binary_search(i).is_ok())
        .count()
}

/// Hits in the first `k` of `ranked` divided by `min(k, |target|)`; `target` sorted.
pub fn recall_at(ranked: &[u32], target: &[u32], k: usize) -> f64 {
    if target.is_empty() {
        return 0.0;
    }
    hits_at(ranked, target, k) as f64 / k.min(target.len()) as f64
}

/// Hits in the first `k` of `ranked` divided by `|target|`: the recall of the published
/// benchmark protocols (NGCF, LightGCN, BARS), which a member with more than `k` targets can
/// never reach 1 on; `target` sorted.
pub fn full_recall_at(ranked: &[u32], target: &[u32], k: usize) -> f64 {
    if target.is_empty() {
        return 0.0;
    }
    hits_at(ranked, target, k) as f64 / target.len() as f64
}

/// Normalised discounted cumulative gain at `k`: `Σ 1/log2(rank+1)` over hits divided by the
/// same sum for a perfect ranking of `min(k, |target|)` hits; `target` sorted.
pub fn ndcg_at(ranked: &[u32], target: &[u32], k: usize) -> f64 {
    let discount = |rank: usize| 1.0 / ((rank + 1) as f64).log2();
    let dcg: f64 = ranked
        .iter()
        .take(k)
        .enumerate()
        .filter(|(_, i)| target.binary_search(i).is_ok())
        .map(|(pos, _)| discount(pos + 1))
        .sum();
    let ideal: f64 = (1..=k.min(target.len())).map(discount).sum();
    if ideal == 0.0 {
        0.0
    } else {
        dcg / ideal
    }
}

/// 1 when any target is in the first `k`, else 0.
pub fn hit_at(ranked: &[u32], target: &[u32], k: usize) -> f64 {
    f64::from(u8::from(
        ranked
            .iter()
            .take(k)
            .any(|i| target.binary_search(i).is_ok()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_orders_by_score_skips_excluded_and_breaks_ties_by_index() {
        let scores = [0.1, 0.9, 0.5, 0.9, -1.0, 0.7];
        assert_eq!(top_k(&scores, 3, &[]), vec![1, 3, 5]);
        assert_eq!(top_k(&scores, 3, &[1, 5]), vec![3, 2, 0]);
        assert_eq!(top_k(&scores, 10, &[0, 1, 2, 3, 4]), vec![5]);
        assert!(top_k(&scores, 0, &[]).is_empty());
    }

    #[test]
    fn metrics_match_hand_computed_cases() {
        let ranked = [10, 20, 30, 40, 50];
        // Targets {20, 50, 99}: hits at ranks 2 and 5.
        let target = [20, 50, 99];
        assert_eq!(recall_at(&ranked, &target, 2), 0.5); // 1 hit / min(2, 3)
        assert!((recall_at(&ranked, &target, 5) - 2.0 / 3.0).abs() < 1e-12);
        let dcg = 1.0 / 3f64.log2() + 1.0 / 6f64.log2();
        let idcg = 1.0 + 1.0 / 3f64.log2() + 1.0 / 4f64.log2();
        assert!((ndcg_at(&ranked, &target, 5) - dcg / idcg).abs() < 1e-12);
        // Single target at rank 3: ndcg = 1/log2(4) = 0.5.
        assert!((ndcg_at(&ranked, &[30], 10) - 0.5).abs() < 1e-12);
        assert_eq!(hit_at(&ranked, &[30], 3), 1.0);
        assert_eq!(hit_at(&ranked, &[30], 2), 0.0);
        assert_eq!(ndcg_at(&ranked, &[10, 20], 2), 1.0);
        assert_eq!(recall_at(&ranked, &[], 5), 0.0);
        // The published protocol divides by every target: 1 hit of 3 at k = 2.
        assert!((full_recall_at(&ranked, &target, 2) - 1.0 / 3.0).abs() < 1e-12);
        assert!((full_recall_at(&ranked, &target, 5) - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(full_recall_at(&ranked, &[], 5), 0.0);
    }
}
