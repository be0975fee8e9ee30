//! The tokenizer files of a Hugging Face model folder, read once.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::error::{Result, TokenizerError};
use super::sentencepiece::SentencePieceModel;
use crate::formats::paths::{read_side_file, MAX_JSON_SIDE_FILE, MAX_TOKENIZER_FILE};

/// The tokenizer-related files of a model folder. Absent files are `None`;
/// a file that exists but does not parse is an error.
#[derive(Debug, Clone, Default)]
pub struct HfTokenizerFiles {
    /// The folder.
    pub dir: PathBuf,
    /// `tokenizer.json` as text (for the `tokenizers` crate).
    pub tokenizer_json_text: Option<String>,
    /// `tokenizer.json` parsed.
    pub tokenizer_json: Option<Value>,
    /// `tokenizer_config.json`.
    pub tokenizer_config: Option<Value>,
    /// `special_tokens_map.json`.
    pub special_tokens_map: Option<Value>,
    /// `config.json`.
    pub config: Option<Value>,
    /// `generation_config.json`.
    pub generation_config: Option<Value>,
    /// `added_tokens.json`.
    pub added_tokens: Option<Value>,
    /// `chat_template.jinja` (transformers 5 writes the template here).
    pub chat_template_jinja: Option<String>,
    /// `chat_template.json` (transformers 4.4x wrote it here).
    pub chat_template_json: Option<Value>,
    /// `additional_chat_templates/*.jinja`, sorted by name.
    pub additional_chat_templates: Vec<(String, String)>,
    /// `tokenizer.model`, parsed.
    pub sentencepiece: Option<SentencePieceModel>,
}

impl HfTokenizerFiles {
    /// Reads every tokenizer file present in `dir`.
    pub fn read(dir: impl AsRef<Path>) -> Result<HfTokenizerFiles> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            return Err(TokenizerError::missing(format!(
                "{} is not a folder: expected a Hugging Face model folder",
                dir.display()
            )));
        }
        let tokenizer_json_text = read_text(dir, "tokenizer.json", MAX_TOKENIZER_FILE)?;
        let tokenizer_json = match &tokenizer_json_text {
            Some(text) => Some(parse_json(text, &dir.join("tokenizer.json"))?),
            None => None,
        };
        let mut additional = Vec::new();
        let extra = dir.join("additional_chat_templates");
        if extra.is_dir() {
            for entry in fs::read_dir(&extra).map_err(|e| TokenizerError::io(&extra, e))? {
                let entry = entry.map_err(|e| TokenizerError::io(&extra, e))?;
                let file_name = entry.file_name();
                let Some(file_name) = file_name.to_str() else {
                    continue;
                };
                if let Some(name) = file_name.strip_suffix(".jinja") {
                    let text =
                        read_text(&extra, file_name, MAX_JSON_SIDE_FILE)?.unwrap_or_default();
                    additional.push((name.to_string(), text));
                }
            }
            additional.sort();
        }
        let sentencepiece = match read_side_file(dir, "tokenizer.model", MAX_TOKENIZER_FILE)? {
            Some(bytes) => Some(
                SentencePieceModel::parse(&bytes)
                    .map_err(|e| e.in_file(&dir.join("tokenizer.model")))?,
            ),
            None => None,
        };
        let json = |name: &str| read_json(dir, name);
        Ok(HfTokenizerFiles {
            dir: dir.to_path_buf(),
            tokenizer_json_text,
            tokenizer_json,
            tokenizer_config: json("tokenizer_config.json")?,
            special_tokens_map: json("special_tokens_map.json")?,
            config: json("config.json")?,
            generation_config: json("generation_config.json")?,
            added_tokens: json("added_tokens.json")?,
            chat_template_jinja: read_text(dir, "chat_template.jinja", MAX_JSON_SIDE_FILE)?,
            chat_template_json: json("chat_template.json")?,
            additional_chat_templates: additional,
            sentencepiece,
        })
    }

    /// `config.json` as an object (empty when absent).
    pub fn config_object(&self) -> Map<String, Value> {
        object_or_empty(self.config.as_ref())
    }

    /// `tokenizer_config.json` as an object (empty when absent).
    pub fn tokenizer_config_object(&self) -> Map<String, Value> {
        object_or_empty(self.tokenizer_config.as_ref())
    }

    /// The first entry of config.json's `architectures`.
    pub fn architecture(&self) -> Option<&str> {
        self.config.as_ref()?.get("architectures")?.get(0)?.as_str()
    }

    /// config.json's `vocab_size`, when it is a non-negative integer.
    pub fn config_vocab_size(&self) -> Option<u64> {
        let config = self.config.as_ref()?;
        config
            .get("vocab_size")
            .or_else(|| config.get("text_config")?.get("vocab_size"))?
            .as_u64()
    }

    /// The path of a file in the folder, for messages.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

fn object_or_empty(v: Option<&Value>) -> Map<String, Value> {
    v.and_then(Value::as_object).cloned().unwrap_or_default()
}

/// Side file `name` of `dir` as text (None when absent), through the
/// format layer's checks: a plain name that stays in the folder, at most
/// `max` bytes.
fn read_text(dir: &Path, name: &str, max: u64) -> Result<Option<String>> {
    match read_side_file(dir, name, max)? {
        Some(bytes) => String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| TokenizerError::json("file is not valid UTF-8").in_file(&dir.join(name))),
        None => Ok(None),
    }
}

fn parse_json(text: &str, path: &Path) -> Result<Value> {
    serde_json::from_str(text)
        .map_err(|e| TokenizerError::json(format!("invalid JSON: {e}")).in_file(path))
}

fn read_json(dir: &Path, name: &str) -> Result<Option<Value>> {
    match read_text(dir, name, MAX_JSON_SIDE_FILE)? {
        Some(text) => parse_json(&text, &dir.join(name)).map(Some),
        None => Ok(None),
    }
}

/// Python truthiness of a JSON value, as the reference scripts test it.
pub(crate) fn truthy(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64().is_some_and(|x| x != 0.0),
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
    }
}
