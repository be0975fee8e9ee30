//! The one place conversions meet the tokenizer module
//! ([`crate::tokenizer`]): Hugging Face tokenizer files to GGUF
//! `tokenizer.*` keys and back.

use std::path::Path;

use super::error::Result;
use crate::formats::gguf::Metadata;
use crate::tokenizer::{self, HfToGgufOptions};

/// The `tokenizer.*` keys convert_hf_to_gguf.py writes for the model
/// folder `dir` of Hugging Face class `hf_arch`, with `pre` naming the BPE
/// pre-tokenizer when its hash is not a known one.
pub fn gguf_keys_from_hf_dir(dir: &Path, pre: Option<&str>, hf_arch: &str) -> Result<Metadata> {
    Ok(tokenizer::hf_to_gguf_keys(
        dir,
        &HfToGgufOptions {
            tokenizer_pre: pre.map(str::to_string),
            architecture: Some(hf_arch.to_string()),
        },
    )?)
}

/// Hugging Face tokenizer files (name relative to the model folder, bytes)
/// rebuilt from a GGUF model's `tokenizer.*` keys: tokenizer.json,
/// tokenizer_config.json, special_tokens_map.json, chat_template.jinja and
/// any named templates under additional_chat_templates/.
pub fn hf_files_from_gguf(md: &Metadata) -> Result<Vec<(String, Vec<u8>)>> {
    let out = tokenizer::gguf_to_hf(md)?;
    let pretty = |v: &serde_json::Value| {
        let mut s = serde_json::to_string_pretty(v).expect("JSON values serialize");
        s.push('\n');
        s.into_bytes()
    };
    let mut files = vec![
        (
            "tokenizer.json".to_string(),
            out.tokenizer_json_string().into_bytes(),
        ),
        (
            "tokenizer_config.json".to_string(),
            pretty(&out.tokenizer_config),
        ),
        (
            "special_tokens_map.json".to_string(),
            pretty(&out.special_tokens_map),
        ),
    ];
    if let Some(t) = &out.chat_template {
        files.push(("chat_template.jinja".to_string(), t.as_bytes().to_vec()));
    }
    // The names come from GGUF keys (`tokenizer.chat_template.NAME`): only
    // plain file names become files, never a path out of the folder.
    for (name, t) in out
        .named_chat_templates
        .iter()
        .filter(|(n, _)| is_plain_name(n))
    {
        files.push((
            format!("additional_chat_templates/{name}.jinja"),
            t.as_bytes().to_vec(),
        ));
    }
    Ok(files)
}

fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Tokenizer files a Hugging Face folder may hold, copied as they are when
/// the output is another Hugging Face (or MLX) folder.
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
