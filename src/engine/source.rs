//! Where a model's weights come from: a GGUF file (or split set), a
//! Hugging Face safetensors folder, or an MLX folder, seen through one
//! tensor naming scheme (GGUF's) so the forward pass does not care.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value as Json};

use super::config::{Arch, ModelConfig};
use super::error::{config_err, EngineError, Result};
use super::weights::{DenseType, DenseWeight, GgmlWeight, MlxAffineWeight, Weight};
use crate::formats::gguf::GgufModel;
use crate::formats::mlx::MlxModel;
use crate::formats::safetensors::{Dtype, SafetensorsModel};
use crate::formats::{detect, FormatError, FormatErrorKind, ModelFormat};
use quant_kernels::GgmlType;

/// The tensors of the architectures, by role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Token embedding matrix (`token_embd`).
    TokenEmbd,
    /// Final norm (`output_norm`).
    OutputNorm,
    /// Output (lm head) matrix; absent when tied to the embedding.
    Output,
    /// Pre-attention norm.
    AttnNorm,
    /// Query projection.
    Q,
    /// Key projection.
    K,
    /// Value projection.
    V,
    /// Fused q/k/v projection (phi3).
    Qkv,
    /// Attention output projection.
    O,
    /// Per-head query norm (qwen3, gemma3).
    QNorm,
    /// Per-head key norm (qwen3, gemma3).
    KNorm,
    /// Norm of the attention output before the residual (gemma3).
    AttnPostNorm,
    /// Pre-feed-forward norm.
    FfnNorm,
    /// Feed-forward gate.
    Gate,
    /// Feed-forward up.
    Up,
    /// Fused gate/up (phi3): gate rows first, then up.
    GateUp,
    /// Feed-forward down.
    Down,
    /// Norm of the feed-forward output before the residual (gemma3).
    FfnPostNorm,
}

impl Role {
    fn gguf_stem(self) -> &'static str {
        match self {
            Role::TokenEmbd => "token_embd",
            Role::OutputNorm => "output_norm",
            Role::Output => "output",
            Role::AttnNorm => "attn_norm",
            Role::Q => "attn_q",
            Role::K => "attn_k",
            Role::V => "attn_v",
            Role::Qkv => "attn_qkv",
            Role::O => "attn_output",
            Role::QNorm => "attn_q_norm",
            Role::KNorm => "attn_k_norm",
            Role::AttnPostNorm => "post_attention_norm",
            Role::FfnNorm => "ffn_norm",
            Role::Gate => "ffn_gate",
            Role::Up | Role::GateUp => "ffn_up",
            Role::Down => "ffn_down",
            Role::FfnPostNorm => "post_ffw_norm",
        }
    }

    fn is_global(self) -> bool {
        matches!(self, Role::TokenEmbd | Role::OutputNorm | Role::Output)
    }

    /// GGUF tensor name (`blk.3.attn_q.weight`).
    pub fn gguf_name(self, layer: usize, suffix: &str) -> String {
        if self.is_global() {
            format!("{}.{suffix}", self.gguf_stem())
        } else {
            format!("blk.{layer}.{}.{suffix}", self.gguf_stem())
        }
    }

    /// Module path in transformers' layout, after the model prefix
    /// (`layers.3.self_attn.q_proj`); `None` for the lm head, which lives
    /// outside the prefix.
    fn hf_module(self, arch: Arch, layer: usize) -> Option<String> {
        let m = match self {
            Role::TokenEmbd => return Some("embed_tokens".into()),
            Role::OutputNorm => return Some("norm".into()),
            Role::Output => return None,
            Role::AttnNorm => "input_layernorm",
            Role::Q => "self_attn.q_proj",
            Role::K => "self_attn.k_proj",
            Role::V => "self_attn.v_proj",
            Role::Qkv => "self_attn.qkv_proj",
            Role::O => "self_attn.o_proj",
            Role::QNorm => "self_attn.q_norm",
            Role::KNorm => "self_attn.k_norm",
            Role::AttnPostNorm => "post_attention_layernorm",
            Role::FfnNorm => match arch {
                Arch::Gemma3 => "pre_feedforward_layernorm",
                _ => "post_attention_layernorm",
            },
            Role::Gate => "mlp.gate_proj",
            Role::Up => "mlp.up_proj",
            Role::GateUp => "mlp.gate_up_proj",
            Role::Down => "mlp.down_proj",
            Role::FfnPostNorm => "post_feedforward_layernorm",
        };
        Some(format!("layers.{layer}.{m}"))
    }
}

/// An opened model artifact.
#[derive(Debug)]
pub enum Artifact {
    /// A GGUF file or split set.
    Gguf(GgufModel),
    /// A transformers folder (config.json + safetensors).
    Hf {
        /// The folder.
        dir: PathBuf,
        /// config.json.
        config: Map<String, Json>,
        /// The weights.
        tensors: SafetensorsModel,
    },
    /// An mlx-lm folder.
    Mlx(MlxModel),
}

impl Artifact {
    /// Opens a GGUF file, or a Hugging Face / MLX model folder.
    pub fn open(path: impl AsRef<Path>) -> Result<Artifact> {
        let path = path.as_ref();
        Ok(match detect(path)? {
            ModelFormat::Gguf => Artifact::Gguf(GgufModel::open(path)?),
            ModelFormat::Mlx => Artifact::Mlx(MlxModel::open(path)?),
            ModelFormat::Safetensors => {
                if !path.is_dir() {
                    return Err(config_err(format!(
                        "{}: a lone safetensors file has no config.json; give the model folder",
                        path.display()
                    )));
                }
                let config_path = path.join("config.json");
                let text = fs::read_to_string(&config_path)
                    .map_err(|e| FormatError::io(&config_path, e))?;
                let config: Map<String, Json> = serde_json::from_str(&text).map_err(|e| {
                    FormatError::new(FormatErrorKind::Json(e.to_string())).in_file(&config_path)
                })?;
                Artifact::Hf {
                    dir: path.to_path_buf(),
                    config,
                    tensors: SafetensorsModel::open(path)?,
                }
            }
        })
    }

    /// The format's name.
    pub fn format(&self) -> ModelFormat {
        match self {
            Artifact::Gguf(_) => ModelFormat::Gguf,
            Artifact::Hf { .. } => ModelFormat::Safetensors,
            Artifact::Mlx(_) => ModelFormat::Mlx,
        }
    }

    /// Total bytes of the model's files.
    pub fn file_bytes(&self) -> u64 {
        match self {
            Artifact::Gguf(m) => m.file_bytes(),
            Artifact::Hf { tensors, .. } => tensors.file_bytes(),
            Artifact::Mlx(m) => m.tensors().file_bytes(),
        }
    }

    /// The folder holding tokenizer files (HF and MLX).
    pub fn dir(&self) -> Option<&Path> {
        match self {
            Artifact::Gguf(_) => None,
            Artifact::Hf { dir, .. } => Some(dir),
            Artifact::Mlx(m) => Some(m.dir()),
        }
    }

    /// The model's hyperparameters.
    pub fn config(&self) -> Result<ModelConfig> {
        match self {
            Artifact::Gguf(m) => {
                let rope_freqs = match m.tensor("rope_freqs.weight") {
                    Some((info, bytes)) => {
                        let n = info.n_elements() as usize;
                        Some(dense_vector("rope_freqs.weight", info.ggml_type, bytes, n)?)
                    }
                    None => None,
                };
                let emb = m
                    .tensor("output.weight")
                    .or_else(|| m.tensor("token_embd.weight"))
                    .ok_or_else(|| EngineError::MissingTensor("token_embd.weight".into()))?
                    .0;
                let n_vocab = emb.dims.get(1).copied().unwrap_or(0) as usize;
                ModelConfig::from_gguf(m.metadata(), rope_freqs, n_vocab)
            }
            Artifact::Hf { config, .. } => ModelConfig::from_hf(config),
            Artifact::Mlx(m) => ModelConfig::from_hf(m.config()),
        }
    }

    /// A view of the weights under the architecture's names.
    pub fn tensors(&self, arch: Arch) -> Result<Tensors<'_>> {
        let st = match self {
            Artifact::Gguf(m) => return Ok(Tensors::Gguf(m)),
            Artifact::Hf { tensors, .. } => tensors,
            Artifact::Mlx(m) => m.tensors(),
        };
        let (prefix, _) = st
            .tensors()
            .find_map(|(t, _)| {
                t.name
                    .strip_suffix("embed_tokens.weight")
                    .map(|p| (p.to_string(), ()))
            })
            .ok_or_else(|| EngineError::MissingTensor("model.embed_tokens.weight".into()))?;
        let root = prefix.strip_suffix("model.").unwrap_or("").to_string();
        let mlx = match self {
            Artifact::Mlx(m) => Some(m),
            _ => None,
        };
        Ok(Tensors::Safetensors {
            st,
            mlx,
            arch,
            prefix,
            root,
        })
    }
}

/// The weights of an artifact, looked up by [`Role`].
pub enum Tensors<'a> {
    /// GGUF names.
    Gguf(&'a GgufModel),
    /// transformers names, with an MLX folder's quantized modules.
    Safetensors {
        /// The tensors.
        st: &'a SafetensorsModel,
        /// The MLX folder, when the artifact is one.
        mlx: Option<&'a MlxModel>,
        /// Architecture (for the names that differ).
        arch: Arch,
        /// Prefix of the model's modules (`model.`).
        prefix: String,
        /// Prefix of the lm head (`` or `language_model.`).
        root: String,
    },
}

fn dense_type_of_ggml(t: GgmlType) -> Option<DenseType> {
    match t {
        GgmlType::F32 => Some(DenseType::F32),
        GgmlType::F16 => Some(DenseType::F16),
        GgmlType::BF16 => Some(DenseType::BF16),
        _ => None,
    }
}

fn dense_type_of_st(t: Dtype) -> Option<DenseType> {
    match t {
        Dtype::F32 => Some(DenseType::F32),
        Dtype::F16 => Some(DenseType::F16),
        Dtype::BF16 => Some(DenseType::BF16),
        _ => None,
    }
}

fn dense_vector(name: &str, ty: GgmlType, bytes: &[u8], n: usize) -> Result<Vec<f32>> {
    let dt = dense_type_of_ggml(ty).ok_or_else(|| EngineError::BadTensor {
        name: name.into(),
        why: format!("a vector stored as {ty}; expected F32, F16 or BF16"),
    })?;
    let mut out = vec![0.0; n];
    if bytes.len() != n * dt.size() {
        return Err(EngineError::BadTensor {
            name: name.into(),
            why: format!("{} bytes for {n} values", bytes.len()),
        });
    }
    super::weights::decode_dense(dt, bytes, &mut out);
    Ok(out)
}

impl<'a> Tensors<'a> {
    fn st_name(&self, role: Role, layer: usize, suffix: &str) -> String {
        match self {
            Tensors::Gguf(_) => role.gguf_name(layer, suffix),
            Tensors::Safetensors {
                arch, prefix, root, ..
            } => match role.hf_module(*arch, layer) {
                Some(m) => format!("{prefix}{m}.{suffix}"),
                None => format!("{root}lm_head.{suffix}"),
            },
        }
    }

    /// Whether the model has this tensor.
    pub fn has(&self, role: Role, layer: usize) -> bool {
        let name = self.st_name(role, layer, "weight");
        match self {
            Tensors::Gguf(m) => m.tensor(&name).is_some(),
            Tensors::Safetensors { st, .. } => st.tensor(&name).is_some(),
        }
    }

    /// A 1-D tensor (norm weight or bias) as f32, or `None` when absent.
    pub fn vector(&self, role: Role, layer: usize, suffix: &str) -> Result<Option<Vec<f32>>> {
        let name = self.st_name(role, layer, suffix);
        match self {
            Tensors::Gguf(m) => match m.tensor(&name) {
                None => Ok(None),
                Some((info, bytes)) => {
                    dense_vector(&name, info.ggml_type, bytes, info.n_elements() as usize).map(Some)
                }
            },
            Tensors::Safetensors { st, .. } => match st.tensor(&name) {
                None => Ok(None),
                Some((info, bytes)) => {
                    let dt =
                        dense_type_of_st(info.dtype).ok_or_else(|| EngineError::BadTensor {
                            name: name.clone(),
                            why: format!("stored as {:?}; expected F32, F16 or BF16", info.dtype),
                        })?;
                    let n = info.n_elements() as usize;
                    if bytes.len() != n * dt.size() {
                        return Err(EngineError::BadTensor {
                            name,
                            why: "size does not match its shape".into(),
                        });
                    }
                    let mut out = vec![0.0; n];
                    super::weights::decode_dense(dt, bytes, &mut out);
                    Ok(Some(out))
                }
            },
        }
    }

    /// A required 1-D tensor of `n` values.
    pub fn require_vector(&self, role: Role, layer: usize, n: usize) -> Result<Vec<f32>> {
        let v = self
            .vector(role, layer, "weight")?
            .ok_or_else(|| EngineError::MissingTensor(self.st_name(role, layer, "weight")))?;
        if v.len() != n {
            return Err(EngineError::BadTensor {
                name: self.st_name(role, layer, "weight"),
                why: format!("{} values, expected {n}", v.len()),
            });
        }
        Ok(v)
    }

    /// A weight matrix of `rows x cols` (outputs x inputs), or `None` when
    /// absent.
    pub fn matrix(
        &self,
        role: Role,
        layer: usize,
        rows: usize,
        cols: usize,
    ) -> Result<Option<Box<dyn Weight + 'a>>> {
        let name = self.st_name(role, layer, "weight");
        let bad = |why: String| EngineError::BadTensor {
            name: name.clone(),
            why,
        };
        match self {
            Tensors::Gguf(m) => {
                let Some((info, bytes)) = m.tensor(&name) else {
                    return Ok(None);
                };
                if info.dims.len() != 2
                    || info.dims[0] as usize != cols
                    || info.dims[1] as usize != rows
                {
                    return Err(bad(format!(
                        "dims {:?}, expected [{cols}, {rows}]",
                        info.dims
                    )));
                }
                Ok(Some(Box::new(GgmlWeight::new(
                    &name,
                    bytes,
                    info.ggml_type,
                    rows,
                    cols,
                )?)))
            }
            Tensors::Safetensors { st, mlx, .. } => {
                let Some((info, bytes)) = st.tensor(&name) else {
                    return Ok(None);
                };
                let module = name.strip_suffix(".weight").unwrap_or(&name);
                if let Some(mlx) = mlx {
                    if let Some((sinfo, sbytes)) = st.tensor(&format!("{module}.scales")) {
                        let params = mlx
                            .quantization()
                            .and_then(|q| q.params_for(module))
                            .ok_or_else(|| {
                                bad("stored quantized, but config.json gives no quantization for it".into())
                            })?;
                        let (_, bbytes) =
                            st.tensor(&format!("{module}.biases")).ok_or_else(|| {
                                EngineError::MissingTensor(format!("{module}.biases"))
                            })?;
                        let sb = dense_type_of_st(sinfo.dtype)
                            .ok_or_else(|| bad(format!("scales stored as {:?}", sinfo.dtype)))?;
                        if info.shape.len() != 2 || info.shape[0] as usize != rows {
                            return Err(bad(format!(
                                "packed shape {:?} does not have {rows} rows",
                                info.shape
                            )));
                        }
                        let w = MlxAffineWeight::new(
                            &name,
                            bytes,
                            sbytes,
                            bbytes,
                            sb,
                            params.bits,
                            params.group_size as usize,
                            rows,
                            cols,
                        )?;
                        return Ok(Some(Box::new(w)));
                    }
                }
                if info.shape != [rows as u64, cols as u64] {
                    return Err(bad(format!(
                        "shape {:?}, expected [{rows}, {cols}]",
                        info.shape
                    )));
                }
                let dt = dense_type_of_st(info.dtype)
                    .ok_or_else(|| bad(format!("stored as {:?}", info.dtype)))?;
                Ok(Some(Box::new(DenseWeight::new(
                    &name, bytes, dt, rows, cols,
                )?)))
            }
        }
    }

    /// A required weight matrix.
    pub fn require_matrix(
        &self,
        role: Role,
        layer: usize,
        rows: usize,
        cols: usize,
    ) -> Result<Box<dyn Weight + 'a>> {
        self.matrix(role, layer, rows, cols)?
            .ok_or_else(|| EngineError::MissingTensor(self.st_name(role, layer, "weight")))
    }
}
