//! Blocks as integers: the levels and scales a dequantizer combines, read
//! out of one block's bytes and written back. Each `value` function
//! evaluates an element the way ggml's `dequantize_row_*` does (same
//! operations, same order), so two blocks whose values compare equal here
//! dequantize to the same f32 values in ggml and gguf-py.
//!
//! Layouts (shared/FORMATS.md; ggml-quants.c):
//! - Q4_0 `d | qs[16]`, Q4_1 `d | m | qs[16]`: element j in the low nibble
//!   of byte j, element j+16 in its high nibble.
//! - Q5_0 `d | qh u32 | qs[16]`, Q5_1 `d | m | qh | qs[16]`: as Q4, bit j
//!   of qh is bit 4 of element j.
//! - Q8_0 `d | i8[32]`.
//! - Q2_K `scales[16] | qs[64] | d | dmin`, Q3_K `hmask[32] | qs[64] |
//!   scales[12] | d`: 2-bit planes over 128 elements.
//! - Q4_K `d | dmin | scales[12] | qs[128]`, Q5_K adds `qh[32]` before qs.
//! - Q6_K `ql[128] | qh[64] | scales[16] i8 | d`.

use half::f16;

use crate::ggml::reference::{get_scale_min_k4, put_scale_min_k4};

/// Elements of a legacy block.
pub(crate) const QK: usize = 32;
/// Elements of a K-quant super-block.
pub(crate) const QK_K: usize = 256;

fn f16_at(b: &[u8]) -> f16 {
    f16::from_bits(u16::from_le_bytes([b[0], b[1]]))
}

fn put_f16(b: &mut [u8], v: f16) {
    b[..2].copy_from_slice(&v.to_bits().to_le_bytes());
}

/// A 32-element block of Q4_0, Q4_1, Q5_0, Q5_1 or Q8_0: `q*d` for the
/// symmetric types (q signed: Q4_0 -8..=7, Q5_0 -16..=15, Q8_0
/// -128..=127), `q*d + m` for Q4_1 and Q5_1 (q 0..=15, 0..=31).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Legacy {
    pub d: f16,
    pub m: f16,
    pub q: [i32; QK],
}

/// The legacy layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LegacyKind {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
}

impl LegacyKind {
    /// Bytes per block.
    pub fn bytes(self) -> usize {
        match self {
            LegacyKind::Q4_0 => 18,
            LegacyKind::Q4_1 => 20,
            LegacyKind::Q5_0 => 22,
            LegacyKind::Q5_1 => 24,
            LegacyKind::Q8_0 => 34,
        }
    }

    /// True for `q*d + m`.
    pub fn affine(self) -> bool {
        matches!(self, LegacyKind::Q4_1 | LegacyKind::Q5_1)
    }

    /// The levels the stored integers can take, as `Legacy::q` holds them.
    pub fn range(self) -> (i32, i32) {
        match self {
            LegacyKind::Q4_0 => (-8, 7),
            LegacyKind::Q5_0 => (-16, 15),
            LegacyKind::Q8_0 => (-128, 127),
            LegacyKind::Q4_1 => (0, 15),
            LegacyKind::Q5_1 => (0, 31),
        }
    }

    /// What `q` is stored as (the unsigned code) for 4- and 5-bit types.
    fn bias(self) -> i32 {
        match self {
            LegacyKind::Q4_0 => 8,
            LegacyKind::Q5_0 => 16,
            _ => 0,
        }
    }

    fn header(self) -> usize {
        if self.affine() {
            4
        } else {
            2
        }
    }
}

impl Legacy {
    /// Reads one block of `kind` from `b`.
    pub fn read(kind: LegacyKind, b: &[u8]) -> Legacy {
        let d = f16_at(b);
        let m = if kind.affine() {
            f16_at(&b[2..])
        } else {
            f16::ZERO
        };
        let h = kind.header();
        let mut q = [0i32; QK];
        match kind {
            LegacyKind::Q8_0 => {
                for (v, &byte) in q.iter_mut().zip(&b[2..34]) {
                    *v = i32::from(byte as i8);
                }
            }
            LegacyKind::Q4_0 | LegacyKind::Q4_1 => {
                for j in 0..16 {
                    q[j] = i32::from(b[h + j] & 15) - kind.bias();
                    q[j + 16] = i32::from(b[h + j] >> 4) - kind.bias();
                }
            }
            LegacyKind::Q5_0 | LegacyKind::Q5_1 => {
                let qh = u32::from_le_bytes([b[h], b[h + 1], b[h + 2], b[h + 3]]);
                let qs = &b[h + 4..h + 20];
                for j in 0..16 {
                    let hi0 = ((qh >> j) & 1) as u8;
                    let hi1 = ((qh >> (j + 16)) & 1) as u8;
                    q[j] = i32::from((qs[j] & 15) | (hi0 << 4)) - kind.bias();
                    q[j + 16] = i32::from((qs[j] >> 4) | (hi1 << 4)) - kind.bias();
                }
            }
        }
        Legacy { d, m, q }
    }

    /// Writes the block as `kind`. Levels must lie in `kind.range()`.
    pub fn write(&self, kind: LegacyKind, b: &mut [u8]) {
        debug_assert!(self
            .q
            .iter()
            .all(|&v| (kind.range().0..=kind.range().1).contains(&v)));
        put_f16(b, self.d);
        if kind.affine() {
            put_f16(&mut b[2..], self.m);
        }
        let h = kind.header();
        let code = |j: usize| (self.q[j] + kind.bias()) as u8;
        match kind {
            LegacyKind::Q8_0 => {
                for (byte, &v) in b[2..34].iter_mut().zip(&self.q) {
                    *byte = v as i8 as u8;
                }
            }
            LegacyKind::Q4_0 | LegacyKind::Q4_1 => {
                for j in 0..16 {
                    b[h + j] = code(j) | (code(j + 16) << 4);
                }
            }
            LegacyKind::Q5_0 | LegacyKind::Q5_1 => {
                let mut qh = 0u32;
                for j in 0..16 {
                    let (c0, c1) = (code(j), code(j + 16));
                    b[h + 4 + j] = (c0 & 15) | ((c1 & 15) << 4);
                    qh |= u32::from(c0 >> 4) << j;
                    qh |= u32::from(c1 >> 4) << (j + 16);
                }
                b[h..h + 4].copy_from_slice(&qh.to_le_bytes());
            }
        }
    }

    /// Element `j` as ggml dequantizes it.
    #[cfg(test)]
    pub fn value(&self, kind: LegacyKind, j: usize) -> f32 {
        legacy_value(kind.affine(), self.d.to_f32(), self.m.to_f32(), self.q[j])
    }
}

/// `q*d` (symmetric) or `q*d + m` (affine), rounded as ggml rounds it.
#[cfg(test)]
pub(crate) fn legacy_value(affine: bool, d: f32, m: f32, q: i32) -> f32 {
    if affine {
        q as f32 * d + m
    } else {
        q as f32 * d
    }
}

/// A super-block of Q3_K or Q6_K: element i is `(d*s[i/16]) * q[i]` (Q3_K:
/// s -32..=31, q -4..=3; Q6_K: s -128..=127, q -32..=31).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct KSym {
    pub d: f16,
    pub s: [i32; 16],
    pub q: [i32; QK_K],
}

/// `(d*s) * q`, rounded as ggml's Q3_K and Q6_K dequantizers round it.
#[cfg(test)]
pub(crate) fn ksym_value(d: f32, s: i32, q: i32) -> f32 {
    d * s as f32 * q as f32
}

impl KSym {
    /// Element `i` as ggml dequantizes it.
    #[cfg(test)]
    pub fn value(&self, i: usize) -> f32 {
        ksym_value(self.d.to_f32(), self.s[i / 16], self.q[i])
    }

    /// Reads a Q6_K block.
    pub fn read_q6_k(b: &[u8]) -> KSym {
        let mut s = [0i32; 16];
        for (v, &byte) in s.iter_mut().zip(&b[192..208]) {
            *v = i32::from(byte as i8);
        }
        let mut q = [0i32; QK_K];
        for half in 0..2 {
            let ql = &b[64 * half..64 * half + 64];
            let qh = &b[128 + 32 * half..128 + 32 * half + 32];
            let out = &mut q[128 * half..128 * half + 128];
            for l in 0..32 {
                out[l] = i32::from((ql[l] & 0xF) | ((qh[l] & 3) << 4)) - 32;
                out[l + 32] = i32::from((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                out[l + 64] = i32::from((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                out[l + 96] = i32::from((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            }
        }
        KSym {
            d: f16_at(&b[208..]),
            s,
            q,
        }
    }

    /// Writes a Q6_K block (s in -128..=127, q in -32..=31).
    pub fn write_q6_k(&self, b: &mut [u8]) {
        debug_assert!(self.q.iter().all(|&v| (-32..=31).contains(&v)));
        debug_assert!(self.s.iter().all(|&v| (-128..=127).contains(&v)));
        let code = |i: usize| (self.q[i] + 32) as u8;
        let (ql, rest) = b.split_at_mut(128);
        let (qh, rest) = rest.split_at_mut(64);
        for half in 0..2 {
            let j = 128 * half;
            let ql = &mut ql[64 * half..64 * half + 64];
            let qh = &mut qh[32 * half..32 * half + 32];
            for k in 0..32 {
                let (l1, l2, l3, l4) = (
                    code(j + k),
                    code(j + k + 32),
                    code(j + k + 64),
                    code(j + k + 96),
                );
                ql[k] = (l1 & 0xF) | ((l3 & 0xF) << 4);
                ql[k + 32] = (l2 & 0xF) | ((l4 & 0xF) << 4);
                qh[k] = (l1 >> 4) | ((l2 >> 4) << 2) | ((l3 >> 4) << 4) | ((l4 >> 4) << 6);
            }
        }
        for (byte, &v) in rest[..16].iter_mut().zip(&self.s) {
            *byte = v as i8 as u8;
        }
        put_f16(&mut rest[16..], self.d);
    }

    /// Reads a Q3_K block.
    pub fn read_q3_k(b: &[u8]) -> KSym {
        let hm = &b[0..32];
        let scales = &b[96..108];
        let mut s = [0i32; 16];
        for (j, v) in s.iter_mut().enumerate() {
            let lo = if j < 8 {
                scales[j] & 0xF
            } else {
                scales[j - 8] >> 4
            };
            let hi = (scales[8 + j % 4] >> (2 * (j / 4))) & 3;
            *v = i32::from(lo | (hi << 4)) - 32;
        }
        let mut q = [0i32; QK_K];
        for n in 0..2 {
            let qs = &b[32 + 32 * n..64 + 32 * n];
            for (t, shift) in [0u32, 2, 4, 6].into_iter().enumerate() {
                let mask = 1u8 << (4 * n + t);
                for half in 0..2 {
                    for k in 0..16 {
                        let lo = i32::from((qs[16 * half + k] >> shift) & 3);
                        let hi = if hm[16 * half + k] & mask != 0 { 0 } else { 4 };
                        q[128 * n + 32 * t + 16 * half + k] = lo - hi;
                    }
                }
            }
        }
        KSym {
            d: f16_at(&b[108..]),
            s,
            q,
        }
    }
}

/// A super-block of Q2_K, Q4_K or Q5_K: element i of sub-block g (16
/// elements for Q2_K, 32 for Q4_K/Q5_K) is `(d*sc[g]) * q[i] - dmin*m[g]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct KAffine {
    pub d: f16,
    pub dmin: f16,
    /// Scales and mins per sub-block (8 used by Q4_K/Q5_K, 16 by Q2_K).
    pub sc: [u8; 16],
    pub m: [u8; 16],
    pub q: [u8; QK_K],
}

/// `(d*sc) * q - dmin*m`, rounded as ggml's Q2_K, Q4_K and Q5_K
/// dequantizers round it.
#[cfg(test)]
pub(crate) fn kaffine_value(d: f32, dmin: f32, sc: u8, m: u8, q: u8) -> f32 {
    d * f32::from(sc) * f32::from(q) - dmin * f32::from(m)
}

impl KAffine {
    /// Element `i` of a block whose sub-blocks have `group` elements.
    #[cfg(test)]
    pub fn value(&self, group: usize, i: usize) -> f32 {
        let g = i / group;
        kaffine_value(
            self.d.to_f32(),
            self.dmin.to_f32(),
            self.sc[g],
            self.m[g],
            self.q[i],
        )
    }

    fn scales_k4(b: &[u8]) -> ([u8; 16], [u8; 16]) {
        let (mut sc, mut m) = ([0u8; 16], [0u8; 16]);
        for j in 0..8 {
            (sc[j], m[j]) = get_scale_min_k4(j, &b[4..16]);
        }
        (sc, m)
    }

    /// Reads a Q4_K block.
    pub fn read_q4_k(b: &[u8]) -> KAffine {
        let (sc, m) = Self::scales_k4(b);
        let mut q = [0u8; QK_K];
        for n in 0..4 {
            let qs = &b[16 + 32 * n..48 + 32 * n];
            for k in 0..32 {
                q[64 * n + k] = qs[k] & 0xF;
                q[64 * n + 32 + k] = qs[k] >> 4;
            }
        }
        KAffine {
            d: f16_at(b),
            dmin: f16_at(&b[2..]),
            sc,
            m,
            q,
        }
    }

    /// Reads a Q5_K block.
    pub fn read_q5_k(b: &[u8]) -> KAffine {
        let (sc, m) = Self::scales_k4(b);
        let qh = &b[16..48];
        let mut q = [0u8; QK_K];
        for n in 0..4 {
            let ql = &b[48 + 32 * n..80 + 32 * n];
            let (u1, u2) = (1u8 << (2 * n), 2u8 << (2 * n));
            for k in 0..32 {
                let h1 = if qh[k] & u1 != 0 { 16 } else { 0 };
                let h2 = if qh[k] & u2 != 0 { 16 } else { 0 };
                q[64 * n + k] = (ql[k] & 0xF) + h1;
                q[64 * n + 32 + k] = (ql[k] >> 4) + h2;
            }
        }
        KAffine {
            d: f16_at(b),
            dmin: f16_at(&b[2..]),
            sc,
            m,
            q,
        }
    }

    /// Reads a Q2_K block.
    pub fn read_q2_k(b: &[u8]) -> KAffine {
        let (mut sc, mut m) = ([0u8; 16], [0u8; 16]);
        for j in 0..16 {
            sc[j] = b[j] & 0xF;
            m[j] = b[j] >> 4;
        }
        let mut q = [0u8; QK_K];
        for n in 0..2 {
            let qs = &b[16 + 32 * n..48 + 32 * n];
            for (t, shift) in [0u32, 2, 4, 6].into_iter().enumerate() {
                for half in 0..2 {
                    for k in 0..16 {
                        q[128 * n + 32 * t + 16 * half + k] = (qs[16 * half + k] >> shift) & 3;
                    }
                }
            }
        }
        KAffine {
            d: f16_at(&b[80..]),
            dmin: f16_at(&b[82..]),
            sc,
            m,
            q,
        }
    }

    fn put_head(&self, b: &mut [u8]) {
        debug_assert!(self.sc[..8].iter().chain(&self.m[..8]).all(|&v| v < 64));
        put_f16(b, self.d);
        put_f16(&mut b[2..], self.dmin);
        b[4..16].fill(0);
        for j in 0..8 {
            put_scale_min_k4(j, self.sc[j], self.m[j], &mut b[4..16]);
        }
    }

    /// Writes a Q4_K block (sc, m < 64; q < 16).
    pub fn write_q4_k(&self, b: &mut [u8]) {
        debug_assert!(self.q.iter().all(|&v| v < 16));
        self.put_head(b);
        for n in 0..4 {
            for k in 0..32 {
                b[16 + 32 * n + k] = self.q[64 * n + k] | (self.q[64 * n + 32 + k] << 4);
            }
        }
    }

    /// Writes a Q5_K block (sc, m < 64; q < 32).
    pub fn write_q5_k(&self, b: &mut [u8]) {
        debug_assert!(self.q.iter().all(|&v| v < 32));
        self.put_head(b);
        let (qh, ql) = b[16..176].split_at_mut(32);
        qh.fill(0);
        for n in 0..4 {
            let (u1, u2) = (1u8 << (2 * n), 2u8 << (2 * n));
            for k in 0..32 {
                let (l1, l2) = (self.q[64 * n + k], self.q[64 * n + 32 + k]);
                if l1 > 15 {
                    qh[k] |= u1;
                }
                if l2 > 15 {
                    qh[k] |= u2;
                }
                ql[32 * n + k] = (l1 & 0xF) | ((l2 & 0xF) << 4);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ggml::{dequantize, quantize};
    use crate::GgmlType;

    fn wave(n: usize, seed: f32) -> Vec<f32> {
        (0..n)
            .map(|i| ((i as f32 * 0.731 + seed).sin() * 3.0 + (i as f32 * 0.07).cos()) * 0.02)
            .collect()
    }

    fn blocks_of(ty: GgmlType, n: usize) -> (Vec<u8>, Vec<f32>) {
        let x = wave(n, 0.3);
        let mut b = vec![0u8; ty.row_size(n as u64).unwrap() as usize];
        quantize(ty, &x, n, None, &mut b).unwrap();
        let mut y = vec![0f32; n];
        dequantize(ty, &b, &mut y).unwrap();
        (b, y)
    }

    #[test]
    fn legacy_read_values_and_write_match_ggml() {
        for (ty, kind) in [
            (GgmlType::Q4_0, LegacyKind::Q4_0),
            (GgmlType::Q4_1, LegacyKind::Q4_1),
            (GgmlType::Q5_0, LegacyKind::Q5_0),
            (GgmlType::Q5_1, LegacyKind::Q5_1),
            (GgmlType::Q8_0, LegacyKind::Q8_0),
        ] {
            let (b, y) = blocks_of(ty, 256);
            for (blk, ys) in b.chunks_exact(kind.bytes()).zip(y.chunks_exact(QK)) {
                let l = Legacy::read(kind, blk);
                for (j, &v) in ys.iter().enumerate() {
                    assert_eq!(l.value(kind, j).to_bits(), v.to_bits(), "{ty} element {j}");
                }
                let mut back = vec![0u8; kind.bytes()];
                l.write(kind, &mut back);
                assert_eq!(back, blk, "{ty}");
            }
        }
    }

    #[test]
    fn k_blocks_read_values_and_write_match_ggml() {
        let (b, y) = blocks_of(GgmlType::Q6K, 512);
        for (blk, ys) in b.chunks_exact(210).zip(y.chunks_exact(QK_K)) {
            let k = KSym::read_q6_k(blk);
            for (i, &v) in ys.iter().enumerate() {
                assert_eq!(k.value(i).to_bits(), v.to_bits(), "Q6_K {i}");
            }
            let mut back = vec![0u8; 210];
            k.write_q6_k(&mut back);
            assert_eq!(back, blk);
        }
        let (b, y) = blocks_of(GgmlType::Q3K, 512);
        for (blk, ys) in b.chunks_exact(110).zip(y.chunks_exact(QK_K)) {
            let k = KSym::read_q3_k(blk);
            for (i, &v) in ys.iter().enumerate() {
                assert_eq!(k.value(i).to_bits(), v.to_bits(), "Q3_K {i}");
            }
        }
        let (b, y) = blocks_of(GgmlType::Q2K, 512);
        for (blk, ys) in b.chunks_exact(84).zip(y.chunks_exact(QK_K)) {
            let k = KAffine::read_q2_k(blk);
            for (i, &v) in ys.iter().enumerate() {
                assert_eq!(k.value(16, i).to_bits(), v.to_bits(), "Q2_K {i}");
            }
        }
        for (ty, bytes) in [(GgmlType::Q4K, 144), (GgmlType::Q5K, 176)] {
            let (b, y) = blocks_of(ty, 512);
            for (blk, ys) in b.chunks_exact(bytes).zip(y.chunks_exact(QK_K)) {
                let k = if ty == GgmlType::Q4K {
                    KAffine::read_q4_k(blk)
                } else {
                    KAffine::read_q5_k(blk)
                };
                for (i, &v) in ys.iter().enumerate() {
                    assert_eq!(k.value(32, i).to_bits(), v.to_bits(), "{ty} {i}");
                }
                let mut back = vec![0u8; bytes];
                if ty == GgmlType::Q4K {
                    k.write_q4_k(&mut back);
                } else {
                    k.write_q5_k(&mut back);
                }
                assert_eq!(back, blk, "{ty}");
            }
        }
    }
}
