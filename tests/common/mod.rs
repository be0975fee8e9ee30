//! Helpers shared by the manifest tests (each test crate uses some).
#![allow(dead_code)]

pub mod fake_stages;

use std::fs;
use std::path::Path;

/// A tiny Hugging Face-style model folder: config.json and one
/// safetensors file with a 2-element tensor.
pub fn write_tiny_hf_model(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("config.json"), r#"{"model_type": "llama"}"#).unwrap();
    let header = br#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    let mut st = (header.len() as u64).to_le_bytes().to_vec();
    st.extend_from_slice(header);
    st.extend_from_slice(&[0, 0, 128, 63, 0, 0, 0, 64]);
    fs::write(dir.join("model.safetensors"), st).unwrap();
}
