//! Phi-3 (`Phi3ForCausalLM`): convert_hf_to_gguf.py's `Phi3MiniModel`
//! (conversion/phi.py). Its attention projections are one fused
//! `qkv_proj` and its MLP one fused `gate_up_proj`; GGUF keeps both fused
//! (`attn_qkv`, `ffn_up` with twice the rows) and llama.cpp splits them at
//! load time, so no tensor is split or joined either way. NeoX rope, no
//! permutation. Long-rope models carry their factors as two extra tensors.

use serde_json::{json, Value as Json};

use super::hparams::{default_key, JsonMap};
use super::{
    base_hf_config, json_u32, require, ArchError, Architecture, GeneratedTensor, GgufKeys,
    GgufModelInfo, HParams, KeyWriter, Result,
};
use crate::formats::gguf::Value;

/// `Phi3ForCausalLM`.
pub struct Phi3;

const BLOCK: &[(&str, &str)] = &[
    ("input_layernorm", "attn_norm"),
    ("post_attention_layernorm", "ffn_norm"),
    ("self_attn.qkv_proj", "attn_qkv"),
    ("self_attn.o_proj", "attn_output"),
    ("mlp.gate_up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
];

impl Architecture for Phi3 {
    fn name(&self) -> &'static str {
        "phi3"
    }
    fn hf_architectures(&self) -> &'static [&'static str] {
        &["Phi3ForCausalLM"]
    }
    fn gguf_arch(&self) -> &'static str {
        "phi3"
    }
    fn hf_model_type(&self) -> &'static str {
        "phi3"
    }
    fn block_tensors(&self) -> &'static [(&'static str, &'static str)] {
        BLOCK
    }

    /// transformers' `Phi3Config` defaults.
    fn fill_config_defaults(&self, cfg: &mut JsonMap) {
        default_key(cfg, "vocab_size", json!(32064));
        if let Some(h) = cfg.get("num_attention_heads").cloned() {
            if cfg.get("num_key_value_heads").is_none_or(Json::is_null) {
                cfg.insert("num_key_value_heads".into(), h);
            }
        }
        default_key(cfg, "hidden_act", json!("silu"));
        default_key(cfg, "max_position_embeddings", json!(4096));
        default_key(cfg, "original_max_position_embeddings", json!(4096));
        default_key(cfg, "rms_norm_eps", json!(1e-5));
        default_key(cfg, "tie_word_embeddings", json!(false));
        default_key(cfg, "sliding_window", Json::Null);
        default_key(cfg, "bos_token_id", json!(1));
        default_key(cfg, "eos_token_id", json!(32000));
        default_key(cfg, "pad_token_id", json!(32000));
        if let Some(Json::Object(rp)) = cfg.get_mut("rope_parameters") {
            default_key(rp, "partial_rotary_factor", json!(1.0));
        }
    }

    /// `Phi3MiniModel.generate_extra_tensors` runs before the metadata is
    /// set, so its `rope.scaling.attn_factor` comes right after
    /// `general.architecture`.
    fn write_early_gguf_keys(&self, hp: &HParams, w: &mut KeyWriter<'_>) -> Result<()> {
        if let Some(attn_factor) = long_rope(hp)?.map(|l| l.attn_factor) {
            let key = format!("{}.rope.scaling.attn_factor", w.arch());
            w.set(&key, Value::F32(attn_factor as f32));
        }
        Ok(())
    }

    /// `Phi3MiniModel.set_gguf_parameters`, which replaces the base class's
    /// entirely.
    fn write_gguf_hparams(&self, hp: &HParams, w: &mut KeyWriter<'_>, ftype: u32) -> Result<()> {
        let n_embd = require(hp, &["hidden_size", "n_embd"])?;
        let n_head = require(hp, &["num_attention_heads", "n_head"])?;
        let n_head_kv = require(hp, &["num_key_value_heads", "n_head_kv"])?;
        let rms_eps = require(hp, &["rms_norm_eps"])?;
        let max_pos = require(hp, &["n_positions", "max_position_embeddings"])?;
        let rope = hp.rope_parameters();
        let orig = rope
            .get("original_max_position_embeddings")
            .ok_or_else(|| {
                ArchError::MissingHparam(vec!["original_max_position_embeddings".into()])
            })?;
        let rope_dims = rope_dims(hp)?;

        w.u32("context_length", max_pos)?;
        w.u32("rope.scaling.original_context_length", orig)?;
        w.u32("embedding_length", n_embd)?;
        w.u32("feed_forward_length", require(hp, &["intermediate_size"])?)?;
        let blocks = require(
            hp,
            &["n_layers", "num_hidden_layers", "n_layer", "num_layers"],
        )?;
        w.u32("block_count", blocks)?;
        w.u32("attention.head_count", n_head)?;
        w.u32("attention.head_count_kv", n_head_kv)?;
        w.f32("attention.layer_norm_rms_epsilon", rms_eps)?;
        w.u32_value("rope.dimension_count", rope_dims);
        let theta = hp
            .full_attention_rope()
            .get("rope_theta")
            .cloned()
            .ok_or_else(|| ArchError::MissingHparam(vec!["rope_theta".into()]))?;
        w.f32("rope.freq_base", &theta)?;
        w.set(crate::formats::gguf::keys::FILE_TYPE, Value::U32(ftype));
        // A null sliding window is written as 0 (the script tells Phi-4 from
        // Phi-3 this way).
        let window = hp.get("sliding_window").filter(|v| !v.is_null()).cloned();
        w.u32("attention.sliding_window", &window.unwrap_or(json!(0)))?;
        Ok(())
    }

    fn extra_gguf_tensors(&self, hp: &HParams) -> Result<Vec<GeneratedTensor>> {
        Ok(match long_rope(hp)? {
            None => Vec::new(),
            Some(l) => vec![
                GeneratedTensor {
                    name: "rope_factors_long.weight".into(),
                    values: l.long,
                },
                GeneratedTensor {
                    name: "rope_factors_short.weight".into(),
                    values: l.short,
                },
            ],
        })
    }

    fn hf_config(&self, info: &GgufModelInfo<'_>) -> Result<JsonMap> {
        let k = GgufKeys::new(self.gguf_arch(), info.metadata);
        let mut c = base_hf_config(self, info)?;
        c.remove("head_dim");
        let hidden = k.require_u64("embedding_length")?;
        let heads = k.require_u64("attention.head_count")?.max(1);
        let rot = k.u64("rope.dimension_count").unwrap_or(hidden / heads);
        let partial = (rot * heads) as f64 / hidden.max(1) as f64;
        if let Some(Json::Object(rp)) = c.get_mut("rope_parameters") {
            rp.insert("partial_rotary_factor".into(), json!(partial));
        }
        c.insert("partial_rotary_factor".into(), json!(partial));
        if let Some(o) = k.u64("rope.scaling.original_context_length") {
            c.insert("original_max_position_embeddings".into(), json!(o));
        }
        let window = k.u64("attention.sliding_window").filter(|&w| w > 0);
        c.insert(
            "sliding_window".into(),
            window.map_or(Json::Null, |w| json!(w)),
        );
        Ok(c)
    }
}

/// The rotary dimensions: `int(partial_rotary_factor * hidden) // heads`.
fn rope_dims(hp: &HParams) -> Result<u32> {
    let n_embd = json_u32("hidden_size", require(hp, &["hidden_size", "n_embd"])?)?;
    let n_head = json_u32(
        "num_attention_heads",
        require(hp, &["num_attention_heads", "n_head"])?,
    )?;
    let rot = hp
        .rope_parameters()
        .get("partial_rotary_factor")
        .and_then(Json::as_f64)
        .unwrap_or(1.0);
    if n_head == 0 {
        return Err(ArchError::MissingHparam(vec!["num_attention_heads".into()]));
    }
    Ok(((rot * f64::from(n_embd)) as u32) / n_head)
}

struct LongRope {
    long: Vec<f32>,
    short: Vec<f32>,
    attn_factor: f64,
}

/// Long-rope factors and attention factor, when the config has them.
fn long_rope(hp: &HParams) -> Result<Option<LongRope>> {
    let rope = hp.rope_parameters();
    let factors = |k: &str| -> Option<Vec<f32>> {
        let a = rope.get(k)?.as_array()?;
        a.iter().map(|v| v.as_f64().map(|x| x as f32)).collect()
    };
    let Some(long) = factors("long_factor").filter(|l| !l.is_empty()) else {
        return Ok(None);
    };
    let max_pos = require(hp, &["n_positions", "max_position_embeddings"])?
        .as_f64()
        .unwrap_or(0.0);
    let orig = rope
        .get("original_max_position_embeddings")
        .and_then(Json::as_f64)
        .ok_or_else(|| ArchError::MissingHparam(vec!["original_max_position_embeddings".into()]))?;
    let scale = max_pos / orig;
    let kind = rope
        .get("rope_type")
        .and_then(Json::as_str)
        .unwrap_or("")
        .to_ascii_lowercase();
    let attn_factor = match kind.as_str() {
        "su" | "longrope" if scale > 1.0 => (1.0 + scale.ln() / orig.ln()).sqrt(),
        "yarn" if scale > 1.0 => 0.1 * scale.ln() + 1.0,
        "su" | "longrope" | "yarn" => 1.0,
        _ => {
            return Err(ArchError::BadHparam {
                key: "rope_parameters.rope_type".into(),
                value: kind,
                why: "long-rope factors need rope type su, longrope or yarn",
            })
        }
    };
    let short = factors("short_factor")
        .ok_or_else(|| ArchError::MissingHparam(vec!["rope_parameters.short_factor".into()]))?;
    let half = rope_dims(hp)? as usize / 2;
    if long.len() != short.len() || long.len() != half {
        return Err(ArchError::BadHparam {
            key: "rope_parameters.long_factor".into(),
            value: format!("{} long and {} short factors", long.len(), short.len()),
            why: "there must be one of each per rotary dimension pair",
        });
    }
    Ok(Some(LongRope {
        long,
        short,
        attn_factor,
    }))
}
