//! Hugging Face tokenizer files -> GGUF `tokenizer.*` metadata, as llama.cpp's
//! convert_hf_to_gguf.py writes it: the same keys, values, types and order.
//!
//! The script's logic lives in three places, followed here step by step:
//! each model class's `set_vocab` (conversion/llama.py, qwen.py, gemma.py,
//! phi.py), the vocabulary builders of conversion/base.py
//! (`get_vocab_base`, `_create_vocab_sentencepiece`), and gguf-py's
//! `SpecialVocab` (special ids, add_bos/add_eos, merges, chat template).
//! Where the script is wrong, this module does better and says so where it
//! happens ("Better than the script").

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use serde_json::{Map, Value};

use super::error::{Result, TokenizerError};
use super::hf::{truthy, HfTokenizerFiles};
use super::pre::{
    check_text_hash, pre_tokenizer_for_hash, pre_tokenizer_info, recognize_pre_tokenizer,
    unknown_pre_error,
};
use super::sentencepiece::PieceType;
use super::{keys, TokenType};
use crate::formats::gguf::{Array, Metadata, Value as GgufValue};

/// Choices the caller can make for [`hf_to_gguf_keys`].
#[derive(Debug, Clone, Default)]
pub struct HfToGgufOptions {
    /// The `tokenizer.ggml.pre` name to write for a BPE vocabulary, instead
    /// of finding it (the `--tokenizer-pre NAME` override).
    pub tokenizer_pre: Option<String>,
    /// The Hugging Face architecture (`LlamaForCausalLM`...) whose converter
    /// to follow, instead of config.json's `architectures[0]`.
    pub architecture: Option<String>,
}

/// The `tokenizer.*` GGUF keys for the model folder `dir`.
pub fn hf_to_gguf_keys(dir: impl AsRef<Path>, options: &HfToGgufOptions) -> Result<Metadata> {
    let files = HfTokenizerFiles::read(dir)?;
    hf_files_to_gguf_keys(&files, options)
}

/// The `tokenizer.*` GGUF keys for tokenizer files already read.
pub fn hf_files_to_gguf_keys(
    files: &HfTokenizerFiles,
    options: &HfToGgufOptions,
) -> Result<Metadata> {
    let arch = options
        .architecture
        .clone()
        .or_else(|| files.architecture().map(str::to_string))
        .unwrap_or_default();
    let mut out = Metadata::new();
    let tc = files.tokenizer_config_object();
    match converter_for(&arch) {
        Converter::Llama => {
            // LlamaModel.set_vocab writes this before anything else.
            if let Some(Value::Bool(b)) = tc.get("add_prefix_space") {
                out.set(keys::ADD_PREFIX, GgufValue::Bool(*b));
            }
            if tc.get("tokenizer_class").and_then(Value::as_str) == Some("HybridDNATokenizer") {
                return Err(TokenizerError::unsupported(
                    "HybridDNATokenizer vocabularies are not supported",
                ));
            }
            if files.sentencepiece.is_some() {
                sentencepiece_vocab(files, SpmFlavor::Base, &mut out)?;
            } else if files
                .tokenizer_json
                .as_ref()
                .is_some_and(is_sentencepiece_bpe_json)
            {
                return Err(TokenizerError::unsupported(
                    "a SentencePiece-style BPE tokenizer.json without tokenizer.model (the script's \
                     LlamaHfVocab path) is not supported yet",
                ));
            } else {
                bpe_vocab(files, options, &mut out)?;
            }
            let vocab_size = files.config_vocab_size().unwrap_or(32000);
            if vocab_size == 32016 {
                return Err(TokenizerError::unsupported(
                    "CodeLlama's infill tokens (vocab_size 32016) are not supported yet",
                ));
            }
            // The script's rule "for granite small models": every llama
            // vocabulary of 49152 tokens (SmolLM too) gets no BOS.
            if vocab_size == 49152 {
                out.set(keys::ADD_BOS, GgufValue::Bool(false));
            }
        }
        Converter::Qwen2 | Converter::Generic => {
            if files.sentencepiece.is_some() {
                sentencepiece_vocab(files, SpmFlavor::Base, &mut out)?;
            } else {
                bpe_vocab(files, options, &mut out)?;
            }
        }
        Converter::Gemma3 => {
            if files.sentencepiece.is_some() {
                sentencepiece_vocab(files, SpmFlavor::Base, &mut out)?;
                out.set(keys::ADD_PREFIX, GgufValue::Bool(false));
            } else {
                bpe_vocab(files, options, &mut out)?;
            }
        }
        Converter::Phi3 => {
            let class = if files.tokenizer_config.is_some() {
                Some(
                    tc.get("tokenizer_class")
                        .and_then(Value::as_str)
                        .ok_or_else(|| {
                            TokenizerError::missing(
                                "Phi-3's converter needs tokenizer_config.json's tokenizer_class",
                            )
                            .in_file(&files.path("tokenizer_config.json"))
                        })?,
                )
            } else {
                None
            };
            if class == Some("GPT2Tokenizer") {
                bpe_vocab(files, options, &mut out)?;
            } else {
                if files.sentencepiece.is_none() {
                    return Err(TokenizerError::missing("Phi-3 needs tokenizer.model")
                        .in_file(&files.path("tokenizer.model")));
                }
                sentencepiece_vocab(files, SpmFlavor::Phi3, &mut out)?;
            }
        }
    }
    Ok(out)
}

/// Which of the script's model classes sets the vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Converter {
    Llama,
    Qwen2,
    Gemma3,
    Phi3,
    /// Any other architecture: SentencePiece when tokenizer.model exists,
    /// else byte-level BPE, as most of the script's classes do.
    Generic,
}

fn converter_for(arch: &str) -> Converter {
    match arch {
        "LlamaForCausalLM" | "LLaMAForCausalLM" | "MistralForCausalLM" | "MixtralForCausalLM"
        | "LlamaModel" => Converter::Llama,
        "Qwen2ForCausalLM" | "Qwen2Model" | "Qwen3ForCausalLM" | "Qwen3Model" => Converter::Qwen2,
        "Gemma3ForCausalLM" | "Gemma3ForConditionalGeneration" => Converter::Gemma3,
        "Phi3ForCausalLM" => Converter::Phi3,
        _ => Converter::Generic,
    }
}

/// The script's LlamaHfVocab test: a BPE tokenizer.json with byte fallback
/// and a decoder sequence, that is not Llama 3's.
fn is_sentencepiece_bpe_json(tj: &Value) -> bool {
    let model = &tj["model"];
    let is_llama3 = model["type"] == "BPE"
        && model["ignore_merges"].as_bool().unwrap_or(false)
        && !model["byte_fallback"].as_bool().unwrap_or(true);
    !is_llama3
        && model["type"] == "BPE"
        && model["byte_fallback"].as_bool().unwrap_or(false)
        && tj["decoder"]["type"] == "Sequence"
}

/// convert_hf_to_gguf.py's `does_token_look_special`.
pub(crate) fn looks_special(token: &str) -> bool {
    matches!(token, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (token.starts_with("<|") && token.ends_with("|>"))
        || (token.starts_with("<｜") && token.ends_with("｜>"))
        || (token.starts_with("<unused") && token.ends_with('>'))
}

// ---------------------------------------------------------------------------
// byte-level BPE: `_set_vocab_gpt2` / `get_vocab_base`

fn load_tokenizer(files: &HfTokenizerFiles) -> Result<tokenizers::Tokenizer> {
    let path = files.path("tokenizer.json");
    let text = files.tokenizer_json_text.as_deref().ok_or_else(|| {
        TokenizerError::missing("a BPE vocabulary needs tokenizer.json").in_file(&path)
    })?;
    text.parse::<tokenizers::Tokenizer>()
        .map_err(|e| TokenizerError::tokenizers(e).in_file(&path))
}

/// transformers' `clean_up_tokenization`, which `decode` applies when
/// `clean_up_tokenization_spaces` is set.
fn clean_up_tokenization(s: &str) -> String {
    s.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
}

fn bpe_vocab(
    files: &HfTokenizerFiles,
    options: &HfToGgufOptions,
    out: &mut Metadata,
) -> Result<()> {
    let tokenizer = load_tokenizer(files)?;
    let tj = files.tokenizer_json.as_ref().expect("parsed with its text");
    let tc = files.tokenizer_config_object();
    let clean_up = truthy(tc.get("clean_up_tokenization_spaces"));
    let vocab = tokenizer.get_vocab(true);
    let vocab_size = files.config_vocab_size().unwrap_or(vocab.len() as u64);
    let max_id = vocab.values().copied().max().unwrap_or(0);
    if u64::from(max_id) >= vocab_size {
        return Err(TokenizerError::json(format!(
            "token id {max_id} is outside config.json's vocab_size {vocab_size}"
        ))
        .in_file(&files.path("config.json")));
    }
    let pre = match &options.tokenizer_pre {
        Some(name) => name.clone(),
        None => {
            let hash = check_text_hash(&tokenizer)?;
            match pre_tokenizer_for_hash(&hash) {
                Some(name) => name.to_string(),
                // Better than the script, which stops here: recognize the
                // pre-tokenizer by its structure.
                None => recognize_pre_tokenizer(tj, clean_up)
                    .map_err(|structure| {
                        unknown_pre_error(&hash, &structure).in_file(&files.path("tokenizer.json"))
                    })?
                    .to_string(),
            }
        }
    };

    let vocab_size = checked_vocab_size(vocab_size, files)?;
    let mut reverse: Vec<Option<&str>> = vec![None; vocab_size];
    for (token, &id) in &vocab {
        reverse[id as usize] = Some(token);
    }
    let added = tokenizer.get_added_tokens_decoder();
    let added_by_content: HashMap<&str, u32> = added
        .iter()
        .map(|(&id, t)| (t.content.as_str(), id))
        .collect();
    let mut tokens = Vec::with_capacity(vocab_size);
    let mut types = Vec::with_capacity(vocab_size);
    for (i, token) in reverse.iter().enumerate() {
        let Some(token) = token else {
            tokens.push(format!("[PAD{i}]"));
            types.push(TokenType::Unused as i32);
            continue;
        };
        let mut token = token.to_string();
        if let Some(&content_id) = added_by_content.get(token.as_str()) {
            let info = added
                .get(&(i as u32))
                .or_else(|| added.get(&content_id))
                .expect("added token");
            if !info.normalized {
                // llama.cpp expects control and user-defined tokens
                // pre-normalized: the script round-trips them.
                let ids = tokenizer
                    .encode(token.as_str(), false)
                    .map_err(TokenizerError::tokenizers)?;
                let mut text = tokenizer
                    .decode(ids.get_ids(), false)
                    .map_err(TokenizerError::tokenizers)?;
                if clean_up {
                    text = clean_up_tokenization(&text);
                }
                token = text;
            }
            if info.special || looks_special(&token) {
                types.push(TokenType::Control as i32);
            } else {
                token = token.replace('\u{2581}', " ");
                types.push(TokenType::UserDefined as i32);
            }
        } else {
            types.push(TokenType::Normal as i32);
        }
        tokens.push(token);
    }
    out.set(keys::MODEL, GgufValue::String("gpt2".into()));
    out.set(keys::PRE, GgufValue::String(pre.clone()));
    out.set(keys::TOKENS, GgufValue::Array(Array::String(tokens)));
    out.set(keys::TOKEN_TYPE, GgufValue::Array(Array::I32(types)));
    let mut special = SpecialVocab::load(files, true, None)?;
    let default_add_bos = pre_tokenizer_info(&pre).is_some_and(|i| i.add_bos_default);
    special.match_hf_bos_eos(Some(&tokenizer), default_add_bos)?;
    special.write(out);
    Ok(())
}

/// Most tokens a vocabulary may have: config.json is untrusted input, and
/// the vocabulary is padded to its size.
const MAX_VOCAB_SIZE: u64 = 1 << 24;

fn checked_vocab_size(n: u64, files: &HfTokenizerFiles) -> Result<usize> {
    if n > MAX_VOCAB_SIZE {
        return Err(TokenizerError::json(format!(
            "vocab_size {n} is above the limit of {MAX_VOCAB_SIZE} tokens"
        ))
        .in_file(&files.path("config.json")));
    }
    Ok(n as usize)
}

// ---------------------------------------------------------------------------
// SentencePiece: `_create_vocab_sentencepiece` and Phi-3's copy of it

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SpmFlavor {
    /// conversion/base.py's `_create_vocab_sentencepiece`.
    Base,
    /// conversion/phi.py's variant: also reads tokenizer.json's added
    /// tokens, keeps `▁` in user-defined tokens, ignores "looks special".
    Phi3,
}

fn sentencepiece_vocab(
    files: &HfTokenizerFiles,
    flavor: SpmFlavor,
    out: &mut Metadata,
) -> Result<()> {
    let spm = files.sentencepiece.as_ref().expect("checked by the caller");
    let config = files.config_object();
    let config_size = match flavor {
        SpmFlavor::Base => ["vocab_size_per_layer_input", "vocab_size"]
            .iter()
            .find_map(|k| config.get(*k).filter(|v| !v.is_null()))
            .and_then(Value::as_u64),
        SpmFlavor::Phi3 => config.get("vocab_size").and_then(Value::as_u64),
    };
    let vocab_size = match config_size {
        Some(0) | None => spm.pieces.len(),
        Some(n) => checked_vocab_size(n, files)?,
    };
    let mut tokens: Vec<String> = (0..vocab_size).map(|i| format!("[PAD{i}]")).collect();
    let mut scores = vec![-10000.0f32; vocab_size];
    let mut types = vec![TokenType::Unused as i32; vocab_size];
    for (id, piece) in spm.pieces.iter().enumerate().take(vocab_size) {
        // sentencepiece's IsUnknown/IsControl/IsUnused/IsByte; a
        // user-defined piece answers none of them and stays NORMAL.
        let ty = match piece.kind {
            PieceType::Unknown => TokenType::Unknown,
            PieceType::Control => TokenType::Control,
            PieceType::Unused => TokenType::Unused,
            PieceType::Byte => TokenType::Byte,
            PieceType::Normal | PieceType::UserDefined => TokenType::Normal,
        };
        tokens[id] = piece.piece.clone();
        scores[id] = piece.score;
        types[id] = ty as i32;
    }
    if let Some(Value::Object(added)) = &files.added_tokens {
        for (content, id) in added {
            let Some(id) = id.as_u64().map(|i| i as usize).filter(|&i| i < vocab_size) else {
                continue;
            };
            tokens[id] = content.clone();
            scores[id] = -1000.0;
            types[id] = TokenType::UserDefined as i32;
        }
    }
    let mut apply_added = |id: usize, content: &str, special: bool, what: &str| -> Result<()> {
        if id >= vocab_size {
            return match flavor {
                SpmFlavor::Base => Ok(()),
                SpmFlavor::Phi3 => Err(TokenizerError::json(format!(
                    "{what} token id {id} is outside the vocabulary of {vocab_size}"
                ))),
            };
        }
        let (content, ty) = match flavor {
            SpmFlavor::Base if special || looks_special(content) => {
                (content.to_string(), TokenType::Control)
            }
            SpmFlavor::Base => (content.replace('\u{2581}', " "), TokenType::UserDefined),
            SpmFlavor::Phi3 if special => (content.to_string(), TokenType::Control),
            SpmFlavor::Phi3 => (content.to_string(), TokenType::UserDefined),
        };
        tokens[id] = content;
        scores[id] = -1000.0;
        types[id] = ty as i32;
        Ok(())
    };
    let tc = files.tokenizer_config_object();
    if let Some(Value::Object(decoder)) = tc.get("added_tokens_decoder") {
        for (id, data) in decoder {
            let id: usize = id.parse().map_err(|_| {
                TokenizerError::json(format!("added_tokens_decoder key {id:?} is not an id"))
            })?;
            let content = data["content"].as_str().unwrap_or_default();
            apply_added(
                id,
                content,
                truthy(data.get("special")),
                "added_tokens_decoder",
            )?;
        }
    }
    // Better than the script: transformers 5 no longer writes
    // added_tokens_decoder into tokenizer_config.json, and without it a
    // piece SentencePiece marks user-defined (Gemma's <start_of_turn>,
    // <mask>...) or a token added past the model's pieces would stay
    // NORMAL (or [PADn]), which llama.cpp then cuts into pieces instead
    // of matching whole. tokenizer.json's added_tokens carry what
    // transformers 4 wrote to added_tokens_decoder: use them for exactly
    // those tokens.
    if flavor == SpmFlavor::Base && !tc.contains_key("added_tokens_decoder") {
        if let Some(Value::Array(added)) = files.tokenizer_json.as_ref().map(|t| &t["added_tokens"])
        {
            for data in added {
                let Some(id) = data["id"].as_u64().map(|i| i as usize) else {
                    continue;
                };
                let lost = match spm.pieces.get(id) {
                    Some(piece) => piece.kind == PieceType::UserDefined,
                    None => true,
                };
                if lost {
                    let content = data["content"].as_str().unwrap_or_default();
                    apply_added(
                        id,
                        content,
                        truthy(data.get("special")),
                        "tokenizer.json added",
                    )?;
                }
            }
        }
    }
    if flavor == SpmFlavor::Phi3 {
        if let Some(Value::Array(added)) = files.tokenizer_json.as_ref().map(|t| &t["added_tokens"])
        {
            for data in added {
                let id = data["id"].as_u64().unwrap_or(u64::MAX) as usize;
                let content = data["content"].as_str().unwrap_or_default();
                apply_added(
                    id,
                    content,
                    truthy(data.get("special")),
                    "tokenizer.json added",
                )?;
            }
        }
    }
    out.set(keys::MODEL, GgufValue::String("llama".into()));
    out.set(keys::PRE, GgufValue::String("default".into()));
    out.set(keys::TOKENS, GgufValue::Array(Array::String(tokens)));
    out.set(keys::SCORES, GgufValue::Array(Array::F32(scores)));
    out.set(keys::TOKEN_TYPE, GgufValue::Array(Array::I32(types)));
    let mut special = SpecialVocab::load(files, false, Some(vocab_size as u64))?;
    let hf = match files.tokenizer_json_text {
        Some(_) => Some(load_tokenizer(files)?),
        None => None,
    };
    // llama.cpp adds BOS to a SentencePiece vocabulary unless told not to.
    special.match_hf_bos_eos(hf.as_ref(), true)?;
    special.write(out);
    Ok(())
}

// ---------------------------------------------------------------------------
// gguf-py's SpecialVocab

/// What gguf-py's `SpecialVocab` collects, in its insertion order.
#[derive(Debug, Clone, Default)]
struct SpecialVocab {
    merges: Vec<String>,
    /// (type, id): bos, eos, unk, sep, pad, cls, mask, eot, eom.
    ids: Vec<(String, u64)>,
    /// (type, add?): bos, eos, sep...
    add: Vec<(String, bool)>,
    chat_template: Option<Value>,
    lowercase: Option<bool>,
    strip_accents: Option<bool>,
    n_vocab: Option<u64>,
    types: Vec<String>,
}

fn set_entry<T>(list: &mut Vec<(String, T)>, key: &str, value: T) {
    match list.iter_mut().find(|(k, _)| k == key) {
        Some(slot) => slot.1 = value,
        None => list.push((key.to_string(), value)),
    }
}

fn has_entry<T>(list: &[(String, T)], key: &str) -> bool {
    list.iter().any(|(k, _)| k == key)
}

/// `tmpl[i].get('SpecialToken', {}).get('id')`, when a non-empty string.
fn template_special(item: Option<&Value>) -> Option<Value> {
    let id = item?.get("SpecialToken")?.get("id")?;
    truthy(Some(id)).then(|| id.clone())
}

fn template_sequence(item: Option<&Value>) -> Option<&str> {
    item?.get("Sequence")?.get("id")?.as_str()
}

impl SpecialVocab {
    fn load(
        files: &HfTokenizerFiles,
        load_merges: bool,
        n_vocab: Option<u64>,
    ) -> Result<SpecialVocab> {
        let mut sv = SpecialVocab {
            n_vocab,
            types: ["bos", "eos", "unk", "sep", "pad", "cls", "mask"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            ..Default::default()
        };
        sv.load_from_tokenizer_json(files, load_merges)?;
        sv.load_from_config_json(files)?;
        if load_merges && sv.merges.is_empty() {
            sv.load_merges_txt(files)?;
        }
        Ok(sv)
    }

    fn set_special_token(&mut self, typ: &str, id: Option<&Value>) -> Result<()> {
        let Some(id) = id.and_then(Value::as_i64) else {
            return Ok(());
        };
        if id < 0 {
            return Err(TokenizerError::json(format!(
                "invalid value for special token type {typ}: {id}"
            )));
        }
        let id = id as u64;
        if self.n_vocab.is_none_or(|n| id < n) && !has_entry(&self.ids, typ) {
            self.ids.push((typ.to_string(), id));
        }
        Ok(())
    }

    fn load_from_tokenizer_json(
        &mut self,
        files: &HfTokenizerFiles,
        load_merges: bool,
    ) -> Result<()> {
        let empty = Value::Object(Map::new());
        let tokenizer = files.tokenizer_json.as_ref();
        let mut added_tokens: &[Value] = &[];
        if let Some(tj) = tokenizer {
            if load_merges {
                self.merges = merges_from_json(&tj["model"]["merges"])?;
            }
            if let Some(normalizer) = tj.get("normalizer").filter(|n| truthy(Some(n))) {
                self.parse_normalizer(normalizer);
            }
            added_tokens = tj
                .get("added_tokens")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or(&[]);
        }
        let mut tc: Option<Map<String, Value>> = files
            .tokenizer_config
            .as_ref()
            .and_then(|v| v.as_object().cloned());
        let tc_truthy =
            |tc: &Option<Map<String, Value>>| tc.as_ref().is_some_and(|m| !m.is_empty());
        if truthy(tokenizer) {
            let tj = tokenizer.expect("truthy");
            let get = |tc: &Option<Map<String, Value>>, k: &str| {
                tc.as_ref().and_then(|m| m.get(k)).cloned()
            };
            let mut special_bos = get(&tc, "bos_token");
            let mut special_cls = get(&tc, "cls_token");
            let mut special_eos = get(&tc, "eos_token");
            let mut special_sep = get(&tc, "sep_token");
            if !truthy(special_bos.as_ref()) && truthy(special_cls.as_ref()) && tc_truthy(&tc) {
                special_bos = special_cls.clone();
                tc.as_mut()
                    .unwrap()
                    .insert("bos_token".into(), special_bos.clone().unwrap());
            }
            if !truthy(special_eos.as_ref()) && truthy(special_sep.as_ref()) && tc_truthy(&tc) {
                special_eos = special_sep.clone();
                tc.as_mut()
                    .unwrap()
                    .insert("eos_token".into(), special_eos.clone().unwrap());
            }
            let post = tj.get("post_processor").filter(|p| truthy(Some(p)));
            if let Some(post) = post {
                let single = [post.clone()];
                let processors: &[Value] = match post.get("processors") {
                    Some(Value::Array(list)) => list,
                    _ => &single,
                };
                for processor in processors {
                    match processor.get("type").and_then(Value::as_str) {
                        Some("ByteLevel") => {
                            if !has_entry(&self.add, "bos") {
                                self.add.push(("bos".into(), false));
                            }
                            if !has_entry(&self.add, "eos") {
                                self.add.push(("eos".into(), false));
                            }
                        }
                        Some("RobertaProcessing") => {
                            set_entry(&mut self.add, "bos", true);
                            set_entry(&mut self.add, "eos", true);
                            set_entry(&mut self.add, "sep", true);
                            if !truthy(special_cls.as_ref()) && tc_truthy(&tc) {
                                special_cls = processor
                                    .get("cls")
                                    .and_then(|c| c.get(0).cloned())
                                    .or_else(|| special_bos.clone());
                                tc.as_mut().unwrap().insert(
                                    "cls_token".into(),
                                    special_cls.clone().unwrap_or(Value::Null),
                                );
                            }
                            if !truthy(special_sep.as_ref()) && tc_truthy(&tc) {
                                special_sep = processor
                                    .get("sep")
                                    .and_then(|c| c.get(0).cloned())
                                    .or_else(|| special_eos.clone());
                                tc.as_mut().unwrap().insert(
                                    "sep_token".into(),
                                    special_sep.clone().unwrap_or(Value::Null),
                                );
                            }
                        }
                        Some("TemplateProcessing") => {
                            let tmpl_single = processor
                                .get("single")
                                .and_then(Value::as_array)
                                .cloned()
                                .unwrap_or_default();
                            let tmpl_pair = processor
                                .get("pair")
                                .and_then(Value::as_array)
                                .cloned()
                                .unwrap_or_default();
                            let mut special_first = None;
                            let mut special_last = None;
                            if tmpl_single.len() > 1 {
                                special_first = template_special(tmpl_single.first());
                                if let Some(first) = &special_first {
                                    let in_bos_cls = |b: &Option<Value>, c: &Option<Value>| {
                                        b.as_ref() == Some(first) || c.as_ref() == Some(first)
                                    };
                                    if !tc_truthy(&tc) {
                                        special_bos = Some(first.clone());
                                    } else if !in_bos_cls(&special_bos, &special_cls) {
                                        if !truthy(special_bos.as_ref()) {
                                            special_bos = Some(first.clone());
                                            tc.as_mut()
                                                .unwrap()
                                                .insert("bos_token".into(), first.clone());
                                        }
                                        if !truthy(special_cls.as_ref()) {
                                            special_cls = Some(first.clone());
                                            tc.as_mut()
                                                .unwrap()
                                                .insert("cls_token".into(), first.clone());
                                        }
                                    }
                                    let add = in_bos_cls(&special_bos, &special_cls);
                                    set_entry(&mut self.add, "bos", add);
                                }
                                special_last = template_special(tmpl_single.last());
                                if let Some(last) = &special_last {
                                    if !tc_truthy(&tc) {
                                        special_eos = Some(last.clone());
                                    } else if special_eos.as_ref() != Some(last) {
                                        let old = special_eos.clone().unwrap_or(Value::Null);
                                        if !self.types.iter().any(|t| t == "eot") {
                                            self.types.push("eot".into());
                                            tc.as_mut().unwrap().insert("eot_token".into(), old);
                                        } else if !self.types.iter().any(|t| t == "eom") {
                                            self.types.push("eom".into());
                                            tc.as_mut().unwrap().insert("eom_token".into(), old);
                                        }
                                        special_eos = Some(last.clone());
                                        tc.as_mut()
                                            .unwrap()
                                            .insert("eos_token".into(), last.clone());
                                    }
                                    let add = special_eos.as_ref() == Some(last);
                                    set_entry(&mut self.add, "eos", add);
                                }
                            }
                            if !tmpl_pair.is_empty() {
                                let start = usize::from(
                                    special_first.is_some()
                                        && template_special(tmpl_pair.first()) == special_first,
                                );
                                let stop_trim = usize::from(
                                    special_last.is_some()
                                        && template_special(tmpl_pair.last()) == special_last,
                                );
                                let end = tmpl_pair.len().saturating_sub(stop_trim);
                                let pair = if start < end {
                                    &tmpl_pair[start..end]
                                } else {
                                    &[][..]
                                };
                                if !pair.is_empty()
                                    && template_sequence(pair.first()) == Some("A")
                                    && template_sequence(pair.last()) == Some("B")
                                    && pair.len() > 2
                                {
                                    let middle = &pair[1..pair.len() - 1];
                                    let mut add_sep = false;
                                    let sep_or_eos = |e: &Value| {
                                        special_sep.as_ref() == Some(e)
                                            || special_eos.as_ref() == Some(e)
                                    };
                                    if let Some(entry) = template_special(middle.first()) {
                                        if sep_or_eos(&entry) && special_last.is_none() {
                                            add_sep = true;
                                        }
                                    }
                                    if middle.len() == 2 {
                                        if let Some(entry) = template_special(middle.get(1)) {
                                            if sep_or_eos(&entry) {
                                                add_sep = true;
                                            }
                                        }
                                    }
                                    set_entry(&mut self.add, "sep", add_sep);
                                    if add_sep && !truthy(special_sep.as_ref()) && tc_truthy(&tc) {
                                        tc.as_mut().unwrap().insert(
                                            "sep_token".into(),
                                            special_eos.clone().unwrap_or(Value::Null),
                                        );
                                    }
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        // Better than the script, which reads chat_template.jinja only when
        // tokenizer_config.json exists and is not empty: the template is
        // the model's whatever the config says.
        let alt = chat_template_alt(files);
        if !tc_truthy(&tc) {
            self.chat_template = alt;
            return Ok(());
        }
        let tc = tc.unwrap_or_default();
        let template = match tc.get("chat_template") {
            Some(v) => Some(v.clone()).filter(|v| !v.is_null()),
            None => alt,
        };
        self.chat_template = template.filter(|t| t.is_string() || t.is_array());
        for typ in self.types.clone() {
            if let Some(Value::Bool(add)) = tc.get(&format!("add_{typ}_token")) {
                if !has_entry(&self.add, &typ) {
                    self.add.push((typ.clone(), *add));
                }
            }
            let content = match tc.get(&format!("{typ}_token")) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Object(o)) => match o.get("content") {
                    Some(Value::String(s)) => s.clone(),
                    _ => continue,
                },
                _ => continue,
            };
            let id = added_tokens
                .iter()
                .find(|t| t.get("content").and_then(Value::as_str) == Some(content.as_str()))
                .and_then(|t| t.get("id"));
            self.set_special_token(&typ, id)?;
        }
        let _ = empty;
        Ok(())
    }

    fn load_from_config_json(&mut self, files: &HfTokenizerFiles) -> Result<()> {
        let Some(config) = files.config.as_ref() else {
            return Ok(());
        };
        for typ in self.types.clone() {
            let key = format!("{typ}_token_id");
            let mut id = config.get(&key).filter(|v| !v.is_null());
            if id.is_none() {
                id = config.get("text_config").and_then(|t| t.get(&key));
            }
            let id = id.cloned();
            self.set_special_token(&typ, id.as_ref())?;
        }
        Ok(())
    }

    fn load_merges_txt(&mut self, files: &HfTokenizerFiles) -> Result<()> {
        let path = files.path("merges.txt");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(TokenizerError::io(&path, e)),
        };
        let mut lines = text.lines().peekable();
        if lines.peek().is_some_and(|l| l.trim().starts_with('#')) {
            lines.next();
        }
        self.merges = lines
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .filter_map(|l| {
                let parts: Vec<&str> = l.split_whitespace().collect();
                (parts.len() == 2).then(|| format!("{} {}", parts[0], parts[1]))
            })
            .collect();
        Ok(())
    }

    fn parse_normalizer(&mut self, normalizer: &Value) {
        match normalizer.get("type").and_then(Value::as_str) {
            Some("Lowercase") => self.lowercase = Some(true),
            Some("StripAccents") => self.strip_accents = Some(true),
            Some("BertNormalizer") => {
                if let Some(v) = normalizer.get("lowercase") {
                    self.lowercase = v.as_bool();
                }
                if let Some(v) = normalizer.get("strip_accents") {
                    self.strip_accents = v.as_bool();
                }
            }
            Some("Sequence") => {
                for n in normalizer
                    .get("normalizers")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    self.parse_normalizer(n);
                }
            }
            _ => {}
        }
    }

    /// Better than the script: when the add-BOS (add-EOS) behavior llama.cpp
    /// would fall back to differs from what the Hugging Face tokenizer does
    /// (its post-processor), write the flag explicitly. The script writes
    /// nothing for a SentencePiece tokenizer whose template adds no BOS (as
    /// Phi-3's), and llama.cpp then adds one that transformers does not.
    fn match_hf_bos_eos(
        &mut self,
        hf: Option<&tokenizers::Tokenizer>,
        default_add_bos: bool,
    ) -> Result<()> {
        let Some(hf) = hf else {
            return Ok(());
        };
        let plain = hf.encode("a", false).map_err(TokenizerError::tokenizers)?;
        let with = hf.encode("a", true).map_err(TokenizerError::tokenizers)?;
        let (plain, with) = (plain.get_ids(), with.get_ids());
        let Some(at) = with.windows(plain.len().max(1)).position(|w| w == plain) else {
            return Ok(());
        };
        let hf_bos = at > 0;
        let hf_eos = with.len() > at + plain.len();
        let get =
            |list: &[(String, bool)], k: &str| list.iter().find(|(t, _)| t == k).map(|(_, v)| *v);
        if get(&self.add, "bos").unwrap_or(default_add_bos) != hf_bos {
            set_entry(&mut self.add, "bos", hf_bos);
        }
        if get(&self.add, "eos").unwrap_or(false) != hf_eos {
            set_entry(&mut self.add, "eos", hf_eos);
        }
        Ok(())
    }

    /// gguf-py's `add_to_gguf`.
    fn write(&self, out: &mut Metadata) {
        if !self.merges.is_empty() {
            out.set(
                keys::MERGES,
                GgufValue::Array(Array::String(self.merges.clone())),
            );
        }
        for (typ, id) in &self.ids {
            let key = match typ.as_str() {
                "bos" => keys::BOS_ID,
                "eos" => keys::EOS_ID,
                "unk" => keys::UNK_ID,
                "sep" => keys::SEP_ID,
                "pad" => keys::PAD_ID,
                "mask" => keys::MASK_ID,
                "eot" => keys::EOT_ID,
                "eom" => keys::EOM_ID,
                // gguf-py has no writer for the others (cls): skipped.
                _ => continue,
            };
            out.set(key, GgufValue::U32(*id as u32));
        }
        for (typ, add) in &self.add {
            let key = match typ.as_str() {
                "bos" => keys::ADD_BOS,
                "eos" => keys::ADD_EOS,
                "sep" => keys::ADD_SEP,
                _ => continue,
            };
            out.set(key, GgufValue::Bool(*add));
        }
        match &self.chat_template {
            Some(Value::String(t)) => out.set(keys::CHAT_TEMPLATE, GgufValue::String(t.clone())),
            Some(Value::Array(list)) => write_named_templates(list, out),
            _ => {}
        }
        if let Some(v) = self.lowercase {
            out.set(keys::NORMALIZER_LOWERCASE, GgufValue::Bool(v));
        }
        if let Some(v) = self.strip_accents {
            out.set(keys::NORMALIZER_STRIP_ACCENTS, GgufValue::Bool(v));
        }
    }
}

/// The template from chat_template.jinja (with additional_chat_templates as
/// a list of named ones) or chat_template.json.
fn chat_template_alt(files: &HfTokenizerFiles) -> Option<Value> {
    if let Some(text) = &files.chat_template_jinja {
        if files.additional_chat_templates.is_empty() {
            return Some(Value::String(text.clone()));
        }
        let mut list = vec![serde_json::json!({"name": "default", "template": text})];
        for (name, template) in &files.additional_chat_templates {
            list.push(serde_json::json!({"name": name, "template": template}));
        }
        return Some(Value::Array(list));
    }
    files
        .chat_template_json
        .as_ref()?
        .get("chat_template")
        .cloned()
}

/// gguf-py's `add_chat_template` for a list of named templates. The names
/// array is sorted (gguf-py writes a Python set, whose order varies from
/// run to run).
fn write_named_templates(list: &[Value], out: &mut Metadata) {
    let mut default = None;
    let mut names = BTreeSet::new();
    for choice in list {
        let name: String = choice
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let Some(template) = choice.get("template").and_then(Value::as_str) else {
            continue;
        };
        if name.is_empty() {
            continue;
        }
        if name == "default" {
            default = Some(template.to_string());
        } else {
            out.set(
                format!("{}.{name}", keys::CHAT_TEMPLATE),
                GgufValue::String(template.to_string()),
            );
            names.insert(name);
        }
    }
    if !names.is_empty() {
        out.set(
            keys::CHAT_TEMPLATES,
            GgufValue::Array(Array::String(names.into_iter().collect())),
        );
    }
    if let Some(t) = default {
        out.set(keys::CHAT_TEMPLATE, GgufValue::String(t));
    }
}

/// tokenizer.json's merges as GGUF strings "a b": the pair form (since
/// transformers 4.45) joined with a space after spelling spaces inside a
/// part as U+0120, as gguf-py does.
fn merges_from_json(merges: &Value) -> Result<Vec<String>> {
    let Some(list) = merges.as_array().filter(|l| !l.is_empty()) else {
        return Ok(Vec::new());
    };
    let spell = |s: &str| s.replace(' ', "\u{0120}");
    match &list[0] {
        Value::String(_) => Ok(list
            .iter()
            .map(|m| m.as_str().unwrap_or_default().to_string())
            .collect()),
        Value::Array(pair) if pair.len() == 2 && pair[0].is_string() => list
            .iter()
            .map(|m| match m.as_array().map(Vec::as_slice) {
                Some([Value::String(a), Value::String(b)]) => {
                    Ok(format!("{} {}", spell(a), spell(b)))
                }
                _ => Err(TokenizerError::json(format!(
                    "unknown tokenizer merges format: {m}"
                ))),
            })
            .collect(),
        other => Err(TokenizerError::json(format!(
            "unknown tokenizer merges format: {other}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_special_as_the_script() {
        for t in [
            "<pad>",
            "<|im_start|>",
            "<｜end▁of▁sentence｜>",
            "<unused12>",
            "<mask>",
        ] {
            assert!(looks_special(t), "{t}");
        }
        for t in ["<s>", "</s>", "<think>", "<|x", "hello"] {
            assert!(!looks_special(t), "{t}");
        }
    }

    #[test]
    fn merges_in_both_json_forms() {
        let old = serde_json::json!(["Ġ t", "h e"]);
        assert_eq!(merges_from_json(&old).unwrap(), ["Ġ t", "h e"]);
        let new = serde_json::json!([["Ġ", "t"], ["a b", "c"]]);
        assert_eq!(merges_from_json(&new).unwrap(), ["Ġ t", "aĠb c"]);
        assert!(merges_from_json(&serde_json::json!([1])).is_err());
        assert!(merges_from_json(&serde_json::json!([])).unwrap().is_empty());
    }
}
