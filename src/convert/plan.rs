//! Plans: for every output tensor, where its values come from, the
//! encoding they go to, what moves on the way (row order, a constant
//! shift, dropped rows), and whether the step is lossless. A plan is plain
//! data: `--dry-run` prints it, the writers execute it.

use std::fmt::Write as _;
use std::path::Path;

use quant_kernels::GgmlType;
use serde_json::{json, Value as Json};

use super::error::{ConvertError, Result};
use super::view::{Encoding, FloatType, ModelView, Source};
use crate::arch::{ArchError, RowOrder};
use crate::quant::ftype::file_type_id;

/// Where a planned tensor's values come from.
#[derive(Debug, Clone, PartialEq)]
pub enum PlanSource {
    /// Tensor `i` of the view.
    Tensor(usize),
    /// Values the architecture computes (llama 3's `rope_freqs`).
    Values(Vec<f32>),
}

/// One output tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorPlan {
    /// Output name.
    pub name: String,
    /// Output shape, outermost first.
    pub shape: Vec<u64>,
    /// Where the values come from.
    pub source: PlanSource,
    /// The source's encoding.
    pub from: Encoding,
    /// The output's encoding.
    pub to: Encoding,
    /// Row order of the source's stored rows.
    pub rows_from: RowOrder,
    /// Row order the output stores.
    pub rows_to: RowOrder,
    /// Added to every value on the way (target shift minus source shift).
    pub shift: f32,
    /// True when the output holds exactly the source's values.
    pub lossless: bool,
    /// Why the step is what it is (fallbacks, dropped rows...).
    pub notes: Vec<String>,
}

impl TensorPlan {
    /// Number of output elements.
    pub fn n_elements(&self) -> u64 {
        self.shape.iter().product()
    }

    /// Output rows (outermost dimension; 1 for a scalar).
    pub fn rows(&self) -> u64 {
        self.shape.first().copied().unwrap_or(1)
    }

    /// Output size in bytes.
    pub fn out_bytes(&self) -> Option<u64> {
        self.to.bytes_for(self.n_elements())
    }

    /// True when the output is the source's bytes, rows moved as whole
    /// byte ranges at most.
    pub fn is_byte_copy(&self) -> bool {
        self.from == self.to && self.shift == 0.0
    }

    /// True when rows change order.
    pub fn permutes(&self) -> bool {
        self.rows_from != self.rows_to
    }

    /// The output's GGUF dims (innermost first).
    pub fn gguf_dims(&self) -> Vec<u64> {
        self.shape.iter().rev().copied().collect()
    }

    /// A one-line description of what happens, for `--dry-run`.
    pub fn describe(&self) -> String {
        let mut s = format!("{} -> {}", self.from, self.to);
        if self.permutes() {
            s.push_str(", rows reordered");
        }
        if self.shift != 0.0 {
            let _ = write!(s, ", {:+}", self.shift);
        }
        for n in &self.notes {
            let _ = write!(s, ", {n}");
        }
        s
    }

    /// The step as JSON.
    pub fn to_json(&self) -> Json {
        json!({
            "name": self.name,
            "shape": self.shape,
            "from": self.from.to_string(),
            "to": self.to.to_string(),
            "reorder_rows": self.permutes(),
            "shift": self.shift,
            "lossless": self.lossless,
            "notes": self.notes,
        })
    }
}

/// Whether `from -> to` keeps every value exactly.
pub fn is_lossless(from: Encoding, to: Encoding, shift: f32) -> bool {
    if shift != 0.0 {
        return false;
    }
    match (from, to) {
        _ if from == to => true,
        (Encoding::Float(a), Encoding::Float(b)) => a.widens_to(b),
        (Encoding::Ggml(_), Encoding::Float(FloatType::F32 | FloatType::F64)) => true,
        _ => false,
    }
}

/// The output types of a GGUF conversion: convert_hf_to_gguf.py's
/// `--outtype` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufOutType {
    /// The source's 16-bit float type (BF16 or F16; F16 for F32 sources).
    Auto,
    /// All F32.
    F32,
    /// F16 (1-D tensors and norms F32).
    F16,
    /// BF16 (1-D tensors and norms F32).
    BF16,
    /// Q8_0 (1-D tensors and norms F32; rows that do not fit 32-element
    /// blocks F16).
    Q8_0,
}

impl GgufOutType {
    /// The ggml type of matrices.
    pub fn ggml_type(self) -> Option<GgmlType> {
        match self {
            GgufOutType::Auto => None,
            GgufOutType::F32 => Some(GgmlType::F32),
            GgufOutType::F16 => Some(GgmlType::F16),
            GgufOutType::BF16 => Some(GgmlType::BF16),
            GgufOutType::Q8_0 => Some(GgmlType::Q8_0),
        }
    }
}

/// A plan for a whole model.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Output tensors in write order.
    pub tensors: Vec<TensorPlan>,
    /// The ggml type of matrices (GGUF outputs), which names
    /// `general.file_type`.
    pub gguf_type: Option<GgmlType>,
    /// The float type of a Hugging Face output.
    pub hf_dtype: Option<FloatType>,
}

impl Plan {
    /// `general.file_type` of a GGUF output (llama_ftype: F32 is
    /// `ALL_F32`, the others `MOSTLY_*`).
    pub fn gguf_file_type(&self) -> Option<u32> {
        self.gguf_type.and_then(|t| file_type_id(t.name()))
    }

    /// Elements over all tensors (gguf-py's parameter count).
    pub fn parameter_count(&self) -> u64 {
        self.tensors.iter().map(TensorPlan::n_elements).sum()
    }

    /// True when every step is lossless.
    pub fn lossless(&self) -> bool {
        self.tensors.iter().all(|t| t.lossless)
    }

    /// The plan as a table, one tensor per line.
    pub fn table(&self) -> String {
        let width = self.tensors.iter().map(|t| t.name.len()).max().unwrap_or(4);
        let mut out = String::new();
        for t in &self.tensors {
            let _ = writeln!(
                out,
                "{:<width$}  {:<18}  {:<8}  {}",
                t.name,
                format!("{:?}", t.shape),
                if t.lossless { "lossless" } else { "lossy" },
                t.describe(),
            );
        }
        out
    }
}

/// The `Auto` type as the script guesses it: the first tensor of two or
/// more dimensions stored in BF16 or F16 decides; F16 otherwise.
pub fn auto_gguf_type(view: &ModelView<'_>) -> GgmlType {
    for t in &view.tensors {
        if t.shape.len() < 2 {
            continue;
        }
        match t.encoding {
            Encoding::Float(FloatType::BF16) => return GgmlType::BF16,
            Encoding::Float(FloatType::F16) => return GgmlType::F16,
            _ => {}
        }
    }
    GgmlType::F16
}

/// GGUF names the script always keeps in F32 when they occur (the
/// architectures here have none of them but MoE routers).
const ALWAYS_F32: &[&str] = &[".ffn_gate_inp.", "position_embd.", "token_types."];

/// The ggml type the script gives the GGUF tensor `gguf_name` of `shape`
/// under matrix type `matrices`, with the reason when it is not
/// `matrices`.
pub fn script_tensor_type(
    gguf_name: &str,
    shape: &[u64],
    matrices: GgmlType,
) -> (GgmlType, Option<String>) {
    if shape.len() <= 1 || gguf_name.ends_with("_norm.weight") {
        return (GgmlType::F32, None);
    }
    if ALWAYS_F32.iter().any(|p| gguf_name.contains(p)) || !gguf_name.ends_with(".weight") {
        return (GgmlType::F32, None);
    }
    let row = shape.last().copied().unwrap_or(1);
    if row % matrices.block_size() != 0 {
        return (
            GgmlType::F16,
            Some(format!(
                "F16: rows of {row} do not fill {} blocks",
                matrices.name()
            )),
        );
    }
    (matrices, None)
}

/// Plans a GGUF output the way convert_hf_to_gguf.py writes it: generated
/// tensors first, then the view's tensors in order, renamed, reordered and
/// shifted into llama.cpp's layout, with the script's type per tensor.
pub fn plan_gguf(view: &ModelView<'_>, outtype: GgufOutType) -> Result<Plan> {
    let matrices = outtype.ggml_type().unwrap_or_else(|| auto_gguf_type(view));
    let arch = view.arch;
    let hp = &view.hparams;
    let mut tensors = Vec::new();
    for g in arch.extra_gguf_tensors(hp)? {
        let n = g.values.len() as u64;
        tensors.push(TensorPlan {
            name: g.name,
            shape: vec![n],
            source: PlanSource::Values(g.values),
            from: Encoding::Float(FloatType::F32),
            to: Encoding::Float(FloatType::F32),
            rows_from: RowOrder::Natural,
            rows_to: RowOrder::Natural,
            shift: 0.0,
            lossless: true,
            notes: vec!["computed from config.json".into()],
        });
    }
    for i in 0..view.tensors.len() {
        tensors.push(gguf_tensor_plan(view, i, matrices)?);
    }
    Ok(Plan {
        tensors,
        gguf_type: Some(matrices),
        hf_dtype: None,
    })
}

/// The GGUF plan step for view tensor `i` when matrices are stored as
/// `matrices`: GGUF name, llama.cpp's row order and value shift, the
/// script's type for this tensor, dropped rows. Planners that choose a type
/// per tensor (an MLX source going to Q4_1 losslessly) call this per
/// tensor.
pub fn gguf_tensor_plan(view: &ModelView<'_>, i: usize, matrices: GgmlType) -> Result<TensorPlan> {
    let arch = view.arch;
    let hp = &view.hparams;
    let t = &view.tensors[i];
    let name = arch.gguf_name(&t.name).ok_or_else(|| {
        ConvertError::Arch(ArchError::UnknownTensor {
            name: t.name.clone(),
            target: "GGUF",
            arch: arch.name(),
        })
    })?;
    let layout = arch
        .gguf_layout(&t.name, &t.shape, hp)
        .map_err(|e| ConvertError::from(e).for_tensor(&t.name))?;
    let mut shape = t.shape.clone();
    let mut notes = Vec::new();
    let mut dropped = false;
    if let Source::Hf { dir, .. } = &view.source {
        let dir: &Path = dir;
        if let Some(limit) = arch.gguf_row_limit(&t.name, hp, dir)? {
            if let Some(rows) = shape.first_mut() {
                if limit < *rows {
                    notes.push(format!("rows past {limit} dropped (tokenizer vocabulary)"));
                    *rows = limit;
                    dropped = true;
                }
            }
        }
    }
    let (ty, why) = script_tensor_type(&name, &shape, matrices);
    notes.extend(why);
    let to = Encoding::from_ggml(ty);
    let shift = layout.shift - t.layout.shift;
    Ok(TensorPlan {
        name,
        shape,
        source: PlanSource::Tensor(i),
        from: t.encoding,
        to,
        rows_from: t.layout.rows,
        rows_to: layout.rows,
        shift,
        lossless: !dropped && is_lossless(t.encoding, to, shift),
        notes,
    })
}

/// The float type a Hugging Face output gets when none is asked for: the
/// type of the source's matrices when they are plain floats; F32 when any
/// tensor is quantized, because F32 holds every dequantized ggml or MLX
/// value exactly (what llama.cpp and mlx compute with, and what
/// transformers' own GGUF loader produces), so the copy requantizes to the
/// very same blocks. `--dtype bf16` halves the size at the cost of
/// rounding.
pub fn default_hf_dtype(view: &ModelView<'_>) -> FloatType {
    if view
        .tensors
        .iter()
        .any(|t| !matches!(t.encoding, Encoding::Float(_)))
    {
        return FloatType::F32;
    }
    view.tensors
        .iter()
        .filter(|t| t.shape.len() >= 2)
        .find_map(|t| match t.encoding {
            Encoding::Float(f) => Some(f),
            _ => None,
        })
        .unwrap_or(FloatType::F32)
}

/// Plans a Hugging Face safetensors output: Hugging Face names, rows and
/// values back in Hugging Face layout, every tensor in `dtype` (default:
/// [`default_hf_dtype`]), sorted by name.
pub fn plan_safetensors(view: &ModelView<'_>, dtype: Option<FloatType>) -> Result<Plan> {
    let dtype = dtype.unwrap_or_else(|| default_hf_dtype(view));
    let to = Encoding::Float(dtype);
    let mut tensors: Vec<TensorPlan> = view
        .tensors
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let shift = -t.layout.shift;
            TensorPlan {
                name: t.name.clone(),
                shape: t.shape.clone(),
                source: PlanSource::Tensor(i),
                from: t.encoding,
                to,
                rows_from: t.layout.rows,
                rows_to: RowOrder::Natural,
                shift,
                lossless: is_lossless(t.encoding, to, shift),
                notes: Vec::new(),
            }
        })
        .collect();
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Plan {
        tensors,
        gguf_type: None,
        hf_dtype: Some(dtype),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scripts_f32_rules() {
        let q = GgmlType::Q8_0;
        assert_eq!(
            script_tensor_type("blk.0.attn_norm.weight", &[64], q).0,
            GgmlType::F32
        );
        assert_eq!(
            script_tensor_type("blk.0.attn_q.bias", &[64], q).0,
            GgmlType::F32
        );
        assert_eq!(
            script_tensor_type("blk.0.attn_q_norm.weight", &[16], q).0,
            GgmlType::F32
        );
        assert_eq!(script_tensor_type("blk.0.attn_q.weight", &[64, 64], q).0, q);
        let (t, why) = script_tensor_type("blk.0.ffn_down.weight", &[64, 48], q);
        assert_eq!(t, GgmlType::F16);
        assert!(why.unwrap().contains("48"));
        assert_eq!(
            script_tensor_type("blk.0.ffn_down.weight", &[64, 48], GgmlType::BF16).0,
            GgmlType::BF16
        );
    }

    #[test]
    fn lossless_steps() {
        let f = |t| Encoding::Float(t);
        assert!(is_lossless(f(FloatType::BF16), f(FloatType::F32), 0.0));
        assert!(is_lossless(f(FloatType::F16), f(FloatType::F16), 0.0));
        assert!(!is_lossless(f(FloatType::F32), f(FloatType::F16), 0.0));
        assert!(!is_lossless(f(FloatType::BF16), f(FloatType::F16), 0.0));
        assert!(!is_lossless(f(FloatType::BF16), f(FloatType::F32), 1.0));
        assert!(is_lossless(
            Encoding::Ggml(GgmlType::Q4_1),
            f(FloatType::F32),
            0.0
        ));
        assert!(!is_lossless(
            Encoding::Ggml(GgmlType::Q8_0),
            f(FloatType::BF16),
            0.0
        ));
        assert!(!is_lossless(
            f(FloatType::F32),
            Encoding::Ggml(GgmlType::Q8_0),
            0.0
        ));
    }
}
