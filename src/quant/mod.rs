//! Quantization policy: file types and type mixes, importance matrices,
//! MLX recipes, and the plan that puts them together per tensor.

pub mod calibrate;
pub mod ftype;
pub mod imatrix;
pub mod mix;
pub mod mlx_recipe;
pub mod plan;
pub mod source;
pub mod write;
