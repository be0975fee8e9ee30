//! Planning and writing an MLX folder: what `mlx_lm.convert` writes.
//!
//! From a Hugging Face folder this is `mlx_lm.convert --hf-path IN
//! --mlx-path OUT [-q --q-bits B --q-group-size G] [--dtype D]` to the
//! byte: the same tensors quantized (every Linear and Embedding weight
//! whose rows hold whole groups; norms and biases never), the same dtype
//! rules (`--dtype`, else config.json's `torch_dtype`, else each tensor's
//! own), the same quantizer (mlx's CPU `mx.quantize`), the same file
//! names, shards, index and config.json layout. Where qforge's folder
//! differs, it is on purpose: config.json also carries the rope settings
//! mlx-lm 0.32 reads only at the top level ([`mlx_config`]).
//!
//! From a GGUF file, Q4_0, Q4_1 and Q8_0 tensors become 4- or 8-bit MLX
//! groups of 32 without requantizing (their values are the same numbers);
//! other quantized types are dequantized and requantized, which the plan
//! says, and float tensors stay floats unless `--bits` asks to quantize.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde_json::{json, Map, Value as Json};

use super::error::{ConvertError, Result};
use super::exec::{materialize, materialize_mlx, MlxQuantizer};
use super::mlx_exec::{self, MlxParts};
use super::plan::{is_lossless, Plan, PlanSource, TensorPlan};
use super::tokenizer_bridge::{self, HF_TOKENIZER_FILES};
use super::view::{Encoding, FloatType, ModelView, Source};
use super::{FileReport, TensorReport, WriteOptions, WriteReport};
use crate::arch::RowOrder;
use crate::formats::error::FormatError;
use crate::formats::mlx::{self as mlx_format, MlxFolder, QuantConfig, QuantParams, MODEL_CARD};
use crate::formats::paths::{read_side_file, MAX_TOKENIZER_FILE};
use crate::formats::safetensors::{Dtype, StTensorSpec};
use crate::hashing::sha256_file;
use crate::quant::imatrix::ImportanceMatrix;
use crate::quant::mlx_recipe::{module_quant, MlxLayout, MlxQuantArgs};

pub use crate::formats::mlx::{DEFAULT_BITS, DEFAULT_GROUP_SIZE};

/// How quantized MLX groups get their scale and bias (`--method`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MlxMethod {
    /// `mx.quantize`'s round to nearest from each group's min and max:
    /// `mlx_lm.convert`'s bytes.
    Rtn,
    /// A search per group for the stored scale and bias with the least
    /// weighted squared error ([`quant_kernels::mlx::quantize_search`]),
    /// steered by an importance matrix when one is given. Same tensors,
    /// same sizes, same config.json.
    #[default]
    Search,
}

impl MlxMethod {
    /// The option's value (`rtn`, `search`).
    pub fn name(self) -> &'static str {
        match self {
            MlxMethod::Rtn => "rtn",
            MlxMethod::Search => "search",
        }
    }
}

/// What an MLX output should be.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MlxTarget {
    /// `--bits`/`--group-size` (the missing one at mlx-lm's default):
    /// quantize every quantizable matrix so. `None`: keep floats as floats
    /// (and GGUF blocks in their lossless MLX form).
    pub quantize: Option<QuantParams>,
    /// `--dtype`: the type of unquantized tensors and of scales and biases.
    pub dtype: Option<FloatType>,
    /// One of mlx-lm's mixed recipes (`--quant-predicate`), with the
    /// `--bits`/`--group-size` given beside it: each module's bits as
    /// `mlx_lm.convert --quant-predicate` picks them. Takes the place of
    /// `quantize`.
    pub recipe: Option<MlxQuantArgs>,
    /// How tensors that are quantized from values get their scales.
    pub method: MlxMethod,
}

/// A mixed recipe applied to one model: its layer layout and arguments.
struct RecipePlan {
    args: MlxQuantArgs,
    layout: MlxLayout,
}

impl RecipePlan {
    fn new(view: &ModelView<'_>, args: MlxQuantArgs) -> Result<RecipePlan> {
        let layers = view.hparams.u64("num_hidden_layers").ok_or_else(|| {
            ConvertError::Unsupported(
                "config.json has no num_hidden_layers, which mlx-lm's mixed recipes need".into(),
            )
        })?;
        let paths: Vec<&str> = view
            .tensors
            .iter()
            .filter(|t| !dropped_by_mlx_lm(view, &t.name))
            .filter_map(|t| t.name.strip_suffix(".weight"))
            .collect();
        let layout = MlxLayout::from_module_paths(paths, layers as usize)
            .map_err(|e| ConvertError::Unsupported(e.to_string()))?;
        Ok(RecipePlan { args, layout })
    }

    /// The module's parameters and its config.json entry, or `None` when
    /// the recipe leaves the tensor as it is (not a quantizable matrix).
    fn module(&self, name: &str, shape: &[u64]) -> Result<Option<(QuantParams, Json)>> {
        let (Some(path), true) = (
            name.strip_suffix(".weight"),
            quantizable(name, shape, self.args.group_size()),
        ) else {
            return Ok(None);
        };
        let q = module_quant(path, shape, &self.args, Some(&self.layout))
            .map_err(|e| ConvertError::Unsupported(e.to_string()))?;
        Ok(q.map(|q| {
            let params = QuantParams {
                bits: q.bits,
                group_size: q.group_size,
            };
            let entry = q.config_entry.unwrap_or_else(
                || json!({"group_size": q.group_size, "bits": q.bits, "mode": "affine"}),
            );
            (params, entry)
        }))
    }
}

/// A plan for an MLX folder.
#[derive(Debug, Clone)]
pub struct MlxPlan {
    /// One step per Hugging Face tensor, in mlx-lm's parameter order; a
    /// step to [`Encoding::MlxAffine`] writes three tensors.
    pub plan: Plan,
    /// config.json's `quantization` block, when anything is quantized.
    pub quantization: Option<QuantConfig>,
    /// How tensors quantized from values get their scales.
    pub method: MlxMethod,
    /// Per-column importance of tensors (by their name in the plan), from
    /// an importance matrix ([`MlxPlan::attach_importance`]); used by
    /// [`MlxMethod::Search`] only.
    pub importance: BTreeMap<String, Vec<f32>>,
}

impl MlxPlan {
    /// Whether the plan quantizes any tensor from values (the tensors
    /// [`MlxMethod::Search`] acts on; carried-over blocks are not).
    pub fn quantizes_values(&self) -> bool {
        self.plan
            .tensors
            .iter()
            .any(|t| matches!(t.to, Encoding::MlxAffine { .. }) && !t.lossless)
    }

    /// For a search: per-column weights from one forward pass of `model`
    /// (the plan's source, run by qforge's engine) over `tokens` synthetic
    /// tokens ([`crate::quant::calibrate`]), added (each scaled to mean 1)
    /// to those an importance matrix gave ([`MlxPlan::attach_importance`],
    /// called before). Does nothing when the plan does not search, or
    /// `tokens` is 0. When the engine cannot run the model the plan falls
    /// back to round to nearest (mlx_lm.convert's bytes: the search on the
    /// weights alone can lose to it at 3 bits, see BENCH-mlx-search.md),
    /// or with an importance matrix searches the tensors it has no entry
    /// for on the weights alone; the returned warning says so.
    pub fn calibrate(
        &mut self,
        view: &ModelView<'_>,
        model: &Path,
        tokens: usize,
    ) -> Result<Option<String>> {
        if self.method != MlxMethod::Search || tokens == 0 || !self.quantizes_values() {
            return Ok(None);
        }
        match crate::quant::calibrate::synthetic_importance(model, tokens) {
            Ok(m) => {
                // An importance matrix attached before and the estimate,
                // each scaled to mean 1, are summed: the text's statistics
                // and the calibration's high-activation columns both count
                // (on SmolLM2 at 3 bits this measured better than the
                // matrix alone; BENCH-mlx-search.md).
                let given = std::mem::take(&mut self.importance);
                self.attach_importance(view, &m)?;
                for (name, mut v) in given {
                    if let Some(c) = self.importance.get(&name) {
                        let (mv, mc) = (mean(&v), mean(c));
                        if mv > 0.0 && mc > 0.0 {
                            for (x, &y) in v.iter_mut().zip(c) {
                                *x = *x / mv + y / mc;
                            }
                        }
                    }
                    self.importance.insert(name, v);
                }
                Ok(None)
            }
            Err(e) if !self.importance.is_empty() => Ok(Some(format!(
                "the calibration pass failed ({e:#}): the tensors the importance matrix has \
                 no entry for are searched on the weights alone"
            ))),
            Err(e) => {
                self.method = MlxMethod::Rtn;
                Ok(Some(format!(
                    "the calibration pass failed ({e:#}): quantizing by round to nearest as \
                     mlx_lm.convert does (--calibration-tokens 0 searches on the weights alone)"
                )))
            }
        }
    }

    /// Takes the per-column weights of every quantized tensor from an
    /// importance matrix, which names tensors as GGUF does
    /// (`blk.0.attn_q.weight`); the token embedding of a model with tied
    /// embeddings takes the output matrix's entry (it is that matrix).
    /// Returns the names of quantized tensors it has no usable entry for
    /// (llama-imatrix records no token embedding, and no output matrix
    /// without `--process-output`); those are searched with the default
    /// weights.
    pub fn attach_importance(
        &mut self,
        view: &ModelView<'_>,
        imatrix: &ImportanceMatrix,
    ) -> Result<Vec<String>> {
        let tied = view.hparams.bool("tie_word_embeddings") == Some(true);
        let mut missing = Vec::new();
        for step in &self.plan.tensors {
            if !matches!(step.to, Encoding::MlxAffine { .. }) {
                continue;
            }
            let cols = step.shape.last().copied().unwrap_or(0) as usize;
            let entry = view.arch.gguf_name(&step.name).and_then(|g| {
                let found = imatrix.get(&g).map(|v| (g.clone(), v));
                match found {
                    None if tied && g == "token_embd.weight" => imatrix
                        .get("output.weight")
                        .map(|v| ("output.weight".to_string(), v)),
                    f => f,
                }
            });
            match entry {
                Some((_, v)) if v.len() == cols => {
                    self.importance.insert(step.name.clone(), v.to_vec());
                }
                Some((g, v)) => {
                    return Err(ConvertError::Unsupported(format!(
                    "the importance matrix's entry {g} has {} values, the tensor's rows {cols}: \
                         it was computed for another model",
                    v.len()
                ))
                    .for_tensor(&step.name))
                }
                None => missing.push(step.name.clone()),
            }
        }
        Ok(missing)
    }
}

/// The mean of non-negative weights (0 for none).
fn mean(v: &[f32]) -> f32 {
    (v.iter().map(|&x| f64::from(x)).sum::<f64>() / v.len().max(1) as f64) as f32
}

/// The dtype `mlx_lm.convert` casts a Hugging Face model to when no
/// `--dtype` is given: config.json's `torch_dtype`, else `text_config`'s
/// `dtype`, when it is one of float16, bfloat16, float32. transformers 5
/// writes `dtype` instead of `torch_dtype`, so its folders keep each
/// tensor's own type.
pub fn mlx_lm_default_dtype(config: &Map<String, Json>) -> Option<FloatType> {
    let name = config
        .get("torch_dtype")
        .filter(|v| !v.is_null())
        .or_else(|| {
            config
                .get("text_config")
                .and_then(|t| t.get("dtype"))
                .filter(|v| !v.is_null())
        })?;
    match name.as_str()? {
        "float16" => Some(FloatType::F16),
        "bfloat16" => Some(FloatType::BF16),
        "float32" => Some(FloatType::F32),
        _ => None,
    }
}

/// True when mlx-lm would make the Hugging Face tensor `name` of `shape` a
/// quantized module under group size `group`: the weight of a Linear or
/// Embedding (every matrix of the supported architectures) whose rows hold
/// whole groups.
fn quantizable(name: &str, shape: &[u64], group: u32) -> bool {
    shape.len() == 2
        && name.ends_with(".weight")
        && !name.ends_with("norm.weight")
        && shape[1] > 0
        && shape[1].is_multiple_of(u64::from(group))
}

/// True for tensors mlx-lm's `sanitize` drops: the output matrix of a
/// model with tied embeddings.
fn dropped_by_mlx_lm(view: &ModelView<'_>, name: &str) -> bool {
    name == "lm_head.weight" && view.hparams.bool("tie_word_embeddings") == Some(true)
}

/// Plans an MLX folder for `view`.
pub fn plan_mlx(view: &ModelView<'_>, target: &MlxTarget) -> Result<MlxPlan> {
    if let Some(q) = target.quantize {
        quant_kernels::mlx::MlxParams::affine(q.bits, q.group_size as usize).validate()?;
    }
    let cast = target.dtype.or(match &view.source {
        Source::Hf { raw_config, .. } => mlx_lm_default_dtype(raw_config),
        _ => None,
    });
    let recipe = target
        .recipe
        .map(|args| RecipePlan::new(view, args))
        .transpose()?;
    let mut recipe_entries = Map::new();
    let mut steps = Vec::with_capacity(view.tensors.len());
    for (i, t) in view.tensors.iter().enumerate() {
        if dropped_by_mlx_lm(view, &t.name) {
            continue;
        }
        // None: keep the tensor's own form (floats stay floats, GGUF blocks
        // become their lossless MLX form); Some(None): a float; Some(Some):
        // quantized so.
        let wanted: Option<Option<QuantParams>> = match &recipe {
            None => target.quantize.map(|q| {
                (t.shape.len() >= 2 && quantizable(&t.name, &t.shape, q.group_size)).then_some(q)
            }),
            Some(r) => Some(r.module(&t.name, &t.shape)?.map(|(params, entry)| {
                let path = t.name.strip_suffix(".weight").unwrap_or(&t.name);
                recipe_entries.insert(path.to_string(), entry);
                params
            })),
        };
        let mut notes = Vec::new();
        let own_float = match t.encoding {
            Encoding::Float(FloatType::F64) => FloatType::F32,
            Encoding::Float(f) => f,
            // Scales of GGUF blocks are f16; so is what mlx makes of them.
            Encoding::Ggml(_) => FloatType::F16,
            Encoding::MlxAffine { scales, .. } => scales,
        };
        let dtype = cast.unwrap_or(own_float);
        let quant = |p: QuantParams| Encoding::MlxAffine {
            bits: p.bits,
            group_size: p.group_size,
            scales: dtype,
        };
        let to = match t.encoding {
            Encoding::Ggml(g) => {
                let block = mlx_exec::transcodable(g).map(|b| QuantParams {
                    bits: mlx_exec::block_bits(b),
                    group_size: 32,
                });
                match (block, wanted) {
                    (Some(b), None) => quant(b),
                    (Some(b), Some(Some(q))) if q == b => quant(b),
                    (_, Some(Some(q))) => {
                        notes.push(format!(
                            "{g} has no MLX equivalent at {} bits, group {}: requantized",
                            q.bits, q.group_size
                        ));
                        quant(q)
                    }
                    (None, None)
                        if t.shape.len() >= 2
                            && quantizable(&t.name, &t.shape, DEFAULT_GROUP_SIZE) =>
                    {
                        let q = QuantParams {
                            bits: DEFAULT_BITS,
                            group_size: DEFAULT_GROUP_SIZE,
                        };
                        notes.push(format!(
                            "{g} has no MLX equivalent: requantized to {} bits, group {}",
                            q.bits, q.group_size
                        ));
                        quant(q)
                    }
                    _ => Encoding::Float(dtype),
                }
            }
            Encoding::MlxAffine {
                bits, group_size, ..
            } => match wanted {
                None => quant(QuantParams { bits, group_size }),
                Some(Some(q)) => quant(q),
                Some(None) => Encoding::Float(dtype),
            },
            Encoding::Float(_) => match wanted {
                Some(Some(q)) => quant(q),
                _ => Encoding::Float(dtype),
            },
        };
        let lossless = match (t.encoding, to) {
            (
                Encoding::Ggml(_),
                Encoding::MlxAffine {
                    group_size: 32,
                    scales: FloatType::F16 | FloatType::F32,
                    ..
                },
            ) => notes.is_empty() && t.layout.shift == 0.0,
            (from, to) => is_lossless(from, to, -t.layout.shift),
        };
        steps.push(TensorPlan {
            name: t.name.clone(),
            shape: t.shape.clone(),
            source: PlanSource::Tensor(i),
            from: t.encoding,
            to,
            rows_from: t.layout.rows,
            rows_to: RowOrder::Natural,
            shift: -t.layout.shift,
            lossless,
            notes,
        });
    }
    steps.sort_by_cached_key(|s| parameter_order(&s.name));
    let quantization = match &recipe {
        None => quantization_block(&steps, target.quantize),
        Some(r) => recipe_block(&steps, &r.args, recipe_entries),
    };
    Ok(MlxPlan {
        plan: Plan {
            tensors: steps,
            gguf_type: None,
            hf_dtype: None,
        },
        quantization,
        method: target.method,
        importance: BTreeMap::new(),
    })
}

/// config.json's `quantization`: the requested parameters (or the most
/// common ones), with an entry for every module quantized otherwise.
fn quantization_block(steps: &[TensorPlan], asked: Option<QuantParams>) -> Option<QuantConfig> {
    let params: Vec<(&str, QuantParams)> = steps
        .iter()
        .filter_map(|s| match s.to {
            Encoding::MlxAffine {
                bits, group_size, ..
            } => Some((
                s.name.strip_suffix(".weight").unwrap_or(&s.name),
                QuantParams { bits, group_size },
            )),
            _ => None,
        })
        .collect();
    let default = match asked {
        Some(q) => q,
        None => {
            let mut counts: Vec<(QuantParams, usize)> = Vec::new();
            for (_, p) in &params {
                match counts.iter_mut().find(|(q, _)| q == p) {
                    Some((_, n)) => *n += 1,
                    None => counts.push((*p, 1)),
                }
            }
            counts.iter().max_by_key(|(_, n)| *n)?.0
        }
    };
    let overrides = params
        .iter()
        .filter(|(_, p)| *p != default)
        .map(|(path, p)| (path.to_string(), mlx_format::LayerOverride::Quantized(*p)))
        .collect();
    Some(QuantConfig {
        default,
        mode: "affine".into(),
        overrides,
        verbatim: None,
    })
}

/// config.json's `quantization` under a mixed recipe, as mlx-lm writes it:
/// the run's header, then one entry per quantized module (in parameter
/// order).
fn recipe_block(
    steps: &[TensorPlan],
    args: &MlxQuantArgs,
    mut entries: Map<String, Json>,
) -> Option<QuantConfig> {
    let mut block = args.config_header();
    let mut overrides = std::collections::BTreeMap::new();
    for s in steps {
        let Encoding::MlxAffine {
            bits, group_size, ..
        } = s.to
        else {
            continue;
        };
        let path = s.name.strip_suffix(".weight").unwrap_or(&s.name);
        if let Some(entry) = entries.remove(path) {
            block.insert(path.to_string(), entry);
        }
        overrides.insert(
            path.to_string(),
            mlx_format::LayerOverride::Quantized(QuantParams { bits, group_size }),
        );
    }
    if overrides.is_empty() {
        return None;
    }
    Some(QuantConfig {
        default: QuantParams {
            bits: args.bits(),
            group_size: args.group_size(),
        },
        mode: "affine".into(),
        overrides,
        verbatim: Some(Json::Object(block)),
    })
}

/// Where mlx-lm's `tree_flatten(model.parameters())` puts a tensor: the
/// embedding, the layers in number order (within one, the modules in the
/// order the model classes define them), the final norm, the output
/// matrix. Shards are cut in this order.
fn parameter_order(name: &str) -> (u8, u64, usize, u8, String) {
    const IN_LAYER: &[&str] = &[
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.qkv_proj",
        "self_attn.o_proj",
        "self_attn.q_norm",
        "self_attn.k_norm",
        "mlp.gate_proj",
        "mlp.gate_up_proj",
        "mlp.down_proj",
        "mlp.up_proj",
        "input_layernorm",
        "post_attention_layernorm",
        "pre_feedforward_layernorm",
        "post_feedforward_layernorm",
    ];
    if let Some(rest) = name.strip_prefix("model.layers.") {
        if let Some((n, module)) = rest.split_once('.') {
            if let Ok(n) = n.parse::<u64>() {
                let rank = IN_LAYER
                    .iter()
                    .position(|m| module.starts_with(m) && module[m.len()..].starts_with('.'))
                    .unwrap_or(IN_LAYER.len());
                return (1, n, rank, part_rank(name), name.to_string());
            }
        }
    }
    let top = match name {
        n if n.starts_with("model.embed_tokens.") => 0,
        n if n.starts_with("model.norm.") => 2,
        n if n.starts_with("lm_head.") => 3,
        _ => 4,
    };
    (top, 0, 0, part_rank(name), name.to_string())
}

/// A module's tensors in mlx's order: `weight` (then `scales`, `biases`,
/// written with it), `bias`.
fn part_rank(name: &str) -> u8 {
    if name.ends_with(".weight") {
        0
    } else if name.ends_with(".bias") {
        1
    } else {
        2
    }
}

/// config.json for the MLX folder, before mlx-lm's `save_config` layout:
/// the source's config (Hugging Face: as written; GGUF: rebuilt from the
/// keys), `eos_token_id` from generation_config.json as mlx-lm's
/// `load_config` takes it, the `quantization` block, and — qforge's one
/// addition — the rope settings mlx-lm 0.32 reads only at the top level
/// (`rope_theta`, Gemma 3's `rope_local_base_freq`, `rope_scaling`), which
/// transformers 5 moved into `rope_parameters`: without them mlx-lm runs
/// another rope base than the model was trained with.
pub fn mlx_config(view: &ModelView<'_>, quantization: Option<&QuantConfig>) -> Map<String, Json> {
    let mut config = match &view.source {
        Source::Hf { raw_config, .. } => (*raw_config).clone(),
        _ => view.config.clone(),
    };
    if let Some(eos) = view
        .generation_config
        .as_ref()
        .and_then(|g| g.get("eos_token_id"))
        .filter(|v| truthy(v))
    {
        config.insert("eos_token_id".into(), eos.clone());
    }
    config.remove("quantization");
    config.remove("quantization_config");
    if let Some(q) = quantization {
        config.insert("quantization".into(), q.to_json());
    }
    add_top_level_rope(view, &mut config);
    config
}

/// Python's truth value of a JSON value (mlx-lm's `if eos := ...`).
fn truthy(v: &Json) -> bool {
    match v {
        Json::Null => false,
        Json::Bool(b) => *b,
        Json::Number(n) => n.as_f64() != Some(0.0),
        Json::String(s) => !s.is_empty(),
        Json::Array(a) => !a.is_empty(),
        Json::Object(o) => !o.is_empty(),
    }
}

fn add_top_level_rope(view: &ModelView<'_>, config: &mut Map<String, Json>) {
    let hp = &view.hparams;
    let full = hp.full_attention_rope();
    if !config.contains_key("rope_theta") {
        if let Some(theta) = full.get("rope_theta").filter(|v| v.is_number()) {
            config.insert("rope_theta".into(), theta.clone());
        }
    }
    if let Some(Json::Object(sliding)) = hp.rope_parameters().get("sliding_attention") {
        if let (false, Some(theta)) = (
            config.contains_key("rope_local_base_freq"),
            sliding.get("rope_theta").filter(|v| v.is_number()),
        ) {
            config.insert("rope_local_base_freq".into(), theta.clone());
        }
    }
    let rope_type = full.get("rope_type").and_then(Json::as_str);
    if !config.contains_key("rope_scaling") && !matches!(rope_type, None | Some("default")) {
        let mut scaling = full.clone();
        scaling.remove("rope_theta");
        // phi3's mlx model asks for "type".
        scaling.insert("type".into(), json!(rope_type));
        config.insert("rope_scaling".into(), Json::Object(scaling));
    }
}

/// The files besides weights and config.json: tokenizer files (copied
/// from a Hugging Face or MLX source, rebuilt from a GGUF source's keys),
/// generation_config.json (copied as it is, as mlx-lm copies it; rebuilt
/// from GGUF keys), the source's `*.py` files (custom model code, which
/// mlx-lm copies too) and mlx-lm's model card.
pub fn mlx_side_files(view: &ModelView<'_>) -> Result<Vec<(String, Vec<u8>)>> {
    let mut files = Vec::new();
    match &view.source {
        Source::Hf { dir, .. } | Source::Mlx { dir } => {
            let mut names: Vec<String> = HF_TOKENIZER_FILES.iter().map(|s| s.to_string()).collect();
            names.push("generation_config.json".into());
            let mut py: Vec<String> = std::fs::read_dir(dir)
                .map_err(|e| FormatError::io(dir, e))?
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.ends_with(".py") && !n.starts_with('.'))
                .collect();
            py.sort();
            names.extend(py);
            for name in names {
                if let Some(bytes) = read_side_file(dir, &name, MAX_TOKENIZER_FILE)? {
                    files.push((name, bytes));
                }
            }
        }
        Source::Gguf { metadata } => {
            files.extend(tokenizer_bridge::hf_files_from_gguf(metadata)?);
            if let Some(g) = &view.generation_config {
                let mut text = serde_json::to_string_pretty(&Json::Object(g.clone()))
                    .expect("JSON serializes");
                text.push('\n');
                files.push(("generation_config.json".into(), text.into_bytes()));
            }
        }
    }
    files.push(("README.md".into(), MODEL_CARD.as_bytes().to_vec()));
    Ok(files)
}

/// The safetensors dtype of an MLX step's scales (and of a float step).
fn st_dtype(f: FloatType) -> Dtype {
    f.to_safetensors()
}

/// The tensors an MLX step writes, in mlx-lm's order (weight, scales,
/// biases for a quantized module).
fn specs_of(step: &TensorPlan) -> Result<Vec<StTensorSpec>> {
    match step.to {
        Encoding::Float(f) => Ok(vec![StTensorSpec {
            name: step.name.clone(),
            dtype: st_dtype(f),
            shape: step.shape.clone(),
        }]),
        Encoding::MlxAffine {
            bits,
            group_size,
            scales,
        } => {
            let (outer, cols) = match step.shape.split_last() {
                Some((&c, o)) if !o.is_empty() => (o.to_vec(), c),
                _ => {
                    return Err(
                        ConvertError::Unsupported("only matrices are MLX-quantized".into())
                            .for_tensor(&step.name),
                    )
                }
            };
            let path = step.name.strip_suffix(".weight").ok_or_else(|| {
                ConvertError::Unsupported("only `.weight` tensors are MLX-quantized".into())
                    .for_tensor(&step.name)
            })?;
            let with_last = |last: u64| {
                let mut s = outer.clone();
                s.push(last);
                s
            };
            let groups = with_last(cols / u64::from(group_size));
            Ok(vec![
                StTensorSpec {
                    name: step.name.clone(),
                    dtype: Dtype::U32,
                    shape: with_last(cols * u64::from(bits) / 32),
                },
                StTensorSpec {
                    name: format!("{path}.scales"),
                    dtype: st_dtype(scales),
                    shape: groups.clone(),
                },
                StTensorSpec {
                    name: format!("{path}.biases"),
                    dtype: st_dtype(scales),
                    shape: groups,
                },
            ])
        }
        Encoding::Ggml(t) => Err(ConvertError::Unsupported(format!(
            "an MLX folder cannot store {t} blocks"
        ))
        .for_tensor(&step.name)),
    }
}

/// Writes the planned MLX folder `dir` (which must not exist or be
/// empty): tensors streamed step by step, config.json from `config`
/// ([`mlx_config`]), and `side_files` ([`mlx_side_files`]).
pub fn write_mlx(
    view: &ModelView<'_>,
    plan: &MlxPlan,
    config: &Map<String, Json>,
    side_files: &[(String, Vec<u8>)],
    dir: &Path,
    opts: &WriteOptions<'_>,
) -> Result<WriteReport> {
    if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) || dir.is_file() {
        return Err(ConvertError::Unsupported(format!(
            "{} already exists and is not empty: remove it or choose another output folder",
            dir.display()
        )));
    }
    if dir.is_dir() {
        std::fs::remove_dir(dir).map_err(|e| FormatError::io(dir, e))?;
    }
    let mut specs = Vec::new();
    let mut step_of = HashMap::new();
    for (i, step) in plan.plan.tensors.iter().enumerate() {
        for s in specs_of(step)? {
            step_of.insert(s.name.clone(), i);
            specs.push(s);
        }
    }
    let total_parameters = plan.plan.parameter_count();
    let total_bytes: u64 = specs.iter().map(|s| s.size().unwrap_or(0)).sum();
    let progress = opts.progress;
    progress.file(&dir.display().to_string(), total_bytes);

    let mut pending: Option<(usize, MlxParts)> = None;
    let mut tensors = Vec::with_capacity(plan.plan.tensors.len());
    let mut failure: Option<ConvertError> = None;
    let names = mlx_format::write_folder(
        dir,
        &MlxFolder {
            config,
            total_parameters,
            extra_files: side_files,
        },
        &specs,
        |spec| {
            let i = step_of[&spec.name];
            let step = &plan.plan.tensors[i];
            let bytes = if spec.name == step.name {
                progress.tensor(&step.name);
                let done = if matches!(step.to, Encoding::MlxAffine { .. }) {
                    let how = MlxQuantizer {
                        method: plan.method,
                        importance: plan.importance.get(&step.name).map(Vec::as_slice),
                    };
                    materialize_mlx(view, step, opts.measure, how).map(|mut m| {
                        let weight = std::mem::take(&mut m.parts.weight);
                        pending = Some((i, m.parts));
                        (weight, m.error, m.inexact)
                    })
                } else {
                    materialize(view, step, opts.measure).map(|m| (m.bytes, m.error, m.inexact))
                };
                view.release_source(step);
                match done {
                    Ok((bytes, error, _)) => {
                        tensors.push(TensorReport {
                            name: step.name.clone(),
                            error,
                        });
                        bytes
                    }
                    Err(e) => {
                        let msg = e.to_string();
                        failure = Some(e);
                        return Err(FormatError::other(msg));
                    }
                }
            } else {
                // Scales and biases follow their weight.
                let parts = match &mut pending {
                    Some((j, parts)) if *j == i => parts,
                    _ => {
                        return Err(FormatError::other(
                            "MLX scales and biases must follow their weight",
                        ))
                    }
                };
                if spec.name.ends_with(".scales") {
                    std::mem::take(&mut parts.scales)
                } else {
                    std::mem::take(&mut parts.biases)
                }
            };
            progress.advance(bytes.len() as u64);
            Ok(bytes.into())
        },
    );
    if let Some(e) = failure {
        return Err(e);
    }
    let names = names?;
    progress.done();
    let mut files = Vec::with_capacity(names.len());
    for name in names {
        let path = dir.join(&name);
        let bytes = std::fs::metadata(&path)
            .map_err(|e| FormatError::io(&path, e))?
            .len();
        let sha256 = sha256_file(&path).map_err(|e| FormatError::io(&path, e))?;
        files.push(FileReport {
            path,
            bytes,
            sha256,
        });
    }
    Ok(WriteReport { files, tensors })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_order_is_mlx_lms() {
        let mut names = vec![
            "lm_head.weight",
            "model.norm.weight",
            "model.layers.10.mlp.up_proj.weight",
            "model.layers.2.input_layernorm.weight",
            "model.layers.2.mlp.down_proj.weight",
            "model.layers.2.self_attn.q_proj.bias",
            "model.layers.2.self_attn.q_proj.weight",
            "model.layers.2.self_attn.k_proj.weight",
            "model.embed_tokens.weight",
        ];
        names.sort_by_cached_key(|n| parameter_order(n));
        assert_eq!(
            names,
            [
                "model.embed_tokens.weight",
                "model.layers.2.self_attn.q_proj.weight",
                "model.layers.2.self_attn.q_proj.bias",
                "model.layers.2.self_attn.k_proj.weight",
                "model.layers.2.mlp.down_proj.weight",
                "model.layers.2.input_layernorm.weight",
                "model.layers.10.mlp.up_proj.weight",
                "model.norm.weight",
                "lm_head.weight",
            ]
        );
    }

    #[test]
    fn dtype_follows_torch_dtype_only() {
        let c = |v: Json| v.as_object().unwrap().clone();
        assert_eq!(
            mlx_lm_default_dtype(&c(json!({"torch_dtype": "bfloat16"}))),
            Some(FloatType::BF16)
        );
        assert_eq!(mlx_lm_default_dtype(&c(json!({"dtype": "bfloat16"}))), None);
        assert_eq!(
            mlx_lm_default_dtype(&c(json!({"text_config": {"dtype": "float16"}}))),
            Some(FloatType::F16)
        );
    }
}
