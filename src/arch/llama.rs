//! Llama (also SmolLM, TinyLlama and other `LlamaForCausalLM` checkpoints):
//! convert_hf_to_gguf.py's `LlamaModel` (conversion/llama.py).

use serde_json::{json, Value as Json};

use super::hparams::{default_key, JsonMap};
use super::{
    base_hf_config, json_u32, llama_qk_layout, require, write_base_hparams, ArchError,
    Architecture, GeneratedTensor, GgufKeys, GgufModelInfo, HParams, KeyWriter, Layout, Result,
    LLAMA_BLOCK,
};

/// `LlamaForCausalLM`.
pub struct Llama;

impl Architecture for Llama {
    fn name(&self) -> &'static str {
        "llama"
    }
    fn hf_architectures(&self) -> &'static [&'static str] {
        &["LlamaForCausalLM", "LLaMAForCausalLM"]
    }
    fn gguf_arch(&self) -> &'static str {
        "llama"
    }
    fn hf_model_type(&self) -> &'static str {
        "llama"
    }
    fn block_tensors(&self) -> &'static [(&'static str, &'static str)] {
        LLAMA_BLOCK
    }

    /// transformers' `LlamaConfig` defaults.
    fn fill_config_defaults(&self, cfg: &mut JsonMap) {
        llama_family_defaults(cfg, 2048, 1e-6);
        default_key(cfg, "bos_token_id", json!(1));
        default_key(cfg, "eos_token_id", json!(2));
    }

    fn gguf_layout(&self, hf_name: &str, shape: &[u64], hp: &HParams) -> Result<Layout> {
        llama_qk_layout(hf_name, shape, hp)
    }

    fn write_gguf_hparams(&self, hp: &HParams, w: &mut KeyWriter<'_>, ftype: u32) -> Result<()> {
        write_llama_hparams(hp, w, ftype)
    }

    fn extra_gguf_tensors(&self, hp: &HParams) -> Result<Vec<GeneratedTensor>> {
        llama3_rope_freqs(hp)
    }

    fn hf_config(&self, info: &GgufModelInfo<'_>) -> Result<JsonMap> {
        llama_hf_config(self, info)
    }
}

/// Defaults shared by the llama-shaped configs: kv heads = heads,
/// head_dim = hidden / heads (also when config.json has `head_dim: null`).
pub(super) fn llama_family_defaults(cfg: &mut JsonMap, max_pos: u64, rms_eps: f64) {
    default_key(cfg, "vocab_size", json!(32000));
    if let Some(h) = cfg.get("num_attention_heads").cloned() {
        if cfg.get("num_key_value_heads").is_none_or(Json::is_null) {
            cfg.insert("num_key_value_heads".into(), h);
        }
    }
    let head_dim = match (
        cfg.get("hidden_size").and_then(Json::as_u64),
        cfg.get("num_attention_heads").and_then(Json::as_u64),
    ) {
        (Some(hidden), Some(heads)) if heads > 0 => Some(hidden / heads),
        _ => None,
    };
    if let (true, Some(hd)) = (cfg.get("head_dim").is_none_or(Json::is_null), head_dim) {
        cfg.insert("head_dim".into(), json!(hd));
    }
    default_key(cfg, "hidden_act", json!("silu"));
    default_key(cfg, "max_position_embeddings", json!(max_pos));
    default_key(cfg, "rms_norm_eps", json!(rms_eps));
    default_key(cfg, "tie_word_embeddings", json!(false));
}

/// `LlamaModel.set_gguf_parameters`: the base keys, then `vocab_size` and
/// `rope.dimension_count`.
pub(super) fn write_llama_hparams(hp: &HParams, w: &mut KeyWriter<'_>, ftype: u32) -> Result<()> {
    write_base_hparams(hp, w, ftype)?;
    w.u32("vocab_size", require(hp, &["vocab_size"])?)?;
    let rope_dim = match hp.get("head_dim").filter(|v| !v.is_null()) {
        Some(v) => json_u32("head_dim", v)?,
        None => {
            let hidden = json_u32("hidden_size", require(hp, &["hidden_size"])?)?;
            let heads = json_u32(
                "num_attention_heads",
                require(hp, &["num_attention_heads"])?,
            )?;
            if heads == 0 {
                return Err(ArchError::BadHparam {
                    key: "num_attention_heads".into(),
                    value: "0".into(),
                    why: "must be positive",
                });
            }
            hidden / heads
        }
    };
    w.u32_value("rope.dimension_count", rope_dim);
    Ok(())
}

/// config.json of a llama GGUF: the shared keys, biases as the tensors
/// show them, and llama 3's rope scaling recovered from `rope_freqs`.
pub(super) fn llama_hf_config<A: Architecture + ?Sized>(
    arch: &A,
    info: &GgufModelInfo<'_>,
) -> Result<JsonMap> {
    let mut c = base_hf_config(arch, info)?;
    c.insert(
        "attention_bias".into(),
        json!(info.has_tensor("blk.0.attn_q.bias")),
    );
    c.insert(
        "mlp_bias".into(),
        json!(info.has_tensor("blk.0.ffn_up.bias")),
    );
    Ok(c)
}

/// Parameters of llama 3's rope scaling (`rope_type: llama3`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Llama3Rope {
    /// rope theta.
    pub base: f64,
    /// Rotary dimensions (head_dim).
    pub dim: u64,
    /// `factor`.
    pub factor: f64,
    /// `low_freq_factor`.
    pub low_freq_factor: f64,
    /// `high_freq_factor`.
    pub high_freq_factor: f64,
    /// `original_max_position_embeddings`.
    pub original_context: f64,
}

impl Llama3Rope {
    /// The per-frequency factors `LlamaModel.generate_extra_tensors` writes
    /// as `rope_freqs.weight`. The script computes in torch float32; this
    /// follows it operation by operation in f32 (`powf` may differ from
    /// torch's in the last bit for some inputs).
    pub fn factors(&self) -> Vec<f32> {
        let dim = self.dim as f32;
        let base = self.base as f32;
        let low_wavelen = self.original_context / self.low_freq_factor;
        let high_wavelen = self.original_context / self.high_freq_factor;
        (0..self.dim)
            .step_by(2)
            .map(|i| {
                let freq = 1.0f32 / base.powf(i as f32 / dim);
                let wavelen = (2.0 * std::f64::consts::PI) as f32 / freq;
                if f64::from(wavelen) < high_wavelen {
                    1.0
                } else if f64::from(wavelen) > low_wavelen {
                    self.factor as f32
                } else {
                    let smooth = ((self.original_context as f32 / wavelen)
                        - self.low_freq_factor as f32)
                        / (self.high_freq_factor as f32 - self.low_freq_factor as f32);
                    1.0 / ((1.0 - smooth) / self.factor as f32 + smooth)
                }
            })
            .collect()
    }
}

/// Most rotary dimensions qforge computes factors for.
const MAX_ROPE_DIM: u64 = 1 << 16;

/// `rope_freqs.weight` for a `rope_type: llama3` config, else nothing.
pub(super) fn llama3_rope_freqs(hp: &HParams) -> Result<Vec<GeneratedTensor>> {
    let rope = hp.full_attention_rope();
    let is_llama3 = rope
        .get("rope_type")
        .and_then(Json::as_str)
        .is_some_and(|t| t.eq_ignore_ascii_case("llama3"));
    if !is_llama3 {
        return Ok(Vec::new());
    }
    let num = |k: &str, d: f64| rope.get(k).and_then(Json::as_f64).unwrap_or(d);
    let dim = match hp.get("head_dim").and_then(Json::as_u64) {
        Some(d) => d,
        None => {
            let hidden = require(hp, &["hidden_size"])?.as_u64().unwrap_or(0);
            let heads = require(hp, &["num_attention_heads"])?
                .as_u64()
                .unwrap_or(1)
                .max(1);
            hidden / heads
        }
    };
    if dim == 0 || dim > MAX_ROPE_DIM {
        return Err(ArchError::BadHparam {
            key: "head_dim".into(),
            value: dim.to_string(),
            why: "rotary dimensions must be from 1 to 65536",
        });
    }
    let params = Llama3Rope {
        base: num("rope_theta", 10000.0),
        dim,
        factor: num("factor", 8.0),
        low_freq_factor: num("low_freq_factor", 1.0),
        high_freq_factor: num("high_freq_factor", 4.0),
        original_context: num("original_max_position_embeddings", 8192.0),
    };
    Ok(vec![GeneratedTensor {
        name: "rope_freqs.weight".into(),
        values: params.factors(),
    }])
}

/// Recovers llama 3 rope parameters from a GGUF's `rope_freqs` values:
/// llama.cpp keeps only the factors, so this tries Meta's published
/// low/high frequency factors and context (1, 4, 8192) with the largest
/// factor, and accepts them only when they reproduce every value.
pub fn llama3_rope_from_factors(keys: &GgufKeys<'_>, factors: &[f32], dim: u64) -> Option<JsonMap> {
    if dim != 2 * factors.len() as u64 || dim > MAX_ROPE_DIM {
        return None;
    }
    let base = f64::from(keys.f32("rope.freq_base")?);
    let factor = f64::from(factors.iter().copied().fold(f32::MIN, f32::max));
    let guess = Llama3Rope {
        base,
        dim,
        factor,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_context: 8192.0,
    };
    let again = guess.factors();
    let close = again.len() == factors.len()
        && again
            .iter()
            .zip(factors)
            .all(|(a, b)| (a - b).abs() <= 1e-5 * b.abs().max(1.0));
    close.then(|| {
        let mut m = JsonMap::new();
        m.insert("rope_type".into(), json!("llama3"));
        m.insert("factor".into(), json!(factor));
        m.insert("low_freq_factor".into(), json!(1.0));
        m.insert("high_freq_factor".into(), json!(4.0));
        m.insert("original_max_position_embeddings".into(), json!(8192));
        m
    })
}
