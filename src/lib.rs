//! qforge: convert, quantize and verify language models across GGUF, MLX
//! and safetensors.

pub mod arch;
pub mod cli;
pub mod convert;
pub mod device;
pub mod engine;
pub mod fetch;
pub mod formats;
pub mod hashing;
pub mod manifest;
pub mod quant;
pub mod tokenizer;
pub mod verify;

/// The qforge version, as written into provenance metadata.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
