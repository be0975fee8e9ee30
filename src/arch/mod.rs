//! Model architectures: what each one is called in Hugging Face and GGUF,
//! how its tensors are named and laid out in each format, and how its
//! hyperparameters become GGUF keys and come back as config.json.
//!
//! One file per architecture. Adding one is one file that implements
//! [`Architecture`] plus a line in [`ALL`]. The defaults of the trait are
//! convert_hf_to_gguf.py's `TextModel` base class; each file overrides
//! what its class in llama.cpp's `conversion/` package overrides, and says
//! where it deliberately does better than the script.

mod gemma3;
pub mod hparams;
mod llama;
mod mistral;
mod phi3;
mod qwen2;
mod qwen3;

use std::fmt;
use std::path::Path;

use serde_json::{json, Value as Json};

pub use hparams::{HParams, JsonMap};
pub use llama::{llama3_rope_from_factors, Llama3Rope};

use crate::formats::gguf::{Metadata, Value};
use hparams::{json_f32, normalize_config};

/// Every architecture qforge converts.
pub static ALL: &[&dyn Architecture] = &[
    &llama::Llama,
    &mistral::Mistral,
    &qwen2::Qwen2,
    &qwen3::Qwen3,
    &gemma3::Gemma3,
    &phi3::Phi3,
];

/// The architecture whose Hugging Face class is `class` (config.json's
/// `architectures[0]`, e.g. `LlamaForCausalLM`).
pub fn by_hf_class(class: &str) -> Option<&'static dyn Architecture> {
    ALL.iter()
        .copied()
        .find(|a| a.hf_architectures().contains(&class))
}

/// The architecture that reads GGUF files of `general.architecture` =
/// `name`. Several Hugging Face architectures can share one GGUF name
/// (mistral is `llama` in GGUF); the first listed in [`ALL`] wins.
pub fn by_gguf_arch(name: &str) -> Option<&'static dyn Architecture> {
    ALL.iter().copied().find(|a| a.gguf_arch() == name)
}

/// The architecture named `name` in qforge's own terms (`llama`, `mistral`...).
pub fn by_name(name: &str) -> Option<&'static dyn Architecture> {
    ALL.iter().copied().find(|a| a.name() == name)
}

/// What an architecture cannot do with a model.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ArchError {
    /// A required hyperparameter is absent (names the keys tried).
    #[error("config.json has none of {0:?}")]
    MissingHparam(Vec<String>),
    /// A hyperparameter of the wrong type or range.
    #[error("hyperparameter '{key}' is {value}: {why}")]
    BadHparam {
        /// The key.
        key: String,
        /// The value found.
        value: String,
        /// What was expected.
        why: &'static str,
    },
    /// A GGUF key the way back needs is absent.
    #[error("GGUF key '{0}' is missing")]
    MissingKey(String),
    /// A tensor name that has no counterpart in the other format.
    #[error("tensor '{name}' has no {target} name in the {arch} architecture")]
    UnknownTensor {
        /// The tensor.
        name: String,
        /// The format whose name is missing.
        target: &'static str,
        /// The architecture.
        arch: &'static str,
    },
    /// A side file (tokenizer.json...) that could not be read.
    #[error("cannot read {path}: {why}")]
    Unreadable {
        /// The file.
        path: String,
        /// Why.
        why: String,
    },
    /// A tensor whose shape does not fit what the architecture does to it.
    #[error("tensor '{name}' has shape {shape:?}: {why}")]
    BadShape {
        /// The tensor.
        name: String,
        /// Its shape.
        shape: Vec<u64>,
        /// What does not fit.
        why: String,
    },
}

/// Result with an [`ArchError`].
pub type Result<T, E = ArchError> = std::result::Result<T, E>;

/// The order in which a format stores the rows (outermost dimension) of a
/// tensor, relative to the Hugging Face order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowOrder {
    /// Hugging Face order.
    Natural,
    /// llama.cpp's order for llama-family q and k projections: within each
    /// of `n_head` heads, the two rotary halves interleaved
    /// (convert_hf_to_gguf.py's `LlamaModel.permute`).
    RopeInterleaved {
        /// Heads the rows are grouped in (n_head for q, n_head_kv for k).
        n_head: u64,
    },
}

impl RowOrder {
    /// Which Hugging Face row is stored at row `stored` of `rows`.
    pub fn canonical_row(self, stored: u64, rows: u64) -> u64 {
        match self {
            RowOrder::Natural => stored,
            RowOrder::RopeInterleaved { n_head } => {
                let per = rows / n_head;
                let half = per / 2;
                let (h, rem) = (stored / per, stored % per);
                h * per + (rem % 2) * half + rem / 2
            }
        }
    }

    /// Where Hugging Face row `canonical` of `rows` is stored.
    pub fn stored_row(self, canonical: u64, rows: u64) -> u64 {
        match self {
            RowOrder::Natural => canonical,
            RowOrder::RopeInterleaved { n_head } => {
                let per = rows / n_head;
                let half = per / 2;
                let (h, rem) = (canonical / per, canonical % per);
                h * per + (rem % half) * 2 + rem / half
            }
        }
    }

    /// Checks that `rows` can be stored in this order.
    pub fn check(self, name: &str, shape: &[u64]) -> Result<()> {
        if let RowOrder::RopeInterleaved { n_head } = self {
            let rows = shape.first().copied().unwrap_or(1);
            if n_head == 0 || rows % (2 * n_head) != 0 {
                return Err(ArchError::BadShape {
                    name: name.to_string(),
                    shape: shape.to_vec(),
                    why: format!(
                        "{rows} rows do not split into {n_head} heads of two rotary halves"
                    ),
                });
            }
        }
        Ok(())
    }
}

/// How a format stores one tensor relative to its Hugging Face values:
/// `stored[row] = hf[rows.canonical_row(row)] + shift`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Layout {
    /// Row order.
    pub rows: RowOrder,
    /// A constant added to every value (Gemma's norms are stored as
    /// `1 + w` in GGUF).
    pub shift: f32,
}

impl Layout {
    /// Stored exactly as in Hugging Face.
    pub const NATURAL: Layout = Layout {
        rows: RowOrder::Natural,
        shift: 0.0,
    };
}

/// A tensor an architecture adds to the GGUF that is not in the Hugging
/// Face checkpoint (llama 3's `rope_freqs`, Phi-3's long-rope factors).
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratedTensor {
    /// GGUF name.
    pub name: String,
    /// Values (stored as F32, 1-D).
    pub values: Vec<f32>,
}

/// What the way back (GGUF to Hugging Face) knows about the GGUF model
/// beyond its metadata.
#[derive(Debug, Clone, Copy)]
pub struct GgufModelInfo<'a> {
    /// The GGUF metadata.
    pub metadata: &'a Metadata,
    /// Names of the tensors in the file.
    pub tensor_names: &'a [String],
    /// Rows of `token_embd.weight` (the vocabulary size).
    pub vocab_rows: Option<u64>,
}

impl GgufModelInfo<'_> {
    /// True when the file holds a tensor of this name.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.tensor_names.iter().any(|n| n == name)
    }
}

/// One model architecture, seen from both formats. The provided methods
/// are convert_hf_to_gguf.py's `TextModel` behaviour.
pub trait Architecture: Sync + Send {
    /// qforge's name (`llama`, `mistral`...).
    fn name(&self) -> &'static str;
    /// Hugging Face classes (`architectures[0]` of config.json) converted
    /// by this file; the first is the one written on the way back.
    fn hf_architectures(&self) -> &'static [&'static str];
    /// `general.architecture` in GGUF.
    fn gguf_arch(&self) -> &'static str;
    /// config.json's `model_type` on the way back.
    fn hf_model_type(&self) -> &'static str;
    /// Module names inside a block, Hugging Face to GGUF, without the
    /// `model.layers.N.` / `blk.N.` prefixes and `.weight`/`.bias`
    /// suffixes (gguf-py's tensor_mapping.py for this architecture).
    fn block_tensors(&self) -> &'static [(&'static str, &'static str)];

    /// Module names outside the blocks.
    fn global_tensors(&self) -> &'static [(&'static str, &'static str)] {
        &[
            ("model.embed_tokens", "token_embd"),
            ("model.norm", "output_norm"),
            ("lm_head", "output"),
        ]
    }

    /// rope theta transformers uses when config.json names none.
    fn default_rope_theta(&self) -> f64 {
        10000.0
    }

    /// Fills in the defaults transformers' config class gives absent keys
    /// (the script sees them through `AutoConfig.to_dict()`).
    fn fill_config_defaults(&self, cfg: &mut JsonMap);

    /// The hyperparameters the script sees for this config.json.
    fn hparams(&self, config: &JsonMap) -> HParams {
        let mut map = normalize_config(config, self.default_rope_theta());
        self.fill_config_defaults(&mut map);
        HParams::from_map(map)
    }

    /// The GGUF name of a Hugging Face tensor (`map_tensor_name`).
    fn gguf_name(&self, hf: &str) -> Option<String> {
        map_name(hf, self.global_tensors(), self.block_tensors(), true)
    }

    /// The Hugging Face name of a GGUF tensor.
    fn hf_name(&self, gguf: &str) -> Option<String> {
        map_name(gguf, self.global_tensors(), self.block_tensors(), false)
    }

    /// How GGUF stores the Hugging Face tensor `hf_name`.
    fn gguf_layout(&self, hf_name: &str, shape: &[u64], hp: &HParams) -> Result<Layout> {
        let _ = (hf_name, shape, hp);
        Ok(Layout::NATURAL)
    }

    /// Rows of the Hugging Face tensor `hf_name` that the GGUF keeps
    /// (`None`: all of them). `hf_dir` is the model folder.
    fn gguf_row_limit(&self, hf_name: &str, hp: &HParams, hf_dir: &Path) -> Result<Option<u64>> {
        let _ = (hf_name, hp, hf_dir);
        Ok(None)
    }

    /// Keys the script writes before the metadata proper, right after
    /// `general.architecture` (from `generate_extra_tensors`).
    fn write_early_gguf_keys(&self, hp: &HParams, w: &mut KeyWriter<'_>) -> Result<()> {
        let _ = (hp, w);
        Ok(())
    }

    /// Writes the architecture's GGUF keys (`set_gguf_parameters`), with
    /// `general.file_type` = `ftype` where the script puts it.
    fn write_gguf_hparams(&self, hp: &HParams, w: &mut KeyWriter<'_>, ftype: u32) -> Result<()> {
        write_base_hparams(hp, w, ftype)
    }

    /// Tensors the script generates (`generate_extra_tensors`), written
    /// before the checkpoint's own.
    fn extra_gguf_tensors(&self, hp: &HParams) -> Result<Vec<GeneratedTensor>> {
        let _ = hp;
        Ok(Vec::new())
    }

    /// config.json for a GGUF model of this architecture.
    fn hf_config(&self, info: &GgufModelInfo<'_>) -> Result<JsonMap> {
        base_hf_config(self, info)
    }
}

impl fmt::Debug for dyn Architecture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Architecture({})", self.name())
    }
}

/// Maps a tensor name through global and per-block tables, either way.
/// The `.weight`/`.bias` suffix is carried over, as gguf-py's
/// `get_name(try_suffixes=(".weight", ".bias"))` does.
fn map_name(
    name: &str,
    global: &[(&'static str, &'static str)],
    block: &[(&'static str, &'static str)],
    to_gguf: bool,
) -> Option<String> {
    let (stem, suffix) = match name.rsplit_once('.') {
        Some((s, suf @ ("weight" | "bias"))) => (s, suf),
        _ => return None,
    };
    let pick = |pair: &(&'static str, &'static str)| -> (&'static str, &'static str) {
        if to_gguf {
            (pair.0, pair.1)
        } else {
            (pair.1, pair.0)
        }
    };
    if let Some((_, out)) = global.iter().map(pick).find(|(from, _)| *from == stem) {
        return Some(format!("{out}.{suffix}"));
    }
    let (from_prefix, to_prefix) = if to_gguf {
        ("model.layers.", "blk.")
    } else {
        ("blk.", "model.layers.")
    };
    let rest = stem.strip_prefix(from_prefix)?;
    let (bid, module) = rest.split_once('.')?;
    if bid.is_empty() || !bid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (_, out) = block.iter().map(pick).find(|(from, _)| *from == module)?;
    Some(format!("{to_prefix}{bid}.{out}.{suffix}"))
}

/// The block id of a tensor name: its first all-digit dot-separated part
/// (the script's `bid`).
pub fn block_id(name: &str) -> Option<u64> {
    name.split('.')
        .find(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|p| p.parse().ok())
}

/// Writes `{arch}.KEY` and `general.*` values with gguf-py's types:
/// integers as u32, floats as f32.
pub struct KeyWriter<'a> {
    arch: &'a str,
    out: &'a mut Metadata,
}

impl<'a> KeyWriter<'a> {
    /// A writer of `arch`'s keys into `out`.
    pub fn new(arch: &'a str, out: &'a mut Metadata) -> Self {
        KeyWriter { arch, out }
    }

    /// The architecture prefix.
    pub fn arch(&self) -> &str {
        self.arch
    }

    /// Sets a full key. As in gguf-py, a key set twice keeps its first
    /// position and takes the new value.
    pub fn set(&mut self, key: &str, value: Value) {
        self.out.set(key, value);
    }

    /// `{arch}.suffix` as u32 from a JSON integer.
    pub fn u32(&mut self, suffix: &str, v: &Json) -> Result<()> {
        let n = json_u32(suffix, v)?;
        let key = format!("{}.{suffix}", self.arch);
        self.out.set(key, Value::U32(n));
        Ok(())
    }

    /// `{arch}.suffix` as u32.
    pub fn u32_value(&mut self, suffix: &str, n: u32) {
        let key = format!("{}.{suffix}", self.arch);
        self.out.set(key, Value::U32(n));
    }

    /// `{arch}.suffix` as f32 from a JSON number.
    pub fn f32(&mut self, suffix: &str, v: &Json) -> Result<()> {
        let x = v
            .as_f64()
            .ok_or_else(|| bad(suffix, v, "expected a number"))?;
        let key = format!("{}.{suffix}", self.arch);
        self.out.set(key, Value::F32(x as f32));
        Ok(())
    }

    /// `{arch}.suffix` as a string (skipped when empty, as gguf-py does).
    pub fn string(&mut self, suffix: &str, s: &str) {
        if !s.is_empty() {
            let key = format!("{}.{suffix}", self.arch);
            self.out.set(key, Value::String(s.to_string()));
        }
    }

    /// `{arch}.suffix` as a bool.
    pub fn bool(&mut self, suffix: &str, b: bool) {
        let key = format!("{}.{suffix}", self.arch);
        self.out.set(key, Value::Bool(b));
    }
}

fn bad(key: &str, v: &Json, why: &'static str) -> ArchError {
    ArchError::BadHparam {
        key: key.to_string(),
        value: v.to_string(),
        why,
    }
}

/// A JSON value as u32, as Python's `struct.pack("I", v)` accepts it.
pub fn json_u32(key: &str, v: &Json) -> Result<u32> {
    v.as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| bad(key, v, "expected an integer from 0 to 2^32-1"))
}

/// The script's `find_hparam(keys)` without `optional`: an error names the
/// keys when none is present.
pub fn require<'h>(hp: &'h HParams, keys: &[&str]) -> Result<&'h Json> {
    hp.find(keys)
        .ok_or_else(|| ArchError::MissingHparam(keys.iter().map(|k| k.to_string()).collect()))
}

/// `TextModel.set_gguf_parameters`, key by key and in its order.
pub fn write_base_hparams(hp: &HParams, w: &mut KeyWriter<'_>, ftype: u32) -> Result<()> {
    let blocks = require(
        hp,
        &["n_layers", "num_hidden_layers", "n_layer", "num_layers"],
    )?;
    w.u32("block_count", blocks)?;
    if let Some(v) = hp.find_some(&[
        "max_position_embeddings",
        "n_ctx",
        "n_positions",
        "max_length",
        "max_sequence_length",
        "model_max_length",
    ]) {
        w.u32("context_length", v)?;
    }
    if let Some(v) = hp.find_some(&["hidden_size", "n_embd", "dim"]) {
        w.u32("embedding_length", v)?;
    }
    if let Some(v) = hp.find_some(&[
        "prefix_dense_intermediate_size",
        "dense_intermediate_size",
        "intermediate_size",
        "n_inner",
        "hidden_dim",
    ]) {
        w.u32("feed_forward_length", v)?;
    }
    if let Some(v) = hp.find_some(&["num_attention_heads", "n_head", "n_heads"]) {
        w.u32("attention.head_count", v)?;
    }
    if let Some(v) = hp.find_some(&["num_key_value_heads", "n_kv_heads"]) {
        w.u32("attention.head_count_kv", v)?;
    }
    if hp.get("is_causal") == Some(&Json::Bool(false)) {
        w.bool("attention.causal", false);
    }

    let rope = hp.full_attention_rope();
    if let Some(rope_type) = rope.get("rope_type").and_then(Json::as_str) {
        let factor = rope.get("factor").filter(|v| !v.is_null());
        match (rope_type, factor) {
            ("linear", Some(f)) => {
                w.string("rope.scaling.type", "linear");
                w.f32("rope.scaling.factor", f)?;
            }
            ("yarn", Some(f)) => {
                w.string("rope.scaling.type", "yarn");
                w.f32("rope.scaling.factor", f)?;
                let orig = rope
                    .get("original_max_position_embeddings")
                    .ok_or_else(|| {
                        ArchError::MissingHparam(vec![
                            "rope_parameters.original_max_position_embeddings".into(),
                        ])
                    })?;
                w.u32("rope.scaling.original_context_length", orig)?;
                let optional = [
                    ("extrapolation_factor", "rope.scaling.yarn_ext_factor"),
                    ("beta_fast", "rope.scaling.yarn_beta_fast"),
                    ("beta_slow", "rope.scaling.yarn_beta_slow"),
                ];
                if let Some(v) = rope.get("extrapolation_factor").filter(|v| !v.is_null()) {
                    w.f32(optional[0].1, v)?;
                }
                if let Some(v) = rope
                    .get("attention_factor")
                    .or_else(|| rope.get("attn_factor"))
                    .filter(|v| !v.is_null())
                {
                    w.f32("rope.scaling.yarn_attn_factor", v)?;
                }
                for (k, key) in &optional[1..] {
                    if let Some(v) = rope.get(*k).filter(|v| !v.is_null()) {
                        w.f32(key, v)?;
                    }
                }
            }
            ("su" | "longrope", _) => w.string("rope.scaling.type", "longrope"),
            // "default", "dynamic", "llama3" (a generated tensor) and
            // types the script only warns about write nothing here.
            _ => {}
        }
    }
    if let Some(t) = rope.get("rope_theta").filter(|v| !v.is_null()) {
        w.f32("rope.freq_base", t)?;
    }
    if let Some(t) = hp
        .rope_parameters()
        .get("sliding_attention")
        .and_then(|s| s.get("rope_theta"))
        .filter(|v| !v.is_null())
    {
        w.f32("rope.freq_base_swa", t)?;
    }
    if let Some(v) = hp.find_some(&["rms_norm_eps", "norm_eps"]) {
        w.f32("attention.layer_norm_rms_epsilon", v)?;
    }
    if let Some(v) = hp.find_some(&["layer_norm_eps", "layer_norm_epsilon", "norm_epsilon"]) {
        w.f32("attention.layer_norm_epsilon", v)?;
    }
    if let Some(v) = hp.find_some(&["num_local_experts", "num_experts", "n_routed_experts"]) {
        w.u32("expert_count", v)?;
    }
    if let Some(v) = hp.find_some(&[
        "num_experts_per_tok",
        "num_experts_per_token",
        "top_k_experts",
    ]) {
        w.u32("expert_used_count", v)?;
    }
    if let Some(head_dim) = hp.get("head_dim").filter(|v| !v.is_null()) {
        w.u32("attention.key_length", head_dim)?;
        w.u32("attention.value_length", head_dim)?;
    }
    w.set(crate::formats::gguf::keys::FILE_TYPE, Value::U32(ftype));
    Ok(())
}

/// Reads `{arch}.KEY` values of a GGUF file.
pub struct GgufKeys<'a> {
    arch: &'a str,
    md: &'a Metadata,
}

impl<'a> GgufKeys<'a> {
    /// The keys of `arch` in `md`.
    pub fn new(arch: &'a str, md: &'a Metadata) -> Self {
        GgufKeys { arch, md }
    }

    /// The value of `{arch}.suffix`.
    pub fn get(&self, suffix: &str) -> Option<&'a Value> {
        self.md.get(&format!("{}.{suffix}", self.arch))
    }

    /// `{arch}.suffix` as an integer.
    pub fn u64(&self, suffix: &str) -> Option<u64> {
        self.get(suffix).and_then(Value::as_u64)
    }

    /// `{arch}.suffix` as an integer, or an error naming the key.
    pub fn require_u64(&self, suffix: &str) -> Result<u64> {
        self.u64(suffix)
            .ok_or_else(|| ArchError::MissingKey(format!("{}.{suffix}", self.arch)))
    }

    /// `{arch}.suffix` as an f32 (the type GGUF stores floats in).
    pub fn f32(&self, suffix: &str) -> Option<f32> {
        match self.get(suffix)? {
            Value::F32(x) => Some(*x),
            v => v.as_f64().map(|x| x as f32),
        }
    }

    /// `{arch}.suffix` as a string.
    pub fn str(&self, suffix: &str) -> Option<&'a str> {
        self.get(suffix).and_then(Value::as_str)
    }

    /// A whole key (`tokenizer.ggml.bos_token_id`).
    pub fn global(&self, key: &str) -> Option<&'a Value> {
        self.md.get(key)
    }
}

/// The config.json keys every architecture shares, from GGUF keys: sizes,
/// heads, context, norm epsilon, rope (as transformers 5's
/// `rope_parameters` and, for mlx-lm and older transformers, a top-level
/// `rope_theta`), tied embeddings, special token ids.
pub fn base_hf_config<A: Architecture + ?Sized>(
    arch: &A,
    info: &GgufModelInfo<'_>,
) -> Result<JsonMap> {
    let k = GgufKeys::new(arch.gguf_arch(), info.metadata);
    let mut c = JsonMap::new();
    c.insert("architectures".into(), json!([arch.hf_architectures()[0]]));
    c.insert("model_type".into(), json!(arch.hf_model_type()));
    let vocab = k
        .u64("vocab_size")
        .or(info.vocab_rows)
        .or_else(|| {
            info.metadata
                .get_array("tokenizer.ggml.tokens")
                .map(|a| a.len() as u64)
        })
        .ok_or_else(|| ArchError::MissingKey(format!("{}.vocab_size", arch.gguf_arch())))?;
    c.insert("vocab_size".into(), json!(vocab));
    let hidden = k.require_u64("embedding_length")?;
    c.insert("hidden_size".into(), json!(hidden));
    c.insert(
        "intermediate_size".into(),
        json!(k.require_u64("feed_forward_length")?),
    );
    c.insert(
        "num_hidden_layers".into(),
        json!(k.require_u64("block_count")?),
    );
    let heads = k.require_u64("attention.head_count")?;
    c.insert("num_attention_heads".into(), json!(heads));
    c.insert(
        "num_key_value_heads".into(),
        json!(k.u64("attention.head_count_kv").unwrap_or(heads)),
    );
    if let Some(hd) = k.u64("attention.key_length") {
        c.insert("head_dim".into(), json!(hd));
    }
    if let Some(ctx) = k.u64("context_length") {
        c.insert("max_position_embeddings".into(), json!(ctx));
    }
    if let Some(eps) = k.f32("attention.layer_norm_rms_epsilon") {
        c.insert("rms_norm_eps".into(), json_f32(eps));
    }
    c.insert("hidden_act".into(), json!("silu"));

    let theta = k
        .f32("rope.freq_base")
        .unwrap_or(arch.default_rope_theta() as f32);
    let mut rope = JsonMap::new();
    rope.insert("rope_theta".into(), json_f32(theta));
    match k.str("rope.scaling.type") {
        Some("linear") => {
            rope.insert("rope_type".into(), json!("linear"));
            if let Some(f) = k.f32("rope.scaling.factor") {
                rope.insert("factor".into(), json_f32(f));
            }
        }
        Some("yarn") => {
            rope.insert("rope_type".into(), json!("yarn"));
            if let Some(f) = k.f32("rope.scaling.factor") {
                rope.insert("factor".into(), json_f32(f));
            }
            if let Some(o) = k.u64("rope.scaling.original_context_length") {
                rope.insert("original_max_position_embeddings".into(), json!(o));
            }
            for (key, name) in [
                ("rope.scaling.yarn_beta_fast", "beta_fast"),
                ("rope.scaling.yarn_beta_slow", "beta_slow"),
                ("rope.scaling.yarn_attn_factor", "attention_factor"),
            ] {
                if let Some(v) = k.f32(key) {
                    rope.insert(name.into(), json_f32(v));
                }
            }
        }
        _ => {
            rope.insert("rope_type".into(), json!("default"));
        }
    }
    c.insert("rope_parameters".into(), Json::Object(rope));
    c.insert("rope_theta".into(), json_f32(theta));

    let tied = !info.has_tensor("output.weight");
    c.insert("tie_word_embeddings".into(), json!(tied));
    for (key, name) in [
        ("tokenizer.ggml.bos_token_id", "bos_token_id"),
        ("tokenizer.ggml.eos_token_id", "eos_token_id"),
        ("tokenizer.ggml.padding_token_id", "pad_token_id"),
    ] {
        let v = k.global(key).and_then(Value::as_u64);
        c.insert(name.into(), v.map_or(Json::Null, |v| json!(v)));
    }
    Ok(c)
}

/// `generation_config.json` from GGUF keys: special token ids, and the
/// sampling settings gguf-py writes from a generation config
/// (`general.sampling.*`).
pub fn generation_config(md: &Metadata) -> JsonMap {
    let mut g = JsonMap::new();
    g.insert("_from_model_config".into(), json!(true));
    for (key, name) in [
        ("tokenizer.ggml.bos_token_id", "bos_token_id"),
        ("tokenizer.ggml.eos_token_id", "eos_token_id"),
        ("tokenizer.ggml.padding_token_id", "pad_token_id"),
    ] {
        if let Some(v) = md.get_u64(key) {
            g.insert(name.into(), json!(v));
        }
    }
    let mut sampling = false;
    for (key, name) in [
        ("general.sampling.top_k", "top_k"),
        ("general.sampling.top_p", "top_p"),
        ("general.sampling.min_p", "min_p"),
        ("general.sampling.temp", "temperature"),
        ("general.sampling.penalty_repeat", "repetition_penalty"),
    ] {
        match md.get(key) {
            Some(Value::F32(x)) => {
                g.insert(name.into(), json_f32(*x));
                sampling = true;
            }
            Some(v) => {
                if let Some(n) = v.as_i64() {
                    g.insert(name.into(), json!(n));
                    sampling = true;
                }
            }
            None => {}
        }
    }
    if sampling {
        g.insert("do_sample".into(), json!(true));
    }
    g
}

/// Heads for the q and k permutation of llama-family models: `(n_head,
/// n_head_kv)` as `LlamaModel.modify_tensors` finds them.
pub fn llama_heads(hp: &HParams) -> Result<(u64, u64)> {
    let n_head = require(hp, &["n_heads", "num_attention_heads"])?;
    let n_head = json_u32("num_attention_heads", n_head)?;
    let n_kv = require(hp, &["n_kv_heads", "num_key_value_heads"])?;
    let n_kv = json_u32("num_key_value_heads", n_kv)?;
    Ok((u64::from(n_head), u64::from(n_kv)))
}

/// The layout llama.cpp needs for llama-family q and k projections
/// (weights and biases): rows interleaved per head.
pub fn llama_qk_layout(hf_name: &str, shape: &[u64], hp: &HParams) -> Result<Layout> {
    let heads = if hf_name.ends_with("q_proj.weight") || hf_name.ends_with("q_proj.bias") {
        Some(llama_heads(hp)?.0)
    } else if hf_name.ends_with("k_proj.weight") || hf_name.ends_with("k_proj.bias") {
        let (n_head, n_kv) = llama_heads(hp)?;
        Some(if n_kv != n_head { n_kv } else { n_head })
    } else {
        None
    };
    match heads {
        None => Ok(Layout::NATURAL),
        Some(n_head) => {
            let rows = RowOrder::RopeInterleaved { n_head };
            rows.check(hf_name, shape)?;
            Ok(Layout { rows, shift: 0.0 })
        }
    }
}

/// Block modules of the llama layout (llama, mistral, qwen2).
pub const LLAMA_BLOCK: &[(&str, &str)] = &[
    ("input_layernorm", "attn_norm"),
    ("post_attention_layernorm", "ffn_norm"),
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"),
    ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_rows_match_the_scripts_permute() {
        // permute(w) = w.reshape(H, 2, R/H/2, C).swapaxes(1, 2).reshape(R, C),
        // computed here on row indices for H = 2, R = 8.
        let (h, r) = (2u64, 8u64);
        let half = r / h / 2;
        let mut expect = Vec::new();
        for hh in 0..h {
            for i in 0..half {
                for j in 0..2 {
                    expect.push(hh * (r / h) + j * half + i);
                }
            }
        }
        let order = RowOrder::RopeInterleaved { n_head: h };
        let got: Vec<u64> = (0..r).map(|s| order.canonical_row(s, r)).collect();
        assert_eq!(got, expect);
        for s in 0..r {
            assert_eq!(order.stored_row(order.canonical_row(s, r), r), s);
        }
    }

    #[test]
    fn names_map_both_ways() {
        let a = by_name("gemma3").unwrap();
        for (hf, gg) in [
            ("model.embed_tokens.weight", "token_embd.weight"),
            ("lm_head.weight", "output.weight"),
            (
                "model.layers.11.post_feedforward_layernorm.weight",
                "blk.11.post_ffw_norm.weight",
            ),
            (
                "model.layers.0.self_attn.k_norm.weight",
                "blk.0.attn_k_norm.weight",
            ),
        ] {
            assert_eq!(a.gguf_name(hf).as_deref(), Some(gg));
            assert_eq!(a.hf_name(gg).as_deref(), Some(hf));
        }
        let q = by_name("qwen2").unwrap();
        assert_eq!(
            q.gguf_name("model.layers.3.self_attn.q_proj.bias")
                .as_deref(),
            Some("blk.3.attn_q.bias")
        );
        assert_eq!(q.gguf_name("model.layers.x.self_attn.q_proj.weight"), None);
        assert_eq!(q.gguf_name("model.rotary_emb.inv_freq"), None);
        let p = by_name("phi3").unwrap();
        assert_eq!(
            p.gguf_name("model.layers.0.mlp.gate_up_proj.weight")
                .as_deref(),
            Some("blk.0.ffn_up.weight")
        );
        assert_eq!(
            p.hf_name("blk.0.attn_qkv.weight").as_deref(),
            Some("model.layers.0.self_attn.qkv_proj.weight")
        );
    }

    #[test]
    fn registry_finds_classes_and_gguf_names() {
        assert_eq!(by_hf_class("MistralForCausalLM").unwrap().name(), "mistral");
        assert_eq!(by_gguf_arch("llama").unwrap().name(), "llama");
        assert_eq!(by_gguf_arch("gemma3").unwrap().name(), "gemma3");
        assert!(by_hf_class("GPT2LMHeadModel").is_none());
        assert_eq!(block_id("model.layers.12.mlp.up_proj.weight"), Some(12));
        assert_eq!(block_id("lm_head.weight"), None);
    }
}
