//! The grid a quantized source's values lie on: per group of elements that
//! share a scale, the points `offset + step*j` for integer j. The grid
//! search aims the target's scales at these points.

use super::blocks::{KAffine, KSym, Legacy, QK, QK_K};
use super::nest::legacy_kind;
use crate::GgmlType;

/// One group's grid: its values are `offset + step*j` (rounded as the
/// source's dequantizer rounds them).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Lattice {
    pub step: f32,
    pub offset: f32,
}

/// The grids of one row of `ty` blocks: elements per group, one lattice per
/// group, and for two-level K-quants the super-block scales (each covering
/// 256 elements) from which the group steps are small multiples.
#[derive(Debug, Clone, Default)]
pub(crate) struct RowLattice {
    pub group: usize,
    pub groups: Vec<Lattice>,
    pub supers: Vec<f32>,
}

impl RowLattice {
    /// The lattices of the groups that overlap elements `start..start+len`.
    pub fn covering(&self, start: usize, len: usize) -> &[Lattice] {
        if self.group == 0 {
            return &[];
        }
        let a = start / self.group;
        let b = (start + len).div_ceil(self.group).min(self.groups.len());
        &self.groups[a.min(b)..b]
    }

    /// The super-block scale over element `start`, if the source has one.
    pub fn super_scale(&self, start: usize) -> Option<f32> {
        self.supers.get(start / QK_K).copied()
    }
}

/// True when [`row_lattice`] knows `ty`'s grid.
pub(crate) fn has_lattice(ty: GgmlType) -> bool {
    legacy_kind(ty).is_some()
        || matches!(
            ty,
            GgmlType::Q2K | GgmlType::Q3K | GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K
        )
}

/// The grids of a row of `ty` blocks (`src`: whole blocks). Types without a
/// uniform grid (floats, IQ4 codebooks) give an empty one.
pub(crate) fn row_lattice(ty: GgmlType, src: &[u8], out: &mut RowLattice) {
    out.groups.clear();
    out.supers.clear();
    out.group = 0;
    if let Some(kind) = legacy_kind(ty) {
        out.group = QK;
        for b in src.chunks_exact(kind.bytes()) {
            let l = Legacy::read(kind, b);
            let d = l.d.to_f32();
            out.groups.push(Lattice {
                step: d,
                offset: if kind.affine() { l.m.to_f32() } else { 0.0 },
            });
        }
        return;
    }
    match ty {
        GgmlType::Q3K | GgmlType::Q6K => {
            out.group = 16;
            let bytes = ty.type_size() as usize;
            for b in src.chunks_exact(bytes) {
                let k = if ty == GgmlType::Q3K {
                    KSym::read_q3_k(b)
                } else {
                    KSym::read_q6_k(b)
                };
                let d = k.d.to_f32();
                out.supers.push(d);
                for &s in &k.s {
                    out.groups.push(Lattice {
                        step: d * s as f32,
                        offset: 0.0,
                    });
                }
            }
        }
        GgmlType::Q2K | GgmlType::Q4K | GgmlType::Q5K => {
            let (group, n) = if ty == GgmlType::Q2K {
                (16, 16)
            } else {
                (32, 8)
            };
            out.group = group;
            let bytes = ty.type_size() as usize;
            for b in src.chunks_exact(bytes) {
                let k = match ty {
                    GgmlType::Q2K => KAffine::read_q2_k(b),
                    GgmlType::Q4K => KAffine::read_q4_k(b),
                    _ => KAffine::read_q5_k(b),
                };
                let (d, dmin) = (k.d.to_f32(), k.dmin.to_f32());
                out.supers.push(d);
                for g in 0..n {
                    out.groups.push(Lattice {
                        step: d * f32::from(k.sc[g]),
                        offset: -(dmin * f32::from(k.m[g])),
                    });
                }
            }
        }
        _ => {}
    }
}
