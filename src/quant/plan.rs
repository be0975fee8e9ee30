//! The quantization plan: for every output tensor its name, shape, source
//! and target type, byte sizes, how its bytes are made and which
//! importance weights steer the quantizer. `--dry-run` prints it; the
//! writer executes it. It is built from the source's tensor list alone
//! (names in GGUF naming, dims, types), whatever format the source is in.

use quant_kernels::{ggml, GgmlType};

use super::ftype::FileType;
use super::imatrix::ImportanceMatrix;
use super::mix::{self, Fallback, MixError, MixOptions, ModelFacts, TensorFacts};

/// One tensor of the source, in the source's order.
#[derive(Debug, Clone)]
pub struct SourceTensor {
    /// Name in GGUF naming.
    pub name: String,
    /// Dimensions, innermost first.
    pub dims: Vec<u64>,
    /// Stored type.
    pub ggml_type: GgmlType,
    /// Which file of a split source holds it (0 when not split).
    pub split: usize,
    /// Offset of its data in that file's data section.
    pub offset: u64,
}

/// How a tensor's output bytes are made from its source bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Method {
    /// The type does not change: bytes copied as they are.
    Copy,
    /// Decoded to f32 and encoded in the target type, as llama-quantize
    /// does (byte-identical to it).
    ViaF32,
    /// The target's grid holds every source value: blocks transcoded as
    /// integers (or, into F32, the dequantized values), bit for bit the
    /// source's values ([`ggml::requant::Requant::Nested`]).
    Exact,
    /// The grids do not nest: llama-quantize's blocks, each replaced by one
    /// aimed at the source's grid points where that one is closer to the
    /// source values ([`ggml::requant::Requant::Search`]).
    GridSearch,
}

impl Method {
    /// Short name for plans and reports.
    pub fn name(self) -> &'static str {
        match self {
            Method::Copy => "copy",
            Method::ViaF32 => "quantize",
            Method::Exact => "exact",
            Method::GridSearch => "grid search",
        }
    }

    /// True when the output holds exactly the source's values.
    pub fn is_lossless(self) -> bool {
        matches!(self, Method::Copy | Method::Exact)
    }
}

/// How the importance matrix takes part in one tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImatrixRole {
    /// No matrix given, or the tensor is copied.
    None,
    /// The matrix's entry for this tensor steers the quantizer.
    Used,
    /// The matrix has an entry but the target type's quantizer ignores it.
    Ignored,
    /// The matrix has no entry for this tensor (llama-quantize goes on
    /// without one).
    NotFound,
    /// The entry's length does not match the tensor: llama-quantize skips
    /// it for token embeddings and refuses otherwise.
    SizeMismatch,
}

/// One output tensor.
#[derive(Debug, Clone)]
pub struct PlannedTensor {
    /// Name.
    pub name: String,
    /// Dimensions as written (innermost first; trailing 1s dropped, as ggml
    /// writes them).
    pub dims: Vec<u64>,
    /// Source type.
    pub from: GgmlType,
    /// Output type.
    pub to: GgmlType,
    /// Source bytes.
    pub from_bytes: u64,
    /// Output bytes.
    pub to_bytes: u64,
    /// How the bytes are made.
    pub method: Method,
    /// The rule's type did not fit the rows.
    pub fallback: Option<Fallback>,
    /// The importance matrix's part.
    pub imatrix: ImatrixRole,
    /// Index in the source tensor list.
    pub source: usize,
    /// Output file of a split set (0 unless `--keep-split`).
    pub split: usize,
}

impl PlannedTensor {
    /// Elements per row.
    pub fn row_len(&self) -> u64 {
        self.dims.first().copied().unwrap_or(1)
    }

    /// Rows in total (all experts).
    pub fn n_rows(&self) -> u64 {
        self.dims.iter().skip(1).product()
    }

    /// Rows per expert matrix (`ne[1]`): the importance weights change
    /// every this many rows.
    pub fn rows_per_matrix(&self) -> u64 {
        self.dims.get(1).copied().unwrap_or(1)
    }
}

/// Something that keeps the plan from being written, found while
/// planning (a dry run lists these as warnings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The tensor, when the problem is one tensor's.
    pub tensor: Option<String>,
    /// What is wrong and what to do.
    pub message: String,
}

/// Settings beyond the mix.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    /// The mix.
    pub mix: MixOptions,
    /// Quantized sources may be requantized (`--allow-requantize`).
    pub allow_requantize: bool,
    /// Keep the source's split layout (`--keep-split`).
    pub keep_split: bool,
    /// Requantize quantized sources keeping their grid where the target
    /// allows (`--exact-grid on`, the default); off: as llama-quantize.
    pub exact_grid: bool,
}

/// A whole plan.
#[derive(Debug, Clone)]
pub struct QuantPlan {
    /// The mix.
    pub file_type: FileType,
    /// Output tensors in write order.
    pub tensors: Vec<PlannedTensor>,
    /// Output files (1 unless `--keep-split` on a split source).
    pub n_splits: usize,
    /// Tensors whose rows did not fit the rule's type.
    pub n_fallback: usize,
    /// What stops the plan from being written.
    pub problems: Vec<Problem>,
    /// The mix makes types llama-quantize only makes with an importance
    /// matrix, and none was given.
    pub requires_imatrix: bool,
}

impl QuantPlan {
    /// Source bytes of all tensors.
    pub fn from_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.from_bytes).sum()
    }

    /// Output bytes of all tensors.
    pub fn to_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.to_bytes).sum()
    }

    /// Elements of all tensors.
    pub fn n_elements(&self) -> u64 {
        self.tensors
            .iter()
            .map(|t| t.dims.iter().product::<u64>())
            .sum()
    }
}

/// The method for one tensor: the bytes are copied when the type stays;
/// otherwise, with `exact_grid`, transcoded where the target's grid holds
/// the source's and searched where the source has a grid to aim at; else
/// (and always without `exact_grid`) through f32 as llama-quantize does.
pub fn choose_method(from: GgmlType, to: GgmlType, exact_grid: bool) -> Method {
    use ggml::requant::{strategy, Requant};
    if from == to {
        return Method::Copy;
    }
    if !exact_grid || !ggml::can_dequantize(from) || !ggml::can_quantize(to) {
        return Method::ViaF32;
    }
    match strategy(from, to) {
        Requant::Nested => Method::Exact,
        Requant::Search => Method::GridSearch,
        _ => Method::ViaF32,
    }
}

/// `ggml_n_dims`-trimmed dims.
fn written_dims(dims: &[u64]) -> Vec<u64> {
    let n = dims.iter().rposition(|&d| d > 1).map_or(1, |i| i + 1);
    let mut d = dims[..n.min(dims.len())].to_vec();
    if d.is_empty() {
        d.push(1);
    }
    d
}

fn bytes_of(dims: &[u64], ty: GgmlType) -> Option<u64> {
    let row = dims.first().copied().unwrap_or(1);
    let rows: u64 = dims.iter().skip(1).product();
    ty.row_size(row)?.checked_mul(rows)
}

/// Plans quantizing `tensors` (the source's, in its order) of `model`.
///
/// Errors are inputs no plan can be made for (a malformed name or shape);
/// everything that would stop llama-quantize midway is collected in
/// [`QuantPlan::problems`] instead, so a dry run can show all of it.
pub fn plan_gguf(
    model: &ModelFacts,
    tensors: &[SourceTensor],
    opts: &PlanOptions,
    imatrix: Option<&ImportanceMatrix>,
) -> Result<QuantPlan, MixError> {
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    if opts.keep_split {
        order.sort_by_key(|&i| (tensors[i].split, tensors[i].offset));
    } else {
        order.sort_by(|&a, &b| mix::llama_order(&tensors[a].name, &tensors[b].name));
    }
    let dims: Vec<Vec<u64>> = order
        .iter()
        .map(|&i| written_dims(&tensors[i].dims))
        .collect();
    let facts: Vec<TensorFacts> = order
        .iter()
        .zip(&dims)
        .map(|(&i, d)| TensorFacts {
            name: &tensors[i].name,
            dims: d,
            ggml_type: tensors[i].ggml_type,
        })
        .collect();
    let mut mix_opts = opts.mix.clone();
    mix_opts.has_imatrix = imatrix.is_some_and(|m| !m.is_empty());
    let choices = mix::choose_types(model, &mix_opts, &facts)?;

    let imatrix = imatrix.filter(|m| !m.is_empty());
    let mut problems = Vec::new();
    let mut requires_imatrix = false;
    let mut planned = Vec::with_capacity(order.len());
    for ((&src, dims), choice) in order.iter().zip(dims).zip(&choices) {
        let t = &tensors[src];
        let to = choice.ggml_type;
        let method = choose_method(t.ggml_type, to, opts.exact_grid);
        let problem = |message: String| Problem {
            tensor: Some(t.name.clone()),
            message,
        };
        let from_bytes = bytes_of(&dims, t.ggml_type).ok_or_else(|| MixError::Tensor {
            name: t.name.clone(),
            reason: format!("its shape {dims:?} does not fit {} blocks", t.ggml_type),
        })?;
        let to_bytes = match bytes_of(&dims, to) {
            Some(b) => b,
            None => {
                return Err(MixError::Tensor {
                    name: t.name.clone(),
                    reason: format!(
                        "rows of {} do not fit {to}'s blocks of {} (set by an explicit type option, which llama-quantize applies without a fallback)",
                        dims[0],
                        to.block_size()
                    ),
                })
            }
        };

        if choice.quantizable && choice.requires_imatrix && imatrix.is_none() {
            requires_imatrix = true;
            problems.push(problem(format!(
                "{to} needs an importance matrix (as in llama-quantize): pass --imatrix FILE"
            )));
        }
        let mut role = ImatrixRole::None;
        if method != Method::Copy {
            // An exact transcoding has no use for importance weights.
            if let Some(m) = imatrix.filter(|_| method != Method::Exact) {
                role = match m.get(&t.name) {
                    None => ImatrixRole::NotFound,
                    Some(w) => {
                        let ne2 = dims.get(2).copied().unwrap_or(1);
                        if w.len() as u64 == dims[0] * ne2 {
                            if ggml::imatrix_use(to) == ggml::ImatrixUse::Ignored {
                                ImatrixRole::Ignored
                            } else {
                                ImatrixRole::Used
                            }
                        } else {
                            if t.name != "token_embd.weight"
                                && t.name != "per_layer_token_embd.weight"
                            {
                                problems.push(problem(format!(
                                    "the importance matrix has {} weights for it, the tensor needs {} (row length x experts): was the matrix made for another model?",
                                    w.len(),
                                    dims[0] * ne2
                                )));
                            }
                            ImatrixRole::SizeMismatch
                        }
                    }
                };
            }
            if choice.requires_imatrix && imatrix.is_some() && role != ImatrixRole::Used {
                problems.push(problem(format!(
                    "{to} needs importance weights and the matrix has none for this tensor"
                )));
            }
            // A transcoding that keeps every value loses nothing to warn of.
            if t.ggml_type.is_quantized() && !opts.allow_requantize && !method.is_lossless() {
                problems.push(problem(format!(
                    "already quantized ({}): requantizing loses more than quantizing from 16 or 32 bits; pass --allow-requantize to do it anyway",
                    t.ggml_type
                )));
            }
            if !ggml::can_dequantize(t.ggml_type) {
                problems.push(problem(format!(
                    "qforge cannot decode {} tensors",
                    t.ggml_type
                )));
            }
            if !ggml::can_quantize(to) {
                problems.push(problem(format!(
                    "qforge cannot make {to} tensors yet (the {} mix asks for one here)",
                    opts.mix.file_type
                )));
            }
            let ne3 = dims.get(3).copied().unwrap_or(1);
            if ne3 > 1 && role == ImatrixRole::Used {
                problems.push(problem(
                    "4-D tensors with importance weights are not supported".into(),
                ));
            }
        }
        planned.push(PlannedTensor {
            name: t.name.clone(),
            dims,
            from: t.ggml_type,
            to,
            from_bytes,
            to_bytes,
            method,
            fallback: choice.fallback,
            imatrix: role,
            source: src,
            split: if opts.keep_split { t.split } else { 0 },
        });
    }
    let n_splits = planned.iter().map(|t| t.split + 1).max().unwrap_or(1);
    Ok(QuantPlan {
        file_type: opts.mix.file_type,
        n_fallback: planned.iter().filter(|t| t.fallback.is_some()).count(),
        tensors: planned,
        n_splits,
        problems,
        requires_imatrix,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> ModelFacts {
        ModelFacts {
            arch: "llama".into(),
            n_layer: 2,
            n_layer_nextn: 0,
            n_head: 4,
            n_head_kv: 2,
            n_expert: 0,
        }
    }

    fn src(name: &str, dims: &[u64], ty: GgmlType) -> SourceTensor {
        SourceTensor {
            name: name.into(),
            dims: dims.to_vec(),
            ggml_type: ty,
            split: 0,
            offset: 0,
        }
    }

    fn opts(ft: FileType) -> PlanOptions {
        PlanOptions {
            mix: MixOptions::new(ft),
            allow_requantize: false,
            keep_split: false,
            exact_grid: true,
        }
    }

    #[test]
    fn plans_in_llama_order_with_sizes_and_methods() {
        let tensors = vec![
            src("blk.1.attn_q.weight", &[256, 256], GgmlType::F16),
            src("blk.0.attn_q.weight", &[256, 256], GgmlType::F16),
            src("output_norm.weight", &[256], GgmlType::F32),
            src("token_embd.weight", &[256, 1000], GgmlType::F16),
        ];
        let p = plan_gguf(&model(), &tensors, &opts(FileType::Q8_0), None).unwrap();
        let names: Vec<&str> = p.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "output_norm.weight",
                "token_embd.weight",
                "blk.0.attn_q.weight",
                "blk.1.attn_q.weight"
            ]
        );
        assert_eq!(p.tensors[0].method, Method::Copy);
        assert_eq!(p.tensors[2].to, GgmlType::Q8_0);
        assert_eq!(p.tensors[2].to_bytes, 256 * 8 * 34);
        assert_eq!(p.tensors[2].from_bytes, 256 * 256 * 2);
        assert_eq!(p.tensors[2].source, 1);
        assert!(p.problems.is_empty());
    }

    #[test]
    fn requantizing_needs_permission() {
        let tensors = vec![src("blk.0.attn_q.weight", &[256, 4], GgmlType::Q4_1)];
        let p = plan_gguf(&model(), &tensors, &opts(FileType::Q8_0), None).unwrap();
        assert_eq!(p.problems.len(), 1);
        assert!(p.problems[0].message.contains("--allow-requantize"));
        let mut o = opts(FileType::Q8_0);
        o.allow_requantize = true;
        assert!(plan_gguf(&model(), &tensors, &o, None)
            .unwrap()
            .problems
            .is_empty());
        // The same type is a copy, never a requantization.
        let p = plan_gguf(&model(), &tensors, &opts(FileType::Q4_1), None).unwrap();
        assert_eq!(p.tensors[0].method, Method::Copy);
        assert!(p.problems.is_empty());
    }

    #[test]
    fn nesting_grids_are_exact_and_need_no_permission() {
        let tensors = vec![
            src("blk.0.attn_q.weight", &[256, 4], GgmlType::Q4_0),
            src("blk.0.attn_k.weight", &[256, 4], GgmlType::Q4_1),
        ];
        let p = plan_gguf(&model(), &tensors, &opts(FileType::Q8_0), None).unwrap();
        let method =
            |p: &QuantPlan, name: &str| p.tensors.iter().find(|t| t.name == name).unwrap().method;
        assert_eq!(method(&p, "blk.0.attn_q.weight"), Method::Exact);
        // Q4_1's offsets do not fit Q8_0's grid: searched, and lossy.
        assert_eq!(method(&p, "blk.0.attn_k.weight"), Method::GridSearch);
        assert_eq!(p.problems.len(), 1);
        assert_eq!(p.problems[0].tensor.as_deref(), Some("blk.0.attn_k.weight"));
        // Off: llama-quantize's way, which needs permission for both.
        let mut o = opts(FileType::Q8_0);
        o.exact_grid = false;
        let p = plan_gguf(&model(), &tensors, &o, None).unwrap();
        assert!(p.tensors.iter().all(|t| t.method == Method::ViaF32));
        assert_eq!(p.problems.len(), 2);
        assert_eq!(
            choose_method(GgmlType::F16, GgmlType::Q4K, true),
            Method::ViaF32
        );
        assert_eq!(
            choose_method(GgmlType::Q4K, GgmlType::F32, true),
            Method::Exact
        );
        assert_eq!(
            choose_method(GgmlType::Q4_1, GgmlType::IQ4NL, true),
            Method::ViaF32
        );
    }

    #[test]
    fn q2_k_s_without_imatrix_is_a_problem() {
        let tensors = vec![src("blk.0.attn_q.weight", &[256, 4], GgmlType::F16)];
        let p = plan_gguf(&model(), &tensors, &opts(FileType::Q2_K_S), None).unwrap();
        assert!(p.requires_imatrix);
        assert!(p.problems[0].message.contains("--imatrix"));
    }

    #[test]
    fn trailing_unit_dims_are_dropped_and_vectors_not_quantized() {
        let tensors = vec![src("blk.0.attn_q.weight", &[256, 1], GgmlType::F16)];
        let p = plan_gguf(&model(), &tensors, &opts(FileType::Q8_0), None).unwrap();
        assert_eq!(p.tensors[0].dims, [256]);
        assert_eq!(p.tensors[0].to, GgmlType::F16);
    }
}
