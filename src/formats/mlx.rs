//! MLX model folders in mlx-lm's layout: a safetensors folder whose
//! quantized layers are three tensors `P.weight` (uint32, packed),
//! `P.scales` and `P.biases`, and whose config.json carries
//! `"quantization": {"group_size": G, "bits": B, "mode": "affine"}` plus
//! per-layer overrides keyed by module path.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value as Json};

use super::atomic::AtomicDir;
use super::error::{FormatError, FormatErrorKind, Result};
use super::paths::{read_side_file, MAX_JSON_SIDE_FILE};
use super::pyjson;
use super::safetensors::{
    plan_shards, shard_name, write_file_in_order, Dtype, SafetensorsModel, StTensorInfo,
    StTensorSpec, INDEX_FILE,
};

/// Group sizes mlx's affine mode supports.
pub const GROUP_SIZES: [u32; 3] = [32, 64, 128];
/// Bit widths mlx's affine mode supports.
pub const BITS: [u32; 6] = [2, 3, 4, 5, 6, 8];
/// mlx's default bits of affine quantization (`defaults_for_mode`).
pub const DEFAULT_BITS: u32 = 4;
/// mlx's default group size of affine quantization.
pub const DEFAULT_GROUP_SIZE: u32 = 64;
/// mlx-lm's shard size cap (5 GiB).
pub const MAX_SHARD_BYTES: u64 = 5 << 30;

/// How one module is quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuantParams {
    /// Elements per group sharing a scale and bias.
    pub group_size: u32,
    /// Bits per element.
    pub bits: u32,
}

/// A per-module entry of the `quantization` block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerOverride {
    /// Quantized with these parameters.
    Quantized(QuantParams),
    /// Left unquantized (`false` in config.json).
    Unquantized,
}

/// The `quantization` block of an MLX config.json.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuantConfig {
    /// Default parameters.
    pub default: QuantParams,
    /// `mode` (only `affine` is read by qforge's kernels).
    pub mode: String,
    /// Per-module overrides, by module path.
    pub overrides: BTreeMap<String, LayerOverride>,
    /// The block exactly as config.json holds it, when it came from one or
    /// must be written in a form the fields do not capture (mlx-lm's
    /// recipes give every module an entry with `mode` and, when no group
    /// size was asked for, `"group_size": null`). `None`: built from the
    /// fields.
    pub verbatim: Option<Json>,
}

impl QuantConfig {
    /// Parses the `quantization` object of config.json.
    pub fn from_json(v: &Json) -> Result<QuantConfig> {
        let obj = v
            .as_object()
            .ok_or_else(|| bad("\"quantization\" must be an object"))?;
        let default = params_from(obj, "quantization")?;
        let mode = match obj.get("mode") {
            None => "affine".to_string(),
            Some(Json::String(s)) => s.clone(),
            Some(_) => return Err(bad("quantization.mode must be a string")),
        };
        let mut overrides = BTreeMap::new();
        for (k, v) in obj {
            if matches!(k.as_str(), "group_size" | "bits" | "mode") {
                continue;
            }
            let o = match v {
                Json::Bool(false) => LayerOverride::Unquantized,
                Json::Object(m) => LayerOverride::Quantized(params_from(m, k)?),
                _ => {
                    return Err(bad(&format!(
                        "quantization override for '{k}' must be an object or false"
                    )))
                }
            };
            overrides.insert(k.clone(), o);
        }
        Ok(QuantConfig {
            default,
            mode,
            overrides,
            verbatim: Some(v.clone()),
        })
    }

    /// The JSON object for config.json.
    pub fn to_json(&self) -> Json {
        if let Some(v) = &self.verbatim {
            return v.clone();
        }
        let mut m = Map::new();
        m.insert("group_size".into(), self.default.group_size.into());
        m.insert("bits".into(), self.default.bits.into());
        m.insert("mode".into(), self.mode.clone().into());
        for (k, o) in &self.overrides {
            let v = match o {
                LayerOverride::Unquantized => Json::Bool(false),
                LayerOverride::Quantized(p) => {
                    serde_json::json!({"group_size": p.group_size, "bits": p.bits})
                }
            };
            m.insert(k.clone(), v);
        }
        Json::Object(m)
    }

    /// The parameters of module `path` (None when it is left unquantized).
    pub fn params_for(&self, path: &str) -> Option<QuantParams> {
        match self.overrides.get(path) {
            Some(LayerOverride::Unquantized) => None,
            Some(LayerOverride::Quantized(p)) => Some(*p),
            None => Some(self.default),
        }
    }
}

fn bad(msg: &str) -> FormatError {
    FormatError::new(FormatErrorKind::BadMetadata(msg.to_string()))
}

fn params_from(obj: &Map<String, Json>, what: &str) -> Result<QuantParams> {
    let get = |k: &str| -> Result<u32> {
        obj.get(k)
            .and_then(Json::as_u64)
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| bad(&format!("{what}.{k} must be a positive integer")))
    };
    // mlx-lm's recipes write `"group_size": null` for modules quantized
    // with mlx's default group size when none was asked for.
    let group_size = match obj.get("group_size") {
        Some(Json::Null) => DEFAULT_GROUP_SIZE,
        _ => get("group_size")?,
    };
    let p = QuantParams {
        group_size,
        bits: get("bits")?,
    };
    if !BITS.contains(&p.bits) {
        return Err(bad(&format!(
            "{what}.bits is {}, MLX supports {BITS:?}",
            p.bits
        )));
    }
    if p.group_size == 0 || p.group_size > 1 << 16 {
        return Err(bad(&format!("{what}.group_size is {}", p.group_size)));
    }
    Ok(p)
}

/// One quantized module: its packed weight, scales and biases.
#[derive(Debug, Clone)]
pub struct QuantizedLayer<'a> {
    /// Module path (`model.layers.0.self_attn.q_proj`).
    pub path: String,
    /// `P.weight`, uint32.
    pub weight: &'a StTensorInfo,
    /// `P.scales`.
    pub scales: &'a StTensorInfo,
    /// `P.biases`.
    pub biases: &'a StTensorInfo,
    /// Parameters from config.json.
    pub params: QuantParams,
    /// Output rows.
    pub rows: u64,
    /// Input columns (unpacked elements per row).
    pub cols: u64,
}

/// An MLX model folder.
#[derive(Debug)]
pub struct MlxModel {
    dir: PathBuf,
    config: Map<String, Json>,
    quantization: Option<QuantConfig>,
    tensors: SafetensorsModel,
}

impl MlxModel {
    /// Opens an MLX folder: config.json and its safetensors.
    pub fn open(dir: impl AsRef<Path>) -> Result<MlxModel> {
        let dir = dir.as_ref();
        let config_path = dir.join("config.json");
        let text = read_side_file(dir, "config.json", MAX_JSON_SIDE_FILE)?.ok_or_else(|| {
            FormatError::io(
                &config_path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory"),
            )
        })?;
        let config: Map<String, Json> = serde_json::from_slice(&text).map_err(|e| {
            FormatError::new(FormatErrorKind::Json(e.to_string())).in_file(&config_path)
        })?;
        let quantization = config
            .get("quantization")
            .map(QuantConfig::from_json)
            .transpose()
            .map_err(|e| e.in_file(&config_path))?;
        let tensors = SafetensorsModel::open(dir)?;
        let model = MlxModel {
            dir: dir.to_path_buf(),
            config,
            quantization,
            tensors,
        };
        model.quantized_layers()?;
        Ok(model)
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// config.json as parsed.
    pub fn config(&self) -> &Map<String, Json> {
        &self.config
    }

    /// The quantization block, if the model is quantized.
    pub fn quantization(&self) -> Option<&QuantConfig> {
        self.quantization.as_ref()
    }

    /// The tensors.
    pub fn tensors(&self) -> &SafetensorsModel {
        &self.tensors
    }

    /// Every module stored quantized (a `P.scales` tensor exists), checked
    /// against config.json and the packing geometry.
    pub fn quantized_layers(&self) -> Result<Vec<QuantizedLayer<'_>>> {
        let mut out = Vec::new();
        let config_path = self.dir.join("config.json");
        for (t, _) in self.tensors.tensors() {
            let Some(path) = t.name.strip_suffix(".scales") else {
                continue;
            };
            let err = |msg: String| {
                FormatError::other(msg)
                    .for_tensor(&t.name)
                    .in_file(self.tensors.root())
            };
            let q = self.quantization.as_ref().ok_or_else(|| {
                err("a quantized layer, but config.json has no \"quantization\" block".into())
            })?;
            let params = q.params_for(path).ok_or_else(|| {
                err(format!(
                    "stored quantized, but config.json marks '{path}' unquantized"
                ))
                .in_file(&config_path)
            })?;
            let weight = self
                .tensors
                .tensor(&format!("{path}.weight"))
                .ok_or_else(|| err(format!("'{path}.weight' is missing")))?
                .0;
            let biases = self
                .tensors
                .tensor(&format!("{path}.biases"))
                .ok_or_else(|| {
                    err(format!(
                        "'{path}.biases' is missing (qforge reads the affine mode)"
                    ))
                })?
                .0;
            if weight.dtype != Dtype::U32 {
                return Err(err(format!(
                    "'{path}.weight' is {:?}, packed weights are U32",
                    weight.dtype
                )));
            }
            let (Some((&packed, w_outer)), Some((&groups, s_outer))) =
                (weight.shape.split_last(), t.shape.split_last())
            else {
                return Err(err("weight and scales need at least one dimension".into()));
            };
            let cols = packed * 32 / u64::from(params.bits);
            if packed * 32 % u64::from(params.bits) != 0
                || cols != groups * u64::from(params.group_size)
                || w_outer != s_outer
                || biases.shape != t.shape
                || biases.dtype != t.dtype
            {
                return Err(err(format!(
                    "shapes do not fit {} bits, group {}: weight {:?}, scales {:?}, biases {:?}",
                    params.bits, params.group_size, weight.shape, t.shape, biases.shape
                )));
            }
            out.push(QuantizedLayer {
                path: path.to_string(),
                weight,
                scales: t,
                biases,
                params,
                rows: w_outer.iter().product(),
                cols,
            });
        }
        Ok(out)
    }
}

impl super::mmap::ReleasePages for MlxModel {
    fn release(&self, data: &[u8]) {
        self.tensors.release(data);
    }
}

/// The model card mlx-lm writes for a model converted from a local folder
/// (`create_model_card` with no Hub repository).
pub const MODEL_CARD: &str =
    "---\nlanguage: en\nlibrary_name: mlx\npipeline_tag: text-generation\ntags:\n- mlx\n---\n";

/// config.json as mlx-lm's `save_config` writes it: `_name_or_path` and
/// `vision_config` dropped, `quantization` mirrored as
/// `quantization_config`, top-level keys sorted, `json.dump(indent=4)`.
pub fn config_json(config: &Map<String, Json>) -> String {
    let mut c = config.clone();
    c.remove("_name_or_path");
    c.remove("vision_config");
    if let Some(q) = c.get("quantization").cloned() {
        c.insert("quantization_config".into(), q);
    }
    let sorted: BTreeMap<String, Json> = c.into_iter().collect();
    let sorted: Map<String, Json> = sorted.into_iter().collect();
    pyjson::to_string_indent4(&Json::Object(sorted))
}

/// What an MLX folder holds besides its tensors.
#[derive(Debug, Clone, Copy)]
pub struct MlxFolder<'a> {
    /// config.json's contents (written through [`config_json`]).
    pub config: &'a Map<String, Json>,
    /// The index's `total_parameters`: elements of the model's weights,
    /// counting a quantized matrix by its unpacked size (mlx-lm's
    /// `get_total_parameters`).
    pub total_parameters: u64,
    /// Other files (tokenizer, generation config, model card) as (name
    /// relative to the folder, bytes).
    pub extra_files: &'a [(String, Vec<u8>)],
}

/// Writes an MLX folder atomically, the way mlx-lm's `save` lays it out:
/// tensors in the order given (the model's parameter order), cut into
/// shards of at most 5 GiB (`model.safetensors`, or
/// `model-00001-of-0000N.safetensors`), each with `__metadata__ {"format":
/// "mlx"}`; `model.safetensors.index.json` (always, also for one shard)
/// with `total_size`, `total_parameters` and the sorted weight map;
/// config.json ([`config_json`]); then the extra files. `produce` is called
/// once per tensor, in order. Returns the names of the files written.
pub fn write_folder<'a>(
    dir: &Path,
    folder: &MlxFolder<'_>,
    specs: &[StTensorSpec],
    mut produce: impl FnMut(&StTensorSpec) -> Result<Cow<'a, [u8]>>,
) -> Result<Vec<String>> {
    let out = AtomicDir::create(dir)?;
    let metadata = BTreeMap::from([("format".to_string(), "mlx".to_string())]);
    let shards = plan_shards(specs, MAX_SHARD_BYTES)?;
    let n = shards.len();
    let mut names = Vec::with_capacity(n + 2 + folder.extra_files.len());
    let mut weight_map = BTreeMap::new();
    let mut total_size = 0u64;
    for (i, members) in shards.iter().enumerate() {
        let name = shard_name(i, n);
        let shard: Vec<StTensorSpec> = members.iter().map(|&j| specs[j].clone()).collect();
        for s in &shard {
            weight_map.insert(s.name.clone(), Json::String(name.clone()));
            total_size += s.size()?;
        }
        write_file_in_order(
            &out.path().join(&name),
            &shard,
            Some(&metadata),
            &mut produce,
        )?;
        names.push(name);
    }
    let index = serde_json::json!({
        "metadata": {
            "total_size": total_size,
            "total_parameters": folder.total_parameters,
        },
        "weight_map": Json::Object(weight_map.into_iter().collect()),
    });
    out.write_file(INDEX_FILE, pyjson::to_string_indent4(&index).as_bytes())?;
    names.push(INDEX_FILE.to_string());
    out.write_file("config.json", config_json(folder.config).as_bytes())?;
    names.push("config.json".to_string());
    for (name, bytes) in folder.extra_files {
        out.write_file(name, bytes)?;
        names.push(name.clone());
    }
    out.commit()?;
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipe_blocks_read_null_group_sizes_and_write_back_verbatim() {
        // The shape of what `mlx_lm.convert --quant-predicate mixed_3_6` writes.
        let block = serde_json::json!({
            "group_size": 64,
            "bits": 4,
            "mode": "affine",
            "model.layers.0.self_attn.v_proj": {"group_size": null, "bits": 6, "mode": "affine"},
            "model.layers.0.self_attn.q_proj": {"group_size": null, "bits": 3, "mode": "affine"},
        });
        let q = QuantConfig::from_json(&block).unwrap();
        let p = q.params_for("model.layers.0.self_attn.v_proj").unwrap();
        assert_eq!((p.bits, p.group_size), (6, DEFAULT_GROUP_SIZE));
        assert_eq!(q.params_for("model.norm").unwrap().bits, 4);
        assert_eq!(q.to_json(), block);
        let bad =
            serde_json::json!({"group_size": 64, "bits": 4, "x": {"group_size": "64", "bits": 4}});
        assert!(QuantConfig::from_json(&bad).is_err());
    }
}
