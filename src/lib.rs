//! qforge: convert, quantize and verify language models across GGUF, MLX
//! and safetensors.

pub mod formats;
