//! GGUF type mixes: which ggml type each tensor gets under a file type
//! (`Q4_K_M` ...), as llama-quantize decides it.
//!
//! This is a port, as facts, of `src/llama-quant.cpp` of the llama.cpp
//! tree the interop suite builds (`tensor_allows_quantization`,
//! `tensor_get_category`, `llama_tensor_get_type` and its `_impl`,
//! `tensor_type_fallback`, `tensor_requires_imatrix`). The decision reads
//! only tensor names in GGUF naming, shapes, types and a few model facts,
//! so it serves any source format once its tensors are named as in GGUF.
//!
//! Some choices depend on counters that advance tensor by tensor (the
//! `attn_v` and `ffn_down` promotions), so [`choose_types`] takes the whole
//! tensor list in llama.cpp's order ([`llama_order`]).

use std::cmp::Ordering;
use std::fmt;

use quant_kernels::GgmlType;
use regex::Regex;

use super::ftype::FileType;
use crate::formats::gguf::{Metadata, Value};

/// llama.cpp's `LLAMA_MAX_LAYERS`.
pub const MAX_LAYERS: u32 = 512;

/// What a mix needs to know about the model: the hyperparameters
/// `llama_tensor_get_type` reads (llama.cpp's `hparams`, layer 0 where they
/// are per layer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFacts {
    /// `general.architecture` (`llama`, `qwen2`, `falcon` ...).
    pub arch: String,
    /// Blocks, `{arch}.block_count` (`n_layer_all`, next-token layers included).
    pub n_layer: u32,
    /// Next-token prediction layers among them (`{arch}.nextn_predict_layers`).
    pub n_layer_nextn: u32,
    /// Attention heads of layer 0 (0 when the model has none).
    pub n_head: u32,
    /// Key/value heads of layer 0 (defaults to `n_head`).
    pub n_head_kv: u32,
    /// Experts (0 for a dense model).
    pub n_expert: u32,
}

impl ModelFacts {
    /// Query heads per key/value head of layer 0 (`hparams.n_gqa()`; 0 when
    /// there are no key/value heads).
    pub fn n_gqa(&self) -> u32 {
        self.n_head.checked_div(self.n_head_kv).unwrap_or(0)
    }

    /// Whether llama.cpp classifies the model as `LLM_TYPE_70B`, the one
    /// model size the mixes single out. Each architecture's
    /// `load_arch_hparams` (src/models/*.cpp) sets it from the layer count.
    pub fn is_70b(&self) -> bool {
        let n = self.n_layer - self.n_layer_nextn.min(self.n_layer);
        match self.arch.as_str() {
            "llama" => self.n_expert != 8 && n == 80 && self.n_head != self.n_head_kv,
            "qwen2" | "deci" | "olmo" => n == 80,
            "jais2" => n == 68,
            _ => false,
        }
    }

    /// Reads the facts from GGUF metadata, as `llama_model::load_hparams`
    /// does: `block_count` is required, head counts may be per-layer arrays
    /// (layer 0 counts), the rest default to 0.
    pub fn from_gguf(meta: &Metadata) -> Result<ModelFacts, MixError> {
        let arch = meta
            .get_str("general.architecture")
            .ok_or_else(|| MixError::Model("general.architecture is missing".into()))?
            .to_string();
        let key = |k: &str| format!("{arch}.{k}");
        let n_layer = scalar_u32(meta, &key("block_count"))?.ok_or_else(|| {
            MixError::Model(format!(
                "{} is missing; llama.cpp needs it to place the layer-dependent types",
                key("block_count")
            ))
        })?;
        if n_layer == 0 || n_layer > MAX_LAYERS {
            return Err(MixError::Model(format!(
                "{} is {n_layer}, llama.cpp accepts 1 to {MAX_LAYERS}",
                key("block_count")
            )));
        }
        let n_layer_nextn = scalar_u32(meta, &key("nextn_predict_layers"))?.unwrap_or(0);
        if n_layer_nextn > n_layer {
            return Err(MixError::Model(format!(
                "{} ({n_layer_nextn}) is larger than {} ({n_layer})",
                key("nextn_predict_layers"),
                key("block_count")
            )));
        }
        let n_expert = scalar_u32(meta, &key("expert_count"))?.unwrap_or(0);
        let n_head = layer0_u32(meta, &key("attention.head_count"), n_layer)?.unwrap_or(0);
        let n_head_kv =
            layer0_u32(meta, &key("attention.head_count_kv"), n_layer)?.unwrap_or(n_head);
        Ok(ModelFacts {
            arch,
            n_layer,
            n_layer_nextn,
            n_head,
            n_head_kv,
            n_expert,
        })
    }
}

fn as_u32(key: &str, v: &Value) -> Result<u32, MixError> {
    v.as_u64()
        .and_then(|x| u32::try_from(x).ok())
        .ok_or_else(|| {
            MixError::Model(format!(
                "{key} must be an unsigned 32-bit integer, found {v}"
            ))
        })
}

fn scalar_u32(meta: &Metadata, key: &str) -> Result<Option<u32>, MixError> {
    meta.get(key).map(|v| as_u32(key, v)).transpose()
}

/// A value that is one number for all layers or an array of one per layer
/// (`get_key_or_arr`); returns layer 0's.
fn layer0_u32(meta: &Metadata, key: &str, n_layer: u32) -> Result<Option<u32>, MixError> {
    match meta.get(key) {
        None => Ok(None),
        Some(Value::Array(a)) => {
            let values = a
                .to_i64_vec()
                .ok_or_else(|| MixError::Model(format!("{key} must be an integer array")))?;
            if values.len() != n_layer as usize {
                return Err(MixError::Model(format!(
                    "{key} has {} entries, expected one per layer ({n_layer})",
                    values.len()
                )));
            }
            u32::try_from(values[0])
                .map(Some)
                .map_err(|_| MixError::Model(format!("{key}[0] is {}, not a u32", values[0])))
        }
        Some(v) => as_u32(key, v).map(Some),
    }
}

/// `--tensor-type PATTERN=TYPE`: tensors whose name the pattern finds (a
/// regex search, as `std::regex_search`) take TYPE.
#[derive(Debug, Clone)]
pub struct TensorTypeOverride {
    /// The pattern as given, lower-cased as llama-quantize does.
    pub pattern: String,
    regex: Regex,
    /// The type to use.
    pub ggml_type: GgmlType,
}

impl TensorTypeOverride {
    /// Compiles `pattern` (lower-cased first, as llama-quantize does).
    pub fn new(pattern: &str, ggml_type: GgmlType) -> Result<Self, MixError> {
        let pattern = pattern.to_lowercase();
        let regex = Regex::new(&pattern)
            .map_err(|e| MixError::Option(format!("--tensor-type pattern '{pattern}': {e}")))?;
        Ok(TensorTypeOverride {
            pattern,
            regex,
            ggml_type,
        })
    }

    /// Parses `PATTERN=TYPE` (`attn_q=q8_0`).
    pub fn parse(s: &str) -> Result<Self, MixError> {
        let (pattern, ty) = s.split_once('=').ok_or_else(|| {
            MixError::Option(format!(
                "--tensor-type '{s}' is not PATTERN=TYPE (example: attn_q=q8_0)"
            ))
        })?;
        if pattern.is_empty() {
            return Err(MixError::Option(format!(
                "--tensor-type '{s}' has no tensor pattern"
            )));
        }
        if ty.is_empty() {
            return Err(MixError::Option(format!("--tensor-type '{s}' has no type")));
        }
        TensorTypeOverride::new(pattern, parse_ggml_type(ty)?)
    }

    fn matches(&self, name: &str) -> bool {
        self.regex.is_match(name)
    }
}

/// A ggml type name in any case (`q8_0`, `Q4_K`, `f16`), as llama-quantize's
/// `parse_ggml_type` accepts it.
pub fn parse_ggml_type(s: &str) -> Result<GgmlType, MixError> {
    GgmlType::from_name(s).ok_or_else(|| {
        MixError::Option(format!(
            "'{s}' is not a ggml type (examples: q8_0, q4_K, q6_K, iq4_nl, f16)"
        ))
    })
}

/// The settings of a mix: llama-quantize's options that change types.
#[derive(Debug, Clone)]
pub struct MixOptions {
    /// The file type (`--type`).
    pub file_type: FileType,
    /// Every quantizable tensor gets the default type (`--pure`); the
    /// fallback for unfit rows still applies.
    pub pure: bool,
    /// Leave `output.weight` as it is (`--leave-output-tensor`).
    pub leave_output_tensor: bool,
    /// Type of `output.weight` (`--output-tensor-type`).
    pub output_tensor_type: Option<GgmlType>,
    /// Type of the token embeddings (`--token-embedding-type`).
    pub token_embedding_type: Option<GgmlType>,
    /// Per-tensor overrides, first match wins (`--tensor-type`).
    pub tensor_types: Vec<TensorTypeOverride>,
    /// An importance matrix is given: some mixes choose differently with one.
    pub has_imatrix: bool,
}

impl MixOptions {
    /// The plain mix of `file_type`.
    pub fn new(file_type: FileType) -> Self {
        MixOptions {
            file_type,
            pure: false,
            leave_output_tensor: false,
            output_tensor_type: None,
            token_embedding_type: None,
            tensor_types: Vec::new(),
            has_imatrix: false,
        }
    }
}

/// A tensor as the mix sees it.
#[derive(Debug, Clone, Copy)]
pub struct TensorFacts<'a> {
    /// Name in GGUF naming (`blk.3.ffn_down.weight`).
    pub name: &'a str,
    /// Dimensions, innermost first (ggml's `ne`).
    pub dims: &'a [u64],
    /// The type it is stored in.
    pub ggml_type: GgmlType,
}

impl TensorFacts<'_> {
    /// `ggml_n_dims`: dimensions up to the last one larger than 1 (at least 1).
    fn n_dims(&self) -> usize {
        self.dims.iter().rposition(|&d| d > 1).map_or(1, |i| i + 1)
    }

    fn ne(&self, i: usize) -> u64 {
        self.dims.get(i).copied().unwrap_or(1)
    }
}

/// Why a tensor did not get the type its rule named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fallback {
    /// The type the rule chose.
    pub wanted: GgmlType,
    /// Its block size, which the row length is not a multiple of.
    pub block_size: u64,
}

/// The decision for one tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TypeChoice {
    /// The output type (the source type when the tensor is not quantized).
    pub ggml_type: GgmlType,
    /// The tensor is one llama.cpp quantizes at all (2-D or more, a
    /// `weight`, not a norm ...).
    pub quantizable: bool,
    /// The row length did not fit the chosen type's blocks.
    pub fallback: Option<Fallback>,
    /// llama-quantize refuses to make this tensor without an importance
    /// matrix (the IQ1/IQ2/IQ3_XXS types, and Q2_K in a Q2_K_S mix).
    pub requires_imatrix: bool,
}

/// An input the mix cannot place.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MixError {
    /// The model facts are missing or malformed.
    Model(String),
    /// A tensor name or shape breaks a rule's assumption.
    Tensor {
        /// The tensor.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A command-line setting is malformed.
    Option(String),
}

impl fmt::Display for MixError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MixError::Model(m) => write!(f, "model metadata: {m}"),
            MixError::Tensor { name, reason } => write!(f, "tensor '{name}': {reason}"),
            MixError::Option(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for MixError {}

/// The order llama-quantize visits and writes tensors
/// (`llama_model_loader::weight_name_comparer`): tensors outside blocks
/// first, then by block number, then by name.
pub fn llama_order(a: &str, b: &str) -> Ordering {
    block_of(a)
        .unwrap_or(-1)
        .cmp(&block_of(b).unwrap_or(-1))
        .then_with(|| a.as_bytes().cmp(b.as_bytes()))
}

/// `sscanf(name, "blk.%d.", &i)`: the block number after `blk.`, with
/// scanf's leading blanks and sign, whatever follows the digits.
pub fn block_of(name: &str) -> Option<i64> {
    let rest = name.strip_prefix("blk.")?;
    let rest = rest.trim_start_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c']);
    let (neg, digits) = match rest.as_bytes().first() {
        Some(b'-') => (true, &rest[1..]),
        Some(b'+') => (false, &rest[1..]),
        _ => (false, rest),
    };
    let end = digits
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    if end == 0 {
        return None;
    }
    // Past i32 scanf is undefined; such a name is no real block anyway.
    let v: i64 = digits[..end]
        .parse()
        .ok()
        .filter(|v| *v <= i64::from(i32::MAX))?;
    Some(if neg { -v } else { v })
}

/// Broad tensor roles (`tensor_category`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Category {
    TokenEmbd,
    AttnQ,
    AttnV,
    AttnK,
    AttnQkv,
    AttnKvB,
    AttnOutput,
    FfnUp,
    FfnGate,
    FfnDown,
    Output,
    Other,
}

fn is_token_embd(name: &str) -> bool {
    name == "token_embd.weight" || name == "per_layer_token_embd.weight"
}

fn category(name: &str) -> Category {
    if name == "output.weight" {
        Category::Output
    } else if is_token_embd(name) {
        Category::TokenEmbd
    } else if name.contains("attn_qkv.weight") {
        Category::AttnQkv
    } else if name.contains("attn_kv_b.weight") {
        Category::AttnKvB
    } else if name.contains("attn_v.weight") {
        Category::AttnV
    } else if name.contains("attn_k.weight") {
        Category::AttnK
    } else if name.contains("attn_q.weight") {
        Category::AttnQ
    } else if name.contains("attn_output.weight") {
        Category::AttnOutput
    } else if name.contains("ffn_up") {
        Category::FfnUp
    } else if name.contains("ffn_gate") {
        Category::FfnGate
    } else if name.contains("ffn_down") {
        Category::FfnDown
    } else {
        Category::Other
    }
}

impl Category {
    /// Attention-v-like tensors, the most sensitive to quantization.
    fn is_attn_v(self) -> bool {
        matches!(
            self,
            Category::AttnV | Category::AttnQkv | Category::AttnKvB
        )
    }
}

/// Name fragments of tensors llama.cpp never quantizes
/// (`tensor_allows_quantization`).
const NEVER_QUANTIZED: &[&str] = &[
    "_norm.weight",
    "ffn_gate_inp.weight",
    "ffn_gate_tid2eid.weight",
    "altup",
    "laurel",
    "per_layer_model_proj",
    "ssm_conv1d",
    "shortconv.conv.weight",
    "indexer.k_proj.weight",
    "indexer.q_proj.weight",
    "time_mix_first.weight",
    "time_mix_w0.weight",
    "time_mix_w1.weight",
    "time_mix_w2.weight",
    "time_mix_v0.weight",
    "time_mix_v1.weight",
    "time_mix_v2.weight",
    "time_mix_a0.weight",
    "time_mix_a1.weight",
    "time_mix_a2.weight",
    "time_mix_g1.weight",
    "time_mix_g2.weight",
    "time_mix_decay_w1.weight",
    "time_mix_decay_w2.weight",
    "time_mix_lerp_fused.weight",
    "attn_rel_b.weight",
    ".position_embd",
    "sam.pos_embd",
    "sam.neck.",
    "sam.net_",
    ".rel_pos",
    ".patch_embd",
    ".patch_merger",
    "a.rvq.codebook",
    "mm.a.code_embd",
];

/// More fragments for the `glm5-next` architecture.
const NEVER_QUANTIZED_GLM5_NEXT: &[&str] = &[
    "hc_",
    "indexer.attn_q_b",
    "indexer.attn_k",
    "indexer.proj",
    "indexer_compressor_gate",
    "indexer_compressor_ape",
    "ssm_f_a.weight",
    "ssm_f_b.weight",
    "ssm_g_a.weight",
    "ssm_g_b.weight",
    "ssm_beta.weight",
    "attn_kv_a_mqa.weight",
    "attn_k_b.weight",
    "attn_v_b.weight",
];

/// Whether llama.cpp quantizes this tensor at all.
pub fn allows_quantization(model: &ModelFacts, opts: &MixOptions, t: &TensorFacts) -> bool {
    let name = t.name;
    t.n_dims() >= 2
        && name.ends_with("weight")
        && !(opts.leave_output_tensor && name == "output.weight")
        && name != "position_embd.weight"
        && name != "token_types.weight"
        && !NEVER_QUANTIZED.iter().any(|f| name.contains(f))
        && !(model.arch == "glm5-next"
            && NEVER_QUANTIZED_GLM5_NEXT.iter().any(|f| name.contains(f)))
}

/// The fallback table (`tensor_type_fallback`): what a type becomes when
/// the row length is not a multiple of its block size.
fn fallback_type(target: GgmlType) -> Option<GgmlType> {
    use GgmlType as T;
    Some(match target {
        T::IQ1S | T::IQ1M | T::IQ2XXS | T::IQ2XS | T::IQ2S | T::IQ3XXS | T::IQ3S | T::IQ4XS => {
            T::IQ4NL
        }
        T::Q2_0 | T::Q2K | T::Q3K | T::TQ1_0 | T::TQ2_0 => T::Q4_0,
        T::Q4K => T::Q5_0,
        T::Q5K => T::Q5_1,
        T::Q6K => T::Q8_0,
        t if t.block_size() <= 32 => t,
        _ => return None,
    })
}

/// Counters that advance as tensors are visited (`quantize_state_impl`).
struct MixState {
    n_attention_wv: u32,
    i_attention_wv: u32,
    i_ffn_down: u32,
    i_ffn_gate: u32,
    i_ffn_up: u32,
    has_tied_embeddings: bool,
}

/// The type of every tensor, given in llama.cpp's order ([`llama_order`]):
/// `llama_tensor_get_type` over the file, with the counters it keeps.
pub fn choose_types(
    model: &ModelFacts,
    opts: &MixOptions,
    tensors: &[TensorFacts],
) -> Result<Vec<TypeChoice>, MixError> {
    let categories: Vec<Category> = tensors.iter().map(|t| category(t.name)).collect();
    let mut state = MixState {
        n_attention_wv: categories.iter().filter(|c| c.is_attn_v()).count() as u32,
        i_attention_wv: 0,
        i_ffn_down: 0,
        i_ffn_gate: 0,
        i_ffn_up: 0,
        has_tied_embeddings: !categories.contains(&Category::Output),
    };
    let default_type = opts.file_type.default_type();
    tensors
        .iter()
        .zip(&categories)
        .map(|(t, &cat)| {
            let quantizable = allows_quantization(model, opts, t);
            let (ggml_type, fallback) = if quantizable {
                tensor_type(&mut state, model, opts, t, cat, default_type)?
            } else {
                (t.ggml_type, None)
            };
            Ok(TypeChoice {
                ggml_type,
                quantizable,
                fallback,
                requires_imatrix: requires_imatrix(t.name, ggml_type, opts.file_type),
            })
        })
        .collect()
}

/// `tensor_requires_imatrix`.
fn requires_imatrix(name: &str, ty: GgmlType, ft: FileType) -> bool {
    use GgmlType as T;
    if is_token_embd(name) || name == "output.weight" {
        return false;
    }
    match ty {
        T::IQ3XXS | T::IQ2XXS | T::IQ2XS | T::IQ2S | T::IQ1M | T::IQ1S => true,
        T::Q2K => ft == FileType::Q2_K_S,
        _ => false,
    }
}

/// `llama_tensor_get_type` for one quantizable tensor.
fn tensor_type(
    qs: &mut MixState,
    model: &ModelFacts,
    opts: &MixOptions,
    t: &TensorFacts,
    cat: Category,
    default_type: GgmlType,
) -> Result<(GgmlType, Option<Fallback>), MixError> {
    if let Some(ty) = opts.token_embedding_type {
        if cat == Category::TokenEmbd {
            // per_layer_token_embd follows --token-embedding-type unless a
            // --tensor-type pattern names it.
            let named = t.name == "per_layer_token_embd.weight"
                && opts.tensor_types.iter().any(|o| o.matches(t.name));
            if !named {
                return Ok((ty, None));
            }
        }
    }
    if let Some(ty) = opts.output_tensor_type {
        if cat == Category::Output {
            return Ok((ty, None));
        }
    }
    if !default_type.is_quantized() {
        return Ok((default_type, None));
    }
    let mut new_type = default_type;
    let manual = opts.tensor_types.iter().find(|o| o.matches(t.name));
    if let Some(o) = manual {
        new_type = o.ggml_type;
    } else if !opts.pure {
        new_type = mix_rule(qs, model, opts, t, cat, new_type)?;
    }
    let row = t.ne(0);
    let block = new_type.block_size();
    if row.is_multiple_of(block) {
        return Ok((new_type, None));
    }
    let mut to = fallback_type(new_type).ok_or_else(|| MixError::Tensor {
        name: t.name.to_string(),
        reason: format!(
            "rows of {row} do not fit {new_type}'s blocks of {block} and llama.cpp defines no fallback for {new_type}"
        ),
    })?;
    if !row.is_multiple_of(to.block_size()) {
        to = GgmlType::F16;
    }
    Ok((
        to,
        Some(Fallback {
            wanted: new_type,
            block_size: block,
        }),
    ))
}

/// `use_more_bits`: the first and last eighth of the layers and every
/// third one between get more bits.
fn use_more_bits(i_layer: i64, n_layers: i64) -> bool {
    i_layer < n_layers / 8 || i_layer >= 7 * n_layers / 8 || (i_layer - n_layers / 8) % 3 == 2
}

/// `llama_tensor_get_type_impl`: the mix's rules by tensor role.
// Branch for branch as in llama.cpp, so the two read side by side even
// where neighbouring branches pick the same type.
#[allow(clippy::if_same_then_else)]
fn mix_rule(
    qs: &mut MixState,
    model: &ModelFacts,
    opts: &MixOptions,
    t: &TensorFacts,
    cat: Category,
    mut new_type: GgmlType,
) -> Result<GgmlType, MixError> {
    use FileType as F;
    use GgmlType as T;
    let ft = opts.file_type;
    let arch = model.arch.as_str();
    let falcon = arch == "falcon";
    let n_expert = model.n_expert;
    let n_gqa = model.n_gqa();
    let has_imatrix = opts.has_imatrix;
    let n_layer = i64::from(model.n_layer);
    // With experts the layer comes from the name: experts of one layer are
    // not consecutive in the file.
    let layer_info = |counter: u32| -> Result<(i64, i64), MixError> {
        if n_expert.max(1) > 1 {
            let i = block_of(t.name).ok_or_else(|| MixError::Tensor {
                name: t.name.to_string(),
                reason: "cannot tell its layer: the name does not start with blk.N.".into(),
            })?;
            if i < 0 || i >= n_layer {
                return Err(MixError::Tensor {
                    name: t.name.to_string(),
                    reason: format!("layer {i} is outside the model's {n_layer} layers"),
                });
            }
            Ok((i, n_layer))
        } else {
            Ok((i64::from(counter), n_layer))
        }
    };
    let iq2_iq1 = matches!(
        ft,
        F::IQ2_XXS | F::IQ2_XS | F::IQ2_S | F::IQ2_M | F::IQ1_S | F::IQ1_M
    );

    if arch == "glm5-next"
        && (t.name.contains("attn_q_a")
            || t.name.contains("attn_q_b")
            || t.name.contains("nextn.eh_proj"))
        && !matches!(new_type, T::F32 | T::BF16 | T::F16)
    {
        return Ok(T::Q8_0);
    }

    if cat == Category::Output || (qs.has_tied_embeddings && cat == Category::TokenEmbd) {
        if let Some(ty) = opts.output_tensor_type {
            new_type = ty;
        } else if ft == F::MXFP4_MOE || falcon || !t.ne(0).is_multiple_of(new_type.block_size()) {
            new_type = T::Q8_0;
        } else if matches!(
            ft,
            F::IQ2_XXS | F::IQ2_XS | F::IQ3_XXS | F::IQ1_S | F::IQ2_S | F::IQ2_M | F::IQ1_M
        ) {
            new_type = T::Q5K;
        } else if new_type != T::Q8_0 {
            new_type = T::Q6K;
        }
    } else if ft == F::MXFP4_MOE {
        // MLA projections are 3-D too: for bailingmoe3 only the expert roles count.
        let expert_role = matches!(cat, Category::FfnUp | Category::FfnGate | Category::FfnDown);
        new_type = if t.ne(2) > 1 && (arch != "bailingmoe3" || expert_role) {
            T::MXFP4
        } else {
            T::Q8_0
        };
    } else if cat == Category::TokenEmbd {
        if let Some(ty) = opts.token_embedding_type {
            new_type = ty;
        } else if matches!(ft, F::IQ2_XXS | F::IQ2_XS | F::IQ1_S | F::IQ1_M) {
            new_type = T::Q2K;
        } else if matches!(ft, F::IQ2_S | F::IQ2_M | F::IQ3_XXS) {
            new_type = T::IQ3S;
        } else if matches!(ft, F::TQ1_0 | F::TQ2_0 | F::Q2_0) {
            new_type = T::Q4K;
        }
    } else if iq2_iq1 {
        let iq2_sm = matches!(ft, F::IQ2_S | F::IQ2_M);
        if cat.is_attn_v() {
            new_type = if n_gqa >= 4 || n_expert >= 4 {
                T::Q4K
            } else if iq2_sm {
                T::IQ3S
            } else {
                T::Q2K
            };
            qs.i_attention_wv += 1;
        } else if n_expert == 8 && cat == Category::AttnK {
            new_type = T::Q4K;
        } else if cat == Category::FfnDown {
            if i64::from(qs.i_ffn_down) < n_layer / 8 {
                new_type = if iq2_sm { T::IQ3S } else { T::Q2K };
            }
            qs.i_ffn_down += 1;
        } else if cat == Category::AttnOutput {
            if n_expert == 8 {
                new_type = T::Q5K;
            } else if matches!(ft, F::IQ1_S | F::IQ1_M) {
                new_type = T::IQ2XXS;
            } else if iq2_sm {
                new_type = T::IQ3S;
            }
        }
    } else if cat.is_attn_v() {
        let i = i64::from(qs.i_attention_wv);
        if ft == F::Q2_K {
            new_type = if n_gqa >= 4 { T::Q4K } else { T::Q3K };
        } else if ft == F::Q2_K_S && n_gqa >= 4 {
            new_type = T::Q4K;
        } else if ft == F::IQ3_XXS {
            new_type = if n_gqa >= 4 {
                T::Q4K
            } else if !has_imatrix {
                T::IQ3S
            } else {
                T::IQ3XXS
            };
        } else if matches!(ft, F::IQ3_XS | F::IQ3_S) && n_gqa >= 4 {
            new_type = T::Q4K;
        } else if ft == F::IQ3_M {
            new_type = T::Q4K;
        } else if ft == F::Q3_K_M {
            new_type = if i < 2 { T::Q5K } else { T::Q4K };
        } else if ft == F::Q3_K_L {
            new_type = T::Q5K;
        } else if matches!(ft, F::IQ4_NL | F::IQ4_XS) && n_gqa >= 4 {
            new_type = T::Q5K;
        } else if matches!(ft, F::Q4_K_M | F::Q5_K_M)
            && use_more_bits(i, i64::from(qs.n_attention_wv))
        {
            new_type = T::Q6K;
        } else if ft == F::Q4_K_S && i < 4 {
            new_type = T::Q5K;
        }
        if model.is_70b() && matches!(new_type, T::Q3K | T::Q4K) {
            // 8 heads share each attn_v there, so it is 8x smaller than
            // attn_q: more bits cost little.
            new_type = T::Q5K;
        }
        if n_expert == 8 {
            new_type = T::Q8_0;
        }
        qs.i_attention_wv += 1;
    } else if cat == Category::AttnK {
        if n_expert == 8 {
            new_type = T::Q8_0;
        } else if ft == F::IQ3_XS {
            new_type = T::IQ3XXS;
        } else if ft == F::IQ3_XXS {
            new_type = T::IQ2S;
        }
    } else if cat == Category::AttnQ {
        if ft == F::IQ3_XS {
            new_type = T::IQ3XXS;
        } else if ft == F::IQ3_XXS {
            new_type = T::IQ2S;
        }
    } else if cat == Category::FfnDown {
        let (i, n) = layer_info(qs.i_ffn_down)?;
        if ft == F::Q2_K {
            new_type = T::Q3K;
        } else if ft == F::Q2_K_S {
            if i < n / 8 {
                new_type = T::Q4K;
            }
        } else if ft == F::IQ3_XXS && !has_imatrix {
            new_type = if i < n / 8 { T::Q4K } else { T::Q3K };
        } else if ft == F::Q3_K_M {
            new_type = if i < n / 16 {
                T::Q5K
            } else if !falcon || use_more_bits(i, n) {
                T::Q4K
            } else {
                T::Q3K
            };
        } else if ft == F::IQ3_M && (i < n / 8 || (n_expert == 8 && use_more_bits(i, n))) {
            new_type = T::Q4K;
        } else if ft == F::Q3_K_L {
            new_type = if falcon { T::Q4K } else { T::Q5K };
        } else if ft == F::Q4_K_M {
            if falcon {
                new_type = if i < n / 16 {
                    T::Q6K
                } else if use_more_bits(i, n) {
                    T::Q5K
                } else {
                    T::Q4K
                };
            } else if use_more_bits(i, n) {
                new_type = T::Q6K;
            }
        } else if i < n / 8 && matches!(ft, F::IQ4_NL | F::IQ4_XS) && !has_imatrix {
            new_type = T::Q5K;
        } else if ft == F::Q5_K_M && use_more_bits(i, n) {
            new_type = T::Q6K;
        } else if ft == F::Q4_K_S && !falcon && i < n / 8 {
            new_type = T::Q5K;
        } else if matches!(ft, F::Q4_0 | F::Q5_0) && has_imatrix && i < n / 8 {
            // Q4_0/Q5_0 can go wrong on the first ffn_down layers even with
            // an imatrix; only then, so files without one stay as before.
            new_type = if ft == F::Q4_0 { T::Q4_1 } else { T::Q5_1 };
        }
        qs.i_ffn_down += 1;
    } else if cat == Category::AttnOutput {
        if !falcon {
            if n_expert == 8 {
                if matches!(
                    ft,
                    F::Q2_K
                        | F::IQ3_XS
                        | F::IQ3_XXS
                        | F::Q3_K_S
                        | F::Q3_K_M
                        | F::IQ4_NL
                        | F::Q4_K_S
                        | F::Q4_K_M
                        | F::IQ3_S
                        | F::IQ3_M
                        | F::IQ4_XS
                ) {
                    new_type = T::Q5K;
                }
            } else {
                match ft {
                    F::Q2_K => new_type = T::Q3K,
                    F::IQ3_XXS => new_type = T::IQ3S,
                    F::Q3_K_M => new_type = T::Q4K,
                    F::Q3_K_L => new_type = T::Q5K,
                    F::IQ3_M => new_type = T::Q4K,
                    _ => {}
                }
            }
        } else if ft == F::Q3_K_L {
            new_type = T::Q4K;
        }
    } else if cat == Category::FfnGate {
        // (llama.cpp's own attn_qkv branch sits here, but attn_qkv is
        // attention-v-like and the branch above takes it first.)
        let (i, n) = layer_info(qs.i_ffn_gate)?;
        if ft == F::IQ3_XS && i >= n / 8 && i < 7 * n / 8 {
            new_type = T::IQ3XXS;
        }
        qs.i_ffn_gate += 1;
    } else if cat == Category::FfnUp {
        let (i, n) = layer_info(qs.i_ffn_up)?;
        if ft == F::IQ3_XS && i >= n / 8 && i < 7 * n / 8 {
            new_type = T::IQ3XXS;
        }
        qs.i_ffn_up += 1;
    }
    Ok(new_type)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(arch: &str, n_layer: u32, n_head: u32, n_head_kv: u32) -> ModelFacts {
        ModelFacts {
            arch: arch.into(),
            n_layer,
            n_layer_nextn: 0,
            n_head,
            n_head_kv,
            n_expert: 0,
        }
    }

    /// A llama-shaped tensor list, in llama.cpp's order.
    fn llama_tensors(
        n_layer: u32,
        width: u64,
        ff: u64,
        vocab: u64,
        tied: bool,
    ) -> Vec<(String, Vec<u64>)> {
        let mut v = vec![
            ("token_embd.weight".to_string(), vec![width, vocab]),
            ("output_norm.weight".to_string(), vec![width]),
        ];
        if !tied {
            v.push(("output.weight".to_string(), vec![width, vocab]));
        }
        for i in 0..n_layer {
            for (n, d) in [
                ("attn_k.weight", vec![width, width / 4]),
                ("attn_norm.weight", vec![width]),
                ("attn_output.weight", vec![width, width]),
                ("attn_q.weight", vec![width, width]),
                ("attn_v.weight", vec![width, width / 4]),
                ("ffn_down.weight", vec![ff, width]),
                ("ffn_gate.weight", vec![width, ff]),
                ("ffn_norm.weight", vec![width]),
                ("ffn_up.weight", vec![width, ff]),
            ] {
                v.push((format!("blk.{i}.{n}"), d));
            }
        }
        v.sort_by(|a, b| llama_order(&a.0, &b.0));
        v
    }

    fn choose(
        model: &ModelFacts,
        opts: &MixOptions,
        tensors: &[(String, Vec<u64>)],
    ) -> Vec<(String, GgmlType)> {
        let facts: Vec<TensorFacts> = tensors
            .iter()
            .map(|(n, d)| TensorFacts {
                name: n,
                dims: d,
                ggml_type: if d.len() == 1 {
                    GgmlType::F32
                } else {
                    GgmlType::F16
                },
            })
            .collect();
        choose_types(model, opts, &facts)
            .unwrap()
            .into_iter()
            .zip(tensors)
            .map(|(c, (n, _))| (n.clone(), c.ggml_type))
            .collect()
    }

    fn type_of(v: &[(String, GgmlType)], name: &str) -> GgmlType {
        v.iter().find(|(n, _)| n == name).unwrap().1
    }

    #[test]
    fn order_puts_globals_first_then_blocks_numerically() {
        let mut names = vec![
            "blk.10.attn_q.weight",
            "blk.2.ffn_up.weight",
            "output.weight",
            "blk.2.attn_k.weight",
            "token_embd.weight",
        ];
        names.sort_by(|a, b| llama_order(a, b));
        assert_eq!(
            names,
            [
                "output.weight",
                "token_embd.weight",
                "blk.2.attn_k.weight",
                "blk.2.ffn_up.weight",
                "blk.10.attn_q.weight"
            ]
        );
        assert_eq!(block_of("blk.7"), Some(7));
        assert_eq!(block_of("blk.x.y"), None);
        assert_eq!(block_of("blk.-3.y"), Some(-3));
    }

    #[test]
    fn use_more_bits_of_30_layers() {
        let picked: Vec<i64> = (0..30).filter(|&i| use_more_bits(i, 30)).collect();
        assert_eq!(picked, [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]);
    }

    #[test]
    fn q4_k_m_on_a_4096_wide_llama() {
        let model = facts("llama", 32, 32, 8);
        let tensors = llama_tensors(32, 4096, 14336, 32000, false);
        let t = choose(&model, &MixOptions::new(FileType::Q4_K_M), &tensors);
        assert_eq!(type_of(&t, "output.weight"), GgmlType::Q6K);
        assert_eq!(type_of(&t, "token_embd.weight"), GgmlType::Q4K);
        assert_eq!(type_of(&t, "output_norm.weight"), GgmlType::F32);
        assert_eq!(type_of(&t, "blk.0.attn_v.weight"), GgmlType::Q6K);
        assert_eq!(type_of(&t, "blk.4.attn_v.weight"), GgmlType::Q4K);
        assert_eq!(type_of(&t, "blk.6.attn_v.weight"), GgmlType::Q6K);
        assert_eq!(type_of(&t, "blk.31.ffn_down.weight"), GgmlType::Q6K);
        assert_eq!(type_of(&t, "blk.5.ffn_down.weight"), GgmlType::Q4K);
        // 14336 is a multiple of 256: no fallback.
        assert_eq!(type_of(&t, "blk.5.ffn_up.weight"), GgmlType::Q4K);
    }

    #[test]
    fn fallbacks_on_576_wide_rows_with_tied_embeddings() {
        let model = facts("llama", 30, 9, 3);
        let tensors = llama_tensors(30, 576, 1536, 49152, true);
        let t = choose(&model, &MixOptions::new(FileType::Q4_K_M), &tensors);
        // Tied: token_embd follows the output rule, 576 % 256 != 0 -> Q8_0.
        assert_eq!(type_of(&t, "token_embd.weight"), GgmlType::Q8_0);
        assert_eq!(type_of(&t, "blk.0.attn_q.weight"), GgmlType::Q5_0);
        assert_eq!(type_of(&t, "blk.0.attn_v.weight"), GgmlType::Q8_0);
        assert_eq!(type_of(&t, "blk.3.attn_v.weight"), GgmlType::Q5_0);
        // ffn_down rows are 1536 = 6 * 256: no fallback.
        assert_eq!(type_of(&t, "blk.0.ffn_down.weight"), GgmlType::Q6K);
        assert_eq!(type_of(&t, "blk.3.ffn_down.weight"), GgmlType::Q4K);
        let t = choose(&model, &MixOptions::new(FileType::IQ4_XS), &tensors);
        assert_eq!(type_of(&t, "blk.0.attn_q.weight"), GgmlType::IQ4NL);
        assert_eq!(type_of(&t, "blk.0.ffn_down.weight"), GgmlType::Q5K);
        assert_eq!(type_of(&t, "blk.4.ffn_down.weight"), GgmlType::IQ4XS);
    }

    #[test]
    fn unfit_rows_fall_to_f16() {
        let model = facts("llama", 1, 1, 1);
        let tensors = vec![("blk.0.attn_q.weight".to_string(), vec![48, 48])];
        let t = choose(&model, &MixOptions::new(FileType::Q4_K_M), &tensors);
        assert_eq!(t[0].1, GgmlType::F16);
        let t = choose(&model, &MixOptions::new(FileType::Q8_0), &tensors);
        assert_eq!(t[0].1, GgmlType::F16);
    }

    #[test]
    fn overrides_pure_and_float_mixes() {
        let model = facts("llama", 8, 8, 8);
        let tensors = llama_tensors(8, 256, 512, 1000, false);
        let mut opts = MixOptions::new(FileType::Q4_K_M);
        opts.tensor_types = vec![TensorTypeOverride::parse("ATTN_Q=q8_0").unwrap()];
        opts.output_tensor_type = Some(GgmlType::Q4_0);
        opts.token_embedding_type = Some(GgmlType::F16);
        let t = choose(&model, &opts, &tensors);
        assert_eq!(type_of(&t, "blk.3.attn_q.weight"), GgmlType::Q8_0);
        assert_eq!(type_of(&t, "output.weight"), GgmlType::Q4_0);
        assert_eq!(type_of(&t, "token_embd.weight"), GgmlType::F16);
        let mut opts = MixOptions::new(FileType::Q4_K_M);
        opts.pure = true;
        let t = choose(&model, &opts, &tensors);
        assert_eq!(type_of(&t, "blk.0.attn_v.weight"), GgmlType::Q4K);
        assert_eq!(type_of(&t, "output.weight"), GgmlType::Q4K);
        // Overrides apply to quantized mixes only.
        let mut opts = MixOptions::new(FileType::F16);
        opts.tensor_types = vec![TensorTypeOverride::parse("attn_q=q8_0").unwrap()];
        let t = choose(&model, &opts, &tensors);
        assert_eq!(type_of(&t, "blk.3.attn_q.weight"), GgmlType::F16);
        assert_eq!(type_of(&t, "blk.3.attn_norm.weight"), GgmlType::F32);
    }

    #[test]
    fn leave_output_tensor_keeps_its_type() {
        let model = facts("llama", 8, 8, 8);
        let tensors = llama_tensors(8, 256, 512, 1000, false);
        let mut opts = MixOptions::new(FileType::Q4_0);
        opts.leave_output_tensor = true;
        let t = choose(&model, &opts, &tensors);
        assert_eq!(type_of(&t, "output.weight"), GgmlType::F16);
    }

    #[test]
    fn q2_k_s_requires_an_imatrix_except_for_embeddings() {
        let model = facts("llama", 8, 8, 8);
        let tensors = llama_tensors(8, 256, 512, 1000, false);
        let facts: Vec<TensorFacts> = tensors
            .iter()
            .map(|(n, d)| TensorFacts {
                name: n,
                dims: d,
                ggml_type: GgmlType::F16,
            })
            .collect();
        let c = choose_types(&model, &MixOptions::new(FileType::Q2_K_S), &facts).unwrap();
        let req: Vec<&str> = facts
            .iter()
            .zip(&c)
            .filter(|(_, c)| c.requires_imatrix && c.quantizable)
            .map(|(t, _)| t.name)
            .collect();
        assert!(req.contains(&"blk.3.attn_q.weight"));
        assert!(!req.contains(&"token_embd.weight"));
        assert!(!req.contains(&"output.weight"));
    }

    #[test]
    fn model_facts_from_metadata() {
        let mut m = Metadata::new();
        m.set("general.architecture", Value::String("llama".into()));
        m.set("llama.block_count", Value::U32(80));
        m.set("llama.attention.head_count", Value::U32(64));
        m.set("llama.attention.head_count_kv", Value::U32(8));
        let f = ModelFacts::from_gguf(&m).unwrap();
        assert_eq!(f.n_gqa(), 8);
        assert!(f.is_70b());
        m.set(
            "llama.attention.head_count_kv",
            Value::Array(crate::formats::gguf::Array::U32(vec![4; 80])),
        );
        assert_eq!(ModelFacts::from_gguf(&m).unwrap().n_head_kv, 4);
        m.set(
            "llama.attention.head_count_kv",
            Value::Array(crate::formats::gguf::Array::U32(vec![4; 3])),
        );
        assert!(ModelFacts::from_gguf(&m).is_err());
        m.remove("llama.block_count");
        assert!(ModelFacts::from_gguf(&m).is_err());
    }
}
