//! The engine's error type.

use crate::formats::FormatError;

/// What went wrong loading or running a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The model file or folder could not be read.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// config.json or the GGUF metadata lacks a value or holds a wrong one.
    #[error("{0}")]
    Config(String),
    /// A tensor the architecture needs is not in the model.
    #[error("tensor '{0}' is missing: the model does not fit its architecture's tensor layout")]
    MissingTensor(String),
    /// A tensor has the wrong shape or storage type.
    #[error("tensor '{name}': {why}")]
    BadTensor {
        /// The tensor.
        name: String,
        /// What is wrong with it.
        why: String,
    },
    /// Something the engine does not run (yet), said in a sentence.
    #[error("{0}")]
    Unsupported(String),
    /// The GPU failed while loading or running the model.
    #[error("the GPU failed: {0}")]
    Device(String),
    /// A token id outside the vocabulary, or a context overflow.
    #[error("{0}")]
    Input(String),
    /// A kernel refused its input: in a forward pass, activations that
    /// overflowed to infinity or NaN, which GGML's activation types cannot
    /// hold.
    #[error("the forward pass failed: {0} (the model's activations overflowed; the weights may be corrupt)")]
    Kernel(quant_kernels::KernelError),
}

impl EngineError {
    pub(crate) fn kernel(e: quant_kernels::KernelError) -> EngineError {
        EngineError::Kernel(e)
    }
}

/// Result with an [`EngineError`].
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

pub(crate) fn config_err(msg: impl Into<String>) -> EngineError {
    EngineError::Config(msg.into())
}
