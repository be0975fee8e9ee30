//! The error type of the tokenizer conversions and the runtime tokenizer.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// What went wrong, without the where.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenizerErrorKind {
    /// An operating-system error while reading or writing.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// A JSON file that does not parse or lacks a field it must have.
    #[error("{0}")]
    Json(String),
    /// A `tokenizer.model` that is not a valid SentencePiece model.
    #[error("{0}")]
    SentencePiece(String),
    /// A file or key the conversion needs is absent.
    #[error("{0}")]
    Missing(String),
    /// A BPE pre-tokenizer that neither the hash table nor the structure
    /// check recognizes; the message names the `--tokenizer-pre` override.
    #[error("{0}")]
    UnknownPreTokenizer(String),
    /// GGUF tokenizer metadata of the wrong type or out of range.
    #[error("{0}")]
    BadMetadata(String),
    /// A tokenizer kind this module does not handle.
    #[error("{0}")]
    Unsupported(String),
    /// A file refused by the format layer: a name that leaves its folder,
    /// a file over its size limit, an output that cannot be written.
    #[error("{0}")]
    Format(Box<crate::formats::FormatError>),
    /// An error from the `tokenizers` crate.
    #[error("tokenizers: {0}")]
    Tokenizers(String),
}

/// An error of the tokenizer module, with the file it concerns.
#[derive(Debug)]
pub struct TokenizerError {
    /// The file, when known.
    pub path: Option<PathBuf>,
    /// What went wrong.
    pub kind: TokenizerErrorKind,
}

/// Result with a [`TokenizerError`].
pub type Result<T, E = TokenizerError> = std::result::Result<T, E>;

impl TokenizerError {
    /// An error of this kind, with no file yet.
    pub fn new(kind: TokenizerErrorKind) -> Self {
        TokenizerError { path: None, kind }
    }

    /// Sets the file (keeps one already set).
    pub fn in_file(mut self, path: &Path) -> Self {
        if self.path.is_none() {
            self.path = Some(path.to_path_buf());
        }
        self
    }

    /// An I/O error on a file.
    pub fn io(path: &Path, err: io::Error) -> Self {
        Self::new(TokenizerErrorKind::Io(err)).in_file(path)
    }

    pub(crate) fn json(msg: impl Into<String>) -> Self {
        Self::new(TokenizerErrorKind::Json(msg.into()))
    }

    pub(crate) fn missing(msg: impl Into<String>) -> Self {
        Self::new(TokenizerErrorKind::Missing(msg.into()))
    }

    pub(crate) fn metadata(msg: impl Into<String>) -> Self {
        Self::new(TokenizerErrorKind::BadMetadata(msg.into()))
    }

    pub(crate) fn unsupported(msg: impl Into<String>) -> Self {
        Self::new(TokenizerErrorKind::Unsupported(msg.into()))
    }

    pub(crate) fn tokenizers(err: impl fmt::Display) -> Self {
        Self::new(TokenizerErrorKind::Tokenizers(err.to_string()))
    }
}

impl From<crate::formats::FormatError> for TokenizerError {
    fn from(e: crate::formats::FormatError) -> Self {
        TokenizerError::new(TokenizerErrorKind::Format(Box::new(e)))
    }
}

impl From<TokenizerErrorKind> for TokenizerError {
    fn from(kind: TokenizerErrorKind) -> Self {
        TokenizerError::new(kind)
    }
}

impl fmt::Display for TokenizerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(path) = &self.path {
            write!(f, "{}: ", path.display())?;
        }
        write!(f, "{}", self.kind)
    }
}

impl std::error::Error for TokenizerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            TokenizerErrorKind::Io(e) => Some(e),
            TokenizerErrorKind::Format(e) => Some(e.as_ref()),
            _ => None,
        }
    }
}
