//! Hyperparameters of a model, read from GGUF metadata (the keys
//! llama.cpp's `llama_model::load_hparams` reads) or from a Hugging Face /
//! MLX config.json (the fields transformers' config classes read).

use serde_json::{Map, Value as Json};

use super::error::{config_err, Result};
use crate::formats::gguf::Metadata;

/// The architectures the engine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// Llama 2/3 and SmolLM.
    Llama,
    /// Mistral (llama layout, optional sliding window).
    Mistral,
    /// Qwen2: q/k/v biases.
    Qwen2,
    /// Qwen3: per-head q/k RMS norms.
    Qwen3,
    /// Gemma 3 (text): (1+w) norms, extra post norms, scaled embeddings,
    /// sliding-window layers with their own rope base.
    Gemma3,
    /// Phi-3: fused qkv and gate/up projections.
    Phi3,
}

impl Arch {
    /// The GGUF `general.architecture` name.
    pub fn gguf_name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Mistral => "mistral",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Gemma3 => "gemma3",
            Arch::Phi3 => "phi3",
        }
    }

    fn from_gguf(name: &str) -> Option<Arch> {
        Some(match name {
            "llama" => Arch::Llama,
            "mistral" => Arch::Mistral,
            "qwen2" => Arch::Qwen2,
            "qwen3" => Arch::Qwen3,
            "gemma3" => Arch::Gemma3,
            "phi3" => Arch::Phi3,
            _ => return None,
        })
    }

    fn from_model_type(name: &str) -> Option<Arch> {
        Some(match name {
            "llama" => Arch::Llama,
            "mistral" => Arch::Mistral,
            "qwen2" => Arch::Qwen2,
            "qwen3" => Arch::Qwen3,
            "gemma3" | "gemma3_text" => Arch::Gemma3,
            "phi3" => Arch::Phi3,
            _ => return None,
        })
    }
}

/// How rope pairs dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs (2i, 2i+1): llama.cpp's `LLAMA_ROPE_TYPE_NORM`, used
    /// with GGUF llama/mistral whose q/k rows were permuted by the converter.
    Interleaved,
    /// Halves (i, i+d/2): transformers' `rotate_half`, llama.cpp's NEOX.
    Neox,
}

/// Feed-forward activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// x * sigmoid(x), gated (SwiGLU).
    Silu,
    /// GELU, tanh approximation, gated (GeGLU).
    GeluTanh,
}

/// Rope of one layer: base and per-pair frequency divisors.
#[derive(Debug, Clone, PartialEq)]
pub struct Rope {
    /// Frequency base (`rope_theta`).
    pub base: f64,
    /// Linear position scale (1 / factor of "linear" scaling).
    pub position_scale: f64,
    /// Per-pair divisors of the frequency (llama3 scaling, GGUF
    /// `rope_freqs.weight`); empty for none.
    pub freq_factors: Vec<f32>,
}

/// One layer's attention settings.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerConfig {
    /// Keys older than this many positions are masked (i - j >= window).
    pub sliding_window: Option<usize>,
    /// The layer's rope.
    pub rope: Rope,
}

/// Everything the forward pass needs besides the weights.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// Architecture.
    pub arch: Arch,
    /// Hidden size.
    pub n_embd: usize,
    /// Feed-forward inner size.
    pub n_ff: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads.
    pub n_head_kv: usize,
    /// Dimension of one head.
    pub head_dim: usize,
    /// Dimensions of a head that rope rotates (the first `n_rot`).
    pub n_rot: usize,
    /// Vocabulary size (rows of the output matrix).
    pub n_vocab: usize,
    /// RMS norm epsilon.
    pub norm_eps: f32,
    /// Rope pairing.
    pub rope_style: RopeStyle,
    /// Scale of q·k.
    pub attn_scale: f32,
    /// Multiplier of the token embeddings (gemma: sqrt(n_embd)).
    pub embed_scale: Option<f32>,
    /// tanh soft-capping of the final logits.
    pub final_softcap: Option<f32>,
    /// tanh soft-capping of attention scores.
    pub attn_softcap: Option<f32>,
    /// Feed-forward activation.
    pub activation: Activation,
    /// Norm weights are stored as w with the model computing (1+w)
    /// (gemma in transformers/MLX; GGUF stores 1+w already).
    pub norm_adds_one: bool,
    /// Per-layer settings.
    pub layers: Vec<LayerConfig>,
    /// Training context length, when the model says.
    pub context_length: Option<usize>,
}

impl ModelConfig {
    /// Number of layers.
    pub fn n_layer(&self) -> usize {
        self.layers.len()
    }

    /// Reads a GGUF file's hyperparameters (`{arch}.*` keys). `rope_freqs`
    /// is the optional `rope_freqs.weight` tensor, `n_vocab` the rows of
    /// the output (or token embedding) matrix.
    pub fn from_gguf(md: &Metadata, rope_freqs: Option<Vec<f32>>, n_vocab: usize) -> Result<Self> {
        let arch_name = md
            .get_str("general.architecture")
            .ok_or_else(|| config_err("GGUF metadata has no general.architecture"))?;
        let arch = Arch::from_gguf(arch_name).ok_or_else(|| {
            config_err(format!(
                "architecture '{arch_name}' is not one the engine runs (llama, mistral, qwen2, qwen3, gemma3, phi3)"
            ))
        })?;
        let key = |k: &str| format!("{arch_name}.{k}");
        let req = |k: &str| -> Result<usize> {
            md.get_u64(&key(k))
                .and_then(|v| usize::try_from(v).ok())
                .filter(|&v| v > 0 && v < (1 << 24))
                .ok_or_else(|| config_err(format!("GGUF key {} is missing or invalid", key(k))))
        };
        let opt = |k: &str| md.get_u64(&key(k)).and_then(|v| usize::try_from(v).ok());
        let n_embd = req("embedding_length")?;
        let n_layer = req("block_count")?;
        let n_ff = req("feed_forward_length")?;
        let n_head = req("attention.head_count")?;
        let n_head_kv = opt("attention.head_count_kv").unwrap_or(n_head);
        let head_dim = opt("attention.key_length").unwrap_or(n_embd / n_head);
        let n_rot = opt("rope.dimension_count").unwrap_or(head_dim);
        let norm_eps = md
            .get_f64(&key("attention.layer_norm_rms_epsilon"))
            .ok_or_else(|| {
                config_err(format!(
                    "GGUF key {} is missing",
                    key("attention.layer_norm_rms_epsilon")
                ))
            })? as f32;
        let base = md.get_f64(&key("rope.freq_base")).unwrap_or(10000.0);
        let mut position_scale = 1.0;
        match md.get_str(&key("rope.scaling.type")) {
            None | Some("none") => {}
            Some("linear") => {
                let f = md.get_f64(&key("rope.scaling.factor")).unwrap_or(1.0);
                if f > 0.0 {
                    position_scale = 1.0 / f;
                }
            }
            Some(other) => {
                return Err(config_err(format!(
                    "rope scaling '{other}' is not implemented by the engine"
                )))
            }
        }
        let global_rope = Rope {
            base,
            position_scale,
            freq_factors: rope_freqs.unwrap_or_default(),
        };
        let swa = opt("attention.sliding_window").filter(|&w| w > 0);
        let mut layers = vec![
            LayerConfig {
                sliding_window: None,
                rope: global_rope.clone(),
            };
            n_layer
        ];
        let mut attn_scale = 1.0 / (head_dim as f32).sqrt();
        let mut embed_scale = None;
        let mut norm_adds_one = false;
        let mut activation = Activation::Silu;
        let rope_style = match arch {
            Arch::Llama | Arch::Mistral => RopeStyle::Interleaved,
            _ => RopeStyle::Neox,
        };
        match arch {
            Arch::Gemma3 => {
                activation = Activation::GeluTanh;
                embed_scale = Some((n_embd as f32).sqrt());
                norm_adds_one = false;
                if let Some(w) = swa {
                    let pattern = swa_pattern_from_gguf(
                        md,
                        &key("attention.sliding_window_pattern"),
                        n_layer,
                    );
                    let local_base = md.get_f64(&key("rope.freq_base_swa")).unwrap_or(10000.0);
                    for (l, sliding) in layers.iter_mut().zip(pattern) {
                        if sliding {
                            l.sliding_window = Some(w);
                            l.rope = Rope {
                                base: local_base,
                                position_scale: 1.0,
                                freq_factors: Vec::new(),
                            };
                        }
                    }
                }
                if n_layer == 62 {
                    // llama.cpp: the 27B model scales by n_embd / n_head.
                    attn_scale = 1.0 / ((n_embd / n_head) as f32).sqrt();
                }
            }
            Arch::Phi3 | Arch::Mistral => {
                for l in &mut layers {
                    l.sliding_window = swa;
                }
            }
            _ => {}
        }
        let softcap = |k: &str| md.get_f64(&key(k)).map(|v| v as f32).filter(|&v| v > 0.0);
        Ok(ModelConfig {
            arch,
            n_embd,
            n_ff,
            n_head,
            n_head_kv,
            head_dim,
            n_rot,
            n_vocab,
            norm_eps,
            rope_style,
            attn_scale,
            embed_scale,
            final_softcap: softcap("final_logit_softcapping"),
            attn_softcap: softcap("attn_logit_softcapping"),
            activation,
            norm_adds_one,
            layers,
            context_length: opt("context_length"),
        })
        .and_then(ModelConfig::checked)
    }

    /// Reads a transformers / mlx-lm config.json (a multimodal config's
    /// `text_config` is used when present).
    pub fn from_hf(config: &Map<String, Json>) -> Result<Self> {
        let top = config;
        let cfg = match config.get("text_config") {
            Some(Json::Object(t)) => t,
            _ => config,
        };
        let model_type = cfg
            .get("model_type")
            .or_else(|| top.get("model_type"))
            .and_then(Json::as_str)
            .ok_or_else(|| config_err("config.json has no model_type"))?;
        let arch = Arch::from_model_type(model_type).ok_or_else(|| {
            config_err(format!(
                "model_type '{model_type}' is not one the engine runs (llama, mistral, qwen2, qwen3, gemma3, phi3)"
            ))
        })?;
        let get_u = |k: &str| cfg.get(k).and_then(Json::as_u64).map(|v| v as usize);
        let get_f = |k: &str| cfg.get(k).and_then(Json::as_f64);
        let req = |k: &str| {
            get_u(k)
                .filter(|&v| v > 0 && v < (1 << 24))
                .ok_or_else(|| config_err(format!("config.json: '{k}' is missing or invalid")))
        };
        let n_embd = req("hidden_size")?;
        let n_layer = req("num_hidden_layers")?;
        let n_ff = req("intermediate_size")?;
        let n_head = req("num_attention_heads")?;
        let n_head_kv = get_u("num_key_value_heads").unwrap_or(n_head);
        let head_dim = get_u("head_dim").unwrap_or(n_embd / n_head);
        let n_vocab = req("vocab_size")?;
        let norm_eps = get_f("rms_norm_eps").unwrap_or(1e-6) as f32;
        let partial = cfg
            .get("rope_parameters")
            .and_then(|p| p.get("partial_rotary_factor"))
            .and_then(Json::as_f64)
            .or_else(|| get_f("partial_rotary_factor"))
            .unwrap_or(1.0);
        let n_rot = ((head_dim as f64 * partial) as usize).max(2) & !1;

        // Rope parameters: transformers 5 writes `rope_parameters` (per
        // layer type for gemma3), older configs `rope_theta` and
        // `rope_scaling`.
        let params_for = |layer_type: Option<&str>| -> Option<&Map<String, Json>> {
            let p = cfg.get("rope_parameters")?.as_object()?;
            match layer_type {
                Some(t) if p.contains_key(t) => p.get(t)?.as_object(),
                _ => Some(p),
            }
        };
        let rope_for = |layer_type: Option<&str>, default_base: f64| -> Result<Rope> {
            let p = params_for(layer_type);
            let scaling = p.or_else(|| cfg.get("rope_scaling").and_then(Json::as_object));
            let base = p
                .and_then(|p| p.get("rope_theta"))
                .and_then(Json::as_f64)
                .unwrap_or(default_base);
            let mut rope = Rope {
                base,
                position_scale: 1.0,
                freq_factors: Vec::new(),
            };
            if let Some(s) = scaling {
                let kind = s
                    .get("rope_type")
                    .or_else(|| s.get("type"))
                    .and_then(Json::as_str)
                    .unwrap_or("default");
                let factor = s.get("factor").and_then(Json::as_f64).unwrap_or(1.0);
                match kind {
                    "default" => {}
                    "linear" => rope.position_scale = 1.0 / factor,
                    "llama3" => {
                        let f = |k: &str, d: f64| s.get(k).and_then(Json::as_f64).unwrap_or(d);
                        rope.freq_factors = llama3_freq_factors(
                            base,
                            n_rot,
                            factor,
                            f("low_freq_factor", 1.0),
                            f("high_freq_factor", 4.0),
                            f("original_max_position_embeddings", 8192.0),
                        );
                    }
                    other => {
                        return Err(config_err(format!(
                            "rope scaling '{other}' is not implemented by the engine"
                        )))
                    }
                }
            }
            Ok(rope)
        };
        let top_theta = get_f("rope_theta").unwrap_or(10000.0);
        let mut layers = Vec::with_capacity(n_layer);
        let mut attn_scale = 1.0 / (head_dim as f32).sqrt();
        let mut embed_scale = None;
        let mut activation = Activation::Silu;
        let mut norm_adds_one = false;
        let window = get_u("sliding_window").filter(|&w| w > 0);
        match arch {
            Arch::Gemma3 => {
                activation = Activation::GeluTanh;
                embed_scale = Some((n_embd as f32).sqrt());
                norm_adds_one = true;
                if let Some(s) = get_f("query_pre_attn_scalar") {
                    attn_scale = (1.0 / s.sqrt()) as f32;
                }
                let types: Vec<String> = match cfg.get("layer_types").and_then(Json::as_array) {
                    Some(a) => a
                        .iter()
                        .map(|v| v.as_str().unwrap_or("full_attention").to_string())
                        .collect(),
                    None => {
                        let p = get_u("sliding_window_pattern")
                            .or_else(|| get_u("_sliding_window_pattern"))
                            .unwrap_or(6);
                        (0..n_layer)
                            .map(|i| {
                                if (i + 1) % p != 0 {
                                    "sliding_attention".to_string()
                                } else {
                                    "full_attention".to_string()
                                }
                            })
                            .collect()
                    }
                };
                if types.len() != n_layer {
                    return Err(config_err(
                        "config.json: layer_types does not list every layer",
                    ));
                }
                let local_base = get_f("rope_local_base_freq").unwrap_or(10000.0);
                for t in &types {
                    let sliding = t == "sliding_attention";
                    let rope = if sliding {
                        rope_for(Some("sliding_attention"), local_base)?
                    } else {
                        rope_for(Some("full_attention"), top_theta)?
                    };
                    layers.push(LayerConfig {
                        sliding_window: if sliding { window } else { None },
                        rope,
                    });
                }
            }
            _ => {
                let rope = rope_for(None, top_theta)?;
                let use_window = match arch {
                    Arch::Mistral | Arch::Phi3 => window,
                    Arch::Qwen2 | Arch::Qwen3 => {
                        if cfg.get("use_sliding_window").and_then(Json::as_bool) == Some(true) {
                            return Err(config_err(
                                "qwen sliding-window attention (use_sliding_window) is not implemented",
                            ));
                        }
                        None
                    }
                    _ => None,
                };
                for _ in 0..n_layer {
                    layers.push(LayerConfig {
                        sliding_window: use_window,
                        rope: rope.clone(),
                    });
                }
            }
        }
        let softcap = |k: &str| get_f(k).map(|v| v as f32).filter(|&v| v > 0.0);
        ModelConfig {
            arch,
            n_embd,
            n_ff,
            n_head,
            n_head_kv,
            head_dim,
            n_rot,
            n_vocab,
            norm_eps,
            rope_style: RopeStyle::Neox,
            attn_scale,
            embed_scale,
            final_softcap: softcap("final_logit_softcapping"),
            attn_softcap: softcap("attn_logit_softcapping"),
            activation,
            norm_adds_one,
            layers,
            context_length: get_u("max_position_embeddings"),
        }
        .checked()
    }

    fn checked(self) -> Result<Self> {
        if !self.n_head.is_multiple_of(self.n_head_kv) {
            return Err(config_err(format!(
                "{} query heads do not share {} key/value heads evenly",
                self.n_head, self.n_head_kv
            )));
        }
        if self.n_rot > self.head_dim || !self.n_rot.is_multiple_of(2) {
            return Err(config_err(format!(
                "rope dimension {} does not fit head dimension {}",
                self.n_rot, self.head_dim
            )));
        }
        for l in &self.layers {
            if !l.rope.freq_factors.is_empty() && l.rope.freq_factors.len() != self.n_rot / 2 {
                return Err(config_err(format!(
                    "rope frequency factors: {} values for {} pairs",
                    l.rope.freq_factors.len(),
                    self.n_rot / 2
                )));
            }
        }
        Ok(self)
    }
}

/// llama.cpp's `hparams.set_swa_pattern` default when the file carries no
/// pattern: every `n`-th layer is global.
fn swa_pattern_from_gguf(md: &Metadata, key: &str, n_layer: usize) -> Vec<bool> {
    if let Some(arr) = md.get_array(key) {
        // convert_hf_to_gguf.py writes the pattern as a bool array.
        let flags = match arr {
            crate::formats::gguf::Array::Bool(v) => Some(v.clone()),
            a => a
                .to_i64_vec()
                .map(|v| v.into_iter().map(|b| b != 0).collect()),
        };
        if let Some(v) = flags.filter(|v| v.len() == n_layer) {
            return v;
        }
    }
    let n = 6;
    (0..n_layer).map(|il| il % n < n - 1).collect()
}

/// Llama 3.1's rope scaling as per-pair frequency divisors (what
/// convert_hf_to_gguf.py writes as `rope_freqs.weight`).
fn llama3_freq_factors(
    base: f64,
    n_rot: usize,
    factor: f64,
    low_freq_factor: f64,
    high_freq_factor: f64,
    old_context: f64,
) -> Vec<f32> {
    let low_wavelen = old_context / low_freq_factor;
    let high_wavelen = old_context / high_freq_factor;
    (0..n_rot / 2)
        .map(|i| {
            let freq = 1.0 / base.powf((2 * i) as f64 / n_rot as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            let f = if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor
            } else {
                let smooth = (old_context / wavelen - low_freq_factor)
                    / (high_freq_factor - low_freq_factor);
                1.0 / ((1.0 - smooth) / factor + smooth)
            };
            f as f32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gguf_sliding_window_pattern_is_read_as_convert_hf_to_gguf_writes_it() {
        use crate::formats::gguf::{Array, Value};
        // A bool array (convert_hf_to_gguf.py's), an integer one, and
        // llama.cpp's default (every sixth layer global) without one.
        let key = "gemma3.attention.sliding_window_pattern";
        let mut md = Metadata::new();
        md.set(key, Value::Array(Array::Bool(vec![true, false])));
        assert_eq!(swa_pattern_from_gguf(&md, key, 2), [true, false]);
        md.set(key, Value::Array(Array::I32(vec![0, 1])));
        assert_eq!(swa_pattern_from_gguf(&md, key, 2), [false, true]);
        let default = swa_pattern_from_gguf(&Metadata::new(), key, 7);
        assert_eq!(default, [true, true, true, true, true, false, true]);
    }

    #[test]
    fn gemma3_layer_types_pick_window_and_rope_base() {
        let cfg: Map<String, Json> = serde_json::from_str(
            r#"{"model_type":"gemma3_text","hidden_size":64,"num_hidden_layers":2,
            "intermediate_size":128,"num_attention_heads":4,"num_key_value_heads":2,"head_dim":16,
            "vocab_size":600,"rms_norm_eps":1e-6,"query_pre_attn_scalar":16,"sliding_window":8,
            "layer_types":["sliding_attention","full_attention"],
            "rope_parameters":{"full_attention":{"rope_theta":1000000.0,"rope_type":"default"},
            "sliding_attention":{"rope_theta":10000.0,"rope_type":"default"}}}"#,
        )
        .unwrap();
        let c = ModelConfig::from_hf(&cfg).unwrap();
        assert_eq!(c.layers[0].sliding_window, Some(8));
        assert_eq!(c.layers[0].rope.base, 10000.0);
        assert_eq!(c.layers[1].sliding_window, None);
        assert_eq!(c.layers[1].rope.base, 1_000_000.0);
        assert_eq!(c.attn_scale, 0.25);
        assert!(c.norm_adds_one);
    }

    #[test]
    fn llama3_factors_leave_high_frequencies_alone() {
        let f = llama3_freq_factors(500000.0, 128, 8.0, 1.0, 4.0, 8192.0);
        assert_eq!(f[0], 1.0);
        assert_eq!(*f.last().unwrap(), 8.0);
    }
}
