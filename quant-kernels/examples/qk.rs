//! Command-line driver of the GGML kernels for the interop tests and for
//! poking at files by hand. Files are raw little-endian arrays.
//!
//! ```text
//! qk quantize TYPE IN.f32 OUT.bin --n-per-row N [--imatrix W.f32]
//! qk dequantize TYPE IN.bin OUT.f32
//! qk quantize-act TYPE IN.f32 OUT.bin           (TYPE: an activation type)
//! qk vec-dot TYPE W.bin A.bin OUT.f32 --n N     (row i of W with row i of A)
//! qk mul-mat TYPE W.bin A.bin OUT.f32 --n N     (every row of W with every row
//!                                               of A, as ggml's mul_mat: OUT
//!                                               holds A's rows x W's rows)
//! ```

use std::process::ExitCode;

use quant_kernels::ggml;
use quant_kernels::GgmlType;

fn read_f32(path: &str) -> Result<Vec<f32>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    if bytes.len() % 4 != 0 {
        return Err(format!(
            "{path}: {} bytes is not a whole number of f32",
            bytes.len()
        ));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

fn write_f32(path: &str, x: &[f32]) -> Result<(), String> {
    let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(path, bytes).map_err(|e| format!("{path}: {e}"))
}

fn parse_type(name: &str) -> Result<GgmlType, String> {
    GgmlType::from_name(name).ok_or_else(|| format!("unknown ggml type {name}"))
}

/// `--key value` options.
type Opts<'a> = Vec<(&'a str, &'a str)>;

/// Splits `args` into positionals and `--key value` options.
fn split_args(args: &[String]) -> Result<(Vec<&str>, Opts<'_>), String> {
    let mut pos = Vec::new();
    let mut opts = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if let Some(key) = a.strip_prefix("--") {
            let v = it.next().ok_or_else(|| format!("--{key} needs a value"))?;
            opts.push((key, v.as_str()));
        } else {
            pos.push(a.as_str());
        }
    }
    Ok((pos, opts))
}

fn opt<'a>(opts: &[(&str, &'a str)], key: &str) -> Option<&'a str> {
    opts.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

fn usize_opt(opts: &[(&str, &str)], key: &str) -> Result<usize, String> {
    opt(opts, key)
        .ok_or_else(|| format!("--{key} is required"))?
        .parse()
        .map_err(|e| format!("--{key}: {e}"))
}

fn run(args: &[String]) -> Result<(), String> {
    let (pos, opts) = split_args(args)?;
    match pos.as_slice() {
        ["quantize", ty, input, output] => {
            let ty = parse_type(ty)?;
            let n_per_row = usize_opt(&opts, "n-per-row")?;
            let x = read_f32(input)?;
            let imatrix = opt(&opts, "imatrix").map(read_f32).transpose()?;
            let n_rows = x.len() / n_per_row.max(1);
            let mut y = vec![0u8; ggml::row_size(ty, n_per_row).map_err(|e| e.to_string())? * n_rows];
            ggml::quantize(ty, &x, n_per_row, imatrix.as_deref(), &mut y).map_err(|e| e.to_string())?;
            std::fs::write(output, y).map_err(|e| format!("{output}: {e}"))
        }
        ["dequantize", ty, input, output] => {
            let ty = parse_type(ty)?;
            let q = std::fs::read(input).map_err(|e| format!("{input}: {e}"))?;
            let n = q.len() / ty.type_size() as usize * ty.block_size() as usize;
            let mut y = vec![0f32; n];
            ggml::dequantize(ty, &q, &mut y).map_err(|e| e.to_string())?;
            write_f32(output, &y)
        }
        ["quantize-act", ty, input, output] => {
            let ty = parse_type(ty)?;
            let x = read_f32(input)?;
            let mut y = vec![0u8; ggml::row_size(ty, x.len()).map_err(|e| e.to_string())?];
            ggml::quantize_activations(ty, &x, &mut y).map_err(|e| e.to_string())?;
            std::fs::write(output, y).map_err(|e| format!("{output}: {e}"))
        }
        ["vec-dot", ty, weights, acts, output] => {
            let ty = parse_type(ty)?;
            let n = usize_opt(&opts, "n")?;
            let vdt = ggml::vec_dot_type(ty).ok_or(format!("{ty} has no dot product"))?;
            let w = std::fs::read(weights).map_err(|e| format!("{weights}: {e}"))?;
            let a = std::fs::read(acts).map_err(|e| format!("{acts}: {e}"))?;
            let (wb, ab) = (
                ggml::row_size(ty, n).map_err(|e| e.to_string())?,
                ggml::row_size(vdt, n).map_err(|e| e.to_string())?,
            );
            let rows = w.len() / wb;
            if a.len() != rows * ab {
                return Err(format!("{rows} weight rows but {} activation bytes", a.len()));
            }
            let mut out = Vec::with_capacity(rows);
            for r in 0..rows {
                out.push(
                    ggml::vec_dot(ty, &w[r * wb..(r + 1) * wb], &a[r * ab..(r + 1) * ab], n)
                        .map_err(|e| e.to_string())?,
                );
            }
            write_f32(output, &out)
        }
        ["mul-mat", ty, weights, acts, output] => {
            let ty = parse_type(ty)?;
            let n = usize_opt(&opts, "n")?;
            let vdt = ggml::vec_dot_type(ty).ok_or(format!("{ty} has no dot product"))?;
            let w = std::fs::read(weights).map_err(|e| format!("{weights}: {e}"))?;
            let a = std::fs::read(acts).map_err(|e| format!("{acts}: {e}"))?;
            let (wb, ab) = (
                ggml::row_size(ty, n).map_err(|e| e.to_string())?,
                ggml::row_size(vdt, n).map_err(|e| e.to_string())?,
            );
            let (rows, toks) = (w.len() / wb.max(1), a.len() / ab.max(1));
            let mut out = vec![0f32; rows * toks];
            ggml::gemm_batch(ty, n, &w, &a, &mut out, rows, toks).map_err(|e| e.to_string())?;
            write_f32(output, &out)
        }
        _ => Err("usage: qk quantize TYPE IN.f32 OUT.bin --n-per-row N [--imatrix W.f32]\n       qk dequantize TYPE IN.bin OUT.f32\n       qk quantize-act TYPE IN.f32 OUT.bin\n       qk vec-dot TYPE W.bin A.bin OUT.f32 --n N\n       qk mul-mat TYPE W.bin A.bin OUT.f32 --n N".into()),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qk: {e}");
            ExitCode::FAILURE
        }
    }
}
