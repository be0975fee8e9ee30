//! Perplexity and KL divergence as llama.cpp's `llama-perplexity` computes
//! them (tools/perplexity/perplexity.cpp): windows of `n_ctx` tokens, the
//! first replaced by BOS when the vocabulary adds one, the second half of
//! each window scored, log-softmax sums in double.

/// The evaluation windows of `tokens`: `floor(len / n_ctx)` windows (at
/// most `max_chunks`), each with its first token replaced by `bos` when
/// given (llama.cpp does so when the vocabulary's add_bos is set).
pub fn windows(
    tokens: &[u32],
    n_ctx: usize,
    max_chunks: Option<usize>,
    bos: Option<u32>,
) -> Vec<Vec<u32>> {
    if n_ctx < 2 {
        return Vec::new();
    }
    let mut n = tokens.len() / n_ctx;
    if let Some(m) = max_chunks {
        n = n.min(m);
    }
    (0..n)
        .map(|i| {
            let mut w = tokens[i * n_ctx..(i + 1) * n_ctx].to_vec();
            if let Some(b) = bos {
                w[0] = b;
            }
            w
        })
        .collect()
}

/// First window position whose logits are scored (`n_ctx / 2`); the
/// scored tokens are `first + 1 .. n_ctx`.
pub fn first_scored(n_ctx: usize) -> usize {
    n_ctx / 2
}

/// `-log p(tok)` from one row of logits, as llama.cpp's `log_softmax`:
/// f32 max, `sum(expf(l - max))` in double, result in double.
pub fn nll(logits: &[f32], tok: usize) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| f64::from((l - max).exp())).sum();
    -(f64::from(logits[tok] - max) - sum.ln())
}

/// Running sums of negative log-likelihoods.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct NllStats {
    /// Sum of nll.
    pub sum: f64,
    /// Sum of nll squared.
    pub sum2: f64,
    /// Tokens scored.
    pub count: u64,
}

impl NllStats {
    /// Adds one token's nll.
    pub fn add(&mut self, v: f64) {
        self.sum += v;
        self.sum2 += v * v;
        self.count += 1;
    }

    /// Mean nll.
    pub fn mean(&self) -> f64 {
        self.sum / self.count.max(1) as f64
    }

    /// Perplexity `exp(mean nll)`.
    pub fn ppl(&self) -> f64 {
        self.mean().exp()
    }

    /// llama-perplexity's "+/-": `sqrt((<nll^2> - <nll>^2) / (N-1)) * PPL`.
    pub fn ppl_error(&self) -> f64 {
        let n = self.count as f64;
        let m = self.mean();
        let var = self.sum2 / n - m * m;
        if var > 0.0 && self.count > 1 {
            (var / (n - 1.0)).sqrt() * self.ppl()
        } else {
            0.0
        }
    }
}

/// llama.cpp's `nearest_int` (round half to even through the float
/// magic number).
fn nearest_int(f: f32) -> i32 {
    let v = f + 12_582_912.0;
    (v.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// The reference model's log-probabilities of one position as
/// llama-perplexity stores them in its `--kl-divergence-base` file: 16-bit
/// steps between `max - 16` and the max logit. Keeping this rounding makes
/// our KL divergence the number llama.cpp prints for the same models.
pub struct BaseLogProbs {
    scale: f32,
    min_log_prob: f32,
    q: Vec<u16>,
}

impl BaseLogProbs {
    /// Quantizes one row of reference logits.
    pub fn new(logits: &[f32]) -> BaseLogProbs {
        let mut max = logits[0];
        let mut min = logits[0];
        for &l in &logits[1..] {
            max = max.max(l);
            min = min.min(l);
        }
        let min = min.max(max - 16.0);
        let sum: f64 = logits.iter().map(|&l| f64::from((l - max).exp())).sum();
        let log_sum_exp = sum.ln() as f32;
        let min_log_prob = min - max - log_sum_exp;
        let scale = (max - min) / 65535.0;
        let q = if scale != 0.0 {
            let inv = 1.0 / scale;
            logits
                .iter()
                .map(|&l| {
                    if l > min {
                        nearest_int(inv * (l - min)) as u16
                    } else {
                        0
                    }
                })
                .collect()
        } else {
            vec![0; logits.len()]
        };
        BaseLogProbs {
            scale,
            min_log_prob,
            q,
        }
    }

    fn log_prob(&self, i: usize) -> f32 {
        self.scale * f32::from(self.q[i]) + self.min_log_prob
    }
}

/// Sums of llama-perplexity's KL-divergence mode.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KlStats {
    /// nll of the artifact.
    pub nll: NllStats,
    /// nll of the reference (from its 16-bit log-probs).
    pub nll_base: NllStats,
    /// Sum of nll * nll_base.
    pub sum_nll_nll_base: f64,
    /// Sum and sum of squares of the per-token KL divergence.
    pub sum_kld: f64,
    /// Sum of KL divergence squared.
    pub sum_kld2: f64,
    /// Positions where both argmaxes agree.
    pub same_top: u64,
    /// Every per-token KL divergence (for percentiles).
    pub kld_values: Vec<f32>,
    /// Sum of p(tok) - p_base(tok), its squares and fourth powers.
    pub sum_p_diff: f64,
    /// Sum of p_diff squared.
    pub sum_p_diff2: f64,
}

impl KlStats {
    /// Adds one position computed by [`KlPosition::new`] (positions can be
    /// computed in parallel and pushed in order: the same sums as one
    /// loop).
    pub fn push(&mut self, p: &KlPosition) {
        self.nll.add(f64::from(p.nll));
        self.nll_base.add(f64::from(p.nll_base));
        self.sum_nll_nll_base += f64::from(p.nll) * f64::from(p.nll_base);
        self.sum_kld += p.kld;
        self.sum_kld2 += p.kld * p.kld;
        self.kld_values.push(p.kld as f32);
        if p.same_top {
            self.same_top += 1;
        }
        self.sum_p_diff += p.p_diff;
        self.sum_p_diff2 += p.p_diff * p.p_diff;
    }

    /// Positions added.
    pub fn count(&self) -> u64 {
        self.nll.count
    }

    /// Mean KL divergence and its uncertainty.
    pub fn mean_kld(&self) -> (f64, f64) {
        mean_and_uncertainty(self.sum_kld, self.sum_kld2, self.count())
    }

    /// Fraction of positions with the same top token, and its uncertainty.
    pub fn same_top(&self) -> (f64, f64) {
        let n = self.count() as f64;
        let p = self.same_top as f64 / n.max(1.0);
        (p, (p * (1.0 - p) / (n - 1.0).max(1.0)).sqrt())
    }

    /// PPL(artifact) / PPL(reference) and its uncertainty (llama.cpp's
    /// "Mean PPL(Q)/PPL(base)", with the covariance of the two).
    pub fn ppl_ratio(&self) -> (f64, f64) {
        let n = self.count();
        let (m, s) = mean_and_uncertainty(self.nll.sum, self.nll.sum2, n);
        let (mb, sb) = mean_and_uncertainty(self.nll_base.sum, self.nll_base.sum2, n);
        let cov = covariance(self.nll.sum, self.nll_base.sum, self.sum_nll_nll_base, n);
        let ratio = (m - mb).exp();
        let unc = (s * s + sb * sb - 2.0 * cov).max(0.0).sqrt();
        (ratio, ratio * unc)
    }

    /// The `fraction` percentile of the per-token KL divergence, with
    /// llama.cpp's linear interpolation.
    pub fn kld_percentile(&self, fraction: f64) -> f64 {
        let mut v = self.kld_values.clone();
        v.sort_by(f32::total_cmp);
        percentile(&v, fraction)
    }
}

/// One position's terms of [`KlStats`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KlPosition {
    nll: f32,
    nll_base: f32,
    kld: f64,
    same_top: bool,
    p_diff: f64,
}

impl KlPosition {
    /// The terms of one position: the artifact's logits, the reference's
    /// quantized log-probs, the true next token. Follows llama.cpp's
    /// `log_softmax(..., base_log_prob, tok, kld)` step by step.
    pub fn new(logits: &[f32], base: &BaseLogProbs, tok: usize) -> KlPosition {
        let mut max = logits[0];
        let mut imax = 0;
        for (i, &l) in logits.iter().enumerate().skip(1) {
            if l > max {
                max = l;
                imax = i;
            }
        }
        let sum_exp: f64 = logits.iter().map(|&l| f64::from((l - max).exp())).sum();
        let log_sum_exp = sum_exp.ln() as f32;
        let nll = max + log_sum_exp - logits[tok];
        let nll_base = -base.log_prob(tok);
        let max_l = max + log_sum_exp;
        let mut kld = 0f64;
        let mut imax_base = 0;
        let mut best = 0f32;
        for (i, &l) in logits.iter().enumerate() {
            let lp_base = base.log_prob(i);
            if i == 0 || lp_base > best {
                best = lp_base;
                imax_base = i;
            }
            if lp_base > -16.0 {
                let p_base = lp_base.exp();
                kld += f64::from(p_base * (lp_base - l + max_l));
            }
        }
        let p_diff = f64::from((-nll).exp() - (-nll_base).exp());
        KlPosition {
            nll,
            nll_base,
            kld,
            same_top: imax == imax_base,
            p_diff,
        }
    }
}

/// llama.cpp's `mean_and_uncertainty`.
pub fn mean_and_uncertainty(sum: f64, sum2: f64, count: u64) -> (f64, f64) {
    if count < 1 {
        return (0.0, 0.0);
    }
    let n = count as f64;
    let f = sum / n;
    let df = sum2 / n - f * f;
    let df = if df > 0.0 && count > 10 {
        (df / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    (f, df)
}

/// llama.cpp's `covariance` of the two means.
fn covariance(suma: f64, sumb: f64, sumab: f64, count: u64) -> f64 {
    if count < 10 {
        return 0.0;
    }
    let n = count as f64;
    let (a, b) = (suma / n, sumb / n);
    (sumab / n - a * b) / (n - 1.0)
}

/// llama.cpp's percentile of sorted values (linear interpolation).
pub fn percentile(sorted: &[f32], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    if fraction <= 0.0 {
        return f64::from(sorted[0]);
    }
    if fraction >= 1.0 {
        return f64::from(sorted[sorted.len() - 1]);
    }
    let p = fraction as f32 * (sorted.len() - 1) as f32;
    let ip = p as usize;
    let frac = p - ip as f32;
    let next = sorted[(ip + 1).min(sorted.len() - 1)];
    f64::from((1.0 - frac) * sorted[ip] + frac * next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_replace_the_first_token_with_bos() {
        let toks: Vec<u32> = (10..30).collect();
        let w = windows(&toks, 8, None, Some(1));
        assert_eq!(w.len(), 2);
        assert_eq!(w[0], vec![1, 11, 12, 13, 14, 15, 16, 17]);
        assert_eq!(w[1][0], 1);
        assert_eq!(
            windows(&toks, 8, Some(1), None),
            vec![(10..18).collect::<Vec<_>>()]
        );
    }

    #[test]
    fn nll_of_uniform_logits_is_log_vocab() {
        let l = vec![0.5f32; 100];
        assert!((nll(&l, 3) - (100f64).ln()).abs() < 1e-9);
    }

    #[test]
    fn kl_of_a_model_with_itself_is_near_zero() {
        let logits: Vec<f32> = (0..1000).map(|i| ((i * 37 % 101) as f32) * 0.1).collect();
        let base = BaseLogProbs::new(&logits);
        let mut k = KlStats::default();
        k.push(&KlPosition::new(&logits, &base, 5));
        assert!(k.sum_kld.abs() < 1e-4, "{}", k.sum_kld);
        assert_eq!(k.same_top, 1);
    }

    #[test]
    fn nearest_int_rounds_half_to_even() {
        assert_eq!(nearest_int(2.5), 2);
        assert_eq!(nearest_int(3.5), 4);
        assert_eq!(nearest_int(-1.5), -2);
    }

    #[test]
    fn percentile_interpolates() {
        let v = [0.0f32, 1.0, 2.0, 3.0];
        assert_eq!(percentile(&v, 0.5), 1.5);
        assert_eq!(percentile(&v, 1.0), 3.0);
    }
}
