//! "Did you mean": the closest known word to a misspelt one.

/// Edit distance between two strings, by characters: insertions,
/// deletions, substitutions and swaps of two neighbours (optimal string
/// alignment), each costing 1.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// The candidate closest to `word`, if it is close enough to be what was
/// meant: a case-insensitive match, or the one candidate at the smallest
/// edit distance, when that is at most a third of the word's length (at
/// least 1, at most 3). Two candidates equally close suggest neither.
pub fn did_you_mean<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    if let Some(c) = candidates.iter().find(|c| c.eq_ignore_ascii_case(word)) {
        return Some(c);
    }
    let lower = word.to_ascii_lowercase();
    // A word cut short (`t-q8` for `t-q8_0`) names the one that starts so.
    if word.chars().count() >= 3 {
        let mut starting = candidates
            .iter()
            .filter(|c| c.to_ascii_lowercase().starts_with(&lower));
        if let (Some(c), None) = (starting.next(), starting.next()) {
            return Some(c);
        }
    }
    let limit = (word.chars().count() / 3).clamp(1, 3);
    let scored: Vec<(usize, &str)> = candidates
        .iter()
        .map(|c| (edit_distance(&lower, &c.to_ascii_lowercase()), *c))
        .filter(|(d, _)| *d <= limit)
        .collect();
    let best = scored.iter().map(|(d, _)| *d).min()?;
    let mut closest = scored.iter().filter(|(d, _)| *d == best);
    let first = closest.next()?;
    closest.next().is_none().then_some(first.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances() {
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("artifcats", "artifacts"), 1);
        assert_eq!(edit_distance("ggfu", "gguf"), 1);
        assert_eq!(edit_distance("max_kdl", "max_kld"), 1);
        assert_eq!(edit_distance("same", "same"), 0);
    }

    #[test]
    fn suggestions() {
        let keys = ["from", "artifacts", "verify", "output"];
        assert_eq!(did_you_mean("artifcats", &keys), Some("artifacts"));
        assert_eq!(did_you_mean("From", &keys), Some("from"));
        assert_eq!(did_you_mean("veryfi", &keys), Some("verify"));
        assert_eq!(did_you_mean("banana", &keys), None);
        assert_eq!(
            did_you_mean("q4_k_m", &["Q4_K_M", "Q4_K_S"]),
            Some("Q4_K_M")
        );
        assert_eq!(did_you_mean("Q4_KM", &["Q4_K_M", "Q4_K_S"]), Some("Q4_K_M"));
        assert_eq!(did_you_mean("mixed_3_5", &["mixed_3_4", "mixed_3_6"]), None);
        assert_eq!(did_you_mean("t-q8", &["t-q8_0", "t-mlx"]), Some("t-q8_0"));
        assert_eq!(did_you_mean("mixed", &["mixed_3_4", "mixed_3_6"]), None);
    }
}
