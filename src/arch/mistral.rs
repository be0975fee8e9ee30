//! Mistral (`MistralForCausalLM`): the script converts it with the same
//! `LlamaModel` class, so GGUF knows it as `llama`. A GGUF file does not say
//! which of the two it came from; the way back writes `LlamaForCausalLM`,
//! which computes the same function (Mistral's sliding window is not
//! stored in GGUF by the script, and llama.cpp does not apply one).

use serde_json::json;

use super::hparams::{default_key, JsonMap};
use super::llama::{
    llama3_rope_freqs, llama_family_defaults, llama_hf_config, write_llama_hparams,
};
use super::{
    llama_qk_layout, Architecture, GeneratedTensor, GgufModelInfo, HParams, KeyWriter, Layout,
    Result, LLAMA_BLOCK,
};

/// `MistralForCausalLM`.
pub struct Mistral;

impl Architecture for Mistral {
    fn name(&self) -> &'static str {
        "mistral"
    }
    fn hf_architectures(&self) -> &'static [&'static str] {
        &["MistralForCausalLM"]
    }
    fn gguf_arch(&self) -> &'static str {
        "llama"
    }
    fn hf_model_type(&self) -> &'static str {
        "mistral"
    }
    fn block_tensors(&self) -> &'static [(&'static str, &'static str)] {
        LLAMA_BLOCK
    }

    /// transformers' `MistralConfig` defaults.
    fn fill_config_defaults(&self, cfg: &mut JsonMap) {
        default_key(cfg, "num_key_value_heads", json!(8));
        llama_family_defaults(cfg, 131072, 1e-6);
        default_key(cfg, "sliding_window", json!(4096));
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
        let mut c = llama_hf_config(self, info)?;
        c.insert("sliding_window".into(), serde_json::Value::Null);
        Ok(c)
    }
}
