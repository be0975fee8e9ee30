//! Column importance without a text: one short forward pass of the model
//! over synthetic tokens, with the importance-matrix collector watching
//! every matrix product.
//!
//! Squared-error searches need to know which input columns of a matrix
//! carry large activations: an error there moves the output most. Which
//! columns those are is largely a property of the model, not of the text:
//! LLMs route a few hidden dimensions to values hundreds of times the
//! typical one (the "massive activations" of Sun et al., 2024) whatever
//! the input, and the MLP neurons that produce them fire on almost any
//! token. A few hundred pseudo-random token ids find them; an importance
//! matrix from real text (`qforge imatrix`) measures them better still.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};

use super::imatrix::{ColumnStats, ImatrixCollector, ImatrixProvenance, ImportanceMatrix};
use crate::engine::{Artifact, Model};
use crate::tokenizer::Tokenizer;
use crate::verify::text::{bos_added, tokenizer_for};

/// Tokens of the default calibration pass.
pub const DEFAULT_TOKENS: usize = 64;

/// The fewest tokens a pass can have (the collector, like llama-imatrix,
/// ignores batches of fewer than 16).
pub const MIN_TOKENS: usize = 16;

/// The calibration tokens: BOS first when the tokenizer adds one, then
/// ids from a fixed xorshift stream over the tokenizer's vocabulary (the
/// model's when there is no tokenizer). The same on every run.
pub fn synthetic_tokens(n: usize, vocab: usize, bos: Option<u32>) -> Vec<u32> {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut ids = Vec::with_capacity(n);
    if let Some(b) = bos {
        ids.push(b);
    }
    while ids.len() < n {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        ids.push((state % vocab.max(1) as u64) as u32);
    }
    ids
}

/// The importance matrix of one forward pass of `model` over `tokens`
/// synthetic tokens (at least [`MIN_TOKENS`]), named as GGUF names
/// tensors. The output matrix is included (for a model with tied
/// embeddings it is the token embedding; see
/// [`crate::convert::MlxPlan::attach_importance`]).
///
/// The ids depend on the tokenizer's vocabulary size and BOS only, and a
/// Hugging Face tokenizer.json takes long to load (a tenth of a second
/// for SmolLM2's, on one core, against about two for the pass on two):
/// while it loads, the pass runs on the ids of the likely answer (the
/// model's vocabulary, no BOS), kept when the tokenizer gives the same
/// ids and run again on the right ones otherwise. Either way the result
/// is that of the right ids.
pub fn synthetic_importance(model: &Path, tokens: usize) -> Result<ImportanceMatrix> {
    let tokens = tokens.max(MIN_TOKENS);
    let artifact = Artifact::open(model).with_context(|| format!("opening {}", model.display()))?;
    let mut m = Model::load(&artifact).with_context(|| format!("loading {}", model.display()))?;
    let n_vocab = m.config().n_vocab;
    let ids_of = |tokenizer: Option<&Tokenizer>| {
        let vocab = tokenizer.map_or(n_vocab, |t| t.vocab_size()).min(n_vocab);
        synthetic_tokens(tokens, vocab, tokenizer.and_then(bos_added))
    };
    let (ids, stats) = if matches!(artifact, Artifact::Gguf(_)) {
        // A GGUF vocabulary is built from the metadata at once.
        let ids = ids_of(tokenizer_for(&artifact).ok().flatten().as_ref());
        let stats = pass(&mut m, &ids)?;
        (ids, stats)
    } else {
        let guess = ids_of(None);
        let (tokenizer, guessed) = std::thread::scope(|s| {
            let loading = s.spawn(|| tokenizer_for(&artifact).ok().flatten());
            let guessed = pass(&mut m, &guess);
            (loading.join(), guessed)
        });
        let tokenizer = tokenizer.map_err(|_| anyhow::anyhow!("loading the tokenizer panicked"))?;
        let ids = ids_of(tokenizer.as_ref());
        let stats = if ids == guess {
            guessed?
        } else {
            pass(&mut m, &ids)?
        };
        (ids, stats)
    };
    Ok(ImportanceMatrix::from_stats(
        &stats,
        &ImatrixProvenance {
            datasets: vec![format!("{} synthetic tokens", ids.len())],
            chunk_count: 1,
            chunk_size: ids.len() as u32,
        },
    ))
}

/// One forward pass over `ids` with a fresh collector: its statistics.
fn pass(m: &mut Model, ids: &[u32]) -> Result<BTreeMap<String, ColumnStats>> {
    let collector = Arc::new(ImatrixCollector::new(true));
    m.set_observer(Some(collector.clone()));
    let mut cache = m.new_cache(ids.len());
    let done = m.forward(&mut cache, ids, 0);
    m.set_observer(None);
    done.context("running the calibration pass")?;
    Ok(Arc::try_unwrap(collector)
        .map_err(|_| anyhow::anyhow!("the collector is still shared"))?
        .into_stats())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_fixed_and_in_range() {
        let a = synthetic_tokens(300, 1000, Some(7));
        assert_eq!(a.len(), 300);
        assert_eq!(a[0], 7);
        assert!(a.iter().all(|&t| t < 1000));
        assert_eq!(a, synthetic_tokens(300, 1000, Some(7)));
        let distinct: std::collections::BTreeSet<_> = a.iter().collect();
        assert!(distinct.len() > 250, "{}", distinct.len());
        assert_eq!(synthetic_tokens(20, 50, None).len(), 20);
    }
}
