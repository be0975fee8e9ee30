//! GGUF `tokenizer.*` metadata -> Hugging Face tokenizer files that split
//! and merge text exactly as llama.cpp's vocabulary code does
//! (src/llama-vocab.cpp, `llama_vocab::impl::load` and `tokenize`).
//!
//! - `gpt2` (byte-level BPE): the vocabulary and merges as stored, the
//!   pre-tokenizer llama.cpp uses for `tokenizer.ggml.pre` (pre.rs), and
//!   `ignore_merges` where llama.cpp sets it.
//! - `llama` (SentencePiece): a BPE model with byte fallback whose merges
//!   come from the scores, ranked as llama.cpp's SPM tokenizer picks them
//!   (highest score of the merged token first); the space prefix as a
//!   `Prepend("▁")` normalizer, which like llama.cpp prefixes the text at
//!   the start and after every special token.
//! - Added tokens: every token llama.cpp matches whole in raw text before
//!   tokenizing (its "special tokens cache": control, user-defined and
//!   unknown types, after llama.cpp's own fix-ups by token text), control
//!   and unknown ones as special.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde_json::{json, Map, Value};

use super::error::{Result, TokenizerError};
use super::pre::{hf_pre_tokenizer, known_pre_tokenizers, pre_tokenizer_info};
use super::{keys, TokenType};
use crate::formats::atomic::AtomicFile;
use crate::formats::gguf::{Array, Metadata, Value as GgufValue};
use crate::formats::paths::safe_child;

/// Hugging Face tokenizer files rebuilt from GGUF metadata.
#[derive(Debug, Clone)]
pub struct HfTokenizerOutput {
    /// tokenizer.json.
    pub tokenizer_json: Value,
    /// tokenizer_config.json.
    pub tokenizer_config: Value,
    /// special_tokens_map.json.
    pub special_tokens_map: Value,
    /// chat_template.jinja (the default template).
    pub chat_template: Option<String>,
    /// additional_chat_templates/NAME.jinja.
    pub named_chat_templates: Vec<(String, String)>,
    /// What llama.cpp does with this vocabulary, for the runtime tokenizer.
    pub(crate) specials: ResolvedSpecials,
}

/// Special ids and flags as llama.cpp resolves them: the file's keys over
/// the defaults of the vocabulary type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ResolvedSpecials {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub add_bos: bool,
    pub add_eos: bool,
}

impl HfTokenizerOutput {
    /// tokenizer.json as text.
    pub fn tokenizer_json_string(&self) -> String {
        serde_json::to_string_pretty(&self.tokenizer_json).expect("JSON values serialize")
    }

    /// The tokenizer this tokenizer.json describes.
    pub fn build(&self) -> Result<tokenizers::Tokenizer> {
        self.tokenizer_json_string()
            .parse::<tokenizers::Tokenizer>()
            .map_err(TokenizerError::tokenizers)
    }

    /// Writes the files into the folder `dir` (created if needed), each one
    /// atomically.
    pub fn write_to_dir(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| TokenizerError::io(dir, e))?;
        let pretty =
            |v: &Value| serde_json::to_string_pretty(v).expect("JSON values serialize") + "\n";
        write_file(
            &dir.join("tokenizer.json"),
            self.tokenizer_json_string().as_bytes(),
        )?;
        write_file(
            &dir.join("tokenizer_config.json"),
            pretty(&self.tokenizer_config).as_bytes(),
        )?;
        write_file(
            &dir.join("special_tokens_map.json"),
            pretty(&self.special_tokens_map).as_bytes(),
        )?;
        if let Some(t) = &self.chat_template {
            write_file(&dir.join("chat_template.jinja"), t.as_bytes())?;
        }
        if !self.named_chat_templates.is_empty() {
            let extra = dir.join("additional_chat_templates");
            std::fs::create_dir_all(&extra).map_err(|e| TokenizerError::io(&extra, e))?;
            for (name, t) in &self.named_chat_templates {
                // The name comes from a GGUF key (tokenizer.chat_template.NAME).
                let path = safe_child(&extra, &format!("{name}.jinja"))?;
                write_file(&path, t.as_bytes())?;
            }
        }
        Ok(())
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = AtomicFile::create(path)?;
    f.write_all(bytes)
        .map_err(|e| TokenizerError::io(path, e))?;
    Ok(f.commit()?)
}

/// The tokenizer keys of a GGUF file, read and checked.
struct GgufVocab {
    model: String,
    pre: String,
    tokens: Vec<String>,
    types: Vec<i32>,
    scores: Option<Vec<f32>>,
    merges: Vec<String>,
    ids: HashMap<&'static str, u32>,
    add_bos: Option<bool>,
    add_eos: Option<bool>,
    add_space_prefix: Option<bool>,
    name: String,
}

fn get_u32(md: &Metadata, key: &str) -> Result<Option<u32>> {
    match md.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .map(Some)
            .ok_or_else(|| TokenizerError::metadata(format!("{key} is {v}, expected a token id"))),
    }
}

fn get_bool(md: &Metadata, key: &str) -> Result<Option<bool>> {
    match md.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_bool()
            .map(Some)
            .ok_or_else(|| TokenizerError::metadata(format!("{key} is {v}, expected a bool"))),
    }
}

impl GgufVocab {
    fn read(md: &Metadata) -> Result<GgufVocab> {
        let model = md
            .get_str(keys::MODEL)
            .ok_or_else(|| {
                TokenizerError::missing(format!(
                    "{} is missing: the file has no tokenizer",
                    keys::MODEL
                ))
            })?
            .to_string();
        let tokens = match md.get_array(keys::TOKENS) {
            Some(Array::String(t)) => t.clone(),
            _ => {
                return Err(TokenizerError::missing(format!(
                    "{} must be an array of strings",
                    keys::TOKENS
                )))
            }
        };
        let n = tokens.len();
        let types = match md.get_array(keys::TOKEN_TYPE) {
            None => vec![TokenType::Normal as i32; n],
            Some(Array::I32(t)) if t.len() >= n => t[..n].to_vec(),
            Some(a) => {
                return Err(TokenizerError::metadata(format!(
                    "{} must be {n} i32 values, found {} x {}",
                    keys::TOKEN_TYPE,
                    a.len(),
                    a.element_type().name()
                )))
            }
        };
        let scores = match md.get_array(keys::SCORES) {
            None => None,
            Some(Array::F32(s)) if s.len() >= n => Some(s[..n].to_vec()),
            Some(Array::I32(s)) if s.len() >= n => Some(s[..n].iter().map(|&x| x as f32).collect()),
            Some(a) => {
                return Err(TokenizerError::metadata(format!(
                    "{} must be {n} f32 values, found {} x {}",
                    keys::SCORES,
                    a.len(),
                    a.element_type().name()
                )))
            }
        };
        let merges = match md.get_array(keys::MERGES) {
            None => Vec::new(),
            Some(Array::String(m)) => m.clone(),
            Some(_) => {
                return Err(TokenizerError::metadata(format!(
                    "{} must be an array of strings",
                    keys::MERGES
                )))
            }
        };
        let mut ids = HashMap::new();
        for (name, key) in [
            ("bos", keys::BOS_ID),
            ("eos", keys::EOS_ID),
            ("eot", keys::EOT_ID),
            ("eom", keys::EOM_ID),
            ("unk", keys::UNK_ID),
            ("sep", keys::SEP_ID),
            ("pad", keys::PAD_ID),
            ("mask", keys::MASK_ID),
        ] {
            if let Some(id) = get_u32(md, key)? {
                ids.insert(name, id);
            }
        }
        Ok(GgufVocab {
            model,
            pre: md.get_str(keys::PRE).unwrap_or("default").to_string(),
            tokens,
            types,
            scores,
            merges,
            ids,
            add_bos: get_bool(md, keys::ADD_BOS)?,
            add_eos: get_bool(md, keys::ADD_EOS)?,
            add_space_prefix: get_bool(md, keys::ADD_PREFIX)?,
            name: md.get_str("general.name").unwrap_or("").to_string(),
        })
    }

    /// llama.cpp's id for a special token: the key when it is in range,
    /// else the vocabulary type's default when that is in range.
    fn special(&self, name: &str, default: Option<u32>) -> Option<u32> {
        let n = self.tokens.len() as u32;
        match self.ids.get(name) {
            Some(&id) if id < n => Some(id),
            _ => default.filter(|&id| id < n),
        }
    }
}

/// Token attributes llama.cpp derives (llama_vocab::impl::load): the type
/// from the file, then its fix-ups by token text.
#[derive(Debug, Clone, Copy, Default)]
struct Attr {
    control: bool,
    user_defined: bool,
    unknown: bool,
    rstrip: bool,
}

const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

/// Texts llama.cpp looks for when a FIM id key is absent (fim_pre, suf,
/// mid, pad, rep, sep), with the key that disables each search.
const FIM_TEXTS: &[(&str, &[&str])] = &[
    (
        "tokenizer.ggml.fim_pre_token_id",
        &[
            "<|fim_prefix|>",
            "<fim-prefix>",
            "<fim_prefix>",
            "<｜fim▁begin｜>",
            "<PRE>",
            "▁<PRE>",
            "<|code_prefix|>",
            "<|prefix|>",
        ],
    ),
    (
        "tokenizer.ggml.fim_suf_token_id",
        &[
            "<|fim_suffix|>",
            "<fim-suffix>",
            "<fim_suffix>",
            "<｜fim▁hole｜>",
            "<SUF>",
            "▁<SUF>",
            "<|code_suffix|>",
            "<|suffix|>",
        ],
    ),
    (
        "tokenizer.ggml.fim_mid_token_id",
        &[
            "<|fim_middle|>",
            "<fim-middle>",
            "<fim_middle>",
            "<｜fim▁end｜>",
            "<MID>",
            "▁<MID>",
            "<|code_middle|>",
            "<|middle|>",
        ],
    ),
    (
        "tokenizer.ggml.fim_pad_token_id",
        &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"],
    ),
    (
        "tokenizer.ggml.fim_rep_token_id",
        &[
            "<|fim_repo|>",
            "<|repo_name|>",
            "<fim-repo>",
            "<REPO>",
            "<reponame>",
        ],
    ),
    ("tokenizer.ggml.fim_sep_token_id", &["<|file_sep|>"]),
];

fn token_attrs(v: &GgufVocab, md: &Metadata) -> Vec<Attr> {
    let mut attrs: Vec<Attr> = v
        .types
        .iter()
        .map(|&t| Attr {
            control: t == TokenType::Control as i32,
            user_defined: t == TokenType::UserDefined as i32,
            unknown: t == TokenType::Unknown as i32,
            rstrip: false,
        })
        .collect();
    let by_text: HashMap<&str, usize> = v
        .tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let make_control = |text: &str, attrs: &mut Vec<Attr>| {
        if let Some(&i) = by_text.get(text) {
            attrs[i].control = true;
        }
    };
    // End-of-generation and end-of-turn texts become control tokens; so do
    // the FIM markers when the file does not name them (llama.cpp takes the
    // first it meets, and real vocabularies have at most one of each).
    for text in EOG_TEXTS {
        make_control(text, &mut attrs);
    }
    for (key, texts) in FIM_TEXTS {
        if !md.contains(key) {
            if let Some(text) = texts.iter().find(|t| by_text.contains_key(*t)) {
                make_control(text, &mut attrs);
            }
        }
    }
    // gpt-oss's markers are always rendered: user-defined.
    for text in ["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"] {
        if let Some(&i) = by_text.get(text) {
            attrs[i] = Attr {
                user_defined: true,
                ..Attr::default()
            };
        }
    }
    let has = |t: &str| by_text.contains_key(t);
    if (has("<|return|>") && has("<|call|>") || has("<|calls|>") && has("<|flush|>"))
        && has("<|end|>")
    {
        attrs[by_text["<|end|>"]] = Attr {
            user_defined: true,
            ..Attr::default()
        };
    }
    if (has("<|tool_response>") || has("<|plamo:eos|>")) && has("</s>") {
        attrs[by_text["</s>"]] = Attr::default();
    }
    // Phi-3: special tokens keep no whitespace after them, chosen by the
    // model's name (llama_vocab::impl::load, "Handle per token attributes").
    let name = v.name.to_lowercase();
    if name.contains("phi-3") || name.contains("phi3") {
        for a in attrs.iter_mut() {
            if a.control || a.user_defined || a.unknown {
                a.rstrip = true;
            }
        }
        if let Some(&i) = by_text.get("</s>") {
            attrs[i].rstrip = true;
        }
        for t in ["<unk>", "<s>", "<|endoftext|>"] {
            if let Some(&i) = by_text.get(t) {
                attrs[i].rstrip = false;
            }
        }
    }
    attrs
}

/// SentencePiece merges from scores: every split of a token into two
/// tokens, best score of the merged token first. Ties keep transformers'
/// `generate_merges` order (longer left part, then longer right part, then
/// vocabulary order), so transformers' GGUF loader builds the same list.
pub(crate) fn merges_from_scores(tokens: &[String], scores: &[f32]) -> Vec<(String, String)> {
    let mut vocab: HashMap<&str, usize> = HashMap::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        vocab.entry(t.as_str()).or_insert(i);
    }
    let mut merges: Vec<(usize, usize, usize, f32, usize, usize)> = Vec::new();
    for (id, token) in tokens.iter().enumerate() {
        if vocab.get(token.as_str()) != Some(&id) {
            continue;
        }
        let mut local = Vec::new();
        for (split, _) in token.char_indices().skip(1) {
            let (l, r) = token.split_at(split);
            if let (Some(&li), Some(&ri)) = (vocab.get(l), vocab.get(r)) {
                local.push((li, ri, id, scores[id], l.chars().count(), r.chars().count()));
            }
        }
        local.sort_by_key(|m| (m.0, m.1));
        merges.extend(local);
    }
    // A total order on scores that agrees with `<` on every real one (so
    // -0.0 == 0.0, as in Python): NaN, which no real vocabulary holds, sorts
    // last instead of making the order inconsistent.
    let key = |s: f32| {
        if s.is_nan() {
            f32::NEG_INFINITY
        } else if s == 0.0 {
            0.0
        } else {
            s
        }
    };
    merges.sort_by(|a, b| {
        key(b.3)
            .total_cmp(&key(a.3))
            .then(b.4.cmp(&a.4))
            .then(b.5.cmp(&a.5))
    });
    merges
        .into_iter()
        .map(|(l, r, ..)| (tokens[l].clone(), tokens[r].clone()))
        .collect()
}

fn template_processing(bos: Option<(&str, u32)>, eos: Option<(&str, u32)>) -> Value {
    let part = |seq_id: &str, type_id: u32| {
        let mut out = Vec::new();
        if let Some((t, _)) = bos {
            out.push(json!({"SpecialToken": {"id": t, "type_id": type_id}}));
        }
        out.push(json!({"Sequence": {"id": seq_id, "type_id": type_id}}));
        if let Some((t, _)) = eos {
            out.push(json!({"SpecialToken": {"id": t, "type_id": type_id}}));
        }
        out
    };
    let single = part("A", 0);
    let mut pair = part("A", 0);
    pair.extend(part("B", 1));
    let mut special = Map::new();
    for (t, id) in bos.into_iter().chain(eos) {
        special.insert(t.to_string(), json!({"id": t, "ids": [id], "tokens": [t]}));
    }
    json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": special})
}

/// Rebuilds the Hugging Face tokenizer files from a GGUF file's metadata.
pub fn gguf_to_hf(md: &Metadata) -> Result<HfTokenizerOutput> {
    let v = GgufVocab::read(md)?;
    let n = v.tokens.len();
    let mut vocab = Map::new();
    for (i, t) in v.tokens.iter().enumerate() {
        if vocab.insert(t.clone(), json!(i)).is_some() {
            return Err(TokenizerError::metadata(format!(
                "token {t:?} appears twice in {} (llama.cpp refuses such a vocabulary)",
                keys::TOKENS
            )));
        }
    }
    let attrs = token_attrs(&v, md);
    let added: Vec<Value> = attrs
        .iter()
        .enumerate()
        .filter(|(_, a)| a.control || a.user_defined || a.unknown)
        .map(|(i, a)| {
            json!({
                "id": i,
                "content": v.tokens[i],
                "single_word": false,
                "lstrip": false,
                "rstrip": a.rstrip,
                "normalized": false,
                "special": a.control || a.unknown,
            })
        })
        .collect();

    let (specials, model, normalizer, pre_tokenizer, decoder, clean_spaces) = match v.model.as_str()
    {
        "gpt2" => {
            let info = pre_tokenizer_info(&v.pre).ok_or_else(|| {
                TokenizerError::unsupported(format!(
                    "{} '{}' is not one qforge can rebuild (known: {})",
                    keys::PRE,
                    v.pre,
                    known_pre_tokenizers().collect::<Vec<_>>().join(", ")
                ))
            })?;
            if v.merges.is_empty() {
                return Err(TokenizerError::missing(format!(
                    "{} is missing: a BPE vocabulary needs merges",
                    keys::MERGES
                )));
            }
            let merges: Vec<Value> = v
                .merges
                .iter()
                .filter_map(|m| {
                    // llama.cpp splits at the first space after the first byte.
                    let at = m.bytes().skip(1).position(|b| b == b' ')? + 1;
                    Some(json!([&m[..at], &m[at + 1..]]))
                })
                .collect();
            let specials = ResolvedSpecials {
                bos: v.special("bos", Some(11)),
                eos: v.special("eos", Some(11)),
                add_bos: v.add_bos.unwrap_or(info.add_bos_default),
                add_eos: v.add_eos.unwrap_or(false),
            };
            let model = json!({
                "type": "BPE", "dropout": null, "unk_token": null,
                "continuing_subword_prefix": null, "end_of_word_suffix": null,
                "fuse_unk": false, "byte_fallback": false, "ignore_merges": info.ignore_merges,
                "vocab": vocab, "merges": merges,
            });
            let decoder = json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true});
            (
                specials,
                model,
                Value::Null,
                hf_pre_tokenizer(info.family),
                decoder,
                info.clean_spaces,
            )
        }
        "llama" => {
            let scores = v.scores.clone().ok_or_else(|| {
                TokenizerError::missing(format!(
                    "{} is missing: a SentencePiece vocabulary needs scores",
                    keys::SCORES
                ))
            })?;
            let merges: Vec<Value> = merges_from_scores(&v.tokens, &scores)
                .into_iter()
                .map(|(l, r)| json!([l, r]))
                .collect();
            let unk = v.special("unk", Some(0));
            let specials = ResolvedSpecials {
                bos: v.special("bos", Some(1)),
                eos: v.special("eos", Some(2)),
                add_bos: v.add_bos.unwrap_or(true),
                add_eos: v.add_eos.unwrap_or(false),
            };
            let prefix = v.add_space_prefix.unwrap_or(true);
            let replace =
                json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"});
            let normalizer = if prefix {
                json!({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u{2581}"}, replace]})
            } else {
                replace
            };
            let mut decoders = vec![
                json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
                json!({"type": "ByteFallback"}),
                json!({"type": "Fuse"}),
            ];
            if prefix {
                decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
            }
            let model = json!({
                "type": "BPE", "dropout": null,
                "unk_token": unk.map(|i| v.tokens[i as usize].clone()),
                "continuing_subword_prefix": null, "end_of_word_suffix": null,
                "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                "vocab": vocab, "merges": merges,
            });
            let decoder = json!({"type": "Sequence", "decoders": decoders});
            (specials, model, normalizer, Value::Null, decoder, false)
        }
        other => {
            return Err(TokenizerError::unsupported(format!(
                "{} '{other}' is not supported (qforge rebuilds 'gpt2' and 'llama' vocabularies)",
                keys::MODEL
            )))
        }
    };
    let bos = specials
        .bos
        .filter(|_| specials.add_bos)
        .map(|i| (v.tokens[i as usize].as_str(), i));
    let eos = specials
        .eos
        .filter(|_| specials.add_eos)
        .map(|i| (v.tokens[i as usize].as_str(), i));
    let tokenizer_json = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": template_processing(bos, eos),
        "decoder": decoder,
        "model": model,
    });

    // The names transformers' GGUF loader gives: a token only where the
    // file has the key.
    let key_token = |name: &str| {
        v.ids
            .get(name)
            .filter(|&&i| (i as usize) < n)
            .map(|&i| v.tokens[i as usize].clone())
    };
    let mut config = Map::new();
    config.insert("add_bos_token".into(), json!(specials.add_bos));
    config.insert("add_eos_token".into(), json!(specials.add_eos));
    let mut special_map = BTreeMap::new();
    for (field, name) in [
        ("bos_token", "bos"),
        ("eos_token", "eos"),
        ("unk_token", "unk"),
        ("pad_token", "pad"),
    ] {
        let t = key_token(name);
        if let Some(t) = &t {
            special_map.insert(field, json!(t));
        }
        config.insert(field.into(), json!(t));
    }
    config.insert("clean_up_tokenization_spaces".into(), json!(clean_spaces));
    config.insert(
        "model_max_length".into(),
        json!(1_000_000_000_000_000_000u64),
    );
    config.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));

    let mut named = Vec::new();
    for (key, value) in md.iter() {
        if let (Some(name), GgufValue::String(t)) =
            (key.strip_prefix("tokenizer.chat_template."), value)
        {
            // The name becomes a file name (additional_chat_templates/NAME.jinja).
            if name.is_empty()
                || name == "."
                || name == ".."
                || name.contains(['/', '\\'])
                || name.chars().any(char::is_control)
            {
                return Err(TokenizerError::metadata(format!(
                    "{key}: the template name {name:?} cannot be a file name \
                     (empty, a path, or control characters)"
                )));
            }
            named.push((name.to_string(), t.clone()));
        }
    }
    Ok(HfTokenizerOutput {
        tokenizer_json,
        tokenizer_config: Value::Object(config),
        special_tokens_map: json!(special_map),
        chat_template: md.get_str(keys::CHAT_TEMPLATE).map(str::to_string),
        named_chat_templates: named,
        specials,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_rank_by_score_of_the_merged_token() {
        let tokens: Vec<String> = ["<unk>", "a", "b", "c", "ab", "bc", "abc"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let scores = [0.0, -1.0, -2.0, -3.0, -5.0, -4.0, -6.0];
        let merges = merges_from_scores(&tokens, &scores);
        let m: Vec<String> = merges.iter().map(|(l, r)| format!("{l} {r}")).collect();
        // bc (-4) before ab (-5); abc's splits "ab c" (longer left) before "a bc".
        assert_eq!(m, ["b c", "a b", "ab c", "a bc"]);
    }
}
