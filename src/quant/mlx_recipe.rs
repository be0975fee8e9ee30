//! MLX quantization choices as `mlx_lm.convert` makes them: which modules
//! are quantized, with which bits and group size, and what `config.json`
//! records for them.
//!
//! A port, as facts, of mlx-lm 0.32's `quantize_model` (mlx_lm/utils.py)
//! and `mixed_quant_predicate_builder` (mlx_lm/convert.py, the
//! `--quant-predicate mixed_2_6 | mixed_3_4 | mixed_3_6 | mixed_4_6`
//! recipes). It works on MLX module paths (`model.layers.3.mlp.down_proj`)
//! and weight shapes, so the MLX writer can ask it per module whatever the
//! source format was.
//!
//! What mlx-lm does, and this module with it:
//! - Only modules with a `to_quantized` method are candidates (Linear,
//!   Embedding and mlx-lm's switch layers: a 2-D or 3-D `weight`), and of
//!   those only ones whose input size (last weight dimension) is a multiple
//!   of the run's group size.
//! - Without a recipe every candidate gets `--bits`/`--group-size`
//!   (default 4 and 64) and `config.json` records only
//!   `"quantization": {"group_size", "bits", "mode": "affine"}`.
//! - A recipe gives `v_proj` (and `v_a_proj`, `v_b_proj`) and `down_proj`
//!   of "use more bits" layers, and `lm_head`, the high bits; everything
//!   else the low bits. Every quantized module then gets its own entry in
//!   `config.json`, whose `group_size` is the `--group-size` argument as
//!   given: `null` when it was not given, while the weights are quantized
//!   with mlx's default of 64.

use std::fmt;
use std::str::FromStr;

use serde_json::{json, Map, Value as Json};

/// mlx-lm's mixed recipes (`QUANT_RECIPES`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MlxRecipe {
    /// 2 bits, 6 for sensitive layers.
    Mixed2_6,
    /// 3 bits, 4 for sensitive layers.
    Mixed3_4,
    /// 3 bits, 6 for sensitive layers.
    Mixed3_6,
    /// 4 bits, 6 for sensitive layers.
    Mixed4_6,
}

impl MlxRecipe {
    /// Every recipe.
    pub const ALL: [MlxRecipe; 4] = [
        MlxRecipe::Mixed2_6,
        MlxRecipe::Mixed3_4,
        MlxRecipe::Mixed3_6,
        MlxRecipe::Mixed4_6,
    ];

    /// The name `--quant-predicate` takes.
    pub fn name(self) -> &'static str {
        match self {
            MlxRecipe::Mixed2_6 => "mixed_2_6",
            MlxRecipe::Mixed3_4 => "mixed_3_4",
            MlxRecipe::Mixed3_6 => "mixed_3_6",
            MlxRecipe::Mixed4_6 => "mixed_4_6",
        }
    }

    /// (low bits, high bits).
    pub fn bits(self) -> (u32, u32) {
        match self {
            MlxRecipe::Mixed2_6 => (2, 6),
            MlxRecipe::Mixed3_4 => (3, 4),
            MlxRecipe::Mixed3_6 => (3, 6),
            MlxRecipe::Mixed4_6 => (4, 6),
        }
    }
}

impl fmt::Display for MlxRecipe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for MlxRecipe {
    type Err = RecipeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MlxRecipe::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| {
                RecipeError(format!(
                    "unknown quant recipe '{s}'; mlx-lm's are mixed_2_6, mixed_3_4, mixed_3_6, mixed_4_6"
                ))
            })
    }
}

/// A setting or model the recipes cannot work with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipeError(pub String);

impl fmt::Display for RecipeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RecipeError {}

/// The quantization settings of one `mlx_lm.convert -q` run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MlxQuantArgs {
    /// `--q-bits` (default 4).
    pub bits: Option<u32>,
    /// `--q-group-size` (default 64).
    pub group_size: Option<u32>,
    /// `--quant-predicate`.
    pub recipe: Option<MlxRecipe>,
}

pub use crate::formats::mlx::{DEFAULT_BITS, DEFAULT_GROUP_SIZE};

impl MlxQuantArgs {
    /// The bits of modules the recipe does not single out.
    pub fn bits(&self) -> u32 {
        self.bits.unwrap_or(DEFAULT_BITS)
    }

    /// The group size every module is quantized with.
    pub fn group_size(&self) -> u32 {
        self.group_size.unwrap_or(DEFAULT_GROUP_SIZE)
    }

    /// The top-level `"quantization"` of `config.json` (before per-module
    /// entries are added).
    pub fn config_header(&self) -> Map<String, Json> {
        let mut m = Map::new();
        m.insert("group_size".into(), json!(self.group_size()));
        m.insert("bits".into(), json!(self.bits()));
        m.insert("mode".into(), json!("affine"));
        m
    }
}

/// What the recipes need to know about the model: the number of decoder
/// layers and where the layer index sits in module paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MlxLayout {
    /// `len(model.layers)`.
    pub num_layers: usize,
    /// Position of the layer index among a path's dot-separated parts.
    pub layer_location: usize,
}

impl MlxLayout {
    /// Finds the layout as mlx-lm does: the first module path (in
    /// `named_modules` order) containing `down_proj` gives the location of
    /// its first all-digit part. A model without `down_proj` cannot take a
    /// mixed recipe.
    pub fn from_module_paths<'a>(
        paths: impl IntoIterator<Item = &'a str>,
        num_layers: usize,
    ) -> Result<MlxLayout, RecipeError> {
        let first = paths
            .into_iter()
            .find(|p| p.contains("down_proj"))
            .ok_or_else(|| {
                RecipeError(
                    "the model has no down_proj module, which mlx-lm's mixed recipes need to find the layers".into(),
                )
            })?;
        let parts: Vec<&str> = first.split('.').collect();
        // Python's loop leaves the index at the last part when no part is a number.
        let layer_location = parts
            .iter()
            .position(|p| is_py_digit(p))
            .unwrap_or(parts.len().saturating_sub(1));
        Ok(MlxLayout {
            num_layers,
            layer_location,
        })
    }
}

/// `str.isdigit()` for ASCII: non-empty, digits only.
fn is_py_digit(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// How one module is quantized.
#[derive(Debug, Clone, PartialEq)]
pub struct MlxModuleQuant {
    /// Bits per weight.
    pub bits: u32,
    /// Elements per group.
    pub group_size: u32,
    /// The module's own entry under `"quantization"` in `config.json`,
    /// when mlx-lm writes one.
    pub config_entry: Option<Json>,
}

/// Whether a module with a weight of this shape can be quantized at all
/// (a Linear, Embedding or switch layer: 2-D or 3-D weights), with its
/// input size a multiple of the run's group size.
pub fn is_candidate(weight_shape: &[u64], args: &MlxQuantArgs) -> bool {
    matches!(weight_shape.len(), 2 | 3)
        && weight_shape
            .last()
            .is_some_and(|&n| n % u64::from(args.group_size()) == 0)
}

/// `use_more_bits` of the recipes (and of llama.cpp's mixes).
fn use_more_bits(index: i64, num_layers: i64) -> bool {
    index < num_layers / 8
        || index >= 7 * num_layers / 8
        || (index - num_layers / 8).rem_euclid(3) == 2
}

/// How mlx-lm quantizes the module at `path` whose weight has
/// `weight_shape` (outermost first), or `None` when it stays as it is.
/// `layout` is needed with a recipe only.
pub fn module_quant(
    path: &str,
    weight_shape: &[u64],
    args: &MlxQuantArgs,
    layout: Option<&MlxLayout>,
) -> Result<Option<MlxModuleQuant>, RecipeError> {
    if !is_candidate(weight_shape, args) {
        return Ok(None);
    }
    let Some(recipe) = args.recipe else {
        return Ok(Some(MlxModuleQuant {
            bits: args.bits(),
            group_size: args.group_size(),
            config_entry: None,
        }));
    };
    let layout = layout
        .ok_or_else(|| RecipeError("a mixed recipe needs the model's layer layout".into()))?;
    let parts: Vec<&str> = path.split('.').collect();
    let index: i64 = match parts.get(layout.layer_location) {
        None => 0,
        Some(p) => p.parse().map_err(|_| {
            RecipeError(format!(
                "module '{path}': part {} ('{p}') is not a layer number, so mlx-lm's recipe \
                 cannot place it",
                layout.layer_location
            ))
        })?,
    };
    let more = use_more_bits(index, layout.num_layers as i64);
    let (low, high) = recipe.bits();
    let sensitive = path.contains("v_proj")
        || path.contains("v_a_proj")
        || path.contains("v_b_proj")
        || path.contains("down_proj");
    let high_here = (sensitive && more) || path.contains("lm_head");
    let bits = if high_here { high } else { low };
    Ok(Some(MlxModuleQuant {
        bits,
        group_size: args.group_size(),
        config_entry: Some(json!({
            "group_size": args.group_size,
            "bits": bits,
            "mode": "affine",
        })),
    }))
}

/// The `"quantization"` object of `config.json` for modules given in
/// `named_modules` order as (path, weight shape): the header, then one
/// entry per module that has one. mlx-lm writes the same object again as
/// `"quantization_config"`.
pub fn config_quantization<'a>(
    modules: impl IntoIterator<Item = (&'a str, &'a [u64])>,
    args: &MlxQuantArgs,
    layout: Option<&MlxLayout>,
) -> Result<Json, RecipeError> {
    let mut m = args.config_header();
    for (path, shape) in modules {
        if let Some(q) = module_quant(path, shape, args, layout)? {
            if let Some(entry) = q.config_entry {
                m.insert(path.to_string(), entry);
            }
        }
    }
    Ok(Json::Object(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn llama_paths(n: usize) -> Vec<(String, Vec<u64>)> {
        let mut v = vec![("model.embed_tokens".to_string(), vec![512, 64])];
        for i in 0..n {
            for (m, s) in [
                ("self_attn.q_proj", vec![64, 64]),
                ("self_attn.k_proj", vec![32, 64]),
                ("self_attn.v_proj", vec![32, 64]),
                ("self_attn.o_proj", vec![64, 64]),
                ("mlp.gate_proj", vec![128, 64]),
                ("mlp.down_proj", vec![64, 128]),
                ("mlp.up_proj", vec![128, 64]),
            ] {
                v.push((format!("model.layers.{i}.{m}"), s));
            }
        }
        v.push(("lm_head".to_string(), vec![512, 64]));
        v
    }

    #[test]
    fn recipe_bits_follow_use_more_bits() {
        let mods = llama_paths(16);
        let layout = MlxLayout::from_module_paths(mods.iter().map(|m| m.0.as_str()), 16).unwrap();
        assert_eq!(layout.layer_location, 2);
        let args = MlxQuantArgs {
            recipe: Some(MlxRecipe::Mixed3_6),
            ..Default::default()
        };
        let bits = |p: &str| {
            let shape = &mods.iter().find(|m| m.0 == p).unwrap().1;
            module_quant(p, shape, &args, Some(&layout))
                .unwrap()
                .unwrap()
                .bits
        };
        assert_eq!(bits("model.layers.0.self_attn.v_proj"), 6);
        assert_eq!(bits("model.layers.0.self_attn.q_proj"), 3);
        assert_eq!(bits("model.layers.3.mlp.down_proj"), 3);
        assert_eq!(bits("model.layers.4.mlp.down_proj"), 6);
        assert_eq!(bits("model.layers.15.mlp.down_proj"), 6);
        assert_eq!(bits("lm_head"), 6);
        assert_eq!(bits("model.embed_tokens"), 3);
        let cfg = config_quantization(
            mods.iter().map(|(p, s)| (p.as_str(), s.as_slice())),
            &args,
            Some(&layout),
        )
        .unwrap();
        assert_eq!(cfg["group_size"], json!(64));
        assert_eq!(cfg["bits"], json!(4));
        assert_eq!(
            cfg["lm_head"],
            json!({"group_size": null, "bits": 6, "mode": "affine"})
        );
    }

    #[test]
    fn plain_bits_write_no_module_entries_and_skip_unfit_inputs() {
        let args = MlxQuantArgs {
            bits: Some(8),
            group_size: Some(128),
            recipe: None,
        };
        let q = module_quant("model.layers.0.mlp.down_proj", &[64, 128], &args, None).unwrap();
        assert_eq!(
            q,
            Some(MlxModuleQuant {
                bits: 8,
                group_size: 128,
                config_entry: None
            })
        );
        assert_eq!(
            module_quant("model.layers.0.mlp.up_proj", &[128, 64], &args, None).unwrap(),
            None
        );
        assert_eq!(
            module_quant("model.norm", &[64], &args, None).unwrap(),
            None
        );
        let cfg = config_quantization([("x", &[64u64, 128][..])], &args, None).unwrap();
        assert_eq!(cfg, json!({"group_size": 128, "bits": 8, "mode": "affine"}));
    }

    #[test]
    fn recipes_need_down_proj_and_numeric_layers() {
        assert!(MlxLayout::from_module_paths(["model.layers.0.mlp.fc1"], 1).is_err());
        let layout = MlxLayout {
            num_layers: 2,
            layer_location: 2,
        };
        let args = MlxQuantArgs {
            recipe: Some(MlxRecipe::Mixed2_6),
            ..Default::default()
        };
        assert!(module_quant(
            "vision.encoder.proj.weight",
            &[64, 64],
            &args,
            Some(&layout)
        )
        .is_err());
        assert_eq!("mixed_4_6".parse::<MlxRecipe>(), Ok(MlxRecipe::Mixed4_6));
        assert!("mixed_5_6".parse::<MlxRecipe>().is_err());
    }
}
