//! Text to token ids for a verify run: the one place the run meets a
//! tokenizer, so that qforge's own tokenizer module (GGUF vocabularies
//! tokenized as llama.cpp does) plugs in here.

use std::path::Path;

use crate::formats::gguf::Metadata;

/// What a verify run needs from a tokenizer.
pub trait TextTokenizer {
    /// Token ids of `text`, with the vocabulary's special tokens (BOS) when
    /// `add_special`.
    fn encode(&self, text: &str, add_special: bool) -> anyhow::Result<Vec<u32>>;
    /// Text of `ids` (special tokens left out).
    fn decode(&self, ids: &[u32]) -> anyhow::Result<String>;
    /// The BOS id when the vocabulary adds one (llama-perplexity then puts
    /// it at the start of every window).
    fn bos_added(&self) -> Option<u32>;
    /// End-of-sequence ids (greedy samples stop there).
    fn eos(&self) -> Vec<u32>;
}

/// A transformers `tokenizer.json`, run by the `tokenizers` crate.
pub struct HfTokenizer {
    inner: tokenizers::Tokenizer,
    bos_added: Option<u32>,
    eos: Vec<u32>,
}

impl HfTokenizer {
    /// Loads `dir/tokenizer.json`; whether BOS is added is found by
    /// encoding a probe with and without special tokens.
    pub fn from_dir(dir: &Path) -> anyhow::Result<HfTokenizer> {
        let path = dir.join("tokenizer.json");
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let enc = |special: bool| -> anyhow::Result<Vec<u32>> {
            Ok(inner
                .encode("probe", special)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
                .get_ids()
                .to_vec())
        };
        let (with, without) = (enc(true)?, enc(false)?);
        let bos_added =
            (with.len() > without.len() && with.first() != without.first()).then(|| with[0]);
        let mut eos = Vec::new();
        let config = dir.join("config.json");
        if let Ok(text) = std::fs::read_to_string(&config) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                let v = v.get("text_config").cloned().unwrap_or(v);
                match v.get("eos_token_id") {
                    Some(serde_json::Value::Number(n)) => eos.extend(n.as_u64().map(|x| x as u32)),
                    Some(serde_json::Value::Array(a)) => {
                        eos.extend(a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32))
                    }
                    _ => {}
                }
            }
        }
        Ok(HfTokenizer {
            inner,
            bos_added,
            eos,
        })
    }
}

impl TextTokenizer for HfTokenizer {
    fn encode(&self, text: &str, add_special: bool) -> anyhow::Result<Vec<u32>> {
        Ok(self
            .inner
            .encode(text, add_special)
            .map_err(|e| anyhow::anyhow!("tokenizing: {e}"))?
            .get_ids()
            .to_vec())
    }

    fn decode(&self, ids: &[u32]) -> anyhow::Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| anyhow::anyhow!("decoding: {e}"))
    }

    fn bos_added(&self) -> Option<u32> {
        self.bos_added
    }

    fn eos(&self) -> Vec<u32> {
        self.eos.clone()
    }
}

/// BOS as llama.cpp adds it for a GGUF vocabulary: the id when
/// `tokenizer.ggml.add_bos_token` is true (default: true for SentencePiece
/// `llama` vocabularies, false otherwise).
pub fn gguf_bos_added(md: &Metadata) -> Option<u32> {
    let spm = md.get_str("tokenizer.ggml.model") == Some("llama");
    let add = md.get_bool("tokenizer.ggml.add_bos_token").unwrap_or(spm);
    if add {
        md.get_u64("tokenizer.ggml.bos_token_id").map(|v| v as u32)
    } else {
        None
    }
}

/// End-of-sequence ids of a GGUF vocabulary.
pub fn gguf_eos(md: &Metadata) -> Vec<u32> {
    ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"]
        .iter()
        .filter_map(|k| md.get_u64(k))
        .map(|v| v as u32)
        .collect()
}
