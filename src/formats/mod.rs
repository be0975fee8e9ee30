//! Model file formats: GGUF, safetensors, MLX folders, and the Hugging Face
//! side files. Readers mmap and parse headers without touching tensor data;
//! writers stream tensor by tensor into atomic outputs.

pub mod atomic;
pub mod detect;
pub mod error;
pub mod gguf;
pub mod hf;
pub mod mlx;
pub mod mmap;
pub mod paths;
pub mod safetensors;

pub use detect::{detect, ModelFormat};
pub use error::{FormatError, FormatErrorKind, Result};
