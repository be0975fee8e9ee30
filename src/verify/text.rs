//! Text to token ids for a verify run, through qforge's tokenizer module:
//! a folder's tokenizer.json, or the vocabulary a GGUF file's metadata
//! describes, tokenized and given BOS as llama.cpp does.

use anyhow::{Context, Result};

use crate::engine::Artifact;
use crate::formats::gguf::Metadata;
use crate::tokenizer::Tokenizer;

/// The artifact's tokenizer: GGUF metadata, or the folder's
/// tokenizer.json. `Ok(None)` for a folder without one.
pub fn tokenizer_for(artifact: &Artifact) -> Result<Option<Tokenizer>> {
    match artifact {
        Artifact::Gguf(m) => Tokenizer::from_gguf(m.metadata())
            .map(Some)
            .context("building the tokenizer from the GGUF metadata"),
        _ => match artifact.dir() {
            Some(dir) if dir.join("tokenizer.json").is_file() => Tokenizer::from_hf_dir(dir)
                .map(Some)
                .with_context(|| format!("loading {}", dir.join("tokenizer.json").display())),
            _ => Ok(None),
        },
    }
}

/// The BOS id llama-perplexity puts at the start of every window: the
/// vocabulary's BOS when its tokenizer adds one.
pub fn bos_added(tokenizer: &Tokenizer) -> Option<u32> {
    if tokenizer.add_bos() {
        tokenizer.bos_id()
    } else {
        None
    }
}

/// BOS as llama.cpp adds it for a GGUF vocabulary, read from the metadata
/// alone (for `--tokens` runs on files whose vocabulary qforge cannot
/// rebuild): the id when `tokenizer.ggml.add_bos_token` is true (default:
/// true for SentencePiece `llama` vocabularies, false otherwise).
pub fn gguf_bos_added(md: &Metadata) -> Option<u32> {
    let spm = md.get_str("tokenizer.ggml.model") == Some("llama");
    let add = md.get_bool("tokenizer.ggml.add_bos_token").unwrap_or(spm);
    if add {
        md.get_u64("tokenizer.ggml.bos_token_id").map(|v| v as u32)
    } else {
        None
    }
}

/// End-of-sequence ids of a GGUF vocabulary (EOS and end-of-turn), where
/// a greedy sample stops.
pub fn gguf_eos(md: &Metadata) -> Vec<u32> {
    ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"]
        .iter()
        .filter_map(|k| md.get_u64(k))
        .map(|v| v as u32)
        .collect()
}
