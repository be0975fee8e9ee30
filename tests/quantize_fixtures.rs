//! `qforge quantize` on the fixture models: dry-run plans, refusals, split
//! outputs and thread-count independence. The byte comparisons against
//! llama-quantize and mlx-lm are in tests/interop/test_quantize_*.py.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use qforge::formats::gguf::GgufModel;

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

fn qforge(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qforge"))
        .args(args)
        .output()
        .unwrap()
}

fn run(args: &[&str]) -> Output {
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
    qforge(&args)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn dry_run_plans_64_wide_rows_with_llama_cpp_fallbacks() {
    let fx = fixture("mistral");
    let out = run(&[
        "quantize",
        path(&fx),
        "--type",
        "Q4_K_M",
        "--dry-run",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["type"], "Q4_K_M");
    let tensors = plan["tensors"].as_array().unwrap();
    let get = |name: &str| {
        tensors
            .iter()
            .find(|t| t["name"] == name)
            .unwrap_or_else(|| panic!("{name} is not in the plan"))
    };
    // Rows of 64 do not hold Q4_K's 256-element blocks: llama.cpp falls
    // back to Q5_0; norms stay F32.
    let q = get("blk.0.attn_q.weight");
    assert_eq!(
        (q["fallback_from"].as_str(), q["to"].as_str()),
        (Some("Q4_K"), Some("Q5_0"))
    );
    assert_eq!(get("blk.0.attn_norm.weight")["to"], "F32");
    assert!(plan["problems"].as_array().unwrap().is_empty());
}

#[test]
fn refusals_say_why_and_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = fixture("demo-llama");
    let q8 = tmp.path().join("q8.gguf");
    let out = run(&["quantize", path(&demo), path(&q8), "--type", "Q8_0"]);
    assert!(out.status.success(), "{}", stderr(&out));

    let never = tmp.path().join("never.gguf");
    // Requantizing needs --allow-requantize; one line per reason.
    let out = run(&["quantize", path(&q8), path(&never), "--type", "Q4_0"]);
    assert!(!out.status.success());
    let msg = stderr(&out);
    assert!(
        msg.contains("already quantized (Q8_0)") && msg.contains("--allow-requantize"),
        "{msg}"
    );
    assert!(msg.lines().count() <= 3, "{msg}");
    // Q2_K_S needs an importance matrix where rows hold Q2_K blocks.
    let out = run(&["quantize", path(&demo), path(&never), "--type", "Q2_K_S"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--imatrix"), "{}", stderr(&out));
    // The input is never overwritten.
    let out = run(&["quantize", path(&q8), path(&q8), "--type", "Q8_0"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("same file"), "{}", stderr(&out));
    // GGUF and MLX options do not mix; MLX settings mlx cannot load are refused.
    let out = run(&[
        "quantize",
        path(&demo),
        path(&never),
        "--type",
        "Q4_0",
        "--bits",
        "4",
    ]);
    assert!(!out.status.success());
    let out = run(&[
        "quantize",
        path(&demo),
        path(&never),
        "--bits",
        "4",
        "--group-size",
        "48",
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("32, 64 or 128"), "{}", stderr(&out));
    let out = run(&[
        "quantize",
        path(&demo),
        "--quant-predicate",
        "mixed_5_6",
        "--dry-run",
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("mixed_4_6"), "{}", stderr(&out));
    assert!(!never.exists());
}

#[test]
fn bytes_do_not_depend_on_the_thread_count() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = fixture("demo-llama");
    let outs: Vec<Vec<u8>> = ["1", "3"]
        .iter()
        .map(|threads| {
            let out = tmp.path().join(format!("t{threads}.gguf"));
            let o = run(&[
                "quantize",
                path(&demo),
                path(&out),
                "--type",
                "IQ4_XS",
                "--threads",
                threads,
            ]);
            assert!(o.status.success(), "{}", stderr(&o));
            std::fs::read(out).unwrap()
        })
        .collect();
    assert!(outs[0] == outs[1]);
}

#[test]
fn keep_split_writes_one_file_per_input_split() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = fixture("demo-llama");
    let f16 = tmp.path().join("f16.gguf");
    let o = run(&["convert", path(&demo), path(&f16), "--type", "f16"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let split = tmp.path().join("split.gguf");
    let o = run(&[
        "convert",
        path(&f16),
        path(&split),
        "--split-max-tensors",
        "16",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let first = tmp.path().join("split-00001-of-00003.gguf");
    let out = tmp.path().join("q.gguf");
    let o = run(&[
        "quantize",
        path(&first),
        path(&out),
        "--type",
        "Q6_K",
        "--keep-split",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let whole = GgufModel::open(tmp.path().join("q-00001-of-00003.gguf")).unwrap();
    assert_eq!(whole.files().len(), 3);
    let source = GgufModel::open(&first).unwrap();
    assert_eq!(whole.tensor_count(), source.tensor_count());
    for (a, b) in whole.files().iter().zip(source.files()) {
        let names = |f: &qforge::formats::gguf::GgufFile| {
            f.tensors()
                .iter()
                .map(|t| t.name.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(a), names(b));
    }
}

/// The values of every tensor of a GGUF file, dequantized.
fn gguf_values(p: &Path) -> Vec<(String, quant_kernels::GgmlType, Vec<f32>)> {
    let m = GgufModel::open(p).unwrap();
    m.tensors()
        .map(|(t, data)| {
            let n: u64 = t.dims.iter().product();
            let mut v = vec![0f32; n as usize];
            quant_kernels::ggml::dequantize(t.ggml_type, data, &mut v).unwrap();
            (t.name.clone(), t.ggml_type, v)
        })
        .collect()
}

#[test]
fn requantizing_into_a_nesting_grid_keeps_every_value_without_permission() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = fixture("demo-llama");
    let q4 = tmp.path().join("q4_0.gguf");
    // --pure: every matrix Q4_0 (the mix would make the embedding Q6_K).
    let out = run(&[
        "quantize",
        path(&demo),
        path(&q4),
        "--type",
        "Q4_0",
        "--pure",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));

    // The plan says which tensors keep their values.
    let out = run(&[
        "quantize",
        path(&q4),
        "--type",
        "Q8_0",
        "--dry-run",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let moved: Vec<&serde_json::Value> = plan["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["from"] == "Q4_0")
        .collect();
    assert!(!moved.is_empty());
    for t in &moved {
        assert_eq!(
            (t["method"].as_str(), t["lossless"].as_bool()),
            (Some("exact"), Some(true)),
            "{t}"
        );
    }
    assert!(plan["problems"].as_array().unwrap().is_empty(), "{plan}");
    let out = run(&["quantize", path(&q4), "--type", "Q8_0", "--dry-run"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("exact: every value kept"));

    // Written without --allow-requantize: nothing is lost.
    let q8 = tmp.path().join("q8_0.gguf");
    let out = run(&["quantize", path(&q4), path(&q8), "--type", "Q8_0", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["requantized"]["exact_tensors"], moved.len());
    let (src, dst) = (gguf_values(&q4), gguf_values(&q8));
    assert_eq!(src.len(), dst.len());
    for ((name, from, a), (name2, to, b)) in src.iter().zip(&dst) {
        assert_eq!(name, name2);
        if *from == quant_kernels::GgmlType::Q4_0 {
            assert_eq!(*to, quant_kernels::GgmlType::Q8_0, "{name}");
        }
        assert!(a.iter().zip(b).all(|(x, y)| x == y), "{name} changed");
    }

    // --exact-grid off is llama-quantize's way, which needs permission.
    let off = tmp.path().join("off.gguf");
    let out = run(&[
        "quantize",
        path(&q4),
        path(&off),
        "--type",
        "Q8_0",
        "--exact-grid",
        "off",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--allow-requantize"),
        "{}",
        stderr(&out)
    );
    let out = run(&[
        "quantize",
        path(&q4),
        path(&off),
        "--type",
        "Q8_0",
        "--exact-grid",
        "maybe",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("expected on or off"),
        "{}",
        stderr(&out)
    );
}
