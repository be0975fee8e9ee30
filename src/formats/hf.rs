//! Hugging Face model folders: config.json, generation_config.json, the
//! model card, and the safetensors weights (one file or shards with an
//! index), read by mmap.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value as Json};

use super::error::{FormatError, FormatErrorKind, Result};
use super::paths::{read_side_file, MAX_JSON_SIDE_FILE};
use super::safetensors::{SafetensorsModel, StTensorInfo};

/// Name of the model configuration.
pub const CONFIG_FILE: &str = "config.json";
/// Name of the generation defaults.
pub const GENERATION_CONFIG_FILE: &str = "generation_config.json";
/// Name of the model card.
pub const MODEL_CARD_FILE: &str = "README.md";

/// A Hugging Face model folder.
#[derive(Debug)]
pub struct HfModel {
    dir: PathBuf,
    config: Map<String, Json>,
    generation_config: Option<Map<String, Json>>,
    weights: SafetensorsModel,
}

impl HfModel {
    /// Opens `dir`: parses config.json (required) and generation_config.json
    /// (optional; an unreadable one is ignored, as transformers and
    /// convert_hf_to_gguf.py ignore it), and maps the safetensors.
    pub fn open(dir: impl AsRef<Path>) -> Result<HfModel> {
        let dir = dir.as_ref();
        let config = read_json_object(&dir.join(CONFIG_FILE))?;
        let generation_config = read_json_object(&dir.join(GENERATION_CONFIG_FILE)).ok();
        let weights = SafetensorsModel::open(dir)?;
        Ok(HfModel {
            dir: dir.to_path_buf(),
            config,
            generation_config,
            weights,
        })
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// config.json as written.
    pub fn config(&self) -> &Map<String, Json> {
        &self.config
    }

    /// generation_config.json, when present and valid.
    pub fn generation_config(&self) -> Option<&Map<String, Json>> {
        self.generation_config.as_ref()
    }

    /// config.json's `architectures[0]`.
    pub fn architecture(&self) -> Option<&str> {
        self.config
            .get("architectures")
            .and_then(Json::as_array)
            .and_then(|a| a.first())
            .and_then(Json::as_str)
    }

    /// The weights.
    pub fn weights(&self) -> &SafetensorsModel {
        &self.weights
    }

    /// Tensors in the order convert_hf_to_gguf.py visits them: shard files
    /// in name order, and within each file tensor names in sorted order (the
    /// safetensors library's order).
    pub fn tensors_in_script_order(&self) -> Vec<(&StTensorInfo, &[u8])> {
        let mut out = Vec::with_capacity(self.weights.tensor_count());
        let mut files: Vec<_> = self.weights.files().iter().collect();
        files.sort_by(|a, b| a.path().file_name().cmp(&b.path().file_name()));
        for f in files {
            let mut infos: Vec<&StTensorInfo> = f.header().tensors.iter().collect();
            infos.sort_by(|a, b| a.name.cmp(&b.name));
            out.extend(infos.into_iter().map(|t| (t, f.tensor_data(t))));
        }
        out
    }

    /// The model card's text, when there is one.
    pub fn model_card(&self) -> Option<String> {
        let bytes = read_side_file(&self.dir, MODEL_CARD_FILE, MAX_JSON_SIDE_FILE).ok()??;
        String::from_utf8(bytes).ok()
    }
}

impl super::mmap::ReleasePages for HfModel {
    fn release(&self, data: &[u8]) {
        self.weights.release(data);
    }
}

/// Reads a JSON file that must hold an object: a side file of its folder,
/// so a plain name that stays in it and at most [`MAX_JSON_SIDE_FILE`]
/// bytes.
pub fn read_json_object(path: &Path) -> Result<Map<String, Json>> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let text = read_side_file(dir, name, MAX_JSON_SIDE_FILE)?.ok_or_else(|| {
        FormatError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory"),
        )
    })?;
    match serde_json::from_slice::<Json>(&text) {
        Ok(Json::Object(m)) => Ok(m),
        Ok(_) => Err(
            FormatError::new(FormatErrorKind::Json("expected a JSON object".into())).in_file(path),
        ),
        Err(e) => Err(FormatError::new(FormatErrorKind::Json(e.to_string())).in_file(path)),
    }
}
