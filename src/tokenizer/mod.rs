//! Tokenizers both ways between Hugging Face files and GGUF metadata, and a
//! runtime tokenizer that tokenizes as llama.cpp does.
//!
//! - [`hf_to_gguf_keys`]: a model folder's tokenizer.json, tokenizer_config.json,
//!   tokenizer.model, config.json and chat template -> the `tokenizer.*` keys
//!   llama.cpp's convert_hf_to_gguf.py writes, in its order and types.
//! - [`gguf_to_hf`]: GGUF `tokenizer.*` keys -> tokenizer.json,
//!   tokenizer_config.json, special_tokens_map.json and chat_template.jinja,
//!   splitting text the way llama.cpp's vocabulary code does.
//! - [`Tokenizer`]: encode and decode through the `tokenizers` crate, with
//!   BOS and EOS added as llama.cpp adds them.
//!
//! The references are llama.cpp's conversion scripts (conversion/base.py,
//! gguf-py's vocab.py) and its tokenizer (src/llama-vocab.cpp, src/unicode.cpp),
//! from the tree in llama-cpp-python 0.3.36; where those disagree with
//! transformers, qforge follows llama.cpp and the tests name each string.

mod error;
mod from_gguf;
mod hf;
mod pre;
mod runtime;
pub mod sentencepiece;
mod to_gguf;

pub use error::{Result, TokenizerError, TokenizerErrorKind};
pub use from_gguf::{gguf_to_hf, HfTokenizerOutput};
pub use hf::HfTokenizerFiles;
pub use pre::{
    check_text_hash, hf_pre_tokenizer, known_pre_tokenizers, pre_tokenizer_for_hash,
    pre_tokenizer_info, recognize_pre_tokenizer, PreFamily, PreTokenizerInfo,
};
pub use runtime::Tokenizer;
pub use sentencepiece::SentencePieceModel;
pub use to_gguf::{hf_files_to_gguf_keys, hf_to_gguf_keys, HfToGgufOptions};

/// llama.cpp's token types (`llama_token_type`), the values of
/// `tokenizer.ggml.token_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum TokenType {
    /// Not set.
    Undefined = 0,
    /// An ordinary token.
    Normal = 1,
    /// The unknown token.
    Unknown = 2,
    /// A control token (BOS, EOS, chat markers): matched whole in text
    /// only when special tokens are parsed.
    Control = 3,
    /// A user-defined token: always matched whole in text.
    UserDefined = 4,
    /// A placeholder never produced (`[PAD123]`).
    Unused = 5,
    /// A byte-fallback token `<0xXX>`.
    Byte = 6,
}

impl TokenType {
    /// The type with this value (None for values llama.cpp does not define).
    pub fn from_i32(v: i32) -> Option<TokenType> {
        Some(match v {
            0 => TokenType::Undefined,
            1 => TokenType::Normal,
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => return None,
        })
    }
}

/// The GGUF keys of the tokenizer (gguf-py's `Keys.Tokenizer`).
pub mod keys {
    /// `gpt2` (byte-level BPE) or `llama` (SentencePiece).
    pub const MODEL: &str = "tokenizer.ggml.model";
    /// The BPE pre-tokenizer's name.
    pub const PRE: &str = "tokenizer.ggml.pre";
    /// The tokens, by id.
    pub const TOKENS: &str = "tokenizer.ggml.tokens";
    /// The token types (i32, [`super::TokenType`]).
    pub const TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
    /// SentencePiece scores (f32).
    pub const SCORES: &str = "tokenizer.ggml.scores";
    /// BPE merges, "left right".
    pub const MERGES: &str = "tokenizer.ggml.merges";
    /// Beginning of sequence.
    pub const BOS_ID: &str = "tokenizer.ggml.bos_token_id";
    /// End of sequence.
    pub const EOS_ID: &str = "tokenizer.ggml.eos_token_id";
    /// End of turn.
    pub const EOT_ID: &str = "tokenizer.ggml.eot_token_id";
    /// End of message.
    pub const EOM_ID: &str = "tokenizer.ggml.eom_token_id";
    /// Unknown.
    pub const UNK_ID: &str = "tokenizer.ggml.unknown_token_id";
    /// Separator (gguf-py spells it "seperator").
    pub const SEP_ID: &str = "tokenizer.ggml.seperator_token_id";
    /// Padding.
    pub const PAD_ID: &str = "tokenizer.ggml.padding_token_id";
    /// Mask.
    pub const MASK_ID: &str = "tokenizer.ggml.mask_token_id";
    /// Whether BOS is added.
    pub const ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
    /// Whether EOS is added.
    pub const ADD_EOS: &str = "tokenizer.ggml.add_eos_token";
    /// Whether SEP is added.
    pub const ADD_SEP: &str = "tokenizer.ggml.add_sep_token";
    /// Whether a space is prepended (SentencePiece).
    pub const ADD_PREFIX: &str = "tokenizer.ggml.add_space_prefix";
    /// Lowercase normalizer flag.
    pub const NORMALIZER_LOWERCASE: &str = "tokenizer.ggml.normalizer.lowercase";
    /// Strip-accents normalizer flag.
    pub const NORMALIZER_STRIP_ACCENTS: &str = "tokenizer.ggml.normalizer.strip_accents";
    /// The default chat template (named ones are `tokenizer.chat_template.NAME`).
    pub const CHAT_TEMPLATE: &str = "tokenizer.chat_template";
    /// The names of the extra chat templates.
    pub const CHAT_TEMPLATES: &str = "tokenizer.chat_templates";
}
