//! Gemma 3 text models (`Gemma3ForCausalLM`, and the text half of
//! `Gemma3ForConditionalGeneration`): convert_hf_to_gguf.py's `Gemma3Model`
//! (conversion/gemma.py).
//!
//! Two things move tensor values: GGUF stores every `*norm.weight` as
//! `1 + w` (Gemma3RMSNorm multiplies by `1 + w`; llama.cpp by the stored
//! weight), and the token embedding keeps only the rows of the tokenizer's
//! real vocabulary.

use std::path::Path;

use serde_json::{json, Value as Json};

use super::hparams::{default_key, json_f32, normalize_config, JsonMap};
use super::{
    base_hf_config, write_base_hparams, ArchError, Architecture, GgufKeys, GgufModelInfo, HParams,
    KeyWriter, Layout, Result, RowOrder,
};
use crate::formats::gguf::{Array, Value};

/// `Gemma3ForCausalLM`.
pub struct Gemma3;

const BLOCK: &[(&str, &str)] = &[
    ("input_layernorm", "attn_norm"),
    ("post_attention_layernorm", "post_attention_norm"),
    ("pre_feedforward_layernorm", "ffn_norm"),
    ("post_feedforward_layernorm", "post_ffw_norm"),
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"),
    ("self_attn.q_norm", "attn_q_norm"),
    ("self_attn.k_norm", "attn_k_norm"),
    ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
];

/// llama.cpp's sliding-window pattern for Gemma 3 when the file names none:
/// five sliding layers, then one global.
const LLAMA_CPP_SWA_PATTERN: u64 = 6;

impl Architecture for Gemma3 {
    fn name(&self) -> &'static str {
        "gemma3"
    }
    fn hf_architectures(&self) -> &'static [&'static str] {
        &["Gemma3ForCausalLM", "Gemma3ForConditionalGeneration"]
    }
    fn gguf_arch(&self) -> &'static str {
        "gemma3"
    }
    fn hf_model_type(&self) -> &'static str {
        "gemma3_text"
    }
    fn block_tensors(&self) -> &'static [(&'static str, &'static str)] {
        BLOCK
    }
    fn default_rope_theta(&self) -> f64 {
        1_000_000.0
    }

    /// transformers' `Gemma3TextConfig` defaults, with its split rope
    /// parameters (global layers: `rope_theta`, default 1e6; sliding
    /// layers: `rope_local_base_freq`, default 1e4).
    fn hparams(&self, config: &JsonMap) -> HParams {
        let has_rp = config
            .get("rope_parameters")
            .or_else(|| {
                config
                    .get("text_config")
                    .and_then(|t| t.get("rope_parameters"))
            })
            .is_some_and(|v| !v.is_null());
        let mut map = normalize_config(config, self.default_rope_theta());
        if !has_rp {
            let full = map.get("rope_parameters").cloned().unwrap_or(json!({}));
            let local = map
                .get("rope_local_base_freq")
                .filter(|v| !v.is_null())
                .cloned()
                .unwrap_or(json!(10000.0));
            map.insert(
                "rope_parameters".into(),
                json!({
                    "sliding_attention": {"rope_type": "default", "rope_theta": local},
                    "full_attention": full,
                }),
            );
        }
        self.fill_config_defaults(&mut map);
        HParams::from_map(map)
    }

    fn fill_config_defaults(&self, cfg: &mut JsonMap) {
        default_key(cfg, "vocab_size", json!(262208));
        default_key(cfg, "num_key_value_heads", json!(4));
        default_key(cfg, "head_dim", json!(256));
        default_key(cfg, "hidden_activation", json!("gelu_pytorch_tanh"));
        default_key(cfg, "max_position_embeddings", json!(131072));
        default_key(cfg, "rms_norm_eps", json!(1e-6));
        default_key(cfg, "tie_word_embeddings", json!(true));
        default_key(cfg, "query_pre_attn_scalar", json!(256));
        default_key(cfg, "sliding_window", json!(4096));
        default_key(cfg, "final_logit_softcapping", Json::Null);
        default_key(cfg, "attn_logit_softcapping", Json::Null);
        if !cfg.contains_key("layer_types") {
            let pattern = cfg
                .get("sliding_window_pattern")
                .or_else(|| cfg.get("_sliding_window_pattern"))
                .and_then(Json::as_u64)
                .unwrap_or(6);
            if let Some(n) = cfg.get("num_hidden_layers").and_then(Json::as_u64) {
                let types: Vec<&str> = (0..n)
                    .map(|i| {
                        if pattern > 0 && (i + 1) % pattern == 0 {
                            "full_attention"
                        } else {
                            "sliding_attention"
                        }
                    })
                    .collect();
                cfg.insert("layer_types".into(), json!(types));
            }
        }
    }

    fn gguf_layout(&self, hf_name: &str, _shape: &[u64], _hp: &HParams) -> Result<Layout> {
        Ok(if hf_name.ends_with("norm.weight") {
            Layout {
                rows: RowOrder::Natural,
                shift: 1.0,
            }
        } else {
            Layout::NATURAL
        })
    }

    /// The script drops the embedding rows past the tokenizer's vocabulary:
    /// all `vocab_size` rows when there is a tokenizer.model (its
    /// SentencePiece vocabulary is padded to `vocab_size`), else the
    /// entries of tokenizer.json's model vocabulary plus its added tokens.
    fn gguf_row_limit(&self, hf_name: &str, hp: &HParams, hf_dir: &Path) -> Result<Option<u64>> {
        if !hf_name.contains("embed_tokens.weight") {
            return Ok(None);
        }
        if hf_dir.join("tokenizer.model").is_file() {
            return Ok(hp
                .find_some(&["vocab_size_per_layer_input", "vocab_size"])
                .and_then(Json::as_u64));
        }
        let path = hf_dir.join("tokenizer.json");
        let unreadable = |why: String| ArchError::Unreadable {
            path: path.display().to_string(),
            why,
        };
        let text = std::fs::read_to_string(&path).map_err(|e| unreadable(e.to_string()))?;
        let tok: Json = serde_json::from_str(&text).map_err(|e| unreadable(e.to_string()))?;
        let vocab = tok
            .get("model")
            .and_then(|m| m.get("vocab"))
            .and_then(Json::as_object)
            .map_or(0, |v| v.len());
        let added = tok
            .get("added_tokens")
            .and_then(Json::as_array)
            .map_or(0, |a| a.len());
        Ok(Some((vocab + added) as u64))
    }

    /// `Gemma3Model.set_gguf_parameters`: the base keys, then its own
    /// defaults over them, the final logit softcap and the sliding window.
    /// Beyond the script: `attention.sliding_window_pattern` from
    /// `layer_types`, which llama.cpp reads and otherwise assumes to be
    /// "every sixth layer global" whatever the model says.
    fn write_gguf_hparams(&self, hp: &HParams, w: &mut KeyWriter<'_>, ftype: u32) -> Result<()> {
        write_base_hparams(hp, w, ftype)?;
        let or = |key: &str, default: Json| hp.get(key).cloned().unwrap_or(default);
        w.u32(
            "context_length",
            &or("max_position_embeddings", json!(131072)),
        )?;
        w.u32("attention.head_count", &or("num_attention_heads", json!(8)))?;
        w.f32(
            "attention.layer_norm_rms_epsilon",
            &or("rms_norm_eps", json!(1e-6)),
        )?;
        let head_dim = or("head_dim", json!(256));
        w.u32("attention.key_length", &head_dim)?;
        w.u32("attention.value_length", &head_dim)?;
        let theta = hp
            .full_attention_rope()
            .get("rope_theta")
            .cloned()
            .unwrap_or(json!(1_000_000.0));
        w.f32("rope.freq_base", &theta)?;
        if let Some(v) = hp.get("attn_logit_softcapping").filter(|v| !v.is_null()) {
            return Err(ArchError::BadHparam {
                key: "attn_logit_softcapping".into(),
                value: v.to_string(),
                why: "Gemma 3 has no attention softcapping (the script asserts this)",
            });
        }
        if let Some(cap) = hp.get("final_logit_softcapping").filter(|v| truthy(v)) {
            w.f32("final_logit_softcapping", cap)?;
        }
        if hp.get("sliding_window_pattern") != Some(&json!(1)) {
            let window = hp.get("sliding_window").cloned().unwrap_or(Json::Null);
            w.u32("attention.sliding_window", &window)?;
            if let Some(Json::Array(types)) = hp.get("layer_types") {
                let swa: Vec<bool> = types
                    .iter()
                    .map(|t| t.as_str() == Some("sliding_attention"))
                    .collect();
                let key = format!("{}.attention.sliding_window_pattern", w.arch());
                w.set(&key, Value::Array(Array::Bool(swa)));
            }
        }
        w.u32(
            "attention.head_count_kv",
            &or("num_key_value_heads", json!(4)),
        )?;
        Ok(())
    }

    fn hf_config(&self, info: &GgufModelInfo<'_>) -> Result<JsonMap> {
        let k = GgufKeys::new(self.gguf_arch(), info.metadata);
        let mut c = base_hf_config(self, info)?;
        c.remove("hidden_act");
        c.insert("hidden_activation".into(), json!("gelu_pytorch_tanh"));
        let layers = k.require_u64("block_count")?;
        if layers > info.tensor_names.len() as u64 {
            return Err(ArchError::BadShape {
                name: "gemma3.block_count".into(),
                shape: vec![layers],
                why: format!(
                    "{layers} blocks but only {} tensors",
                    info.tensor_names.len()
                ),
            });
        }
        let hidden = k.require_u64("embedding_length")?;
        let heads = k.require_u64("attention.head_count")?.max(1);
        let head_dim = k.u64("attention.key_length").unwrap_or(256);
        c.insert("head_dim".into(), json!(head_dim));
        // llama.cpp scales queries by 1/sqrt(head_dim), except for the 27B
        // model (62 layers), where it uses 1/sqrt(hidden / heads).
        let scalar = if layers == 62 {
            hidden / heads
        } else {
            head_dim
        };
        c.insert("query_pre_attn_scalar".into(), json!(scalar));
        let window = k.u64("attention.sliding_window").filter(|&w| w > 0);
        c.insert(
            "sliding_window".into(),
            window.map_or(Json::Null, |w| json!(w)),
        );
        let swa: Vec<bool> = match k.get("attention.sliding_window_pattern") {
            Some(Value::Array(Array::Bool(v))) => v.clone(),
            Some(v) if v.as_u64().is_some() => {
                let n = v.as_u64().unwrap_or(LLAMA_CPP_SWA_PATTERN);
                (0..layers).map(|i| n > 0 && i % n < n - 1).collect()
            }
            _ => (0..layers)
                .map(|i| window.is_some() && i % LLAMA_CPP_SWA_PATTERN < LLAMA_CPP_SWA_PATTERN - 1)
                .collect(),
        };
        let types: Vec<&str> = swa
            .iter()
            .map(|&s| {
                if s {
                    "sliding_attention"
                } else {
                    "full_attention"
                }
            })
            .collect();
        c.insert("layer_types".into(), json!(types));
        let full = c.get("rope_parameters").cloned().unwrap_or(json!({}));
        let local = k.f32("rope.freq_base_swa").unwrap_or(10000.0);
        c.insert(
            "rope_parameters".into(),
            json!({
                "sliding_attention": {"rope_type": "default", "rope_theta": json_f32(local)},
                "full_attention": full,
            }),
        );
        c.insert("rope_local_base_freq".into(), json_f32(local));
        c.insert(
            "final_logit_softcapping".into(),
            k.f32("final_logit_softcapping")
                .map_or(Json::Null, json_f32),
        );
        c.insert("attn_logit_softcapping".into(), Json::Null);
        c.insert("attention_bias".into(), json!(false));
        Ok(c)
    }
}

/// Python truthiness of a JSON value.
fn truthy(v: &Json) -> bool {
    match v {
        Json::Null => false,
        Json::Bool(b) => *b,
        Json::Number(n) => n.as_f64().is_some_and(|x| x != 0.0),
        Json::String(s) => !s.is_empty(),
        Json::Array(a) => !a.is_empty(),
        Json::Object(o) => !o.is_empty(),
    }
}
