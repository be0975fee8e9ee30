//! A small driver over `quant_kernels::mlx` for the interop suite
//! (tests/interop/test_kernels_mlx.py): raw little-endian files in and
//! out, so Python can compare our bytes with mlx's without any FFI.
//!
//! ```text
//! mlxq quantize   mode=affine bits=4 group=64 dtype=float16 cols=576 in=X out=P
//!                 [variant=cpu|gpu] [global_scale=F] [threads=N]
//!     writes P.weight (u32), P.scales, P.biases (affine)
//! mlxq dequantize mode=affine bits=4 group=64 scales_dtype=float16 cols=576
//!                 weight=W scales=S [biases=B] out=Y [precision=f32|float32|float16|bfloat16]
//!                 [global_scale=F] [threads=N]
//!     writes Y as f32; precision f32 = DequantPrecision::F32, a dtype name =
//!     DequantPrecision::Mlx(dtype)
//! mlxq ggml-to-mlx type=q4_0|q4_1|q8_0 cols=N scales_dtype=float16 in=X out=P
//!     X: GGML blocks; writes P.weight, P.scales, P.biases
//! mlxq mlx-to-ggml type=q4_0|q4_1|q8_0 group=G cols=N scales_dtype=D
//!                  weight=W scales=S biases=B out=Y
//! Both transcoders print `inexact_groups=N` and exit 3 when N > 0.
//! ```

use std::collections::HashMap;
use std::process::ExitCode;

use half::{bf16, f16};
use quant_kernels::mlx::transcode::{self, GgmlBlock, Transcoded};
use quant_kernels::mlx::{
    self, DequantPrecision, MlxDtype, MlxInput, MlxMode, MlxParams, MlxVariant, ScaleBuf,
};

type Args = HashMap<String, String>;

fn arg<'a>(args: &'a Args, key: &str) -> &'a str {
    args.get(key)
        .unwrap_or_else(|| fail(&format!("missing argument {key}=...")))
}

fn num<T: std::str::FromStr>(args: &Args, key: &str) -> T {
    arg(args, key)
        .parse()
        .unwrap_or_else(|_| fail(&format!("{key}= is not a number")))
}

fn fail(msg: &str) -> ! {
    eprintln!("mlxq: {msg}");
    std::process::exit(2)
}

fn read(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| fail(&format!("{path}: {e}")))
}

fn write(path: &str, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap_or_else(|e| fail(&format!("{path}: {e}")))
}

fn u16s(b: &[u8]) -> impl Iterator<Item = u16> + '_ {
    b.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]))
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn u32s(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn dtype(name: &str) -> MlxDtype {
    match name {
        "float32" => MlxDtype::F32,
        "float16" => MlxDtype::F16,
        "bfloat16" => MlxDtype::BF16,
        _ => fail(&format!("unknown dtype {name}")),
    }
}

fn scale_buf(name: &str, bytes: &[u8]) -> ScaleBuf {
    match name {
        "float32" => ScaleBuf::F32(f32s(bytes)),
        "float16" => ScaleBuf::F16(u16s(bytes).map(f16::from_bits).collect()),
        "bfloat16" => ScaleBuf::BF16(u16s(bytes).map(bf16::from_bits).collect()),
        "uint8" => ScaleBuf::U8(bytes.to_vec()),
        _ => fail(&format!("unknown scales dtype {name}")),
    }
}

fn params(args: &Args) -> MlxParams {
    let mut p = match arg(args, "mode") {
        "affine" => MlxParams::affine(num(args, "bits"), num(args, "group")),
        "mxfp4" => MlxParams::mxfp4(),
        "mxfp8" => MlxParams::mxfp8(),
        "nvfp4" => MlxParams::nvfp4(None),
        other => fail(&format!("unknown mode {other}")),
    };
    if let Some(v) = args.get("variant") {
        p.variant = match v.as_str() {
            "cpu" => MlxVariant::Cpu,
            "gpu" => MlxVariant::Gpu,
            _ => fail("variant= is cpu or gpu"),
        };
    }
    if args.contains_key("global_scale") {
        p.global_scale = Some(num(args, "global_scale"));
    }
    p
}

fn quantize(args: &Args) {
    let bytes = read(arg(args, "in"));
    let cols: usize = num(args, "cols");
    let params = params(args);
    let (f, h, b): (Vec<f32>, Vec<f16>, Vec<bf16>);
    let input = match dtype(arg(args, "dtype")) {
        MlxDtype::F32 => {
            f = f32s(&bytes);
            MlxInput::F32(&f)
        }
        MlxDtype::F16 => {
            h = u16s(&bytes).map(f16::from_bits).collect();
            MlxInput::F16(&h)
        }
        MlxDtype::BF16 => {
            b = u16s(&bytes).map(bf16::from_bits).collect();
            MlxInput::BF16(&b)
        }
    };
    let q = mlx::quantize(input, cols, &params).unwrap_or_else(|e| fail(&e.to_string()));
    let out = arg(args, "out");
    let words: Vec<u8> = q.weight.iter().flat_map(|w| w.to_le_bytes()).collect();
    write(&format!("{out}.weight"), &words);
    write(&format!("{out}.scales"), &q.scales.to_le_bytes());
    if let Some(biases) = &q.biases {
        write(&format!("{out}.biases"), &biases.to_le_bytes());
    }
}

fn dequantize(args: &Args) {
    let params = params(args);
    let cols: usize = num(args, "cols");
    let weight = u32s(&read(arg(args, "weight")));
    let sd = arg(args, "scales_dtype");
    let scales = scale_buf(sd, &read(arg(args, "scales")));
    let biases =
        (params.mode == MlxMode::Affine).then(|| scale_buf(sd, &read(arg(args, "biases"))));
    let precision = match args.get("precision").map_or("f32", String::as_str) {
        "f32" => DequantPrecision::F32,
        other => DequantPrecision::Mlx(dtype(other)),
    };
    let out = mlx::dequantize(
        &weight,
        scales.as_scales(),
        biases.as_ref().map(ScaleBuf::as_scales),
        cols,
        &params,
        precision,
    )
    .unwrap_or_else(|e| fail(&e.to_string()));
    let bytes: Vec<u8> = out.iter().flat_map(|x| x.to_le_bytes()).collect();
    write(arg(args, "out"), &bytes);
}

fn ggml_kind(args: &Args) -> GgmlBlock {
    match arg(args, "type") {
        "q4_0" => GgmlBlock::Q4_0,
        "q4_1" => GgmlBlock::Q4_1,
        "q8_0" => GgmlBlock::Q8_0,
        other => fail(&format!("unknown GGML type {other}")),
    }
}

/// Prints the inexact count; exit code 3 when not lossless.
fn report<T>(t: &Transcoded<T>) -> ExitCode {
    println!("inexact_groups={}", t.inexact_groups);
    if t.is_exact() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    }
}

fn ggml_to_mlx(args: &Args) -> ExitCode {
    let blocks = read(arg(args, "in"));
    let t = transcode::ggml_to_mlx(
        ggml_kind(args),
        &blocks,
        num(args, "cols"),
        dtype(arg(args, "scales_dtype")),
    )
    .unwrap_or_else(|e| fail(&e.to_string()));
    let out = arg(args, "out");
    let q = &t.value;
    let words: Vec<u8> = q.weight.iter().flat_map(|w| w.to_le_bytes()).collect();
    write(&format!("{out}.weight"), &words);
    write(&format!("{out}.scales"), &q.scales.to_le_bytes());
    write(
        &format!("{out}.biases"),
        &q.biases.as_ref().unwrap().to_le_bytes(),
    );
    report(&t)
}

fn mlx_to_ggml(args: &Args) -> ExitCode {
    let sd = arg(args, "scales_dtype");
    let scales = scale_buf(sd, &read(arg(args, "scales")));
    let biases = scale_buf(sd, &read(arg(args, "biases")));
    let t = transcode::mlx_to_ggml(
        ggml_kind(args),
        &u32s(&read(arg(args, "weight"))),
        scales.as_scales(),
        biases.as_scales(),
        num(args, "cols"),
        num(args, "group"),
    )
    .unwrap_or_else(|e| fail(&e.to_string()));
    write(arg(args, "out"), &t.value);
    report(&t)
}

fn main() -> ExitCode {
    let mut argv = std::env::args().skip(1);
    let cmd = argv
        .next()
        .unwrap_or_else(|| fail("usage: see the source's header"));
    let args: Args = argv
        .map(|a| {
            let (k, v) = a
                .split_once('=')
                .unwrap_or_else(|| fail(&format!("argument {a:?} is not key=value")));
            (k.to_string(), v.to_string())
        })
        .collect();
    if let Some(n) = args.get("threads") {
        rayon::ThreadPoolBuilder::new()
            .num_threads(
                n.parse()
                    .unwrap_or_else(|_| fail("threads= is not a number")),
            )
            .build_global()
            .unwrap_or_else(|e| fail(&e.to_string()));
    }
    match cmd.as_str() {
        "quantize" => quantize(&args),
        "dequantize" => dequantize(&args),
        "ggml-to-mlx" => return ggml_to_mlx(&args),
        "mlx-to-ggml" => return mlx_to_ggml(&args),
        other => fail(&format!("unknown command {other}")),
    }
    ExitCode::SUCCESS
}
