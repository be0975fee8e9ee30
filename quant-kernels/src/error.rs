//! Errors of the kernels: bad lengths, values that cannot be encoded.

/// What a kernel refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum KernelError {
    /// An input value is NaN or infinite; no block format can hold it.
    #[error("value {value} at index {index} is not finite")]
    NonFinite {
        /// Index of the value in the input.
        index: usize,
        /// The value.
        value: f32,
    },
    /// Buffer lengths do not fit the type's block geometry.
    #[error("{0}")]
    BadLength(String),
    /// The type or setting has no kernel here.
    #[error("{0} is not supported")]
    Unsupported(String),
}
