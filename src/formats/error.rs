//! The one error type of the format readers and writers.
//!
//! Every error names the file, and where it knows them the tensor and the
//! byte offset, so a user can find the broken spot with a hex editor.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// What went wrong, without the where.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FormatErrorKind {
    /// An operating-system error while reading or writing.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The input ends before a field that must be there.
    #[error("file ends in the middle of {what}: needs {need} bytes, {have} left")]
    Truncated {
        /// The field being read.
        what: &'static str,
        /// Bytes the field needs.
        need: u64,
        /// Bytes left in the file.
        have: u64,
    },
    /// The first bytes are not this format's magic.
    #[error("not a GGUF file: magic bytes are {found:02x?}, expected \"GGUF\"")]
    BadMagic {
        /// The four bytes found.
        found: [u8; 4],
    },
    /// A GGUF version this reader does not read.
    #[error("GGUF version {0} is not supported (qforge reads versions 2 and 3)")]
    UnsupportedVersion(u32),
    /// A byte-swapped GGUF file.
    #[error("this GGUF file is big-endian (version field reads {0:#010x}); only little-endian files are supported")]
    BigEndian(u32),
    /// A count or length larger than the data that could hold it.
    #[error("{what} is {count}, more than the {max} the rest of the file could hold")]
    CountTooLarge {
        /// What is being counted.
        what: &'static str,
        /// The count found.
        count: u64,
        /// The most the input can hold.
        max: u64,
    },
    /// A count or length above a hard limit of the format.
    #[error("{what} is {count}, above the limit of {limit}")]
    LimitExceeded {
        /// What is being counted.
        what: &'static str,
        /// The count found.
        count: u64,
        /// The limit.
        limit: u64,
    },
    /// Text that should be UTF-8 is not.
    #[error("{what} is not valid UTF-8")]
    InvalidUtf8 {
        /// Which string.
        what: &'static str,
    },
    /// A metadata value type id this reader does not know.
    #[error("metadata key '{key}' has unknown value type {type_id}")]
    UnknownValueType {
        /// The key.
        key: String,
        /// The type id found.
        type_id: u32,
    },
    /// A boolean byte that is neither 0 nor 1.
    #[error("metadata key '{key}' holds a bool byte {value}, which must be 0 or 1")]
    BadBool {
        /// The key.
        key: String,
        /// The byte found.
        value: u8,
    },
    /// A tensor type id ggml does not define.
    #[error("unknown ggml tensor type id {0}")]
    UnknownTensorType(u32),
    /// Tensor geometry that cannot be right.
    #[error("{0}")]
    BadShape(String),
    /// A tensor whose data lies (partly) outside the file or another tensor.
    #[error("{0}")]
    BadLayout(String),
    /// The same name twice.
    #[error("duplicate {what} '{name}'")]
    Duplicate {
        /// Key, tensor, shard...
        what: &'static str,
        /// The name seen twice.
        name: String,
    },
    /// A metadata value of the wrong type or range.
    #[error("{0}")]
    BadMetadata(String),
    /// A JSON document (safetensors header, config.json, index) that does not parse.
    #[error("invalid JSON: {0}")]
    Json(String),
    /// A path from inside a model file that would leave its folder.
    #[error("refusing path '{path}': {why}")]
    UnsafePath {
        /// The path as written in the file.
        path: String,
        /// Why it is refused.
        why: &'static str,
    },
    /// An input that another process changed while qforge was reading it.
    #[error("the file changed while qforge was reading it ({what}); nothing was written under the output's name, run again once the file is complete")]
    InputChanged {
        /// What changed.
        what: String,
    },
    /// An output that another live process is writing right now.
    #[error("another process (pid {pid}) is writing this output now; wait for it to finish or choose another output name")]
    OutputBusy {
        /// The process holding the other temporary file.
        pid: u32,
    },
    /// Anything else, said in a sentence.
    #[error("{0}")]
    Other(String),
}

/// An error reading or writing a model file, with where it happened.
#[derive(Debug)]
pub struct FormatError {
    /// The file, when known.
    pub path: Option<PathBuf>,
    /// The tensor, when the error belongs to one.
    pub tensor: Option<String>,
    /// Byte offset in the file, when known.
    pub offset: Option<u64>,
    /// What went wrong.
    pub kind: FormatErrorKind,
}

/// Result with a [`FormatError`].
pub type Result<T, E = FormatError> = std::result::Result<T, E>;

impl FormatError {
    /// An error of this kind, with no location yet.
    pub fn new(kind: FormatErrorKind) -> Self {
        FormatError {
            path: None,
            tensor: None,
            offset: None,
            kind,
        }
    }

    /// An error said in a sentence.
    pub fn other(msg: impl Into<String>) -> Self {
        Self::new(FormatErrorKind::Other(msg.into()))
    }

    /// Sets the file (keeps one already set).
    pub fn in_file(mut self, path: &Path) -> Self {
        if self.path.is_none() {
            self.path = Some(path.to_path_buf());
        }
        self
    }

    /// Sets the tensor (keeps one already set).
    pub fn for_tensor(mut self, name: &str) -> Self {
        if self.tensor.is_none() {
            self.tensor = Some(name.to_string());
        }
        self
    }

    /// Sets the byte offset (keeps one already set).
    pub fn at(mut self, offset: u64) -> Self {
        if self.offset.is_none() {
            self.offset = Some(offset);
        }
        self
    }

    /// An I/O error on a file.
    pub fn io(path: &Path, err: io::Error) -> Self {
        Self::new(FormatErrorKind::Io(err)).in_file(path)
    }
}

impl From<FormatErrorKind> for FormatError {
    fn from(kind: FormatErrorKind) -> Self {
        FormatError::new(kind)
    }
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(path) = &self.path {
            write!(f, "{}: ", path.display())?;
        }
        match (&self.tensor, self.offset) {
            (Some(t), Some(o)) => write!(f, "tensor '{t}' (byte {o}): ")?,
            (Some(t), None) => write!(f, "tensor '{t}': ")?,
            (None, Some(o)) => write!(f, "at byte {o}: ")?,
            (None, None) => {}
        }
        write!(f, "{}", self.kind)
    }
}

impl std::error::Error for FormatError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            FormatErrorKind::Io(e) => Some(e),
            _ => None,
        }
    }
}
