//! `--device`: conversions and `qforge quantize` runs quantized on the GPU
//! are byte-identical to the CPU's, through the CLI and through the
//! executor, on whatever adapter the machine has (in CI: Mesa's software Vulkan driver, llvmpipe, which
//! `--device gpu` accepts). These tests never skip: without an adapter
//! they fail, naming what to install.

#![cfg(feature = "gpu")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use qforge::convert::{gguf_tensor_plan, materialize, materialize_on, Encoding, ModelView};
use qforge::device::{Device, DeviceArg, Work};
use qforge::formats::hf::HfModel;
use quant_kernels::{ggml, GgmlType};

fn fixture(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name);
    assert!(
        dir.join("config.json").is_file(),
        "{} is missing: generate the fixtures (fixtures/generate.py)",
        dir.display()
    );
    dir
}

fn qforge(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_qforge"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qforge {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn convert(input: &Path, output: &Path, device: &str) -> String {
    let out = qforge(&[
        "convert",
        input.to_str().unwrap(),
        output.to_str().unwrap(),
        "--type",
        "q8_0",
        "--device",
        device,
    ]);
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn cli_q8_0_on_the_gpu_writes_the_cpu_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    // Permuted q/k rows (llama), shifted norms (gemma3), fused qkv (phi3),
    // and the larger trained model.
    for name in ["llama", "gemma3", "phi3", "demo-llama"] {
        let src = fixture(name);
        let cpu = tmp.path().join(format!("{name}-cpu.gguf"));
        let gpu = tmp.path().join(format!("{name}-gpu.gguf"));
        let auto = tmp.path().join(format!("{name}-auto.gguf"));
        let cpu_err = convert(&src, &cpu, "cpu");
        assert!(!cpu_err.contains("device"), "{cpu_err}");
        convert(&src, &gpu, "gpu");
        let auto_err = convert(&src, &auto, "auto");
        // auto keeps Q8_0 on the CPU (it never paid for its transfers on
        // the benchmark GPU) and says so in one line.
        let lines: Vec<&str> = auto_err
            .lines()
            .filter(|l| l.starts_with("device:"))
            .collect();
        assert_eq!(lines.len(), 1, "{auto_err}");
        assert!(lines[0].contains("CPU"), "{auto_err}");
        let want = std::fs::read(&cpu).unwrap();
        assert!(
            std::fs::read(&gpu).unwrap() == want,
            "{name}: the GPU's GGUF differs from the CPU's"
        );
        assert!(std::fs::read(&auto).unwrap() == want, "{name}: auto");
    }
}

/// `qforge quantize --device gpu` writes the CPU's bytes: the legacy types
/// on the llama fixture (from F16, and requantized from Q8_0), Q4_K_M
/// (Q4_K and Q6_K quantized on the GPU) on the trained fixture, whose rows
/// of 256 and 512 fit K-quant blocks. `auto` keeps quantizing on the CPU
/// and says so in one line.
#[test]
fn cli_quantize_on_the_gpu_writes_the_cpu_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let quantize = |input: &Path, ty: &str, device: &str, extra: &[&str]| -> (Vec<u8>, String) {
        let out = tmp.path().join(format!("out-{ty}-{device}.gguf"));
        let mut args = vec![
            "quantize",
            input.to_str().unwrap(),
            out.to_str().unwrap(),
            "--type",
            ty,
            "--device",
            device,
        ];
        args.extend_from_slice(extra);
        let o = qforge(&args);
        (
            std::fs::read(&out).unwrap(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    for (name, types) in [
        ("llama", &["Q8_0", "Q4_0", "Q4_1"][..]),
        ("demo-llama", &["Q4_K_M"][..]),
    ] {
        let f16 = tmp.path().join(format!("{name}-f16.gguf"));
        qforge(&[
            "convert",
            fixture(name).to_str().unwrap(),
            f16.to_str().unwrap(),
            "--type",
            "f16",
        ]);
        for &ty in types {
            let (cpu, cpu_err) = quantize(&f16, ty, "cpu", &[]);
            assert!(!cpu_err.contains("device"), "{cpu_err}");
            let (gpu, _) = quantize(&f16, ty, "gpu", &[]);
            assert!(
                gpu == cpu,
                "{name} {ty}: the GPU's GGUF differs from the CPU's"
            );
            let (auto, auto_err) = quantize(&f16, ty, "auto", &[]);
            let lines: Vec<&str> = auto_err
                .lines()
                .filter(|l| l.starts_with("device:"))
                .collect();
            assert_eq!(lines.len(), 1, "{auto_err}");
            assert!(lines[0].contains("CPU"), "{auto_err}");
            assert!(auto == cpu, "{name} {ty}: auto");
        }
    }
    // Requantizing: Q8_0 blocks decoded on the CPU, Q4_0 quantized on the GPU.
    let q8 = tmp.path().join("llama-q8.gguf");
    std::fs::copy(tmp.path().join("out-Q8_0-cpu.gguf"), &q8).unwrap();
    let (cpu, _) = quantize(&q8, "Q4_0", "cpu", &["--allow-requantize"]);
    let (gpu, _) = quantize(&q8, "Q4_0", "gpu", &["--allow-requantize"]);
    assert!(gpu == cpu, "requantized Q4_0 differs");
}

#[test]
fn cli_reports_the_device_and_refuses_unknown_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let out = qforge(&[
        "convert",
        fixture("qwen3").to_str().unwrap(),
        tmp.path().join("q.gguf").to_str().unwrap(),
        "--type",
        "q8_0",
        "--device",
        "gpu",
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let device = report["device"].as_str().unwrap();
    assert_ne!(device, "CPU", "--device gpu ran on {device}");
    // Nothing to quantize: the GPU is not used, and the note says so.
    let out = qforge(&[
        "convert",
        fixture("qwen3").to_str().unwrap(),
        tmp.path().join("f.gguf").to_str().unwrap(),
        "--type",
        "f16",
        "--device",
        "gpu",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("has a GPU kernel"), "{err}");
    let bad = Command::new(env!("CARGO_BIN_EXE_qforge"))
        .args(["convert", "a", "b.gguf", "--device", "cuda"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("auto, cpu, gpu"));
}

/// Every GPU type through the executor on the trained fixture's matrices
/// (rows of 256 and 512: K-quant blocks fit): the GPU's bytes equal the
/// CPU quantizer's on the exact values the executor feeds it (the F32 plan
/// of the same tensor: same row order, same shift).
#[test]
fn executor_quantizes_every_gpu_type_like_the_cpu() {
    let model = HfModel::open(fixture("demo-llama")).unwrap();
    let view = ModelView::from_hf(&model).unwrap();
    let work: Vec<Work> = [GgmlType::Q8_0]
        .iter()
        .map(|&ty| Work::QuantizeGgml { ty, values: 1 })
        .collect();
    let sel = Device::select(DeviceArg::Gpu, &work).unwrap_or_else(|e| {
        panic!(
            "the GPU tests need a Vulkan (Linux), Metal (macOS) or DX12 (Windows) adapter; \
             on Debian/Ubuntu CI install `mesa-vulkan-drivers` and `libvulkan1` (.ci/run \
             does): {e}"
        )
    });
    let gpu = sel.device;
    // Layer 0's matrices: q and k have their rows permuted. K-quants run
    // on two of them (llvmpipe runs their searches slowly).
    let layer0: Vec<usize> = (0..view.tensors.len())
        .filter(|&i| {
            let t = &view.tensors[i];
            t.name.starts_with("model.layers.0.") && t.shape.len() == 2
        })
        .collect();
    assert!(layer0.len() >= 7, "{layer0:?}");
    for ty in [
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q4K,
        GgmlType::Q6K,
    ] {
        let tensors = match ty {
            GgmlType::Q4K | GgmlType::Q6K => &layer0[..2],
            _ => &layer0[..],
        };
        for &i in tensors {
            let plan = gguf_tensor_plan(&view, i, ty).unwrap();
            assert_eq!(plan.to, Encoding::Ggml(ty), "{}", plan.name);
            let got = materialize_on(&view, &plan, true, &gpu).unwrap();
            let mut exact_plan = gguf_tensor_plan(&view, i, GgmlType::F32).unwrap();
            exact_plan.name.push_str(" (f32)");
            let exact = materialize(&view, &exact_plan, false).unwrap();
            let vals: Vec<f32> = exact
                .bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            let row = *plan.shape.last().unwrap() as usize;
            let mut want = vec![0u8; got.bytes.len()];
            ggml::quantize(ty, &vals, row, None, &mut want).unwrap();
            assert!(got.bytes == want, "{ty} {}: GPU bytes differ", plan.name);
            let err = got.error.expect("measured");
            assert!(err.rms > 0.0 && err.max_abs.is_finite(), "{ty}: {err:?}");
        }
    }
}

/// Without a desktop session (no `XDG_RUNTIME_DIR`: CI, servers) probing
/// for an adapter does not print libwayland's "XDG_RUNTIME_DIR is invalid"
/// (twice, from Mesa's device-select layer, which qforge switches off
/// there). The note naming the adapter proves the probe happened.
#[test]
fn probing_without_a_session_prints_only_our_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("q8.gguf");
    let o = Command::new(env!("CARGO_BIN_EXE_qforge"))
        .args(["convert", fixture("llama").to_str().unwrap()])
        .arg(&out)
        .args(["--type", "q8_0", "--device", "gpu"])
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("NODEVICE_SELECT")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(out.is_file());
    assert!(err.contains("--device gpu runs on"), "no probe: {err}");
    assert!(!err.contains("XDG_RUNTIME_DIR"), "{err}");
}
