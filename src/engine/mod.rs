//! A CPU inference engine for the llama family (llama, mistral, qwen2,
//! qwen3, gemma3, phi3) that runs every artifact qforge reads straight from
//! its stored bytes: GGUF, MLX affine folders, safetensors f32/f16/bf16.
//! Weights stay memory-mapped in their stored form; a matrix product
//! decodes a tile of rows at a time ([`weights`]), never the whole model.
//!
//! ```no_run
//! use qforge::engine::{Artifact, Model};
//! let artifact = Artifact::open("model.gguf")?;
//! let model = Model::load(&artifact)?;
//! let mut cache = model.new_cache(512);
//! let logits = model.forward(&mut cache, &[1, 2, 3], 2)?; // last position only
//! # Ok::<(), qforge::engine::EngineError>(())
//! ```

pub mod config;
mod error;
#[cfg(feature = "gpu")]
pub mod gpu;
mod model;
mod observe;
pub mod ops;
pub mod runner;
mod source;
pub mod weights;

pub use config::{Activation, Arch, ModelConfig, RopeStyle};
pub use error::{EngineError, Result};
pub use model::{KvCache, Model};
pub use observe::MatmulObserver;
pub use runner::{Forward, Runner, RunnerCache};
pub use source::{Artifact, Role, Tensors};

/// Index of the largest value (the first on ties), as greedy sampling and
/// llama.cpp's "same top" pick it.
pub fn argmax(logits: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best
}

/// Greedy continuation: runs `prompt`, then appends the most likely token
/// `n` times (stopping early at a token in `stop`). Returns the new tokens.
pub fn generate_greedy(model: &Model, prompt: &[u32], n: usize, stop: &[u32]) -> Result<Vec<u32>> {
    let mut cache = model.new_cache(prompt.len() + n);
    let vocab = model.config().n_vocab;
    let mut logits = model.forward(&mut cache, prompt, prompt.len().saturating_sub(1))?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let next = argmax(&logits[logits.len() - vocab..]) as u32;
        out.push(next);
        if stop.contains(&next) {
            break;
        }
        logits = model.forward(&mut cache, &[next], 0)?;
    }
    Ok(out)
}
