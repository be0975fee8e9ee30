//! Pass/fail thresholds on a verify report, from the command line or a
//! manifest.

use serde::{Deserialize, Serialize};

use super::VerifyReport;

/// Thresholds; an unset one is not checked.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gates {
    /// Highest perplexity allowed.
    pub max_ppl: Option<f64>,
    /// Highest PPL(artifact) / PPL(reference) allowed (needs a reference).
    pub max_ppl_ratio: Option<f64>,
    /// Highest mean KL divergence allowed (needs a reference).
    pub max_kld: Option<f64>,
    /// Lowest top-1 agreement with the reference allowed, as a fraction
    /// (0.9 = 90%) (needs a reference).
    pub min_top1: Option<f64>,
    /// Lowest prompt-processing speed allowed, tokens/s.
    pub min_prompt_tok_s: Option<f64>,
    /// Lowest generation speed allowed, tokens/s.
    pub min_gen_tok_s: Option<f64>,
}

/// One gate's outcome.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GateResult {
    /// The gate's name as written in manifests (`max_kld`).
    pub gate: &'static str,
    /// The threshold.
    pub limit: f64,
    /// The measured value; `None` when the run did not measure it (which
    /// fails the gate: a gate never passes on a missing number).
    pub value: Option<f64>,
    /// Whether it holds.
    pub pass: bool,
}

impl Gates {
    /// True when no gate is set.
    pub fn is_empty(&self) -> bool {
        *self == Gates::default()
    }

    /// Whether the run needs a reference model to check these gates.
    pub fn need_reference(&self) -> bool {
        self.max_ppl_ratio.is_some() || self.max_kld.is_some() || self.min_top1.is_some()
    }

    /// Whether the run needs the throughput measurement.
    pub fn need_speed(&self) -> bool {
        self.min_prompt_tok_s.is_some() || self.min_gen_tok_s.is_some()
    }

    /// Checks every set gate against `report`.
    pub fn check(&self, report: &VerifyReport) -> Vec<GateResult> {
        let ppl = report.perplexity.as_ref().map(|p| p.ppl);
        let kl = report.kl.as_ref();
        let speed = report.speed.as_ref();
        let max = |gate, limit: Option<f64>, value: Option<f64>| {
            limit.map(|limit| GateResult {
                gate,
                limit,
                value,
                pass: value.is_some_and(|v| v <= limit),
            })
        };
        let min = |gate, limit: Option<f64>, value: Option<f64>| {
            limit.map(|limit| GateResult {
                gate,
                limit,
                value,
                pass: value.is_some_and(|v| v >= limit),
            })
        };
        [
            max("max_ppl", self.max_ppl, ppl),
            max("max_ppl_ratio", self.max_ppl_ratio, kl.map(|k| k.ppl_ratio)),
            max("max_kld", self.max_kld, kl.map(|k| k.mean_kld)),
            min("min_top1", self.min_top1, kl.map(|k| k.same_top)),
            min(
                "min_prompt_tok_s",
                self.min_prompt_tok_s,
                speed.map(|s| s.prompt_tok_s),
            ),
            min(
                "min_gen_tok_s",
                self.min_gen_tok_s,
                speed.map(|s| s.gen_tok_s),
            ),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}
