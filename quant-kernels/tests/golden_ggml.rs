//! Golden vectors from ggml (fixtures/golden/ggml, written by its
//! generate.py from the oracle's libggml): every quantizer path, every
//! dequantizer, the activation quantizers and the dot products, checked
//! without Python.

use std::collections::BTreeMap;
use std::path::PathBuf;

use quant_kernels::ggml::{self, reference};
use quant_kernels::GgmlType;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/golden/ggml")
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn read_f32(name: &str) -> Vec<f32> {
    read(name)
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn fnv1a64(data: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    format!("{h:016x}")
}

fn f32_bytes(x: &[f32]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}

struct Golden {
    n_per_row: usize,
    rows: Vec<f32>,
    imatrix: Vec<f32>,
    random: Vec<u8>,
    /// (type, case) -> (length, hash)
    expect: BTreeMap<(String, String), (usize, String)>,
}

fn golden() -> Golden {
    let text = String::from_utf8(read("golden.txt")).unwrap();
    let mut expect = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let f: Vec<&str> = line.split_whitespace().collect();
        expect.insert(
            (f[0].to_string(), f[1].to_string()),
            (f[2].parse().unwrap(), f[3].to_string()),
        );
    }
    Golden {
        n_per_row: 512,
        rows: read_f32("rows.f32"),
        imatrix: read_f32("imatrix.f32"),
        random: read("random.bin"),
        expect,
    }
}

/// Compares `got` with the expectation; for block types with a committed
/// file, names the first differing block.
fn check(
    g: &Golden,
    ty: GgmlType,
    case: &str,
    got: &[u8],
    file: Option<&str>,
) -> Result<(), String> {
    let key = (ty.name().to_string(), case.to_string());
    let (len, hash) = g.expect.get(&key).ok_or(format!("no golden {key:?}"))?;
    if let Some(file) = file.filter(|f| dir().join(f).exists()) {
        let want = read(file);
        if let Some(i) = want.iter().zip(got).position(|(a, b)| a != b) {
            let bs = ty.type_size() as usize;
            return Err(format!(
                "{ty} {case}: byte {i} (block {}, offset {}) is {:#04x}, ggml wrote {:#04x}",
                i / bs,
                i % bs,
                got[i],
                want[i]
            ));
        }
    }
    if got.len() != *len || fnv1a64(got) != *hash {
        return Err(format!("{ty} {case}: output differs from ggml's (hash)"));
    }
    Ok(())
}

#[test]
fn quantize_matches_ggml_quantize_chunk() {
    let g = golden();
    let mut failures = Vec::new();
    for &ty in ggml::QUANTIZABLE {
        let bytes = ggml::row_size(ty, g.rows.len()).unwrap();
        let mut cases = vec![("quant", None, format!("{}.bin", ty.name()))];
        if ggml::imatrix_use(ty) != ggml::ImatrixUse::Ignored {
            cases.push((
                "quant_imatrix",
                Some(&g.imatrix[..]),
                format!("{}.imatrix.bin", ty.name()),
            ));
        }
        for (case, imatrix, file) in cases {
            // The public entry point (rayon + fast paths) ...
            let mut got = vec![0u8; bytes];
            ggml::quantize(ty, &g.rows, g.n_per_row, imatrix, &mut got).unwrap();
            if let Err(e) = check(&g, ty, case, &got, Some(&file)) {
                failures.push(e);
            }
            // ... and the scalar reference, row by row.
            let rb = ggml::row_size(ty, g.n_per_row).unwrap();
            let mut got_ref = vec![0u8; bytes];
            for (x, y) in g.rows.chunks(g.n_per_row).zip(got_ref.chunks_mut(rb)) {
                reference::quantize_row(ty, x, y, imatrix).unwrap();
            }
            if let Err(e) = check(&g, ty, case, &got_ref, Some(&file)) {
                failures.push(format!("reference: {e}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn dequantize_matches_ggml_to_float() {
    let g = golden();
    let mut failures = Vec::new();
    for &ty in ggml::QUANTIZABLE {
        // ggml's own bytes for the golden rows (F32/F16/BF16 from our
        // quantizer, checked above).
        let q = match ty {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => {
                let mut q = vec![0u8; ggml::row_size(ty, g.rows.len()).unwrap()];
                ggml::quantize(ty, &g.rows, g.n_per_row, None, &mut q).unwrap();
                q
            }
            _ => read(&format!("{}.bin", ty.name())),
        };
        let n_random = 2 * g.n_per_row;
        let random = &g.random[..ggml::row_size(ty, n_random).unwrap()];
        for (case, src, n) in [
            ("dequant", &q[..], g.rows.len()),
            ("dequant_random", random, n_random),
        ] {
            let mut got = vec![0f32; n];
            ggml::dequantize(ty, src, &mut got).unwrap();
            if let Err(e) = check(&g, ty, case, &f32_bytes(&got), None) {
                failures.push(e);
            }
            let mut got_ref = vec![0f32; n];
            reference::dequantize_row(ty, src, &mut got_ref).unwrap();
            if let Err(e) = check(&g, ty, case, &f32_bytes(&got_ref), None) {
                failures.push(format!("reference: {e}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn activations_match_ggml_cpu_from_float() {
    let g = golden();
    let mut failures = Vec::new();
    for ty in [
        GgmlType::Q8_0,
        GgmlType::Q8_1,
        GgmlType::Q8K,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::F32,
    ] {
        let mut got = vec![0u8; ggml::row_size(ty, g.rows.len()).unwrap()];
        ggml::quantize_activations(ty, &g.rows, &mut got).unwrap();
        if let Err(e) = check(&g, ty, "act", &got, Some(&format!("act_{}.bin", ty.name()))) {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn vec_dot_matches_ggml_cpu_vec_dot() {
    let g = golden();
    let n = g.n_per_row;
    let mut failures = Vec::new();
    for &ty in ggml::QUANTIZABLE {
        let vdt = ggml::vec_dot_type(ty).unwrap();
        let mut w = vec![0u8; ggml::row_size(ty, g.rows.len()).unwrap()];
        ggml::quantize(ty, &g.rows, n, None, &mut w).unwrap();
        let mut a = vec![0u8; ggml::row_size(vdt, g.rows.len()).unwrap()];
        ggml::quantize_activations(vdt, &g.rows, &mut a).unwrap();
        let (wb, ab) = (
            ggml::row_size(ty, n).unwrap(),
            ggml::row_size(vdt, n).unwrap(),
        );
        for r in 0..g.rows.len() / n {
            let got =
                ggml::vec_dot(ty, &w[r * wb..(r + 1) * wb], &a[r * ab..(r + 1) * ab], n).unwrap();
            let key = (ty.name().to_string(), format!("dot_{r}"));
            let want = f32::from_bits(u32::from_str_radix(&g.expect[&key].1, 16).unwrap());
            if got.to_bits() != want.to_bits() && !(got.is_nan() && want.is_nan()) {
                failures.push(format!(
                    "{ty} row {r}: {got:e} ({:08x}), ggml {want:e} ({:08x})",
                    got.to_bits(),
                    want.to_bits()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
