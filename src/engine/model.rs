//! The forward pass: one decoder stack for the six architectures, with
//! their differences as data (optional norms, biases, fused projections).

use std::sync::Arc;

use quant_kernels::vector;
use rayon::prelude::*;

use super::config::{Arch, ModelConfig};
use super::error::{EngineError, Result};
use super::observe::MatmulObserver;
use super::ops::{self, RopeTable};
use super::source::{Artifact, Role, Tensors};
use super::weights::{matmul, matmul_group, Product, Weight};

/// Attention input projections: separate or fused (phi3).
enum QkvProj<'a> {
    Separate {
        q: Box<dyn Weight + 'a>,
        k: Box<dyn Weight + 'a>,
        v: Box<dyn Weight + 'a>,
    },
    Fused(Box<dyn Weight + 'a>),
}

/// Feed-forward input projections: separate or fused (phi3).
enum GateUpProj<'a> {
    Separate {
        gate: Box<dyn Weight + 'a>,
        up: Box<dyn Weight + 'a>,
    },
    Fused(Box<dyn Weight + 'a>),
}

struct Layer<'a> {
    attn_norm: Vec<f32>,
    qkv: QkvProj<'a>,
    q_bias: Option<Vec<f32>>,
    k_bias: Option<Vec<f32>>,
    v_bias: Option<Vec<f32>>,
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    o: Box<dyn Weight + 'a>,
    attn_post_norm: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    gate_up: GateUpProj<'a>,
    down: Box<dyn Weight + 'a>,
    ffn_post_norm: Option<Vec<f32>>,
    rope: RopeTable,
}

/// A model ready to run, borrowing its weights from an [`Artifact`].
pub struct Model<'a> {
    config: ModelConfig,
    token_embd: Box<dyn Weight + 'a>,
    output: Option<Box<dyn Weight + 'a>>,
    output_norm: Vec<f32>,
    layers: Vec<Layer<'a>>,
    kv_f16: bool,
    observer: Option<Arc<dyn MatmulObserver>>,
}

/// Keys and values of every layer for the positions seen so far.
pub struct KvCache {
    capacity: usize,
    len: usize,
    kv_dim: usize,
    /// Keys per layer, transposed: row `kv_head * head_dim + dim` holds
    /// that component for positions `0..capacity`, so the scores of a
    /// block of queries are one matrix product without reductions.
    kt: Vec<Vec<f32>>,
    /// Values per layer: `kv_dim` values per position.
    v: Vec<Vec<f32>>,
}

impl KvCache {
    /// Positions stored.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Most positions it can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets every position (keeps the memory).
    pub fn clear(&mut self) {
        self.len = 0;
    }
}

fn norm_weight(cfg: &ModelConfig, mut w: Vec<f32>) -> Vec<f32> {
    if cfg.norm_adds_one {
        for v in &mut w {
            *v += 1.0;
        }
    }
    w
}

impl<'a> Model<'a> {
    /// Builds the model over `artifact`'s stored weights (norm vectors are
    /// decoded to f32; matrices stay in their stored form).
    pub fn load(artifact: &'a Artifact) -> Result<Model<'a>> {
        let config = artifact.config()?;
        let t = artifact.tensors(config.arch)?;
        let mut model = Self::from_tensors(config, &t)?;
        model.kv_f16 = matches!(artifact, Artifact::Gguf(_));
        Ok(model)
    }

    /// Rounds keys, values, queries and attention weights to f16 as
    /// llama.cpp does with its default f16 KV cache (`-ctk f16 -ctv f16`:
    /// q·k in f16 x f16 products, softmax weights rounded to f16 before the
    /// product with V). On by default for GGUF artifacts, whose reference
    /// is llama.cpp; off for safetensors/MLX, whose references compute in
    /// f32.
    pub fn set_kv_f16(&mut self, on: bool) {
        self.kv_f16 = on;
    }

    fn from_tensors(config: ModelConfig, t: &Tensors<'a>) -> Result<Model<'a>> {
        let c = &config;
        let (d, hd) = (c.n_embd, c.head_dim);
        let q_dim = c.n_head * hd;
        let kv_dim = c.n_head_kv * hd;
        let token_embd = t.require_matrix(Role::TokenEmbd, 0, c.n_vocab, d)?;
        let output = t.matrix(Role::Output, 0, c.n_vocab, d)?;
        let output_norm = norm_weight(c, t.require_vector(Role::OutputNorm, 0, d)?);
        let mut layers = Vec::with_capacity(c.n_layer());
        for (il, lc) in c.layers.iter().enumerate() {
            let qkv = if t.has(Role::Qkv, il) {
                QkvProj::Fused(t.require_matrix(Role::Qkv, il, q_dim + 2 * kv_dim, d)?)
            } else {
                QkvProj::Separate {
                    q: t.require_matrix(Role::Q, il, q_dim, d)?,
                    k: t.require_matrix(Role::K, il, kv_dim, d)?,
                    v: t.require_matrix(Role::V, il, kv_dim, d)?,
                }
            };
            let gate_up = if c.arch == Arch::Phi3 {
                GateUpProj::Fused(t.require_matrix(Role::GateUp, il, 2 * c.n_ff, d)?)
            } else {
                GateUpProj::Separate {
                    gate: t.require_matrix(Role::Gate, il, c.n_ff, d)?,
                    up: t.require_matrix(Role::Up, il, c.n_ff, d)?,
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
            let opt_norm = |role: Role, n: usize| -> Result<Option<Vec<f32>>> {
                if t.has(role, il) {
                    Ok(Some(norm_weight(c, t.require_vector(role, il, n)?)))
                } else {
                    Ok(None)
                }
            };
            let needs_qk_norm = matches!(c.arch, Arch::Qwen3 | Arch::Gemma3);
            let q_norm = opt_norm(Role::QNorm, hd)?;
            let k_norm = opt_norm(Role::KNorm, hd)?;
            if needs_qk_norm && (q_norm.is_none() || k_norm.is_none()) {
                return Err(EngineError::MissingTensor(
                    Role::QNorm.gguf_name(il, "weight"),
                ));
            }
            let (attn_post_norm, ffn_post_norm) = if c.arch == Arch::Gemma3 {
                (
                    Some(norm_weight(c, t.require_vector(Role::AttnPostNorm, il, d)?)),
                    Some(norm_weight(c, t.require_vector(Role::FfnPostNorm, il, d)?)),
                )
            } else {
                (None, None)
            };
            layers.push(Layer {
                attn_norm: norm_weight(c, t.require_vector(Role::AttnNorm, il, d)?),
                qkv,
                q_bias: bias(Role::Q, q_dim)?,
                k_bias: bias(Role::K, kv_dim)?,
                v_bias: bias(Role::V, kv_dim)?,
                q_norm,
                k_norm,
                o: t.require_matrix(Role::O, il, d, q_dim)?,
                attn_post_norm,
                ffn_norm: norm_weight(c, t.require_vector(Role::FfnNorm, il, d)?),
                gate_up,
                down: t.require_matrix(Role::Down, il, d, c.n_ff)?,
                ffn_post_norm,
                rope: RopeTable::new(&lc.rope, c.n_rot),
            });
        }
        Ok(Model {
            config,
            token_embd,
            output,
            output_norm,
            layers,
            kv_f16: false,
            observer: None,
        })
    }

    /// Installs (or removes) an observer of every matrix product's input.
    pub fn set_observer(&mut self, observer: Option<Arc<dyn MatmulObserver>>) {
        self.observer = observer;
    }

    #[inline]
    fn observe(&self, layer: usize, role: Role, rows: usize, input: &[f32]) {
        if let Some(o) = &self.observer {
            o.observe(layer, role, rows, input);
        }
    }

    /// The hyperparameters.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Storage type of the biggest matrices, for reports (`Q4_K`, `F16`).
    pub fn weight_type(&self) -> String {
        match &self.layers.first().map(|l| &l.gate_up) {
            Some(GateUpProj::Separate { gate, .. }) => gate.type_name(),
            Some(GateUpProj::Fused(w)) => w.type_name(),
            None => self.token_embd.type_name(),
        }
    }

    /// An empty cache for up to `capacity` positions.
    pub fn new_cache(&self, capacity: usize) -> KvCache {
        let kv_dim = self.config.n_head_kv * self.config.head_dim;
        let n = self.config.n_layer();
        KvCache {
            capacity,
            len: 0,
            kv_dim,
            kt: (0..n).map(|_| vec![0f32; capacity * kv_dim]).collect(),
            v: (0..n)
                .map(|_| Vec::with_capacity(capacity * kv_dim))
                .collect(),
        }
    }

    /// Runs `tokens` at the cache's next positions and appends them to the
    /// cache. Returns the logits of batch positions `logits_from..` (each
    /// `n_vocab` values), so a caller that needs only the last position
    /// passes `tokens.len() - 1`.
    pub fn forward(
        &self,
        cache: &mut KvCache,
        tokens: &[u32],
        logits_from: usize,
    ) -> Result<Vec<f32>> {
        let c = &self.config;
        let n = tokens.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        if cache.len + n > cache.capacity {
            return Err(EngineError::Input(format!(
                "{} positions do not fit a cache of {}",
                cache.len + n,
                cache.capacity
            )));
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= c.n_vocab) {
            return Err(EngineError::Input(format!(
                "token id {bad} is outside the vocabulary of {}",
                c.n_vocab
            )));
        }
        let d = c.n_embd;
        let mut x = vec![0f32; n * d];
        for (row, &tok) in x.chunks_exact_mut(d).zip(tokens) {
            self.token_embd.row_to_f32(tok as usize, row);
            if let Some(s) = c.embed_scale {
                row.iter_mut().for_each(|v| *v *= s);
            }
        }
        let pos0 = cache.len;
        let mut buffers = LayerBuffers::default();
        for (il, layer) in self.layers.iter().enumerate() {
            self.layer_forward(il, layer, cache, &mut x, pos0, &mut buffers)?;
        }
        cache.len += n;

        let logits_from = logits_from.min(n);
        let mut h = x[logits_from * d..].to_vec();
        ops::rms_norm(&mut h, &self.output_norm, c.norm_eps);
        let out_w: &dyn Weight = self.output.as_deref().unwrap_or(&*self.token_embd);
        let mut logits = vec![0f32; (n - logits_from) * c.n_vocab];
        self.observe(0, Role::Output, n - logits_from, &h);
        matmul(out_w, &h, &mut logits)?;
        if let Some(cap) = c.final_softcap {
            ops::softcap(&mut logits, cap);
        }
        Ok(logits)
    }

    fn layer_forward(
        &self,
        il: usize,
        l: &Layer,
        cache: &mut KvCache,
        x: &mut [f32],
        pos0: usize,
        b: &mut LayerBuffers,
    ) -> Result<()> {
        let c = &self.config;
        let (d, hd) = (c.n_embd, c.head_dim);
        let n = x.len() / d;
        let q_dim = c.n_head * hd;
        let kv_dim = c.n_head_kv * hd;
        b.resize(c, n);
        let LayerBuffers {
            h,
            q,
            k,
            v,
            fused,
            attn,
            o,
            gate,
            up,
        } = b;

        h.copy_from_slice(x);
        ops::rms_norm(h, &l.attn_norm, c.norm_eps);
        match &l.qkv {
            QkvProj::Separate {
                q: wq,
                k: wk,
                v: wv,
            } => {
                self.observe(il, Role::Q, n, h);
                self.observe(il, Role::K, n, h);
                self.observe(il, Role::V, n, h);
                matmul_group(
                    h,
                    d,
                    &mut [
                        Product { w: &**wq, out: q },
                        Product { w: &**wk, out: k },
                        Product { w: &**wv, out: v },
                    ],
                )?
            }
            QkvProj::Fused(w) => {
                let all = q_dim + 2 * kv_dim;
                fused.resize(n * all, 0.0);
                self.observe(il, Role::Qkv, n, h);
                matmul(&**w, h, fused)?;
                for t in 0..n {
                    let r = &fused[t * all..(t + 1) * all];
                    q[t * q_dim..(t + 1) * q_dim].copy_from_slice(&r[..q_dim]);
                    k[t * kv_dim..(t + 1) * kv_dim].copy_from_slice(&r[q_dim..q_dim + kv_dim]);
                    v[t * kv_dim..(t + 1) * kv_dim].copy_from_slice(&r[q_dim + kv_dim..]);
                }
            }
        }
        for (buf, bias) in [
            (&mut *q, &l.q_bias),
            (&mut *k, &l.k_bias),
            (&mut *v, &l.v_bias),
        ] {
            if let Some(b) = bias {
                for row in buf.chunks_exact_mut(b.len()) {
                    row.iter_mut().zip(b).for_each(|(a, b)| *a += b);
                }
            }
        }
        if let Some(w) = &l.q_norm {
            ops::rms_norm(q, w, c.norm_eps);
        }
        if let Some(w) = &l.k_norm {
            ops::rms_norm(k, w, c.norm_eps);
        }
        let rope = |(t, (qt, kt)): (usize, (&mut [f32], &mut [f32]))| {
            l.rope.apply_all(&mut [qt, kt], hd, pos0 + t, c.rope_style);
        };
        if n > 1 {
            q.par_chunks_exact_mut(q_dim)
                .zip(k.par_chunks_exact_mut(kv_dim))
                .enumerate()
                .with_min_len(8)
                .for_each(rope);
        } else {
            q.chunks_exact_mut(q_dim)
                .zip(k.chunks_exact_mut(kv_dim))
                .enumerate()
                .for_each(rope);
        }
        if self.kv_f16 {
            ops::round_f16(k);
            ops::round_f16(v);
            ops::round_f16(q);
        }
        let cap = cache.capacity;
        let kt = &mut cache.kt[il];
        for (t, kr) in k.chunks_exact(kv_dim).enumerate() {
            for (row, &val) in kr.iter().enumerate() {
                kt[row * cap + pos0 + t] = val;
            }
        }
        let vc = &mut cache.v[il];
        vc.truncate(pos0 * kv_dim);
        vc.extend_from_slice(v);
        debug_assert_eq!(cache.kv_dim, kv_dim);

        self.attention(&c.layers[il].sliding_window, q, kt, cap, vc, pos0, attn);

        self.observe(il, Role::O, n, attn);
        matmul(&*l.o, attn, o)?;
        if let Some(w) = &l.attn_post_norm {
            ops::rms_norm(o, w, c.norm_eps);
        }
        x.iter_mut().zip(o.iter()).for_each(|(a, b)| *a += b);

        h.copy_from_slice(x);
        ops::rms_norm(h, &l.ffn_norm, c.norm_eps);
        let f = c.n_ff;
        match &l.gate_up {
            GateUpProj::Separate { gate: wg, up: wu } => {
                self.observe(il, Role::Gate, n, h);
                self.observe(il, Role::Up, n, h);
                matmul_group(
                    h,
                    d,
                    &mut [
                        Product {
                            w: &**wg,
                            out: gate,
                        },
                        Product { w: &**wu, out: up },
                    ],
                )?
            }
            GateUpProj::Fused(w) => {
                fused.resize(n * 2 * f, 0.0);
                self.observe(il, Role::GateUp, n, h);
                matmul(&**w, h, fused)?;
                for t in 0..n {
                    let r = &fused[t * 2 * f..(t + 1) * 2 * f];
                    gate[t * f..(t + 1) * f].copy_from_slice(&r[..f]);
                    up[t * f..(t + 1) * f].copy_from_slice(&r[f..]);
                }
            }
        }
        ops::gated_activation(c.activation, gate, up);
        let down = o;
        self.observe(il, Role::Down, n, gate);
        matmul(&*l.down, gate, down)?;
        if let Some(w) = &l.ffn_post_norm {
            ops::rms_norm(down, w, c.norm_eps);
        }
        x.iter_mut().zip(down.iter()).for_each(|(a, b)| *a += b);
        Ok(())
    }

    /// Causal (optionally sliding-window) grouped-query attention of the
    /// batch's queries over the cache: per block of [`QUERY_BLOCK`] tokens
    /// and key/value head, the scores of every query head of the group
    /// are one matrix product with the transposed keys, the outputs one
    /// product of the weights with the values (positions a query may not
    /// see get weight zero). One task per block of tokens.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        window: &Option<usize>,
        q: &[f32],
        kt: &[f32],
        cap: usize,
        vc: &[f32],
        pos0: usize,
        out: &mut [f32],
    ) {
        let c = &self.config;
        let hd = c.head_dim;
        let group = c.n_head / c.n_head_kv;
        let q_dim = c.n_head * hd;
        let kv_dim = c.n_head_kv * hd;
        let scale = c.attn_scale;
        let softcap = c.attn_softcap;
        let first = |pos: usize| match *window {
            Some(w) => (pos + 1).saturating_sub(w),
            None => 0,
        };
        let block = |sc: &mut AttnScratch, (b, out): (usize, &mut [f32])| {
            let t0 = b * QUERY_BLOCK;
            let nt = out.len() / q_dim;
            let m = nt * group;
            let (k0, k1) = (first(pos0 + t0), pos0 + t0 + nt);
            let nk = k1 - k0;
            sc.q.resize(m * hd, 0.0);
            sc.s.resize(m * nk, 0.0);
            sc.o.resize(m * hd, 0.0);
            for kvh in 0..c.n_head_kv {
                // Rows (token, head of the group), token-major.
                for t in 0..nt {
                    for g in 0..group {
                        let h = kvh * group + g;
                        let src = &q[(t0 + t) * q_dim + h * hd..][..hd];
                        sc.q[(t * group + g) * hd..][..hd].copy_from_slice(src);
                    }
                }
                let keys = &kt[kvh * hd * cap + k0..];
                vector::matmul(&sc.q, hd, keys, cap, m, hd, nk, &mut sc.s, nk);
                for (row, s) in sc.s.chunks_exact_mut(nk).enumerate() {
                    let pos = pos0 + t0 + row / group;
                    let seen = first(pos) - k0..pos + 1 - k0;
                    s[seen.clone()].iter_mut().for_each(|v| *v *= scale);
                    if let Some(cap) = softcap {
                        ops::softcap(&mut s[seen.clone()], cap);
                    }
                    ops::softmax(&mut s[seen.clone()]);
                    if self.kv_f16 {
                        ops::round_f16(&mut s[seen.clone()]);
                    }
                    s[..seen.start].fill(0.0);
                    s[seen.end..].fill(0.0);
                }
                let values = &vc[k0 * kv_dim + kvh * hd..];
                vector::matmul(&sc.s, nk, values, kv_dim, m, nk, hd, &mut sc.o, hd);
                for t in 0..nt {
                    for g in 0..group {
                        let h = kvh * group + g;
                        out[t * q_dim + h * hd..][..hd]
                            .copy_from_slice(&sc.o[(t * group + g) * hd..][..hd]);
                    }
                }
            }
        };
        if out.len() <= QUERY_BLOCK * q_dim {
            // One block (generation): no parallel region.
            block(&mut AttnScratch::default(), (0, out));
        } else {
            out.par_chunks_mut(QUERY_BLOCK * q_dim)
                .enumerate()
                .for_each_init(AttnScratch::default, block);
        }
    }
}

/// Tokens per attention task.
const QUERY_BLOCK: usize = 16;

/// An attention task's buffers: its queries, scores and outputs.
#[derive(Default)]
struct AttnScratch {
    q: Vec<f32>,
    s: Vec<f32>,
    o: Vec<f32>,
}

/// The intermediate values of one layer for a batch, reused by every
/// layer of a forward pass (allocating them per layer cost page faults).
#[derive(Default)]
struct LayerBuffers {
    h: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    fused: Vec<f32>,
    attn: Vec<f32>,
    o: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
}

impl LayerBuffers {
    /// Sizes every buffer for `n` tokens (their contents are overwritten
    /// before use).
    fn resize(&mut self, c: &ModelConfig, n: usize) {
        let q_dim = c.n_head * c.head_dim;
        let kv_dim = c.n_head_kv * c.head_dim;
        self.h.resize(n * c.n_embd, 0.0);
        self.q.resize(n * q_dim, 0.0);
        self.k.resize(n * kv_dim, 0.0);
        self.v.resize(n * kv_dim, 0.0);
        self.attn.resize(n * q_dim, 0.0);
        self.o.resize(n * c.n_embd, 0.0);
        self.gate.resize(n * c.n_ff, 0.0);
        self.up.resize(n * c.n_ff, 0.0);
    }
}
