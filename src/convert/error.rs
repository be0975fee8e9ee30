//! The error type of conversions.

use crate::arch::ArchError;
use crate::formats::FormatError;

/// What went wrong in a conversion.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConvertError {
    /// Reading or writing a model file.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// The architecture cannot convert this model.
    #[error(transparent)]
    Arch(#[from] ArchError),
    /// A block kernel refused the data.
    #[error("{0}")]
    Kernel(#[from] quant_kernels::KernelError),
    /// A conversion qforge does not do (yet), said in a sentence.
    #[error("{0}")]
    Unsupported(String),
    /// The tokenizer files could not be converted.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// An error while working on one tensor.
    #[error("tensor '{tensor}': {source}")]
    InTensor {
        /// The tensor.
        tensor: String,
        /// What went wrong.
        #[source]
        source: Box<ConvertError>,
    },
}

impl ConvertError {
    /// Attaches the tensor the error belongs to (keeps one already set).
    pub fn for_tensor(self, name: &str) -> ConvertError {
        match self {
            e @ ConvertError::InTensor { .. } => e,
            ConvertError::Format(f) => ConvertError::Format(f.for_tensor(name)),
            e => ConvertError::InTensor {
                tensor: name.to_string(),
                source: Box::new(e),
            },
        }
    }
}

/// Result with a [`ConvertError`].
pub type Result<T, E = ConvertError> = std::result::Result<T, E>;
