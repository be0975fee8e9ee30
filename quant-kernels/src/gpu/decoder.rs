//! A llama-family decoder whose token steps run entirely on the GPU:
//! weights uploaded once in their stored GGML encoding, the KV cache in GPU
//! memory, and every kernel of a step (norms, activation quantization,
//! weight products, rope, attention, residual adds) recorded into one
//! command buffer. The tokens of a prompt run as batches (up to 64 per
//! submission, each kernel over all of them, attention causal within the
//! batch); generation is a batch of one. Only the logits of the positions
//! asked for are read back.
//!
//! What it covers: RMS norm, rope in either pairing (adjacent pairs or
//! halves) on the first `n_rot` dimensions of each head, optional q/k/v
//! biases, grouped-query attention with an optional sliding window and
//! score soft-capping, SiLU- or GELU-gated feed-forward, untied or tied
//! output matrix; weights in Q8_0, Q4_0, Q4_1, Q4_K or Q6_K. The host
//! decodes each token's embedding row (a few KB) and computes the rope
//! angles (in f64, once per cache).
//!
//! # Tolerance
//!
//! The step follows the CPU engine's arithmetic: the activations are
//! quantized exactly as ggml's CPU backend quantizes them for `vec_dot`
//! (Q8_0/Q8_1/Q8_K; the quantized bytes equal
//! [`crate::ggml::quantize_activations`] of the same f32 vector), the weight
//! products form the same integer block sums (see [`super::matvec`]), and an
//! f16 KV cache rounds q, k, v and the softmax weights to f16 as llama.cpp
//! does. What differs is float arithmetic: the order of the sums (norms,
//! products, attention), fused multiply-adds, and the GPU's `exp`, `sqrt`
//! and division. A difference of one rounding in an activation can move
//! it to the neighbouring 8-bit step at the next quantization, so logits
//! are compared with a relative tolerance (the engine's tests state it),
//! not bit for bit.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::matvec::{kind_code, GpuMatrix, Kind};
use super::{entry, ErrorScope, Gpu, GpuError, Module};
use crate::{ggml, GgmlType, KernelError};

/// The gated activation of the feed-forward block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatedActivation {
    /// `silu(gate) * up` (SwiGLU).
    Silu,
    /// `gelu_tanh(gate) * up` (GeGLU).
    GeluTanh,
}

/// A weight matrix in its stored GGML encoding: `rows` rows (outputs) of
/// `cols` values (inputs).
#[derive(Debug, Clone, Copy)]
pub struct WeightRef<'a> {
    /// Tensor name, for messages.
    pub name: &'a str,
    /// Block type.
    pub ty: GgmlType,
    /// The rows, as stored.
    pub data: &'a [u8],
    /// Output rows.
    pub rows: usize,
    /// Input columns.
    pub cols: usize,
}

/// The frequencies of one rope: the angle of pair `i` at position `p` is
/// `(p * position_scale) * inv_freq[i]`, computed on the host in f64.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeSpec {
    /// One frequency per rotated pair (`n_rot / 2` values).
    pub inv_freq: Vec<f64>,
    /// Linear position scale.
    pub position_scale: f64,
}

/// One decoder layer.
#[derive(Debug, Clone)]
pub struct LayerSpec<'a> {
    /// Pre-attention RMS norm weight (`n_embd`).
    pub attn_norm: Vec<f32>,
    /// Query projection (`n_head * head_dim` x `n_embd`).
    pub q: WeightRef<'a>,
    /// Key projection (`n_head_kv * head_dim` x `n_embd`).
    pub k: WeightRef<'a>,
    /// Value projection (`n_head_kv * head_dim` x `n_embd`).
    pub v: WeightRef<'a>,
    /// Query bias, if any.
    pub q_bias: Option<Vec<f32>>,
    /// Key bias, if any.
    pub k_bias: Option<Vec<f32>>,
    /// Value bias, if any.
    pub v_bias: Option<Vec<f32>>,
    /// Attention output projection (`n_embd` x `n_head * head_dim`).
    pub o: WeightRef<'a>,
    /// Pre-feed-forward RMS norm weight (`n_embd`).
    pub ffn_norm: Vec<f32>,
    /// Feed-forward gate (`n_ff` x `n_embd`).
    pub gate: WeightRef<'a>,
    /// Feed-forward up (`n_ff` x `n_embd`).
    pub up: WeightRef<'a>,
    /// Feed-forward down (`n_embd` x `n_ff`).
    pub down: WeightRef<'a>,
    /// Keys older than this many positions are masked.
    pub sliding_window: Option<usize>,
    /// Index of the layer's rope in [`DecoderSpec::ropes`].
    pub rope: usize,
}

/// A whole model, as [`Decoder::new`] takes it.
#[derive(Debug, Clone)]
pub struct DecoderSpec<'a> {
    /// Hidden size.
    pub n_embd: usize,
    /// Feed-forward inner size.
    pub n_ff: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads (divides `n_head`).
    pub n_head_kv: usize,
    /// Dimension of a head (even, at most 256).
    pub head_dim: usize,
    /// Dimensions of a head that rope rotates (even, at most `head_dim`).
    pub n_rot: usize,
    /// Vocabulary size (rows of the output matrix).
    pub n_vocab: usize,
    /// RMS norm epsilon.
    pub norm_eps: f32,
    /// Scale of q·k.
    pub attn_scale: f32,
    /// tanh soft-capping of attention scores.
    pub attn_softcap: Option<f32>,
    /// Rope pairs dimensions `(i, i + n_rot/2)` (true) or `(2i, 2i+1)`.
    pub rope_neox: bool,
    /// Feed-forward activation.
    pub activation: GatedActivation,
    /// Round q, k, v and the softmax weights to f16 (llama.cpp's default
    /// f16 KV cache).
    pub kv_f16: bool,
    /// The ropes the layers use.
    pub ropes: Vec<RopeSpec>,
    /// The layers.
    pub layers: Vec<LayerSpec<'a>>,
    /// Final RMS norm weight (`n_embd`).
    pub output_norm: Vec<f32>,
    /// Output matrix (`n_vocab` x `n_embd`), the token embedding when tied.
    pub output: WeightRef<'a>,
}

/// The GGML types [`Decoder`] multiplies on the GPU.
pub const DECODER_TYPES: [GgmlType; 5] = [
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q4K,
    GgmlType::Q6K,
];

/// Activation encodings, as bits of `act_mask` and indices of the
/// decoder's activation buffers.
fn act_bit(ty: GgmlType) -> u32 {
    match ggml::vec_dot_type(ty) {
        Some(GgmlType::Q8_0) => 1,
        Some(GgmlType::Q8_1) => 2,
        _ => 4,
    }
}

fn act_index(bit: u32) -> usize {
    match bit {
        1 => 0,
        2 => 1,
        _ => 2,
    }
}

/// Bytes of a `DecParams` (decoder.wgsl) and an `MvParams` (matvec.wgsl).
const DEC_PARAMS: u64 = 80;
const MV_PARAMS: u64 = 64;
/// Bytes of a uniform slot (the largest minimum offset alignment).
const SLOT: u64 = 256;
/// At most this many bytes of logits are read back per submission.
const READBACK_BYTES: usize = 64 << 20;
/// At most this many tokens per batch (one submission).
const MAX_BATCH: usize = 64;

struct Dims {
    n_embd: usize,
    n_ff: usize,
    n_head: usize,
    n_head_kv: usize,
    head_dim: usize,
    n_rot: usize,
    n_vocab: usize,
    norm_eps: f32,
    attn_scale: f32,
    attn_softcap: f32,
    neox: bool,
    activation: GatedActivation,
    kv_f16: bool,
}

impl Dims {
    fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }

    fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }
}

struct GpuLayer {
    attn_norm: wgpu::Buffer,
    /// q, k and v, each with the offset of its outputs in `qkv`: one
    /// matrix of stacked rows when the three share a type.
    qkv: Vec<(GpuMatrix, usize)>,
    bias: Option<wgpu::Buffer>,
    o: GpuMatrix,
    ffn_norm: wgpu::Buffer,
    /// gate and up, likewise into `ff`.
    gate_up: Vec<(GpuMatrix, usize)>,
    down: GpuMatrix,
    window: u32,
    rope: usize,
}

/// A model held on the GPU. Build one with [`Decoder::new`], then run
/// token steps with [`Decoder::forward`] against a [`DecoderCache`].
pub struct Decoder {
    gpu: Arc<Gpu>,
    id: u64,
    dims: Dims,
    ropes: Vec<RopeSpec>,
    layers: Vec<GpuLayer>,
    output_norm: wgpu::Buffer,
    output: GpuMatrix,
    /// Residual stream, normed/activated vector, q|k|v, attention output,
    /// gate|up, logits.
    x: wgpu::Buffer,
    h: wgpu::Buffer,
    qkv: wgpu::Buffer,
    attn: wgpu::Buffer,
    ff: wgpu::Buffer,
    logits: wgpu::Buffer,
    /// Activation encodings: Q8_0, Q8_1, Q8_K.
    acts: [wgpu::Buffer; 3],
    /// `state[0]`: the position of the step being run.
    state: wgpu::Buffer,
    /// Bound where a kernel reads no vector (no biases, no norm).
    empty: wgpu::Buffer,
    weight_bytes: u64,
    /// Tokens per batch the work buffers hold.
    max_batch: usize,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("layers", &self.layers.len())
            .field("n_embd", &self.dims.n_embd)
            .field("weight_bytes", &self.weight_bytes)
            .finish_non_exhaustive()
    }
}

/// One dispatch of a step.
struct Op {
    entry: &'static str,
    pipeline: Arc<wgpu::ComputePipeline>,
    bind: wgpu::BindGroup,
    groups: u32,
}

/// The keys and values of every layer for the positions run so far, in GPU
/// memory, with the recorded kernels of a step over them.
pub struct DecoderCache {
    decoder: u64,
    capacity: usize,
    len: usize,
    /// Kept alive by the bind groups too; held for clarity.
    _buffers: Vec<wgpu::Buffer>,
    layer_ops: Vec<Op>,
    logit_ops: Vec<Op>,
    readback: wgpu::Buffer,
    /// Tokens per batch (the decoder's, or fewer where the attention
    /// scores of a long cache would not fit one binding).
    max_batch: usize,
}

impl std::fmt::Debug for DecoderCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecoderCache")
            .field("capacity", &self.capacity)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl DecoderCache {
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

    /// Forgets every position.
    pub fn clear(&mut self) {
        self.len = 0;
    }
}

fn bad(msg: String) -> GpuError {
    KernelError::BadLength(msg).into()
}

/// `DecParams` of decoder.wgsl, by field.
#[derive(Default, Clone, Copy)]
struct DecParams {
    n: u32,
    mode: u32,
    act_mask: u32,
    eps: f32,
    n_head: u32,
    n_head_kv: u32,
    head_dim: u32,
    n_rot: u32,
    q_dim: u32,
    kv_dim: u32,
    cap: u32,
    rope_off: u32,
    neox: u32,
    kv_f16: u32,
    window: u32,
    attn_scale: f32,
    bias: u32,
    softcap: f32,
    in_stride: u32,
    out_stride: u32,
}

impl DecParams {
    fn words(&self) -> [u32; 20] {
        [
            self.n,
            self.mode,
            self.act_mask,
            self.eps.to_bits(),
            self.n_head,
            self.n_head_kv,
            self.head_dim,
            self.n_rot,
            self.q_dim,
            self.kv_dim,
            self.cap,
            self.rope_off,
            self.neox,
            self.kv_f16,
            self.window,
            self.attn_scale.to_bits(),
            self.bias,
            self.softcap.to_bits(),
            self.in_stride,
            self.out_stride,
        ]
    }
}

/// Vector kernel modes of decoder.wgsl.
const MODE_COPY: u32 = 0;
const MODE_RMS_NORM: u32 = 1;
const MODE_SILU: u32 = 2;
const MODE_GELU: u32 = 3;

/// A dispatch being recorded: its kernel, buffers, parameters and size.
struct OpDesc {
    entry: &'static str,
    buffers: Vec<(u32, wgpu::Buffer)>,
    params: Vec<u8>,
    /// Binding of the parameter block (3 for matvec.wgsl, 4 for
    /// decoder.wgsl).
    params_binding: u32,
    groups: u32,
}

impl Decoder {
    /// Uploads `spec`'s weights and checks its shapes. Fails with
    /// [`GpuError::Kernel`] naming the tensor for a weight of a type the
    /// GPU does not multiply or a shape that does not fit the model.
    pub fn new(gpu: Arc<Gpu>, spec: &DecoderSpec<'_>) -> Result<Decoder, GpuError> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let dims = Dims {
            n_embd: spec.n_embd,
            n_ff: spec.n_ff,
            n_head: spec.n_head,
            n_head_kv: spec.n_head_kv,
            head_dim: spec.head_dim,
            n_rot: spec.n_rot,
            n_vocab: spec.n_vocab,
            norm_eps: spec.norm_eps,
            attn_scale: spec.attn_scale,
            attn_softcap: spec.attn_softcap.unwrap_or(0.0),
            neox: spec.rope_neox,
            activation: spec.activation,
            kv_f16: spec.kv_f16,
        };
        if dims.n_head == 0
            || dims.n_head_kv == 0
            || !dims.n_head.is_multiple_of(dims.n_head_kv)
            || dims.head_dim == 0
            || dims.head_dim > 256
            || !dims.head_dim.is_multiple_of(2)
            || !dims.n_rot.is_multiple_of(2)
            || dims.n_rot > dims.head_dim
        {
            return Err(KernelError::Unsupported(format!(
                "attention of {} heads, {} key/value heads, head size {}, {} rotated dimensions on the GPU \
                 (it needs heads of at most 256 even dimensions and whole groups)",
                dims.n_head, dims.n_head_kv, dims.head_dim, dims.n_rot
            ))
            .into());
        }
        for (i, r) in spec.ropes.iter().enumerate() {
            if r.inv_freq.len() != dims.n_rot / 2 {
                return Err(bad(format!(
                    "rope {i} has {} frequencies for {} rotated dimensions",
                    r.inv_freq.len(),
                    dims.n_rot
                )));
            }
        }
        let (d, q_dim, kv_dim, f) = (dims.n_embd, dims.q_dim(), dims.kv_dim(), dims.n_ff);
        let weight_bytes = spec.output.data.len() as u64
            + spec
                .layers
                .iter()
                .flat_map(|l| [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down])
                .map(|w| w.data.len() as u64)
                .sum::<u64>();
        let check = |w: &WeightRef<'_>, rows: usize, cols: usize| -> Result<(), GpuError> {
            if w.rows != rows || w.cols != cols {
                return Err(bad(format!(
                    "tensor '{}' is {} x {}, the model needs {rows} x {cols}",
                    w.name, w.rows, w.cols
                )));
            }
            if !DECODER_TYPES.contains(&w.ty) {
                return Err(KernelError::Unsupported(format!(
                    "tensor '{}' is {}: the GPU decoder multiplies Q8_0, Q4_0, Q4_1, Q4_K and Q6_K",
                    w.name, w.ty
                ))
                .into());
            }
            Ok(())
        };
        let named = |w: &WeightRef<'_>| {
            let name = w.name.to_string();
            move |e: GpuError| match e {
                GpuError::Kernel(k) => bad(format!("tensor '{name}': {k}")),
                e => e,
            }
        };
        let upload = |w: &WeightRef<'_>, rows: usize, cols: usize| -> Result<GpuMatrix, GpuError> {
            check(w, rows, cols)?;
            gpu.upload_ggml(w.ty, w.data, rows, cols).map_err(named(w))
        };
        // Matrices that read the same input: one matrix of stacked rows
        // (one dispatch) when they share a type, else one each.
        let stacked = |ws: &[(&WeightRef<'_>, usize)],
                       cols: usize|
         -> Result<Vec<(GpuMatrix, usize)>, GpuError> {
            let mut at = 0;
            for (w, rows) in ws {
                check(w, *rows, cols)?;
            }
            if ws.iter().all(|(w, _)| w.ty == ws[0].0.ty) {
                let data: Vec<u8> = ws
                    .iter()
                    .flat_map(|(w, _)| w.data.iter().copied())
                    .collect();
                let rows = ws.iter().map(|(_, r)| r).sum();
                let m = gpu
                    .upload_ggml(ws[0].0.ty, &data, rows, cols)
                    .map_err(named(ws[0].0))?;
                return Ok(vec![(m, 0)]);
            }
            let mut out = Vec::with_capacity(ws.len());
            for (w, rows) in ws {
                out.push((
                    gpu.upload_ggml(w.ty, w.data, *rows, cols)
                        .map_err(named(w))?,
                    at,
                ));
                at += rows;
            }
            Ok(out)
        };
        let vector = |what: &str, v: &[f32], n: usize| -> Result<wgpu::Buffer, GpuError> {
            if v.len() != n {
                return Err(bad(format!("{what} has {} values, expected {n}", v.len())));
            }
            Ok(gpu.upload(what, bytemuck::cast_slice(v)))
        };
        let mut layers = Vec::with_capacity(spec.layers.len());
        for (il, l) in spec.layers.iter().enumerate() {
            if l.rope >= spec.ropes.len() {
                return Err(bad(format!("layer {il} names rope {}", l.rope)));
            }
            let bias = if l.q_bias.is_some() || l.k_bias.is_some() || l.v_bias.is_some() {
                let mut all = vec![0f32; q_dim + 2 * kv_dim];
                for (b, at, n, what) in [
                    (&l.q_bias, 0, q_dim, "q"),
                    (&l.k_bias, q_dim, kv_dim, "k"),
                    (&l.v_bias, q_dim + kv_dim, kv_dim, "v"),
                ] {
                    if let Some(b) = b {
                        if b.len() != n {
                            return Err(bad(format!(
                                "layer {il}: the {what} bias has {} values, expected {n}",
                                b.len()
                            )));
                        }
                        all[at..at + n].copy_from_slice(b);
                    }
                }
                Some(gpu.upload("biases", bytemuck::cast_slice(&all)))
            } else {
                None
            };
            layers.push(GpuLayer {
                attn_norm: vector(&format!("layer {il} attention norm"), &l.attn_norm, d)?,
                qkv: stacked(&[(&l.q, q_dim), (&l.k, kv_dim), (&l.v, kv_dim)], d)?,
                bias,
                o: upload(&l.o, d, q_dim)?,
                ffn_norm: vector(&format!("layer {il} feed-forward norm"), &l.ffn_norm, d)?,
                gate_up: stacked(&[(&l.gate, f), (&l.up, f)], d)?,
                down: upload(&l.down, d, f)?,
                window: l
                    .sliding_window
                    .map_or(0, |w| w.min(u32::MAX as usize) as u32),
                rope: l.rope,
            });
        }
        let output = upload(&spec.output, dims.n_vocab, d)?;
        let output_norm = vector("output norm", &spec.output_norm, d)?;
        let rw = wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC;
        let widest = d.max(q_dim).max(f);
        // Per token: the widest row of any work buffer, in bytes.
        let row_bytes = 4 * dims.n_vocab.max(2 * f).max(q_dim + 2 * kv_dim).max(widest) + 16;
        let max_batch =
            (READBACK_BYTES.min(gpu.max_binding as usize) / row_bytes).clamp(1, MAX_BATCH);
        let floats =
            |label: &str, n: usize| gpu.storage(label, (4 * n * max_batch) as u64 + 16, rw);
        // Q8_1 is the widest encoding per value (36 bytes per 32); one
        // spare Q8_K block covers rounding and unaligned reads.
        let act_bytes = ((widest / 32 * 36 + 4) * max_batch + 292 + 16) as u64;
        let acts = [
            gpu.storage("activations q8_0", act_bytes, rw),
            gpu.storage("activations q8_1", act_bytes, rw),
            gpu.storage("activations q8_k", act_bytes, rw),
        ];
        let decoder = Decoder {
            x: floats("x", d),
            h: floats("h", widest),
            qkv: floats("qkv", q_dim + 2 * kv_dim),
            attn: floats("attention", q_dim),
            ff: floats("gate|up", 2 * f),
            logits: floats("logits", dims.n_vocab),
            max_batch,
            acts,
            state: gpu.storage("state", 16, rw),
            empty: gpu.storage("empty", 16, rw),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            dims,
            ropes: spec.ropes.clone(),
            layers,
            output_norm,
            output,
            weight_bytes,
            gpu,
        };
        for entry in ["vec_quant", "rope_store", "attention", "matvec_q8"] {
            decoder.gpu.pipeline(Module::Decoder, entry)?;
        }
        decoder.gpu.wait("uploading the model")?;
        Ok(decoder)
    }

    /// Bytes of weight matrices held on the GPU.
    pub fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }

    /// The GPU the decoder runs on.
    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    fn base_params(&self) -> DecParams {
        let dm = &self.dims;
        DecParams {
            eps: dm.norm_eps,
            n_head: dm.n_head as u32,
            n_head_kv: dm.n_head_kv as u32,
            head_dim: dm.head_dim as u32,
            n_rot: dm.n_rot as u32,
            q_dim: dm.q_dim() as u32,
            kv_dim: dm.kv_dim() as u32,
            neox: u32::from(dm.neox),
            kv_f16: u32::from(dm.kv_f16),
            attn_scale: dm.attn_scale,
            softcap: dm.attn_softcap,
            ..DecParams::default()
        }
    }

    /// The widest row of `h`.
    fn widest(&self) -> usize {
        let dm = &self.dims;
        dm.n_embd.max(dm.q_dim()).max(dm.n_ff)
    }

    #[allow(clippy::too_many_arguments)]
    fn vec_op(
        &self,
        mode: u32,
        n: usize,
        act_mask: u32,
        vin: &wgpu::Buffer,
        in_stride: usize,
        weight: Option<&wgpu::Buffer>,
    ) -> OpDesc {
        let p = DecParams {
            n: n as u32,
            mode,
            act_mask,
            in_stride: in_stride as u32,
            out_stride: self.widest() as u32,
            ..self.base_params()
        };
        OpDesc {
            entry: "vec_quant",
            buffers: vec![
                (5, vin.clone()),
                (6, self.h.clone()),
                (7, weight.unwrap_or(&self.empty).clone()),
                (8, self.acts[0].clone()),
                (9, self.acts[1].clone()),
                (10, self.acts[2].clone()),
            ],
            params: bytemuck::cast_slice(&p.words()).to_vec(),
            params_binding: 4,
            groups: 1,
        }
    }

    /// The dispatches of `y[t][y_offset..] (+)= m x[t]` for every token
    /// `t` of a batch, with `x` the activation encoding `m`'s type reads
    /// and `y_stride` floats per token in `y`.
    fn matvec_ops(
        &self,
        m: &GpuMatrix,
        y: &wgpu::Buffer,
        y_offset: usize,
        y_stride: usize,
        accumulate: bool,
        out: &mut Vec<OpDesc>,
    ) {
        let Kind::Ggml(ty) = m.kind else {
            unreachable!("the decoder uploads GGML matrices only")
        };
        let cols = m.cols();
        let row_bytes = ggml::row_size(ty, cols).expect("checked at upload") as u32;
        let act = &self.acts[act_index(act_bit(ty))];
        let vdt = ggml::vec_dot_type(ty).expect("decoder types have a vec_dot type");
        let x_stride = ggml::row_size(vdt, cols)
            .expect("checked at upload")
            .div_ceil(4) as u32;
        for c in &m.chunks {
            let words: [u32; 16] = [
                c.rows as u32,
                cols as u32,
                row_bytes,
                kind_code(m.kind),
                0,
                x_stride,
                (y_offset + c.first_row) as u32,
                y_stride as u32,
                c.sb_offset,
                c.bb_offset,
                0,
                0,
                0,
                1,
                u32::from(accumulate),
                0,
            ];
            out.push(OpDesc {
                entry: "matvec_q8",
                buffers: vec![(0, c.buffer.clone()), (1, act.clone()), (2, y.clone())],
                params: bytemuck::cast_slice(&words).to_vec(),
                params_binding: 3,
                groups: c.rows.div_ceil(8) as u32,
            });
        }
    }

    fn mask_of(mats: &[&GpuMatrix]) -> u32 {
        mats.iter()
            .map(|m| match m.kind {
                Kind::Ggml(t) => act_bit(t),
                Kind::Mlx { .. } => 0,
            })
            .fold(0, |a, b| a | b)
    }

    /// An empty cache for up to `capacity` positions, with the kernels of
    /// a step recorded over it.
    pub fn new_cache(&self, capacity: usize) -> Result<DecoderCache, GpuError> {
        let gpu = &self.gpu;
        let dm = &self.dims;
        let (d, q_dim, kv_dim, f) = (dm.n_embd, dm.q_dim(), dm.kv_dim(), dm.n_ff);
        let capacity = capacity.max(1);
        let kv_bytes = (capacity as u64)
            .checked_mul(kv_dim as u64 * 4)
            .filter(|&b| b <= gpu.max_binding)
            .ok_or_else(|| {
                bad(format!(
                    "a cache of {capacity} positions of {kv_dim} values per layer exceeds the GPU's \
                     largest binding ({} bytes)",
                    gpu.max_binding
                ))
            })?;
        let half_rot = dm.n_rot / 2;
        let table_len = self.ropes.len() * capacity * half_rot * 2;
        let scores_per_token = (dm.n_head * capacity) as u64 * 4;
        if table_len as u64 * 4 > gpu.max_binding || scores_per_token > gpu.max_binding {
            return Err(bad(format!(
                "a cache of {capacity} positions exceeds the GPU's largest binding"
            )));
        }
        let max_batch = self
            .max_batch
            .min((gpu.max_binding / scores_per_token) as usize)
            .max(1);
        // cos/sin as the CPU's RopeTable computes them (f64 angle, rounded
        // to f32 at the end).
        let mut table = Vec::with_capacity(table_len);
        for r in &self.ropes {
            for pos in 0..capacity {
                let p = pos as f64 * r.position_scale;
                for f in &r.inv_freq {
                    let a = p * f;
                    table.push(a.cos() as f32);
                    table.push(a.sin() as f32);
                }
            }
        }
        let rope = gpu.upload("rope table", bytemuck::cast_slice(&table));
        let rw = wgpu::BufferUsages::COPY_DST;
        let scores = gpu.storage("scores", scores_per_token * max_batch as u64, rw);
        let mut buffers = vec![rope.clone(), scores.clone()];
        let mut layer_ops = Vec::new();
        let base = self.base_params();
        for l in &self.layers {
            let kc = gpu.storage("keys", kv_bytes, rw);
            let vc = gpu.storage("values", kv_bytes, rw);
            buffers.push(kc.clone());
            buffers.push(vc.clone());
            let qkv: Vec<&GpuMatrix> = l.qkv.iter().map(|(m, _)| m).collect();
            let qkv_row = q_dim + 2 * kv_dim;
            layer_ops.push(self.vec_op(
                MODE_RMS_NORM,
                d,
                Self::mask_of(&qkv),
                &self.x,
                d,
                Some(&l.attn_norm),
            ));
            for (m, at) in &l.qkv {
                self.matvec_ops(m, &self.qkv, *at, qkv_row, false, &mut layer_ops);
            }
            let p = DecParams {
                cap: capacity as u32,
                rope_off: (l.rope * capacity * half_rot * 2) as u32,
                window: l.window,
                bias: u32::from(l.bias.is_some()),
                ..base
            };
            let slots = (dm.n_head + 2 * dm.n_head_kv) * (dm.head_dim / 2);
            layer_ops.push(OpDesc {
                entry: "rope_store",
                buffers: vec![
                    (5, self.qkv.clone()),
                    (7, l.bias.as_ref().unwrap_or(&self.empty).clone()),
                    (11, kc.clone()),
                    (12, vc.clone()),
                    (14, self.state.clone()),
                    (15, rope.clone()),
                ],
                params: bytemuck::cast_slice(&p.words()).to_vec(),
                params_binding: 4,
                groups: slots.div_ceil(64) as u32,
            });
            layer_ops.push(OpDesc {
                entry: "attention",
                buffers: vec![
                    (5, self.qkv.clone()),
                    (6, self.attn.clone()),
                    (11, kc),
                    (12, vc),
                    (13, scores.clone()),
                    (14, self.state.clone()),
                ],
                params: bytemuck::cast_slice(&p.words()).to_vec(),
                params_binding: 4,
                groups: dm.n_head as u32,
            });
            layer_ops.push(self.vec_op(
                MODE_COPY,
                q_dim,
                Self::mask_of(&[&l.o]),
                &self.attn,
                q_dim,
                None,
            ));
            self.matvec_ops(&l.o, &self.x, 0, d, true, &mut layer_ops);
            let gate_up: Vec<&GpuMatrix> = l.gate_up.iter().map(|(m, _)| m).collect();
            layer_ops.push(self.vec_op(
                MODE_RMS_NORM,
                d,
                Self::mask_of(&gate_up),
                &self.x,
                d,
                Some(&l.ffn_norm),
            ));
            for (m, at) in &l.gate_up {
                self.matvec_ops(m, &self.ff, *at, 2 * f, false, &mut layer_ops);
            }
            let mode = match dm.activation {
                GatedActivation::Silu => MODE_SILU,
                GatedActivation::GeluTanh => MODE_GELU,
            };
            layer_ops.push(self.vec_op(mode, f, Self::mask_of(&[&l.down]), &self.ff, 2 * f, None));
            self.matvec_ops(&l.down, &self.x, 0, d, true, &mut layer_ops);
        }
        let mut logit_ops = vec![self.vec_op(
            MODE_RMS_NORM,
            d,
            Self::mask_of(&[&self.output]),
            &self.x,
            d,
            Some(&self.output_norm),
        )];
        self.matvec_ops(
            &self.output,
            &self.logits,
            0,
            dm.n_vocab,
            false,
            &mut logit_ops,
        );

        // One parameter slot per dispatch, then the bind groups.
        let n_ops = layer_ops.len() + logit_ops.len();
        let mut params = vec![0u8; n_ops * SLOT as usize];
        for (i, op) in layer_ops.iter().chain(&logit_ops).enumerate() {
            let at = i * SLOT as usize;
            params[at..at + op.params.len()].copy_from_slice(&op.params);
        }
        let pbuf = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("decoder params"),
            size: params.len() as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        gpu.queue.write_buffer(&pbuf, 0, &params);
        let scope = ErrorScope::push(&gpu.device);
        let mut slot = 0u64;
        let mut record = |descs: Vec<OpDesc>| -> Result<Vec<Op>, GpuError> {
            let mut ops = Vec::with_capacity(descs.len());
            for desc in descs {
                let pipeline = gpu.pipeline(Module::Decoder, desc.entry)?;
                let mut entries: Vec<wgpu::BindGroupEntry<'_>> =
                    desc.buffers.iter().map(|(b, buf)| entry(*b, buf)).collect();
                entries.push(wgpu::BindGroupEntry {
                    binding: desc.params_binding,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: &pbuf,
                        offset: slot * SLOT,
                        size: wgpu::BufferSize::new(if desc.params_binding == 3 {
                            MV_PARAMS
                        } else {
                            DEC_PARAMS
                        }),
                    }),
                });
                let bind = gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some(desc.entry),
                    layout: &pipeline.get_bind_group_layout(0),
                    entries: &entries,
                });
                ops.push(Op {
                    entry: desc.entry,
                    pipeline,
                    bind,
                    groups: desc.groups,
                });
                slot += 1;
            }
            Ok(ops)
        };
        let layer_ops = record(layer_ops)?;
        let logit_ops = record(logit_ops)?;
        buffers.push(pbuf);
        let readback = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("logits readback"),
            size: (max_batch * dm.n_vocab * 4).max(4) as u64,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        scope.check("recording the decoder's kernels")?;
        gpu.wait("allocating the KV cache")?;
        Ok(DecoderCache {
            decoder: self.id,
            capacity,
            len: 0,
            _buffers: buffers,
            layer_ops,
            logit_ops,
            readback,
            max_batch,
        })
    }

    /// Runs one step per token at the cache's next positions, appending
    /// them to the cache. `embeddings` holds the tokens' input rows
    /// (`n_embd` values each). Returns the logits of steps `logits_from..`
    /// (`n_vocab` values each); steps before that skip the output matrix.
    /// The tokens run in batches (one submission each) that do not straddle
    /// `logits_from`.
    pub fn forward(
        &self,
        cache: &mut DecoderCache,
        embeddings: &[f32],
        logits_from: usize,
    ) -> Result<Vec<f32>, GpuError> {
        let dm = &self.dims;
        let (d, vocab) = (dm.n_embd, dm.n_vocab);
        if cache.decoder != self.id {
            return Err(bad("the cache was made by another decoder".into()));
        }
        if !embeddings.len().is_multiple_of(d) {
            return Err(bad(format!(
                "{} embedding values are not whole rows of {d}",
                embeddings.len()
            )));
        }
        let n = embeddings.len() / d;
        if cache.len + n > cache.capacity {
            return Err(bad(format!(
                "{} positions do not fit a cache of {}",
                cache.len + n,
                cache.capacity
            )));
        }
        let logits_from = logits_from.min(n);
        let mut out = vec![0f32; (n - logits_from) * vocab];
        let mut written = 0usize;
        let gpu = &self.gpu;
        let op = "decoder step";
        let mut t0 = 0;
        while t0 < n {
            let mut m = (n - t0).min(cache.max_batch);
            if t0 < logits_from {
                m = m.min(logits_from - t0);
            }
            let want = t0 >= logits_from;
            gpu.queue.write_buffer(
                &self.state,
                0,
                bytemuck::cast_slice(&[cache.len as u32, 0, 0, 0]),
            );
            gpu.queue.write_buffer(
                &self.x,
                0,
                bytemuck::cast_slice(&embeddings[t0 * d..(t0 + m) * d]),
            );
            let scope = ErrorScope::push(&gpu.device);
            let mut enc = gpu
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(op) });
            {
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
                let logit_ops = cache.logit_ops.iter().filter(|_| want);
                for o in cache.layer_ops.iter().chain(logit_ops) {
                    pass.set_pipeline(&o.pipeline);
                    pass.set_bind_group(0, &o.bind, &[]);
                    pass.dispatch_workgroups(o.groups, m as u32, 1);
                }
            }
            let bytes = (m * vocab * 4) as u64;
            if want {
                enc.copy_buffer_to_buffer(&self.logits, 0, &cache.readback, 0, bytes);
            }
            gpu.queue.submit([enc.finish()]);
            scope.check(op)?;
            if want {
                let dst = &mut out[written..written + m * vocab];
                gpu.read_back(&cache.readback, bytemuck::cast_slice_mut(dst), op)?;
                written += m * vocab;
            } else {
                gpu.wait(op)?;
            }
            cache.len += m;
            t0 += m;
        }
        Ok(out)
    }

    /// For benchmarks: seconds per token step spent in each kernel (by
    /// entry point: its dispatches of one step, run `reps` times in one
    /// submission, at the cache's current position, batch of one), and in
    /// the whole step with the output matrix. The values computed are
    /// meaningless; only the time is.
    #[doc(hidden)]
    pub fn profile_step(
        &self,
        cache: &DecoderCache,
        reps: usize,
    ) -> Result<Vec<(&'static str, usize, f64)>, GpuError> {
        let gpu = &self.gpu;
        let all: Vec<&Op> = cache.layer_ops.iter().chain(&cache.logit_ops).collect();
        let mut kinds: Vec<&'static str> = Vec::new();
        for o in &all {
            if !kinds.contains(&o.entry) {
                kinds.push(o.entry);
            }
        }
        let mut out = Vec::new();
        for kind in kinds.iter().copied().map(Some).chain([None]) {
            let ops: Vec<&&Op> = all
                .iter()
                .filter(|o| kind.is_none_or(|k| o.entry == k))
                .collect();
            let run = || -> Result<f64, GpuError> {
                gpu.queue.write_buffer(
                    &self.state,
                    0,
                    bytemuck::cast_slice(&[cache.len as u32, 0, 0, 0]),
                );
                let start = std::time::Instant::now();
                let mut enc = gpu
                    .device
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
                {
                    let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
                    for _ in 0..reps {
                        for o in &ops {
                            pass.set_pipeline(&o.pipeline);
                            pass.set_bind_group(0, &o.bind, &[]);
                            pass.dispatch_workgroups(o.groups, 1, 1);
                        }
                    }
                }
                gpu.queue.submit([enc.finish()]);
                gpu.wait("profiling")?;
                Ok(start.elapsed().as_secs_f64() / reps as f64)
            };
            run()?;
            let secs = (0..3).map(|_| run()).collect::<Result<Vec<_>, _>>()?;
            let best = secs.into_iter().fold(f64::INFINITY, f64::min);
            out.push((kind.unwrap_or("whole step"), ops.len(), best));
        }
        Ok(out)
    }
}

/// Runs the decoder's `vec_quant` kernel once over `x` in copy mode and
/// returns the `vdt` encoding it writes (Q8_0, Q8_1 or Q8_K), for the
/// tests that hold it to [`crate::ggml::quantize_activations`].
pub(super) fn encode_activations(gpu: &Gpu, vdt: GgmlType, x: &[f32]) -> Result<Vec<u8>, GpuError> {
    let (bit, block) = match vdt {
        GgmlType::Q8_0 => (1, 32),
        GgmlType::Q8_1 => (2, 32),
        GgmlType::Q8K => (4, 256),
        t => {
            return Err(KernelError::Unsupported(format!("{t} activations on the GPU")).into());
        }
    };
    if x.is_empty() || !x.len().is_multiple_of(block) {
        return Err(bad(format!(
            "{} values are not whole {vdt} blocks",
            x.len()
        )));
    }
    let n = x.len();
    let out_len = ggml::row_size(vdt, n)?;
    let rw = wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC;
    let vin = gpu.upload("x", bytemuck::cast_slice(x));
    let vout = gpu.storage("h", 4 * n as u64, rw);
    let act_bytes = (n / 32 * 36 + 292 + 16) as u64;
    let acts: Vec<wgpu::Buffer> = (0..3)
        .map(|_| gpu.storage("activations", act_bytes, rw))
        .collect();
    let empty = gpu.storage("empty", 16, rw);
    let p = DecParams {
        n: n as u32,
        mode: MODE_COPY,
        act_mask: bit,
        ..DecParams::default()
    };
    let pbuf = gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("params"),
        size: DEC_PARAMS,
        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    gpu.queue
        .write_buffer(&pbuf, 0, bytemuck::cast_slice(&p.words()));
    let pipeline = gpu.pipeline(Module::Decoder, "vec_quant")?;
    let scope = ErrorScope::push(&gpu.device);
    let bind = gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("vec_quant"),
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[
            entry(4, &pbuf),
            entry(5, &vin),
            entry(6, &vout),
            entry(7, &empty),
            entry(8, &acts[0]),
            entry(9, &acts[1]),
            entry(10, &acts[2]),
        ],
    });
    let readback = gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("readback"),
        size: act_bytes,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut enc = gpu
        .device
        .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
    {
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind, &[]);
        pass.dispatch_workgroups(1, 1, 1);
    }
    enc.copy_buffer_to_buffer(&acts[act_index(bit)], 0, &readback, 0, act_bytes);
    gpu.queue.submit([enc.finish()]);
    scope.check("encoding activations")?;
    let mut out = vec![0u8; out_len];
    gpu.read_back(&readback, &mut out, "encoding activations")?;
    Ok(out)
}
