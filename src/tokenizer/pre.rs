//! BPE pre-tokenizers: llama.cpp's names (`tokenizer.ggml.pre`), the split
//! rules each name stands for, and the two ways of finding the name for a
//! Hugging Face tokenizer — convert_hf_to_gguf.py's hash of the token ids of
//! a check text, and, for vocabularies the hash table does not know, the
//! structure of tokenizer.json's `pre_tokenizer`.
//!
//! The regular expressions are llama.cpp's own (src/llama-vocab.cpp,
//! `llm_tokenizer_bpe`), transcribed from C++ string literals. llama.cpp
//! applies them as a cascade, each splitting the pieces of the one before
//! and keeping both the matches and the text between them: exactly a
//! `Sequence` of `Split(behavior: Isolated)` pre-tokenizers in tokenizers.

use serde_json::{json, Value};

use super::error::{Result, TokenizerError, TokenizerErrorKind};

mod table {
    include!("pre_hashes.rs");
}

pub(crate) use table::CHECK_TEXT;

/// llama.cpp's llama-3 split, with `(?i:'s|...)` spelled out as
/// `'[sS]|...` (llama.cpp PR 6920): the case-insensitive form would also
/// match `'ſ` (U+017F folds to `s`), which llama.cpp does not.
pub(crate) const LLAMA3_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// The same as Meta's tokenizer.json writes it.
pub(crate) const LLAMA3_REGEX_HF: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split (single digits), as llama.cpp spells it.
pub(crate) const QWEN2_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split as transformers writes it.
pub(crate) const QWEN2_REGEX_HF: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen3.5's split (letters with their marks), as llama.cpp spells it.
pub(crate) const QWEN35_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen3.5's split as transformers writes it.
pub(crate) const QWEN35_REGEX_HF: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// GPT-2's split (what tokenizers' ByteLevel applies with `use_regex`).
pub(crate) const GPT2_REGEX: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
/// llama.cpp's cascade for `default` (and a missing `.pre`).
const DEFAULT_REGEXES: &[&str] = &[
    r"[\p{P}\$\+<=>\^~\|]+",
    GPT2_REGEX,
    r"\p{N}+",
    r"[0-9][0-9][0-9]",
];

/// How a family of llama.cpp pre-tokenizer names splits text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreFamily {
    /// `default`: punctuation runs, GPT-2's split, digit runs, digit triples.
    Default,
    /// GPT-2's split alone.
    Gpt2,
    /// Every digit alone, then GPT-2's split (StarCoder, SmolLM...).
    DigitsThenGpt2,
    /// Llama 3's split (up to three digits together).
    Llama3,
    /// Qwen2's split (single digits).
    Qwen2,
    /// Qwen3.5's split (letters keep their combining marks).
    Qwen35,
}

/// What llama.cpp does for one `tokenizer.ggml.pre` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreTokenizerInfo {
    /// The name as llama.cpp spells it.
    pub name: &'static str,
    /// How text is split before BPE.
    pub family: PreFamily,
    /// A word that is a whole token is taken as is, without merges.
    pub ignore_merges: bool,
    /// Whether BOS is added when the file has no `add_bos_token` key.
    pub add_bos_default: bool,
    /// Whether detokenizing cleans up spaces (`clean_spaces`).
    pub clean_spaces: bool,
}

const fn info(
    name: &'static str,
    family: PreFamily,
    ignore_merges: bool,
    add_bos_default: bool,
    clean_spaces: bool,
) -> PreTokenizerInfo {
    PreTokenizerInfo {
        name,
        family,
        ignore_merges,
        add_bos_default,
        clean_spaces,
    }
}

/// The names qforge rebuilds, with llama.cpp's settings for each
/// (llama_vocab::impl::load in src/llama-vocab.cpp).
const KNOWN: &[PreTokenizerInfo] = &[
    info("default", PreFamily::Default, false, false, true),
    info("llama3", PreFamily::Llama3, true, true, true),
    info("llama-v3", PreFamily::Llama3, true, true, true),
    info("llama-bpe", PreFamily::Llama3, true, true, true),
    info("falcon3", PreFamily::Llama3, true, true, true),
    info("falcon-h1", PreFamily::Llama3, true, true, true),
    info("pixtral", PreFamily::Llama3, true, true, true),
    info("midm-2.0", PreFamily::Llama3, true, true, true),
    info("lfm2", PreFamily::Llama3, true, true, true),
    info("jina-v5-nano", PreFamily::Llama3, true, true, true),
    info("dbrx", PreFamily::Llama3, false, false, true),
    info("smaug-bpe", PreFamily::Llama3, false, false, true),
    info("qwen2", PreFamily::Qwen2, false, false, false),
    info("deepseek-r1-qwen", PreFamily::Qwen2, false, false, false),
    info("kormo", PreFamily::Qwen2, false, false, false),
    info("f2llmv2", PreFamily::Qwen2, false, false, false),
    info("stablelm2", PreFamily::Qwen2, false, false, true),
    info("qwen35", PreFamily::Qwen35, false, false, false),
    info("gpt-2", PreFamily::Gpt2, false, false, true),
    info("phi-2", PreFamily::Gpt2, false, false, true),
    info("jina-es", PreFamily::Gpt2, false, false, true),
    info("jina-de", PreFamily::Gpt2, false, false, true),
    info("gigachat", PreFamily::Gpt2, false, false, true),
    info("jina-v2-es", PreFamily::Gpt2, false, false, true),
    info("jina-v2-de", PreFamily::Gpt2, false, false, true),
    info("a.x-4.0", PreFamily::Gpt2, false, false, true),
    info("mellum", PreFamily::Gpt2, false, false, true),
    info("modern-bert", PreFamily::Gpt2, false, false, true),
    info("exaone4", PreFamily::Gpt2, false, false, true),
    info("mpt", PreFamily::Gpt2, false, false, true),
    info("olmo", PreFamily::Gpt2, false, false, true),
    info("smollm", PreFamily::DigitsThenGpt2, false, false, false),
    info("starcoder", PreFamily::DigitsThenGpt2, false, false, true),
    info("refact", PreFamily::DigitsThenGpt2, false, false, true),
    info("command-r", PreFamily::DigitsThenGpt2, false, false, false),
    info("codeshell", PreFamily::DigitsThenGpt2, false, false, true),
    info("exaone", PreFamily::DigitsThenGpt2, false, false, true),
    info("minerva-7b", PreFamily::DigitsThenGpt2, false, false, true),
    info("mellum2", PreFamily::DigitsThenGpt2, false, false, true),
];

/// llama.cpp's settings for a pre-tokenizer name qforge can rebuild.
pub fn pre_tokenizer_info(name: &str) -> Option<PreTokenizerInfo> {
    KNOWN.iter().find(|i| i.name == name).copied()
}

/// Every name [`pre_tokenizer_info`] knows, for messages.
pub fn known_pre_tokenizers() -> impl Iterator<Item = &'static str> {
    KNOWN.iter().map(|i| i.name)
}

/// The `tokenizer.ggml.pre` name convert_hf_to_gguf.py's table gives for a
/// check-text hash.
pub fn pre_tokenizer_for_hash(hash: &str) -> Option<&'static str> {
    table::PRE_HASHES
        .iter()
        .find(|(h, _)| *h == hash)
        .map(|(_, name)| *name)
}

/// The check-text hash of a tokenizer: sha256 of Python's `str()` of the
/// token ids of [`CHECK_TEXT`] encoded with special tokens, as
/// convert_hf_to_gguf.py computes it.
pub fn check_text_hash(tokenizer: &tokenizers::Tokenizer) -> Result<String> {
    let enc = tokenizer
        .encode(CHECK_TEXT, true)
        .map_err(TokenizerError::tokenizers)?;
    Ok(hash_ids(enc.get_ids()))
}

pub(crate) fn hash_ids(ids: &[u32]) -> String {
    let list: Vec<String> = ids.iter().map(u32::to_string).collect();
    crate::hashing::sha256_bytes(format!("[{}]", list.join(", ")).as_bytes())
}

fn byte_level(use_regex: bool) -> Value {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

fn split_cascade(regexes: &[&str]) -> Value {
    let mut steps: Vec<Value> = regexes
        .iter()
        .map(|r| json!({"type": "Split", "pattern": {"Regex": r}, "behavior": "Isolated", "invert": false}))
        .collect();
    steps.push(byte_level(false));
    json!({"type": "Sequence", "pretokenizers": steps})
}

/// tokenizer.json's `pre_tokenizer` that splits as llama.cpp does for this
/// family.
pub fn hf_pre_tokenizer(family: PreFamily) -> Value {
    match family {
        PreFamily::Default => split_cascade(DEFAULT_REGEXES),
        PreFamily::Gpt2 => byte_level(true),
        PreFamily::DigitsThenGpt2 => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            byte_level(true),
        ]}),
        PreFamily::Llama3 => split_cascade(&[LLAMA3_REGEX]),
        PreFamily::Qwen2 => split_cascade(&[QWEN2_REGEX]),
        PreFamily::Qwen35 => split_cascade(&[QWEN35_REGEX]),
    }
}

/// Finds the llama.cpp pre-tokenizer that reproduces tokenizer.json's
/// pre-tokenizer, by its structure. `ignore_merges` is the BPE model's flag
/// and `clean_up` tokenizer_config's `clean_up_tokenization_spaces`; both
/// pick between names that split alike. Returns a description of the
/// structure when nothing matches.
pub fn recognize_pre_tokenizer(
    tokenizer_json: &Value,
    clean_up: bool,
) -> std::result::Result<&'static str, String> {
    let model = &tokenizer_json["model"];
    let ignore_merges = model["ignore_merges"].as_bool().unwrap_or(false);
    if model["type"] != "BPE" || model["byte_fallback"].as_bool().unwrap_or(false) {
        return Err(format!(
            "model {} with byte_fallback {} is not a byte-level BPE",
            model["type"], model["byte_fallback"]
        ));
    }
    let pre = &tokenizer_json["pre_tokenizer"];
    let steps: Vec<&Value> = match pre["type"].as_str() {
        Some("Sequence") => pre["pretokenizers"]
            .as_array()
            .map(|a| a.iter().collect())
            .unwrap_or_default(),
        Some(_) => vec![pre],
        None => vec![],
    };
    let is_byte_level = |v: &Value, regex: bool| {
        v["type"] == "ByteLevel"
            && !v["add_prefix_space"].as_bool().unwrap_or(true)
            && v["use_regex"].as_bool().unwrap_or(true) == regex
    };
    let name = match steps.as_slice() {
        [b] if is_byte_level(b, true) => Some("gpt-2"),
        [d, b]
            if d["type"] == "Digits"
                && d["individual_digits"].as_bool() == Some(true)
                && is_byte_level(b, true) =>
        {
            Some(if clean_up { "starcoder" } else { "smollm" })
        }
        [s, b]
            if s["type"] == "Split"
                && s["behavior"] == "Isolated"
                && !s["invert"].as_bool().unwrap_or(false)
                && is_byte_level(b, false) =>
        {
            let regex = s["pattern"]["Regex"].as_str().unwrap_or("");
            if regex == LLAMA3_REGEX_HF || regex == LLAMA3_REGEX {
                // dbrx splits as llama 3 but keeps merges for words in the vocabulary.
                Some(if ignore_merges { "llama-bpe" } else { "dbrx" })
            } else if (regex == QWEN2_REGEX_HF || regex == QWEN2_REGEX) && !ignore_merges {
                Some("qwen2")
            } else if (regex == QWEN35_REGEX_HF || regex == QWEN35_REGEX) && !ignore_merges {
                Some("qwen35")
            } else {
                None
            }
        }
        _ => None,
    };
    name.ok_or_else(|| {
        format!(
            "pre_tokenizer {} with ignore_merges {ignore_merges}",
            serde_json::to_string(pre).unwrap_or_default()
        )
    })
}

/// The error for a pre-tokenizer nothing recognizes.
pub(crate) fn unknown_pre_error(hash: &str, structure: &str) -> TokenizerError {
    TokenizerErrorKind::UnknownPreTokenizer(format!(
        "cannot tell which llama.cpp BPE pre-tokenizer this vocabulary needs: its check-text hash {hash} \
         is not in convert_hf_to_gguf.py's table, and its {structure} matches none of the splits llama.cpp \
         implements. If you know the right one, pass --tokenizer-pre NAME (qforge rebuilds: {})",
        known_pre_tokenizers().collect::<Vec<_>>().join(", ")
    ))
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_python_str_of_the_id_list() {
        // sha256("[1, 22, 333]") and sha256("[]")
        assert_eq!(
            hash_ids(&[1, 22, 333]),
            crate::hashing::sha256_bytes(b"[1, 22, 333]")
        );
        assert_eq!(
            hash_ids(&[]),
            "4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945"
        );
    }

    #[test]
    fn table_has_the_reference_names() {
        assert_eq!(
            pre_tokenizer_for_hash(
                "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249"
            ),
            Some("smollm")
        );
        // A hash listed twice keeps the later name, as the script's chain of ifs does.
        assert_eq!(
            pre_tokenizer_for_hash(
                "b6dc8df998e1cfbdc4eac8243701a65afe638679230920b50d6f17d81c098166"
            ),
            Some("olmo")
        );
        assert!(CHECK_TEXT.starts_with("\n \n\n \n\n\n \t"));
        assert!(CHECK_TEXT.ends_with("We'Ve a'lL"));
    }

    #[test]
    fn recognizes_the_common_structures() {
        let tj = |pre: Value, ignore: bool| json!({"model": {"type": "BPE", "ignore_merges": ignore}, "pre_tokenizer": pre});
        assert_eq!(
            recognize_pre_tokenizer(&tj(byte_level(true), false), true),
            Ok("gpt-2")
        );
        let llama = tj(
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": LLAMA3_REGEX_HF}, "behavior": "Isolated", "invert": false},
                byte_level(false)]}),
            true,
        );
        assert_eq!(recognize_pre_tokenizer(&llama, false), Ok("llama-bpe"));
        let qwen = tj(hf_pre_tokenizer(PreFamily::Qwen2), false);
        assert_eq!(recognize_pre_tokenizer(&qwen, false), Ok("qwen2"));
        let smol = tj(hf_pre_tokenizer(PreFamily::DigitsThenGpt2), false);
        assert_eq!(recognize_pre_tokenizer(&smol, false), Ok("smollm"));
        assert_eq!(recognize_pre_tokenizer(&smol, true), Ok("starcoder"));
        let odd = tj(json!({"type": "Whitespace"}), false);
        let err = recognize_pre_tokenizer(&odd, false).unwrap_err();
        assert!(err.contains("Whitespace"), "{err}");
        let e = unknown_pre_error("abc", &err).to_string();
        assert!(
            e.contains("--tokenizer-pre NAME") && e.contains("llama-bpe"),
            "{e}"
        );
    }

    #[test]
    fn every_known_family_compiles_in_tokenizers() {
        for i in KNOWN {
            let pre: tokenizers::PreTokenizerWrapper =
                serde_json::from_value(hf_pre_tokenizer(i.family)).unwrap();
            drop(pre);
        }
    }
}
