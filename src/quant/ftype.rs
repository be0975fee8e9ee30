//! llama.cpp's file types (`llama_ftype`): the name of a file's quant mix,
//! stored as `general.file_type`, and the tensor type each mix starts from.

use std::fmt;
use std::str::FromStr;

use quant_kernels::GgmlType;

/// (id, llama-quantize name). Source: `llama_ftype` in llama.h.
const FILE_TYPES: &[(u32, &str)] = &[
    (0, "F32"),
    (1, "F16"),
    (2, "Q4_0"),
    (3, "Q4_1"),
    (7, "Q8_0"),
    (8, "Q5_0"),
    (9, "Q5_1"),
    (10, "Q2_K"),
    (11, "Q3_K_S"),
    (12, "Q3_K_M"),
    (13, "Q3_K_L"),
    (14, "Q4_K_S"),
    (15, "Q4_K_M"),
    (16, "Q5_K_S"),
    (17, "Q5_K_M"),
    (18, "Q6_K"),
    (19, "IQ2_XXS"),
    (20, "IQ2_XS"),
    (21, "Q2_K_S"),
    (22, "IQ3_XS"),
    (23, "IQ3_XXS"),
    (24, "IQ1_S"),
    (25, "IQ4_NL"),
    (26, "IQ3_S"),
    (27, "IQ3_M"),
    (28, "IQ2_S"),
    (29, "IQ2_M"),
    (30, "IQ4_XS"),
    (31, "IQ1_M"),
    (32, "BF16"),
    (36, "TQ1_0"),
    (37, "TQ2_0"),
    (38, "MXFP4_MOE"),
    (39, "NVFP4"),
    (40, "Q1_0"),
    (41, "Q2_0"),
];

/// The llama-quantize name of a `general.file_type` id.
pub fn file_type_name(id: u64) -> Option<&'static str> {
    FILE_TYPES
        .iter()
        .find(|(i, _)| u64::from(*i) == id)
        .map(|(_, n)| *n)
}

/// The `general.file_type` id of a llama-quantize type name.
pub fn file_type_id(name: &str) -> Option<u32> {
    FILE_TYPES
        .iter()
        .find(|(_, n)| n.eq_ignore_ascii_case(name))
        .map(|(i, _)| *i)
}

/// A quant mix llama-quantize can write: every `--type` name of its
/// `QUANT_OPTIONS` table except `COPY` (which `qforge convert` does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)] // the variants are llama-quantize's names
#[allow(non_camel_case_types)]
pub enum FileType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2_K,
    Q2_K_S,
    Q3_K_S,
    Q3_K_M,
    Q3_K_L,
    Q4_K_S,
    Q4_K_M,
    Q5_K_S,
    Q5_K_M,
    Q6_K,
    IQ2_XXS,
    IQ2_XS,
    IQ2_S,
    IQ2_M,
    IQ3_XXS,
    IQ3_XS,
    IQ3_S,
    IQ3_M,
    IQ1_S,
    IQ1_M,
    IQ4_NL,
    IQ4_XS,
    TQ1_0,
    TQ2_0,
    MXFP4_MOE,
    Q1_0,
    Q2_0,
}

/// (file type, llama_ftype id, default tensor type). Source: `llama_ftype`
/// in llama.h and `llama_ftype_get_default_type` in llama-quant.cpp.
const MIXES: &[(FileType, u32, GgmlType)] = {
    use FileType as F;
    use GgmlType as G;
    &[
        (F::F32, 0, G::F32),
        (F::F16, 1, G::F16),
        (F::Q4_0, 2, G::Q4_0),
        (F::Q4_1, 3, G::Q4_1),
        (F::Q8_0, 7, G::Q8_0),
        (F::Q5_0, 8, G::Q5_0),
        (F::Q5_1, 9, G::Q5_1),
        (F::Q2_K, 10, G::Q2K),
        (F::Q3_K_S, 11, G::Q3K),
        (F::Q3_K_M, 12, G::Q3K),
        (F::Q3_K_L, 13, G::Q3K),
        (F::Q4_K_S, 14, G::Q4K),
        (F::Q4_K_M, 15, G::Q4K),
        (F::Q5_K_S, 16, G::Q5K),
        (F::Q5_K_M, 17, G::Q5K),
        (F::Q6_K, 18, G::Q6K),
        (F::IQ2_XXS, 19, G::IQ2XXS),
        (F::IQ2_XS, 20, G::IQ2XS),
        (F::Q2_K_S, 21, G::Q2K),
        (F::IQ3_XS, 22, G::IQ3S),
        (F::IQ3_XXS, 23, G::IQ3XXS),
        (F::IQ1_S, 24, G::IQ1S),
        (F::IQ4_NL, 25, G::IQ4NL),
        (F::IQ3_S, 26, G::IQ3S),
        (F::IQ3_M, 27, G::IQ3S),
        (F::IQ2_S, 28, G::IQ2XS),
        (F::IQ2_M, 29, G::IQ2S),
        (F::IQ4_XS, 30, G::IQ4XS),
        (F::IQ1_M, 31, G::IQ1M),
        (F::BF16, 32, G::BF16),
        (F::TQ1_0, 36, G::TQ1_0),
        (F::TQ2_0, 37, G::TQ2_0),
        (F::MXFP4_MOE, 38, G::MXFP4),
        (F::Q1_0, 40, G::Q1_0),
        (F::Q2_0, 41, G::Q2_0),
    ]
};

/// llama-quantize's aliases (`QUANT_OPTIONS`): a bare K type means its `_M` mix.
const ALIASES: &[(&str, FileType)] = &[
    ("Q3_K", FileType::Q3_K_M),
    ("Q4_K", FileType::Q4_K_M),
    ("Q5_K", FileType::Q5_K_M),
];

impl FileType {
    /// Every mix, in llama_ftype id order.
    pub fn all() -> impl Iterator<Item = FileType> {
        MIXES.iter().map(|m| m.0)
    }

    fn row(self) -> &'static (FileType, u32, GgmlType) {
        MIXES
            .iter()
            .find(|m| m.0 == self)
            .expect("every FileType has a row")
    }

    /// The `general.file_type` value (`llama_ftype`).
    pub fn id(self) -> u32 {
        self.row().1
    }

    /// The type of every tensor the mix does not single out
    /// (`llama_ftype_get_default_type`).
    pub fn default_type(self) -> GgmlType {
        self.row().2
    }

    /// The name llama-quantize prints and `general.file_type` means.
    pub fn name(self) -> &'static str {
        file_type_name(u64::from(self.id())).expect("every mix id has a name")
    }

    /// The mix with this `general.file_type` id.
    pub fn from_id(id: u32) -> Option<FileType> {
        MIXES.iter().find(|m| m.1 == id).map(|m| m.0)
    }

    /// Parses a `--type` argument as llama-quantize does: a name in any
    /// case (`q4_k_m`), an alias (`Q4_K`), or the numeric id (`15`).
    pub fn parse(s: &str) -> Option<FileType> {
        if let Some(&(_, ft)) = ALIASES.iter().find(|(n, _)| n.eq_ignore_ascii_case(s)) {
            return Some(ft);
        }
        if let Some(ft) = FileType::all().find(|ft| ft.name().eq_ignore_ascii_case(s)) {
            return Some(ft);
        }
        s.trim().parse::<u32>().ok().and_then(FileType::from_id)
    }
}

impl fmt::Display for FileType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for FileType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FileType::parse(s).ok_or_else(|| {
            let names: Vec<&str> = FileType::all().map(FileType::name).collect();
            format!("unknown quant type '{s}'; known: {}", names.join(", "))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_ids_and_aliases() {
        for ft in FileType::all() {
            assert_eq!(FileType::parse(ft.name()), Some(ft));
            assert_eq!(FileType::parse(&ft.name().to_lowercase()), Some(ft));
            assert_eq!(FileType::parse(&ft.id().to_string()), Some(ft));
            assert_eq!(file_type_id(ft.name()), Some(ft.id()));
        }
        assert_eq!(FileType::parse("q4_k"), Some(FileType::Q4_K_M));
        assert_eq!(FileType::parse("Q3_K"), Some(FileType::Q3_K_M));
        assert_eq!(FileType::parse("COPY"), None);
        assert_eq!(FileType::parse("39"), None, "NVFP4 has no default type");
        assert_eq!(FileType::Q4_K_S.default_type(), GgmlType::Q4K);
        assert_eq!(FileType::IQ2_S.default_type(), GgmlType::IQ2XS);
    }
}
