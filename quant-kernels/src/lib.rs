//! Block formats of GGML and MLX: a scalar reference per type that is its
//! definition, and fast CPU (SIMD + rayon) and GPU (WGSL through wgpu) paths
//! tested bit-for-bit against it.
//!
//! This crate knows blocks and bytes, nothing about files or models.

#![deny(missing_docs)]

mod error;
pub mod float;
pub mod ggml;
#[cfg(feature = "gpu")]
pub mod gpu;
pub mod mlx;
mod simd;
mod types;
pub mod vector;

pub use error::KernelError;
pub use types::GgmlType;
