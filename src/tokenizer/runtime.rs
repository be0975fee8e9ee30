//! The tokenizer of the inference engine: the `tokenizers` crate for the
//! splitting and merging, BOS and EOS added here as llama.cpp adds them.

use std::path::Path;
use std::sync::OnceLock;

use serde_json::Value;

use super::error::{Result, TokenizerError};
use super::from_gguf::gguf_to_hf;
use super::hf::HfTokenizerFiles;
use crate::formats::gguf::{GgufModel, Metadata};

/// A tokenizer loaded from a Hugging Face folder or from GGUF metadata.
///
/// [`Tokenizer::encode`] tokenizes as `llama_tokenize(text, add_special,
/// parse_special = true)` does for the same model: control tokens written
/// in the text become their ids, and with `add_special` BOS is prepended
/// when the vocabulary adds it (EOS appended likewise).
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    literal_specials: OnceLock<tokenizers::Tokenizer>,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    add_eos: bool,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos", &self.add_bos)
            .field("add_eos", &self.add_eos)
            .finish()
    }
}

impl Tokenizer {
    /// Loads tokenizer.json from a model folder. BOS and EOS are added as
    /// the folder's tokenizer adds them (its post-processor), so encoding
    /// agrees with transformers.
    pub fn from_hf_dir(dir: impl AsRef<Path>) -> Result<Tokenizer> {
        let files = HfTokenizerFiles::read(dir)?;
        let path = files.path("tokenizer.json");
        let text = files.tokenizer_json_text.as_deref().ok_or_else(|| {
            TokenizerError::missing("no tokenizer.json in the folder").in_file(&path)
        })?;
        let inner = text
            .parse::<tokenizers::Tokenizer>()
            .map_err(|e| TokenizerError::tokenizers(e).in_file(&path))?;
        let plain = inner
            .encode_fast("a", false)
            .map_err(TokenizerError::tokenizers)?;
        let with = inner
            .encode_fast("a", true)
            .map_err(TokenizerError::tokenizers)?;
        let (plain, with) = (plain.get_ids(), with.get_ids());
        let at = with
            .windows(plain.len().max(1))
            .position(|w| w == plain)
            .unwrap_or(0);
        let add_bos = at > 0;
        let add_eos = with.len() > at + plain.len();
        let tc = files.tokenizer_config_object();
        let config = files.config_object();
        let by_name = |field: &str, config_key: &str| -> Option<u32> {
            let content = match tc.get(field) {
                Some(Value::String(s)) => Some(s.as_str()),
                Some(Value::Object(o)) => o.get("content").and_then(Value::as_str),
                _ => None,
            };
            content.and_then(|c| inner.token_to_id(c)).or_else(|| {
                config
                    .get(config_key)
                    .and_then(Value::as_u64)
                    .map(|v| v as u32)
            })
        };
        let bos = if add_bos {
            with.first().copied()
        } else {
            by_name("bos_token", "bos_token_id")
        };
        let eos = if add_eos {
            with.last().copied()
        } else {
            by_name("eos_token", "eos_token_id")
        };
        Ok(Tokenizer {
            inner,
            literal_specials: OnceLock::new(),
            bos,
            eos,
            add_bos,
            add_eos,
        })
    }

    /// Builds the tokenizer a GGUF file's `tokenizer.*` metadata describes,
    /// splitting, merging and adding BOS as llama.cpp does.
    pub fn from_gguf(metadata: &Metadata) -> Result<Tokenizer> {
        let hf = gguf_to_hf(metadata)?;
        let inner = hf.build()?;
        let s = hf.specials;
        Ok(Tokenizer {
            inner,
            literal_specials: OnceLock::new(),
            bos: s.bos,
            eos: s.eos,
            add_bos: s.add_bos,
            add_eos: s.add_eos,
        })
    }

    /// Opens a GGUF file (any part of a split set) and builds its tokenizer.
    pub fn from_gguf_file(path: impl AsRef<Path>) -> Result<Tokenizer> {
        let path = path.as_ref();
        let model =
            GgufModel::open(path).map_err(|e| TokenizerError::json(e.to_string()).in_file(path))?;
        Self::from_gguf(model.metadata()).map_err(|e| e.in_file(path))
    }

    /// Token ids of `text`, with control tokens in the text parsed (llama.cpp's
    /// `parse_special = true`, what llama-perplexity uses).
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        self.encode_with(text, add_special, true)
    }

    /// Token ids of `text`. With `parse_special` false, control tokens in
    /// the text are tokenized as plain text (user-defined ones still match
    /// whole, as in llama.cpp).
    pub fn encode_with(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<u32>> {
        let tokenizer = if parse_special {
            &self.inner
        } else {
            self.literal_specials.get_or_init(|| {
                let mut t = self.inner.clone();
                t.set_encode_special_tokens(true);
                t
            })
        };
        let enc = tokenizer
            .encode_fast(text, false)
            .map_err(TokenizerError::tokenizers)?;
        let mut ids = Vec::with_capacity(enc.len() + 2);
        if add_special && self.add_bos {
            ids.extend(self.bos);
        }
        ids.extend_from_slice(enc.get_ids());
        if add_special && self.add_eos {
            ids.extend(self.eos);
        }
        Ok(ids)
    }

    /// The text of `ids`; control tokens are dropped when `skip_special`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(TokenizerError::tokenizers)
    }

    /// The beginning-of-sequence id.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// The end-of-sequence id.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// Whether `encode(.., add_special = true)` prepends BOS.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Whether `encode(.., add_special = true)` appends EOS.
    pub fn add_eos(&self) -> bool {
        self.add_eos
    }

    /// Number of tokens, added ones included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of a token's text.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The text of a token id.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}
