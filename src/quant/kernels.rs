//! What the block kernels can do, as the planner asks it. Until the GGML
//! kernels (`quant_kernels::ggml`) are in this tree, the answers are
//! written out here from that module's contract.

use quant_kernels::GgmlType;

/// Types the GGML kernels quantize to (`ggml::QUANTIZABLE`).
const QUANTIZABLE: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2K,
    GgmlType::Q3K,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
    GgmlType::IQ4NL,
    GgmlType::IQ4XS,
];

/// Whether a tensor can be encoded as `ty`.
pub fn can_quantize(ty: GgmlType) -> bool {
    QUANTIZABLE.contains(&ty)
}

/// Whether a tensor of `ty` can be decoded to f32.
pub fn can_dequantize(ty: GgmlType) -> bool {
    can_quantize(ty) || matches!(ty, GgmlType::Q8_1 | GgmlType::Q8K)
}

/// How a type's quantizer uses importance weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImatrixUse {
    /// The bytes do not depend on them.
    Ignored,
    /// They steer the search when given.
    Optional,
}

/// How `ty`'s quantizer uses importance weights (`ggml_quantize_chunk`).
pub fn imatrix_use(ty: GgmlType) -> ImatrixUse {
    match ty {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 | GgmlType::Q8_0 => ImatrixUse::Ignored,
        _ => ImatrixUse::Optional,
    }
}
