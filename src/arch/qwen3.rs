//! Qwen3 (`Qwen3ForCausalLM`): convert_hf_to_gguf.py's `Qwen3Model`
//! (conversion/qwen.py): Qwen2 plus per-head q and k norms and an explicit
//! `head_dim`. The script's reranker variant (detected from README and
//! name hints) is not converted here.

use serde_json::json;

use super::hparams::{default_key, JsonMap};
use super::qwen2::qwen_defaults;
use super::{base_hf_config, Architecture, GgufModelInfo, Result};

/// `Qwen3ForCausalLM`.
pub struct Qwen3;

const BLOCK: &[(&str, &str)] = &[
    ("input_layernorm", "attn_norm"),
    ("post_attention_layernorm", "ffn_norm"),
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

impl Architecture for Qwen3 {
    fn name(&self) -> &'static str {
        "qwen3"
    }
    fn hf_architectures(&self) -> &'static [&'static str] {
        &["Qwen3ForCausalLM"]
    }
    fn gguf_arch(&self) -> &'static str {
        "qwen3"
    }
    fn hf_model_type(&self) -> &'static str {
        "qwen3"
    }
    fn block_tensors(&self) -> &'static [(&'static str, &'static str)] {
        BLOCK
    }

    /// transformers' `Qwen3Config` defaults.
    fn fill_config_defaults(&self, cfg: &mut JsonMap) {
        qwen_defaults(cfg);
        default_key(cfg, "head_dim", json!(128));
        default_key(cfg, "attention_bias", json!(false));
    }

    fn hf_config(&self, info: &GgufModelInfo<'_>) -> Result<JsonMap> {
        let mut c = base_hf_config(self, info)?;
        c.insert(
            "attention_bias".into(),
            json!(info.has_tensor("blk.0.attn_q.bias")),
        );
        c.insert("use_sliding_window".into(), json!(false));
        c.insert("sliding_window".into(), serde_json::Value::Null);
        Ok(c)
    }
}
