//! Qwen2 (`Qwen2ForCausalLM`): convert_hf_to_gguf.py's `Qwen2Model`
//! (conversion/qwen.py). NeoX-style rope, so q and k keep their rows; q, k
//! and v carry biases.

use serde_json::{json, Value as Json};

use super::hparams::{default_key, JsonMap};
use super::{base_hf_config, Architecture, GgufModelInfo, Result, LLAMA_BLOCK};

/// `Qwen2ForCausalLM`.
pub struct Qwen2;

impl Architecture for Qwen2 {
    fn name(&self) -> &'static str {
        "qwen2"
    }
    fn hf_architectures(&self) -> &'static [&'static str] {
        &["Qwen2ForCausalLM"]
    }
    fn gguf_arch(&self) -> &'static str {
        "qwen2"
    }
    fn hf_model_type(&self) -> &'static str {
        "qwen2"
    }
    fn block_tensors(&self) -> &'static [(&'static str, &'static str)] {
        LLAMA_BLOCK
    }

    /// transformers' `Qwen2Config` defaults (it has no `head_dim`).
    fn fill_config_defaults(&self, cfg: &mut JsonMap) {
        qwen_defaults(cfg);
    }

    fn hf_config(&self, info: &GgufModelInfo<'_>) -> Result<JsonMap> {
        let mut c = base_hf_config(self, info)?;
        c.insert("use_sliding_window".into(), json!(false));
        c.insert("sliding_window".into(), Json::Null);
        Ok(c)
    }
}

/// Defaults shared by `Qwen2Config` and `Qwen3Config`.
pub(super) fn qwen_defaults(cfg: &mut JsonMap) {
    default_key(cfg, "vocab_size", json!(151936));
    default_key(cfg, "num_key_value_heads", json!(32));
    if cfg.get("num_key_value_heads").is_some_and(Json::is_null) {
        if let Some(h) = cfg.get("num_attention_heads").cloned() {
            cfg.insert("num_key_value_heads".into(), h);
        }
    }
    default_key(cfg, "hidden_act", json!("silu"));
    default_key(cfg, "max_position_embeddings", json!(32768));
    default_key(cfg, "rms_norm_eps", json!(1e-6));
    default_key(cfg, "tie_word_embeddings", json!(false));
    default_key(cfg, "use_sliding_window", json!(false));
}
