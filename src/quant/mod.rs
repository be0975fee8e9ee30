//! Quantization policy: file types and type mixes, importance matrices,
//! MLX recipes.

pub mod ftype;
