//! The forward pass on the GPU: a GGUF model of the llama family (llama,
//! mistral, qwen2 with its q/k/v biases; SmolLM2 is llama) handed to
//! quant-kernels' GPU decoder ([`quant_kernels::gpu::decoder`]), which keeps
//! the weights and the KV cache in GPU memory and runs whole token steps
//! there, reading back only the logits.
//!
//! [`GpuModel::plan`] says whether a model can run here, and why not
//! (another architecture, another format, a weight type without a GPU
//! product): `--device auto` then stays on the CPU and prints that reason,
//! `--device gpu` fails with it. The results are within a tolerance of the
//! CPU engine ([`quant_kernels::gpu::decoder`] explains where they differ);
//! tests/engine_gpu.rs states and checks it.

use std::sync::Arc;

use quant_kernels::gpu::decoder::{
    Decoder, DecoderCache, DecoderSpec, GatedActivation, LayerSpec, RopeSpec, WeightRef,
    DECODER_TYPES,
};
use quant_kernels::gpu::{Gpu, GpuError};

use super::config::{Activation, Arch, ModelConfig, Rope, RopeStyle};
use super::error::{EngineError, Result};
use super::source::{Artifact, Role};
use super::weights::{GgmlWeight, Weight};
use crate::formats::gguf::GgufModel;

/// A model whose token steps run on the GPU.
pub struct GpuModel<'a> {
    config: ModelConfig,
    decoder: Decoder,
    token_embd: GgmlWeight<'a>,
    weight_type: String,
}

impl std::fmt::Debug for GpuModel<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuModel")
            .field("arch", &self.config.arch)
            .field("weight_type", &self.weight_type)
            .field("decoder", &self.decoder)
            .finish_non_exhaustive()
    }
}

/// A KV cache in GPU memory.
#[derive(Debug)]
pub struct GpuKvCache(DecoderCache);

impl GpuKvCache {
    /// Positions stored.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Forgets every position.
    pub fn clear(&mut self) {
        self.0.clear();
    }
}

fn gpu_err(e: GpuError) -> EngineError {
    match e {
        GpuError::Kernel(k) => EngineError::Unsupported(format!("on the GPU: {k}")),
        e => EngineError::Device(e.to_string()),
    }
}

/// The frequencies of `rope` over `n_rot` dimensions, as the CPU's
/// `ops::RopeTable::new` computes them (same f64 operations, same order).
fn rope_spec(rope: &Rope, n_rot: usize) -> RopeSpec {
    let inv_freq = (0..n_rot / 2)
        .map(|i| {
            let f = 1.0 / rope.base.powf((2 * i) as f64 / n_rot as f64);
            match rope.freq_factors.get(i) {
                Some(&d) => f / f64::from(d),
                None => f,
            }
        })
        .collect();
    RopeSpec {
        inv_freq,
        position_scale: rope.position_scale,
    }
}

/// What the GPU decoder is handed, before any upload.
struct Plan<'a> {
    config: ModelConfig,
    spec: DecoderSpec<'a>,
    token_embd: GgmlWeight<'a>,
}

fn unsupported(msg: String) -> EngineError {
    EngineError::Unsupported(msg)
}

fn plan(artifact: &Artifact) -> Result<Plan<'_>> {
    let Artifact::Gguf(m) = artifact else {
        return Err(unsupported(format!(
            "the GPU engine runs GGUF files; this {} artifact runs on the CPU",
            artifact.format().name()
        )));
    };
    let c = artifact.config()?;
    if !matches!(c.arch, Arch::Llama | Arch::Mistral | Arch::Qwen2) {
        return Err(unsupported(format!(
            "the GPU engine covers llama, mistral and qwen2, not {}",
            c.arch.gguf_name()
        )));
    }
    if c.embed_scale.is_some() || c.final_softcap.is_some() || c.norm_adds_one {
        return Err(unsupported(
            "the GPU engine does not scale embeddings, soft-cap logits or add one to norms".into(),
        ));
    }
    let t = artifact.tensors(c.arch)?;
    let (d, hd) = (c.n_embd, c.head_dim);
    let (q_dim, kv_dim) = (c.n_head * hd, c.n_head_kv * hd);
    let need =
        |role: Role, il: usize, rows: usize, cols: usize| require_weight(m, role, il, rows, cols);
    let token_embd = embedding(m, c.n_vocab, d)?;
    let output = match weight_ref(m, Role::Output, 0, c.n_vocab, d)? {
        Some(w) => w,
        None => need(Role::TokenEmbd, 0, c.n_vocab, d)?,
    };
    let mut ropes: Vec<Rope> = Vec::new();
    let mut layers = Vec::with_capacity(c.n_layer());
    for (il, lc) in c.layers.iter().enumerate() {
        let rope = match ropes.iter().position(|r| *r == lc.rope) {
            Some(i) => i,
            None => {
                ropes.push(lc.rope.clone());
                ropes.len() - 1
            }
        };
        let bias = |role: Role, n: usize| -> Result<Option<Vec<f32>>> {
            match t.vector(role, il, "bias")? {
                Some(b) if b.len() != n => Err(EngineError::BadTensor {
                    name: role.gguf_name(il, "bias"),
                    why: format!("{} values, expected {n}", b.len()),
                }),
                b => Ok(b),
            }
        };
        layers.push(LayerSpec {
            attn_norm: t.require_vector(Role::AttnNorm, il, d)?,
            q: need(Role::Q, il, q_dim, d)?,
            k: need(Role::K, il, kv_dim, d)?,
            v: need(Role::V, il, kv_dim, d)?,
            q_bias: bias(Role::Q, q_dim)?,
            k_bias: bias(Role::K, kv_dim)?,
            v_bias: bias(Role::V, kv_dim)?,
            o: need(Role::O, il, d, q_dim)?,
            ffn_norm: t.require_vector(Role::FfnNorm, il, d)?,
            gate: need(Role::Gate, il, c.n_ff, d)?,
            up: need(Role::Up, il, c.n_ff, d)?,
            down: need(Role::Down, il, d, c.n_ff)?,
            sliding_window: lc.sliding_window,
            rope,
        });
    }
    if hd > 256 || !hd.is_multiple_of(2) || !c.n_rot.is_multiple_of(2) || c.n_rot > hd {
        return Err(unsupported(format!(
            "heads of {hd} dimensions ({} rotated): the GPU engine takes at most 256, even",
            c.n_rot
        )));
    }
    let spec = DecoderSpec {
        n_embd: d,
        n_ff: c.n_ff,
        n_head: c.n_head,
        n_head_kv: c.n_head_kv,
        head_dim: hd,
        n_rot: c.n_rot,
        n_vocab: c.n_vocab,
        norm_eps: c.norm_eps,
        attn_scale: c.attn_scale,
        attn_softcap: c.attn_softcap,
        rope_neox: c.rope_style == RopeStyle::Neox,
        activation: match c.activation {
            Activation::Silu => GatedActivation::Silu,
            Activation::GeluTanh => GatedActivation::GeluTanh,
        },
        // The reference of a GGUF file is llama.cpp with its default f16
        // KV cache, as on the CPU (`Model::load`).
        kv_f16: true,
        ropes: ropes.iter().map(|r| rope_spec(r, c.n_rot)).collect(),
        layers,
        output_norm: t.require_vector(Role::OutputNorm, 0, d)?,
        output,
    };
    Ok(Plan {
        config: c,
        spec,
        token_embd,
    })
}

/// A matrix of `rows x cols` the GPU multiplies, or `None` when absent.
fn weight_ref(
    m: &GgufModel,
    role: Role,
    il: usize,
    rows: usize,
    cols: usize,
) -> Result<Option<WeightRef<'_>>> {
    let name = role.gguf_name(il, "weight");
    let Some((info, data)) = m.tensor(&name) else {
        return Ok(None);
    };
    if info.dims.len() != 2 || info.dims[0] as usize != cols || info.dims[1] as usize != rows {
        return Err(EngineError::BadTensor {
            name,
            why: format!("dims {:?}, expected [{cols}, {rows}]", info.dims),
        });
    }
    if !DECODER_TYPES.contains(&info.ggml_type) {
        return Err(unsupported(format!(
            "tensor '{name}' is {}; the GPU engine multiplies Q8_0, Q4_0, Q4_1, Q4_K and Q6_K",
            info.ggml_type
        )));
    }
    Ok(Some(WeightRef {
        name: &info.name,
        ty: info.ggml_type,
        data,
        rows,
        cols,
    }))
}

fn require_weight(
    m: &GgufModel,
    role: Role,
    il: usize,
    rows: usize,
    cols: usize,
) -> Result<WeightRef<'_>> {
    weight_ref(m, role, il, rows, cols)?
        .ok_or_else(|| EngineError::MissingTensor(role.gguf_name(il, "weight")))
}

/// The token embedding, decoded a row at a time on the host.
fn embedding(m: &GgufModel, n_vocab: usize, d: usize) -> Result<GgmlWeight<'_>> {
    let name = Role::TokenEmbd.gguf_name(0, "weight");
    let (info, data) = m
        .tensor(&name)
        .ok_or_else(|| EngineError::MissingTensor(name.clone()))?;
    if info.dims.len() != 2 || info.dims[0] as usize != d || info.dims[1] as usize != n_vocab {
        return Err(EngineError::BadTensor {
            name,
            why: format!("dims {:?}, expected [{d}, {n_vocab}]", info.dims),
        });
    }
    GgmlWeight::new(&name, data, info.ggml_type, n_vocab, d)
}

impl<'a> GpuModel<'a> {
    /// Whether `artifact` can run on the GPU: the bytes of weight matrices
    /// it would upload, or why it cannot (a sentence).
    pub fn plan(artifact: &Artifact) -> Result<u64> {
        let p = plan(artifact)?;
        let s = &p.spec;
        let mut bytes = s.output.data.len() as u64;
        for l in &s.layers {
            for w in [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down] {
                bytes += w.data.len() as u64;
            }
        }
        Ok(bytes)
    }

    /// Uploads `artifact`'s weights to `gpu`.
    pub fn load(artifact: &'a Artifact, gpu: Arc<Gpu>) -> Result<GpuModel<'a>> {
        let p = plan(artifact)?;
        let weight_type = p
            .spec
            .layers
            .first()
            .map_or_else(|| p.token_embd.type_name(), |l| l.gate.ty.to_string());
        let decoder = Decoder::new(gpu, &p.spec).map_err(gpu_err)?;
        Ok(GpuModel {
            config: p.config,
            decoder,
            token_embd: p.token_embd,
            weight_type,
        })
    }

    /// The hyperparameters.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Storage type of the feed-forward weights (`Q4_0`).
    pub fn weight_type(&self) -> String {
        self.weight_type.clone()
    }

    /// The adapter, for reports.
    pub fn device_name(&self) -> String {
        self.decoder.gpu().adapter().to_string()
    }

    /// An empty cache for up to `capacity` positions.
    pub fn new_cache(&self, capacity: usize) -> Result<GpuKvCache> {
        Ok(GpuKvCache(
            self.decoder.new_cache(capacity).map_err(gpu_err)?,
        ))
    }

    /// Runs `tokens` at the cache's next positions, as
    /// [`super::Model::forward`] does: returns the logits of positions
    /// `logits_from..`.
    pub fn forward(
        &self,
        cache: &mut GpuKvCache,
        tokens: &[u32],
        logits_from: usize,
    ) -> Result<Vec<f32>> {
        let c = &self.config;
        if cache.0.len() + tokens.len() > cache.0.capacity() {
            return Err(EngineError::Input(format!(
                "{} positions do not fit a cache of {}",
                cache.0.len() + tokens.len(),
                cache.0.capacity()
            )));
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= c.n_vocab) {
            return Err(EngineError::Input(format!(
                "token id {bad} is outside the vocabulary of {}",
                c.n_vocab
            )));
        }
        let d = c.n_embd;
        let mut x = vec![0f32; tokens.len() * d];
        for (row, &tok) in x.chunks_exact_mut(d).zip(tokens) {
            self.token_embd.row_to_f32(tok as usize, row);
        }
        self.decoder
            .forward(&mut cache.0, &x, logits_from)
            .map_err(gpu_err)
    }
}
