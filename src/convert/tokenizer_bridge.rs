//! The one place conversions meet the tokenizer module (`crate::tokenizer`,
//! on its way from the `tok` branch): Hugging Face tokenizer files to GGUF
//! `tokenizer.*` keys and back. Until it is merged these return what can
//! be done without it, and the converters say what is missing.

use std::path::Path;

use super::error::Result;
use crate::formats::gguf::Metadata;

/// The `tokenizer.*` keys convert_hf_to_gguf.py writes for the model
/// folder `dir` of Hugging Face class `hf_arch`, with `pre` naming the BPE
/// pre-tokenizer when its hash is not a known one. `None` while the
/// tokenizer module is not part of this build.
pub fn gguf_keys_from_hf_dir(
    dir: &Path,
    pre: Option<&str>,
    hf_arch: &str,
) -> Result<Option<Metadata>> {
    let _ = (dir, pre, hf_arch);
    Ok(None)
}

/// Hugging Face tokenizer files (name, bytes) for a GGUF model's
/// `tokenizer.*` keys. Until the tokenizer module is wired this gives the
/// chat template alone, as `chat_template.jinja`.
pub fn hf_files_from_gguf(md: &Metadata) -> Result<Vec<(String, Vec<u8>)>> {
    Ok(md
        .get_str("tokenizer.chat_template")
        .map(|t| vec![("chat_template.jinja".to_string(), t.as_bytes().to_vec())])
        .unwrap_or_default())
}

/// True when [`gguf_keys_from_hf_dir`] and [`hf_files_from_gguf`] do the
/// whole job.
pub const TOKENIZER_WIRED: bool = false;

/// Tokenizer files a Hugging Face folder may hold, copied as they are when
/// the output is another Hugging Face folder.
pub const HF_TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
];
