//! The canonical model view: every format's model seen with Hugging Face
//! tensor names and shapes, each tensor's bytes left in the encoding they
//! are stored in, plus how the stored rows and values relate to Hugging
//! Face's. A target takes the bytes as they are when their encoding and
//! layout already fit, and decodes only when it must.

use std::fmt;
use std::path::PathBuf;

use quant_kernels::GgmlType;
use serde_json::Value as Json;

use super::error::{ConvertError, Result};
use crate::arch::{self, Architecture, GgufModelInfo, HParams, JsonMap, Layout};
use crate::formats::gguf::{GgufModel, Metadata};
use crate::formats::hf::HfModel;
use crate::formats::mmap::ReleasePages;
use crate::formats::safetensors::Dtype;

/// A plain float element type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FloatType {
    /// IEEE single.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    BF16,
    /// IEEE double.
    F64,
}

impl FloatType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            FloatType::F32 => 4,
            FloatType::F16 | FloatType::BF16 => 2,
            FloatType::F64 => 8,
        }
    }

    /// The name in upper case (`BF16`).
    pub fn name(self) -> &'static str {
        match self {
            FloatType::F32 => "F32",
            FloatType::F16 => "F16",
            FloatType::BF16 => "BF16",
            FloatType::F64 => "F64",
        }
    }

    /// The type of a safetensors dtype, if it is a float one qforge reads.
    pub fn from_safetensors(d: Dtype) -> Option<FloatType> {
        match d {
            Dtype::F32 => Some(FloatType::F32),
            Dtype::F16 => Some(FloatType::F16),
            Dtype::BF16 => Some(FloatType::BF16),
            Dtype::F64 => Some(FloatType::F64),
            _ => None,
        }
    }

    /// The safetensors dtype.
    pub fn to_safetensors(self) -> Dtype {
        match self {
            FloatType::F32 => Dtype::F32,
            FloatType::F16 => Dtype::F16,
            FloatType::BF16 => Dtype::BF16,
            FloatType::F64 => Dtype::F64,
        }
    }

    /// The ggml type.
    pub fn to_ggml(self) -> GgmlType {
        match self {
            FloatType::F32 => GgmlType::F32,
            FloatType::F16 => GgmlType::F16,
            FloatType::BF16 => GgmlType::BF16,
            FloatType::F64 => GgmlType::F64,
        }
    }

    /// config.json's `dtype` value (`bfloat16`).
    pub fn torch_name(self) -> &'static str {
        match self {
            FloatType::F32 => "float32",
            FloatType::F16 => "float16",
            FloatType::BF16 => "bfloat16",
            FloatType::F64 => "float64",
        }
    }

    /// True when every value of `self` is exactly representable in `to`.
    pub fn widens_to(self, to: FloatType) -> bool {
        use FloatType::*;
        matches!(
            (self, to),
            (F16, F16)
                | (BF16, BF16)
                | (F32, F32)
                | (F64, F64)
                | (F16 | BF16, F32 | F64)
                | (F32, F64)
        )
    }
}

/// How one tensor's values are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Plain floats.
    Float(FloatType),
    /// A ggml block type (never F32/F16/BF16/F64: those are [`Encoding::Float`]).
    Ggml(GgmlType),
    /// MLX affine quantization: packed unsigned `bits`-bit integers with a
    /// scale and a bias per `group_size` elements (`w = scale * q + bias`),
    /// scales and biases in `scales`.
    MlxAffine {
        /// Bits per element.
        bits: u32,
        /// Elements per group.
        group_size: u32,
        /// Type of the scales and biases.
        scales: FloatType,
    },
}

impl Encoding {
    /// The encoding of a GGUF tensor of ggml type `t`.
    pub fn from_ggml(t: GgmlType) -> Encoding {
        match t {
            GgmlType::F32 => Encoding::Float(FloatType::F32),
            GgmlType::F16 => Encoding::Float(FloatType::F16),
            GgmlType::BF16 => Encoding::Float(FloatType::BF16),
            GgmlType::F64 => Encoding::Float(FloatType::F64),
            t => Encoding::Ggml(t),
        }
    }

    /// The ggml type, for encodings GGUF can store.
    pub fn to_ggml(self) -> Option<GgmlType> {
        match self {
            Encoding::Float(f) => Some(f.to_ggml()),
            Encoding::Ggml(t) => Some(t),
            Encoding::MlxAffine { .. } => None,
        }
    }

    /// Elements per block: rows must hold a whole number of them.
    pub fn block_size(self) -> u64 {
        match self {
            Encoding::Float(_) => 1,
            Encoding::Ggml(t) => t.block_size(),
            Encoding::MlxAffine { group_size, .. } => u64::from(group_size),
        }
    }

    /// Bytes of `n` elements (`n` a multiple of the block size), for
    /// single-buffer encodings.
    pub fn bytes_for(self, n: u64) -> Option<u64> {
        match self {
            Encoding::Float(f) => n.checked_mul(f.size() as u64),
            Encoding::Ggml(t) => t.row_size(n),
            Encoding::MlxAffine { .. } => None,
        }
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Encoding::Float(t) => f.write_str(t.name()),
            Encoding::Ggml(t) => f.write_str(t.name()),
            Encoding::MlxAffine {
                bits, group_size, ..
            } => write!(f, "MLX{bits}/g{group_size}"),
        }
    }
}

/// A tensor's stored bytes.
#[derive(Debug, Clone, Copy)]
pub enum TensorBytes<'a> {
    /// One buffer (floats or ggml blocks).
    Plain(&'a [u8]),
    /// MLX affine: the packed weight, scales and biases.
    MlxAffine {
        /// `P.weight` (uint32 words).
        weight: &'a [u8],
        /// `P.scales`.
        scales: &'a [u8],
        /// `P.biases`.
        biases: &'a [u8],
    },
}

/// One tensor of the view.
#[derive(Debug, Clone)]
pub struct ViewTensor<'a> {
    /// Hugging Face name (`model.layers.0.self_attn.q_proj.weight`).
    pub name: String,
    /// Hugging Face shape, outermost first.
    pub shape: Vec<u64>,
    /// How the values are stored.
    pub encoding: Encoding,
    /// The stored bytes.
    pub bytes: TensorBytes<'a>,
    /// How the stored rows and values relate to the Hugging Face ones.
    pub layout: Layout,
    /// The tensor's name in its source file.
    pub source_name: String,
}

impl ViewTensor<'_> {
    /// Number of elements.
    pub fn n_elements(&self) -> u64 {
        self.shape.iter().product()
    }
}

/// Where a view's model came from.
#[derive(Debug, Clone)]
pub enum Source<'a> {
    /// A Hugging Face folder.
    Hf {
        /// The folder.
        dir: PathBuf,
        /// config.json as written.
        raw_config: &'a JsonMap,
        /// The model card, when there is one.
        model_card: Option<String>,
    },
    /// A GGUF file (or split set).
    Gguf {
        /// Its metadata (tokenizer keys, `general.*`).
        metadata: &'a Metadata,
    },
    /// An MLX folder.
    Mlx {
        /// The folder.
        dir: PathBuf,
    },
}

/// A model seen in Hugging Face terms, whatever its format.
#[derive(Debug)]
pub struct ModelView<'a> {
    /// Its architecture.
    pub arch: &'static dyn Architecture,
    /// config.json for a Hugging Face output (the source's own, or rebuilt
    /// from GGUF keys).
    pub config: JsonMap,
    /// generation_config.json for a Hugging Face output.
    pub generation_config: Option<JsonMap>,
    /// Hyperparameters as convert_hf_to_gguf.py sees them.
    pub hparams: HParams,
    /// Tensors, in the order the source defines (for Hugging Face sources,
    /// the order convert_hf_to_gguf.py writes them in).
    pub tensors: Vec<ViewTensor<'a>>,
    /// Files the model was read from.
    pub files: Vec<PathBuf>,
    /// Where it came from.
    pub source: Source<'a>,
    /// The mapped model, to drop tensors' pages once they are written.
    pub pages: Option<&'a dyn ReleasePages>,
}

/// Tensors the script never converts (buffers some checkpoints carry).
fn script_skips(name: &str) -> bool {
    name.ends_with(".attention.masked_bias")
        || name.ends_with(".attention.bias")
        || name.ends_with(".rotary_emb.inv_freq")
}

/// `TextModel.filter_tensors`: drops vision/audio towers and projectors of
/// multimodal checkpoints and strips `language_model.` from names.
fn text_model_name(name: &str) -> Option<String> {
    let starts = [
        "mlp",
        "vit.",
        "vpm.",
        "siglip2.",
        "conformer.",
        "merger.",
        "resampler.",
        "sound_encoder.",
        "sound_projection.",
        "speech_embeddings.",
    ];
    let contains = [
        "visual.",
        "vision.",
        "audio.",
        "talker.",
        "vision_",
        "audio_",
        "token2wav.",
        "code2wav.",
        "projector.",
        "pre_mm_projector_norm",
        "image_newline",
        "view_seperator",
        "patch_embed",
        "patch_embedding",
        "patch_merger.",
        "patch_merge_mlp.",
        "model.connector.",
    ];
    if starts.iter().any(|s| name.starts_with(s)) || contains.iter().any(|s| name.contains(s)) {
        return None;
    }
    let name = name.replace("e_score_correction_bias", "e_score_correction.bias");
    Some(name.replace("language_model.", ""))
}

impl<'a> ModelView<'a> {
    /// The view of a Hugging Face folder: tensors as they are stored
    /// (Hugging Face layout), in convert_hf_to_gguf.py's order.
    pub fn from_hf(model: &'a HfModel) -> Result<ModelView<'a>> {
        let class = model.architecture().ok_or_else(|| {
            ConvertError::Unsupported(format!(
                "{}: config.json names no \"architectures\"",
                model.dir().display()
            ))
        })?;
        let arch = arch::by_hf_class(class).ok_or_else(|| {
            ConvertError::Unsupported(format!(
                "architecture {class} is not supported (qforge converts: {})",
                supported_classes()
            ))
        })?;
        let hparams = arch.hparams(model.config());
        let mut tensors = Vec::new();
        for (info, data) in model.tensors_in_script_order() {
            let Some(name) = text_model_name(&info.name) else {
                continue;
            };
            if script_skips(&name) {
                continue;
            }
            let ft = FloatType::from_safetensors(info.dtype).ok_or_else(|| {
                ConvertError::Unsupported(format!(
                    "dtype {:?} is not a float type qforge converts",
                    info.dtype
                ))
                .for_tensor(&info.name)
            })?;
            tensors.push(ViewTensor {
                name,
                shape: info.shape.clone(),
                encoding: Encoding::Float(ft),
                bytes: TensorBytes::Plain(data),
                layout: Layout::NATURAL,
                source_name: info.name.clone(),
            });
        }
        Ok(ModelView {
            arch,
            config: model.config().clone(),
            generation_config: model.generation_config().cloned(),
            hparams,
            tensors,
            files: model
                .weights()
                .files()
                .iter()
                .map(|f| f.path().to_path_buf())
                .collect(),
            source: Source::Hf {
                dir: model.dir().to_path_buf(),
                raw_config: model.config(),
                model_card: model.model_card(),
            },
            pages: Some(model),
        })
    }

    /// The view of a GGUF model: Hugging Face names and shapes, bytes in
    /// their ggml types, rows and values in GGUF's layout; config.json and
    /// generation_config.json rebuilt from the keys.
    pub fn from_gguf(model: &'a GgufModel) -> Result<ModelView<'a>> {
        let md = model.metadata();
        let name = md
            .get_str(crate::formats::gguf::keys::ARCHITECTURE)
            .ok_or_else(|| {
                ConvertError::Unsupported("the GGUF file has no general.architecture".into())
            })?;
        let arch = arch::by_gguf_arch(name).ok_or_else(|| {
            ConvertError::Unsupported(format!(
                "GGUF architecture '{name}' is not supported (qforge converts: {})",
                arch::ALL
                    .iter()
                    .map(|a| a.gguf_arch())
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        let names: Vec<String> = model.tensors().map(|(t, _)| t.name.clone()).collect();
        let vocab_rows = model.tensor("token_embd.weight").map(|(t, _)| t.shape()[0]);
        let info = GgufModelInfo {
            metadata: md,
            tensor_names: &names,
            vocab_rows,
        };
        let mut config = arch.hf_config(&info)?;
        recover_generated(arch, model, &mut config)?;
        let hparams = arch.hparams(&config);

        let mut tensors = Vec::with_capacity(names.len());
        for (t, data) in model.tensors() {
            if GENERATED_GGUF_TENSORS.contains(&t.name.as_str()) {
                continue;
            }
            let hf = arch
                .hf_name(&t.name)
                .ok_or_else(|| arch::ArchError::UnknownTensor {
                    name: t.name.clone(),
                    target: "Hugging Face",
                    arch: arch.name(),
                })?;
            let shape = t.shape();
            let layout = arch.gguf_layout(&hf, &shape, &hparams)?;
            tensors.push(ViewTensor {
                name: hf,
                shape,
                encoding: Encoding::from_ggml(t.ggml_type),
                bytes: TensorBytes::Plain(data),
                layout,
                source_name: t.name.clone(),
            });
        }
        Ok(ModelView {
            arch,
            generation_config: Some(arch::generation_config(md)),
            config,
            hparams,
            tensors,
            files: model
                .files()
                .iter()
                .map(|f| f.path().to_path_buf())
                .collect(),
            source: Source::Gguf { metadata: md },
            pages: Some(model),
        })
    }

    /// The view's tensor named `name`.
    pub fn tensor(&self, name: &str) -> Option<&ViewTensor<'a>> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Drops the mapped pages of the source of `plan` (advice only; a
    /// later read maps them back).
    pub fn release_source(&self, plan: &super::plan::TensorPlan) {
        if let (Some(pages), super::plan::PlanSource::Tensor(i)) = (self.pages, &plan.source) {
            match self.tensors[*i].bytes {
                TensorBytes::Plain(b) => pages.release(b),
                TensorBytes::MlxAffine {
                    weight,
                    scales,
                    biases,
                } => [weight, scales, biases]
                    .iter()
                    .for_each(|b| pages.release(b)),
            }
        }
    }

    /// The GGUF metadata, for views of GGUF models.
    pub fn gguf_metadata(&self) -> Option<&'a Metadata> {
        match self.source {
            Source::Gguf { metadata } => Some(metadata),
            _ => None,
        }
    }
}

/// Tensors llama.cpp's converter computes from config.json; the way back
/// turns them into config keys instead of tensors.
const GENERATED_GGUF_TENSORS: &[&str] = &[
    "rope_freqs.weight",
    "rope_factors_long.weight",
    "rope_factors_short.weight",
];

/// Puts what generated tensors encode back into config.json: llama 3 rope
/// scaling from `rope_freqs`, Phi-3 long-rope factors.
fn recover_generated(
    arch: &dyn Architecture,
    model: &GgufModel,
    config: &mut JsonMap,
) -> Result<()> {
    let read_f32 = |name: &str| -> Option<Vec<f32>> {
        let (t, data) = model.tensor(name)?;
        (t.ggml_type == GgmlType::F32).then(|| {
            data.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        })
    };
    let keys = arch::GgufKeys::new(arch.gguf_arch(), model.metadata());
    if let Some(factors) = read_f32("rope_freqs.weight") {
        let dim = keys
            .u64("rope.dimension_count")
            .unwrap_or(factors.len() as u64 * 2);
        let rope = arch::llama3_rope_from_factors(&keys, &factors, dim).ok_or_else(|| {
            ConvertError::Unsupported(
                "rope_freqs.weight holds rope factors that do not fit llama 3's published \
                 parameters; qforge cannot write them as a config.json rope_parameters"
                    .into(),
            )
        })?;
        if let Some(Json::Object(rp)) = config.get_mut("rope_parameters") {
            rp.extend(rope);
        }
    }
    if let (Some(long), Some(short)) = (
        read_f32("rope_factors_long.weight"),
        read_f32("rope_factors_short.weight"),
    ) {
        if let Some(Json::Object(rp)) = config.get_mut("rope_parameters") {
            rp.insert("rope_type".into(), Json::String("longrope".into()));
            rp.insert("long_factor".into(), serde_json::json!(long));
            rp.insert("short_factor".into(), serde_json::json!(short));
        }
    }
    Ok(())
}

fn supported_classes() -> String {
    arch::ALL
        .iter()
        .flat_map(|a| a.hf_architectures().iter().copied())
        .collect::<Vec<_>>()
        .join(", ")
}
