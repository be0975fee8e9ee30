//! Where a model's forward pass runs: the CPU engine ([`Model`]) or, for
//! the models it covers, the GPU ([`super::gpu::GpuModel`]), chosen by
//! `--device` under the one rule of [`crate::device`]. [`Forward`] is what
//! perplexity, KL divergence, the speed test and greedy sampling need of
//! either.

use super::config::ModelConfig;
use super::error::Result;
use super::model::{KvCache, Model};
use super::source::Artifact;
use crate::device::{Device, DeviceArg, Selection, Work};

/// A forward pass with a KV cache.
pub trait Forward {
    /// The cache type.
    type Cache;
    /// The hyperparameters.
    fn config(&self) -> &ModelConfig;
    /// An empty cache for up to `capacity` positions.
    fn new_cache(&self, capacity: usize) -> Result<Self::Cache>;
    /// Forgets every position of `cache`.
    fn clear(cache: &mut Self::Cache);
    /// Runs `tokens` at the cache's next positions; returns the logits of
    /// batch positions `logits_from..` ([`Model::forward`]).
    fn forward(
        &self,
        cache: &mut Self::Cache,
        tokens: &[u32],
        logits_from: usize,
    ) -> Result<Vec<f32>>;
}

impl Forward for Model<'_> {
    type Cache = KvCache;

    fn config(&self) -> &ModelConfig {
        Model::config(self)
    }

    fn new_cache(&self, capacity: usize) -> Result<KvCache> {
        Ok(Model::new_cache(self, capacity))
    }

    fn clear(cache: &mut KvCache) {
        cache.clear();
    }

    fn forward(&self, cache: &mut KvCache, tokens: &[u32], logits_from: usize) -> Result<Vec<f32>> {
        Model::forward(self, cache, tokens, logits_from)
    }
}

/// A model on the device `--device` chose. (One per run: the variants'
/// sizes do not matter.)
#[allow(clippy::large_enum_variant)]
pub enum Runner<'a> {
    /// The CPU engine.
    Cpu(Model<'a>),
    /// The GPU decoder.
    #[cfg(feature = "gpu")]
    Gpu(super::gpu::GpuModel<'a>),
}

impl std::fmt::Debug for Runner<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Runner({})", self.device_name())
    }
}

/// The cache of a [`Runner`].
pub enum RunnerCache {
    /// In host memory.
    Cpu(KvCache),
    /// In GPU memory.
    #[cfg(feature = "gpu")]
    Gpu(super::gpu::GpuKvCache),
}

impl std::fmt::Debug for RunnerCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunnerCache::Cpu(c) => write!(f, "RunnerCache::Cpu({} positions)", c.len()),
            #[cfg(feature = "gpu")]
            RunnerCache::Gpu(c) => write!(f, "RunnerCache::Gpu({} positions)", c.len()),
        }
    }
}

/// A [`Runner`] and the one line to print about the choice, if any.
#[derive(Debug)]
pub struct RunnerSelection<'a> {
    /// The model, loaded where it runs.
    pub runner: Runner<'a>,
    /// Why it runs there, when worth saying.
    pub note: Option<String>,
}

impl<'a> Runner<'a> {
    /// Loads `artifact` where `arg` says: `cpu` on the CPU; `gpu` on the
    /// GPU, failing with the reason when the GPU engine cannot run this
    /// model or there is no adapter; `auto` on the GPU when the model is
    /// one it runs, a hardware adapter exists and the model is large
    /// enough to pay ([`crate::device`]), else on the CPU with one line
    /// saying why.
    pub fn load(artifact: &'a Artifact, arg: DeviceArg) -> anyhow::Result<RunnerSelection<'a>> {
        let cpu = |note: Option<String>| -> anyhow::Result<RunnerSelection<'a>> {
            Ok(RunnerSelection {
                runner: Runner::Cpu(Model::load(artifact)?),
                note,
            })
        };
        if arg == DeviceArg::Cpu {
            return cpu(None);
        }
        #[cfg(feature = "gpu")]
        let weight_bytes = match super::gpu::GpuModel::plan(artifact) {
            Ok(b) => b,
            Err(why) => {
                if arg == DeviceArg::Gpu {
                    return Err(crate::device::DeviceError::NoGpu(why.to_string()).into());
                }
                return cpu(Some(format!("device: CPU ({why})")));
            }
        };
        #[cfg(not(feature = "gpu"))]
        let weight_bytes = artifact.file_bytes();
        let Selection { device, note } = Device::select(arg, &[Work::Generate { weight_bytes }])?;
        #[cfg(feature = "gpu")]
        if let Some(gpu) = device.gpu() {
            if device.target(Work::Generate { weight_bytes }).is_gpu() {
                let model = super::gpu::GpuModel::load(artifact, gpu.clone())?;
                return Ok(RunnerSelection {
                    runner: Runner::Gpu(model),
                    note,
                });
            }
        }
        let _ = device;
        cpu(note)
    }

    /// `CPU`, or the GPU adapter's name.
    pub fn device_name(&self) -> String {
        match self {
            Runner::Cpu(_) => "CPU".to_string(),
            #[cfg(feature = "gpu")]
            Runner::Gpu(g) => g.device_name(),
        }
    }

    /// Storage type of the feed-forward weights.
    pub fn weight_type(&self) -> String {
        match self {
            Runner::Cpu(m) => m.weight_type(),
            #[cfg(feature = "gpu")]
            Runner::Gpu(g) => g.weight_type(),
        }
    }
}

impl Forward for Runner<'_> {
    type Cache = RunnerCache;

    fn config(&self) -> &ModelConfig {
        match self {
            Runner::Cpu(m) => m.config(),
            #[cfg(feature = "gpu")]
            Runner::Gpu(g) => g.config(),
        }
    }

    fn new_cache(&self, capacity: usize) -> Result<RunnerCache> {
        Ok(match self {
            Runner::Cpu(m) => RunnerCache::Cpu(m.new_cache(capacity)),
            #[cfg(feature = "gpu")]
            Runner::Gpu(g) => RunnerCache::Gpu(g.new_cache(capacity)?),
        })
    }

    fn clear(cache: &mut RunnerCache) {
        match cache {
            RunnerCache::Cpu(c) => c.clear(),
            #[cfg(feature = "gpu")]
            RunnerCache::Gpu(c) => c.clear(),
        }
    }

    fn forward(
        &self,
        cache: &mut RunnerCache,
        tokens: &[u32],
        logits_from: usize,
    ) -> Result<Vec<f32>> {
        match (self, cache) {
            (Runner::Cpu(m), RunnerCache::Cpu(c)) => m.forward(c, tokens, logits_from),
            #[cfg(feature = "gpu")]
            (Runner::Gpu(g), RunnerCache::Gpu(c)) => g.forward(c, tokens, logits_from),
            #[cfg(feature = "gpu")]
            _ => Err(super::EngineError::Input(
                "a cache of one device used with a model on another".into(),
            )),
        }
    }
}

/// Greedy continuation on any [`Forward`]: runs `prompt`, then appends
/// the most likely token `n` times (stopping early at a token in `stop`).
pub fn generate_greedy_with<F: Forward>(
    model: &F,
    prompt: &[u32],
    n: usize,
    stop: &[u32],
) -> Result<Vec<u32>> {
    let mut cache = model.new_cache(prompt.len() + n)?;
    let vocab = model.config().n_vocab;
    let mut logits = model.forward(&mut cache, prompt, prompt.len().saturating_sub(1))?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let next = super::argmax(&logits[logits.len() - vocab..]) as u32;
        out.push(next);
        if stop.contains(&next) {
            break;
        }
        logits = model.forward(&mut cache, &[next], 0)?;
    }
    Ok(out)
}
