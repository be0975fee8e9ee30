//! Which format a path holds, decided from its contents, not its name.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use super::error::{FormatError, Result};
use super::gguf::MAGIC;
use super::paths::{read_side_file, MAX_JSON_SIDE_FILE};
use super::safetensors::{INDEX_FILE, SINGLE_FILE};

/// The model formats qforge reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFormat {
    /// A GGUF file (or split set).
    Gguf,
    /// A safetensors file, or a Hugging Face folder of them.
    Safetensors,
    /// An mlx-lm folder (quantized, or marked `format: mlx`).
    Mlx,
}

impl ModelFormat {
    /// Lower-case name for messages and JSON.
    pub fn name(self) -> &'static str {
        match self {
            ModelFormat::Gguf => "gguf",
            ModelFormat::Safetensors => "safetensors",
            ModelFormat::Mlx => "mlx",
        }
    }
}

/// Looks at `path` and says which format it is.
pub fn detect(path: &Path) -> Result<ModelFormat> {
    let meta = std::fs::metadata(path).map_err(|e| FormatError::io(path, e))?;
    if meta.is_dir() {
        return detect_dir(path);
    }
    let mut head = [0u8; 8];
    let mut f = File::open(path).map_err(|e| FormatError::io(path, e))?;
    let n = read_up_to(&mut f, &mut head).map_err(|e| FormatError::io(path, e))?;
    if n >= 4 && &head[..4] == MAGIC {
        return Ok(ModelFormat::Gguf);
    }
    if n == 8 {
        let header_len = u64::from_le_bytes(head);
        let mut first = [0u8; 1];
        if header_len > 0
            && read_up_to(&mut f, &mut first).map_err(|e| FormatError::io(path, e))? == 1
            && first[0] == b'{'
        {
            return Ok(ModelFormat::Safetensors);
        }
    }
    Err(FormatError::other(
        "not a GGUF file (no GGUF magic) and not a safetensors file (no JSON header)",
    )
    .in_file(path))
}

fn detect_dir(dir: &Path) -> Result<ModelFormat> {
    if let Ok(Some(text)) = read_side_file(dir, "config.json", MAX_JSON_SIDE_FILE) {
        if let Ok(json) = serde_json::from_slice::<serde_json::Value>(&text) {
            if json.get("quantization").is_some() {
                return Ok(ModelFormat::Mlx);
            }
        }
    }
    let has_safetensors = dir.join(INDEX_FILE).is_file()
        || dir.join(SINGLE_FILE).is_file()
        || std::fs::read_dir(dir)
            .map_err(|e| FormatError::io(dir, e))?
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().ends_with(".safetensors"));
    if !has_safetensors {
        return Err(FormatError::other(
            "this folder holds no .safetensors files (nor a GGUF file): not a model folder qforge reads",
        )
        .in_file(dir));
    }
    // An unquantized mlx-lm folder is a safetensors folder marked "mlx".
    let model = super::safetensors::SafetensorsModel::open(dir)?;
    if model
        .metadata()
        .and_then(|m| m.get("format"))
        .map(String::as_str)
        == Some("mlx")
    {
        return Ok(ModelFormat::Mlx);
    }
    Ok(ModelFormat::Safetensors)
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}
