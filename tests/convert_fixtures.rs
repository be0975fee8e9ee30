//! Conversions of the tiny fixture models (fixtures/<arch>): plans, name
//! maps and round trips at the library level, and the CLI's dry run. The
//! comparisons against convert_hf_to_gguf.py and the real clients are in
//! tests/interop/test_convert_gguf.py.

use std::path::{Path, PathBuf};
use std::process::Command;

use qforge::arch;
use qforge::convert::{
    gguf_metadata, hf_side_files, plan_gguf, plan_safetensors, write_gguf, write_safetensors,
    Encoding, FloatType, GgufMetadataOptions, GgufOutType, ModelView, NoProgress, PlanSource,
    WriteOptions,
};
use qforge::formats::gguf::GgufModel;
use qforge::formats::hf::HfModel;
use quant_kernels::GgmlType;

const ARCHS: [&str; 6] = ["llama", "mistral", "qwen2", "qwen3", "gemma3", "phi3"];

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

fn opts() -> WriteOptions<'static> {
    WriteOptions {
        measure: true,
        progress: &NoProgress,
    }
}

#[test]
fn every_fixture_tensor_maps_to_gguf_and_back() {
    for name in ARCHS {
        let model = HfModel::open(fixture(name)).unwrap();
        let view = ModelView::from_hf(&model).unwrap();
        assert_eq!(view.arch.name(), name);
        for t in &view.tensors {
            let g = view
                .arch
                .gguf_name(&t.name)
                .unwrap_or_else(|| panic!("{name}: {} has no GGUF name", t.name));
            let back = arch::by_gguf_arch(view.arch.gguf_arch())
                .unwrap()
                .hf_name(&g)
                .unwrap();
            assert_eq!(back, t.name, "{name}");
        }
    }
}

#[test]
fn q8_0_plan_follows_the_scripts_rules() {
    let model = HfModel::open(fixture("llama")).unwrap();
    let view = ModelView::from_hf(&model).unwrap();
    let plan = plan_gguf(&view, GgufOutType::Q8_0).unwrap();
    assert_eq!(plan.gguf_file_type(), Some(7));
    let names: Vec<&str> = plan.tensors.iter().map(|t| t.name.as_str()).collect();
    // The script's order: tensors sorted by name within the file.
    assert_eq!(names[0], "token_embd.weight");
    assert_eq!(names[1], "blk.0.attn_norm.weight");
    assert_eq!(*names.last().unwrap(), "output_norm.weight");
    for t in &plan.tensors {
        let expect = if t.shape.len() == 1 {
            Encoding::Float(FloatType::F32)
        } else {
            Encoding::Ggml(GgmlType::Q8_0)
        };
        assert_eq!(t.to, expect, "{}", t.name);
        assert_eq!(
            t.permutes(),
            t.name.contains("attn_q.") || t.name.contains("attn_k."),
            "{}",
            t.name
        );
        assert!(matches!(t.source, PlanSource::Tensor(_)));
    }
    // Norms widen BF16 to F32 exactly; matrices are quantized.
    assert!(plan.tensors[1].lossless);
    assert!(!plan.tensors[0].lossless);
}

#[test]
fn gemma_norms_shift_and_qwen_keeps_rows() {
    let model = HfModel::open(fixture("gemma3")).unwrap();
    let view = ModelView::from_hf(&model).unwrap();
    let plan = plan_gguf(&view, GgufOutType::BF16).unwrap();
    for t in &plan.tensors {
        let norm = t.name.ends_with("norm.weight");
        assert_eq!(t.shift, if norm { 1.0 } else { 0.0 }, "{}", t.name);
        assert!(!t.permutes());
    }
    let model = HfModel::open(fixture("qwen2")).unwrap();
    let view = ModelView::from_hf(&model).unwrap();
    let plan = plan_gguf(&view, GgufOutType::Auto).unwrap();
    // An F32 checkpoint: auto picks F16, as the script does.
    assert_eq!(plan.gguf_type, Some(GgmlType::F16));
    assert!(plan.tensors.iter().all(|t| !t.permutes()));
    assert!(plan.tensors.iter().any(|t| t.name == "blk.0.attn_q.bias"));
}

/// HF -> GGUF -> HF in the source's float type gives every tensor back
/// byte for byte, for every architecture (q/k rows go out of and back into
/// Hugging Face order, Gemma's norms get +1 and -1).
#[test]
fn hf_gguf_hf_round_trips_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ARCHS {
        let model = HfModel::open(fixture(name)).unwrap();
        let view = ModelView::from_hf(&model).unwrap();
        let plan = plan_gguf(&view, GgufOutType::Auto).unwrap();
        // Auto picks F16 for the F32 qwen2 fixture: ask for F32 there.
        let plan = if view.tensors[0].encoding == Encoding::Float(FloatType::F32) {
            plan_gguf(&view, GgufOutType::F32).unwrap()
        } else {
            plan
        };
        let (md, _) = gguf_metadata(&view, &plan, &GgufMetadataOptions::default()).unwrap();
        let gguf_path = tmp.path().join(format!("{name}.gguf"));
        write_gguf(&view, &plan, &md, None, &gguf_path, &opts()).unwrap();

        let g = GgufModel::open(&gguf_path).unwrap();
        let back_view = ModelView::from_gguf(&g).unwrap();
        let source_dtype = match view.tensors[0].encoding {
            Encoding::Float(f) => f,
            e => panic!("{e}"),
        };
        let back_plan = plan_safetensors(&back_view, Some(source_dtype)).unwrap();
        let out = tmp.path().join(format!("{name}-hf"));
        let side = hf_side_files(&back_view, &back_plan).unwrap();
        let report =
            write_safetensors(&back_view, &back_plan, &side, &out, 1 << 30, &opts()).unwrap();
        for t in &report.tensors {
            if let Some(e) = t.error {
                assert_eq!(e.max_abs, 0.0, "{name}: {} changed", t.name);
            }
        }
        let back = HfModel::open(&out).unwrap();
        let mut ours: Vec<_> = back
            .weights()
            .tensors()
            .map(|(i, d)| (i.name.clone(), i.shape.clone(), d.to_vec()))
            .collect();
        let mut theirs: Vec<_> = model
            .weights()
            .tensors()
            .map(|(i, d)| (i.name.clone(), i.shape.clone(), d.to_vec()))
            .collect();
        ours.sort();
        theirs.sort();
        assert_eq!(ours.len(), theirs.len(), "{name}");
        for (a, b) in ours.iter().zip(&theirs) {
            assert_eq!((&a.0, &a.1), (&b.0, &b.1), "{name}");
            assert!(a.2 == b.2, "{name}: {} differs after HF -> GGUF -> HF", a.0);
        }
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
        assert_eq!(config["dtype"], source_dtype.torch_name(), "{name}");
    }
}

#[test]
fn dry_run_prints_the_plan_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out_path = tmp.path().join("never.gguf");
    let out = Command::new(env!("CARGO_BIN_EXE_qforge"))
        .args(["convert"])
        .arg(fixture("phi3"))
        .arg(&out_path)
        .args(["--outtype", "Q8_0", "--dry-run", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out_path.exists());
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["architecture"], "phi3");
    let tensors = plan["tensors"].as_array().unwrap();
    let qkv = tensors
        .iter()
        .find(|t| t["name"] == "blk.0.attn_qkv.weight")
        .expect("phi3 keeps qkv fused");
    assert_eq!(qkv["to"], "Q8_0");
    assert_eq!(qkv["reorder_rows"], false);
}

#[test]
fn cli_refuses_what_it_cannot_do() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_qforge"))
            .arg("convert")
            .args(args)
            .output()
            .unwrap()
    };
    let fx = fixture("llama");
    let fx = fx.to_str().unwrap();
    let out = run(&[
        fx,
        tmp.path().join("x").to_str().unwrap(),
        "--to",
        "safetensors",
        "--type",
        "q8_0",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--dtype"));
    let out = run(&[
        fx,
        tmp.path().join("x.gguf").to_str().unwrap(),
        "--outtype",
        "q4_k",
    ]);
    assert!(!out.status.success());
    // An existing non-empty output folder is never replaced.
    let busy = tmp.path().join("busy");
    std::fs::create_dir(&busy).unwrap();
    std::fs::write(busy.join("keep.txt"), "mine").unwrap();
    let gguf = tmp.path().join("l.gguf");
    assert!(run(&[fx, gguf.to_str().unwrap()]).status.success());
    let out = run(&[
        gguf.to_str().unwrap(),
        busy.to_str().unwrap(),
        "--to",
        "safetensors",
    ]);
    assert!(!out.status.success());
    assert_eq!(
        std::fs::read_to_string(busy.join("keep.txt")).unwrap(),
        "mine"
    );
}

/// A small llama GGUF written by hand, for the error paths.
fn tiny_gguf(dir: &Path, keys: &[(&str, u32)], tensors: &[(&str, Vec<u64>)]) -> PathBuf {
    use qforge::formats::gguf::{GgufWriter, Metadata, TensorSpec, Value};
    let mut md = Metadata::new();
    md.set("general.architecture", Value::String("llama".into()));
    for (k, v) in keys {
        md.set(*k, Value::U32(*v));
    }
    let specs: Vec<TensorSpec> = tensors
        .iter()
        .map(|(n, dims)| TensorSpec {
            name: n.to_string(),
            dims: dims.clone(),
            ggml_type: GgmlType::F32,
        })
        .collect();
    let mut bytes = Vec::new();
    let mut w = GgufWriter::new(&mut bytes, 3, &md, &specs).unwrap();
    for s in &specs {
        let n: u64 = s.dims.iter().product();
        w.write_tensor(&s.name, &vec![0u8; n as usize * 4]).unwrap();
    }
    w.finish().unwrap();
    let path = dir.join(format!("t{}.gguf", keys.len() * 100 + tensors.len()));
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn bad_gguf_models_are_refused_with_a_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let full = [
        ("llama.block_count", 1),
        ("llama.embedding_length", 8),
        ("llama.feed_forward_length", 16),
        ("llama.attention.head_count", 3),
        ("llama.vocab_size", 4),
    ];
    let err = |path: &Path| {
        let m = GgufModel::open(path).unwrap();
        ModelView::from_gguf(&m).unwrap_err().to_string()
    };
    // A key the config needs is missing.
    let p = tiny_gguf(tmp.path(), &full[..1], &[("token_embd.weight", vec![8, 4])]);
    assert!(err(&p).contains("llama.embedding_length"), "{}", err(&p));
    // q rows that do not split into heads of two rotary halves.
    let p = tiny_gguf(tmp.path(), &full, &[("blk.0.attn_q.weight", vec![8, 8])]);
    assert!(err(&p).contains("rotary halves"), "{}", err(&p));
    // A tensor llama does not have.
    let p = tiny_gguf(
        tmp.path(),
        &full,
        &[("blk.0.ssm_conv1d.weight", vec![4, 4])],
    );
    assert!(err(&p).contains("no Hugging Face name"), "{}", err(&p));
}

#[test]
fn mlx_settings_and_broken_mlx_folders_are_refused_with_a_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_qforge"))
            .arg("convert")
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!stderr.contains("panicked"), "{stderr}");
        (out.status.code(), stderr)
    };
    let fx = fixture("llama");
    let fx = fx.to_str().unwrap();
    let out = |name: &str| tmp.path().join(name).to_str().unwrap().to_string();
    for (args, says) in [
        (vec!["--to", "mlx", "--bits", "7"], "bits"),
        (vec!["--to", "mlx", "--group-size", "48"], "group"),
        (vec!["--to", "gguf", "--bits", "4"], "MLX outputs"),
        (
            vec!["--to", "mlx", "--type", "q8_0"],
            "--type applies to GGUF",
        ),
    ] {
        let mut all = vec![fx, "never"];
        all.extend(args.iter().copied());
        let target = out("never");
        all[1] = &target;
        let (code, stderr) = run(&all);
        assert_eq!(code, Some(1), "{all:?}: {stderr}");
        assert!(stderr.contains(says), "{all:?}: {stderr}");
        assert!(!tmp.path().join("never").exists());
    }

    let mlx = out("mlx");
    let (code, stderr) = run(&[fx, &mlx, "--to", "mlx", "--bits", "4", "--group-size", "32"]);
    assert_eq!(code, Some(0), "{stderr}");
    let (code, stderr) = run(&[&mlx, &out("again"), "--to", "mlx"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("already an MLX folder"), "{stderr}");

    // Scales that do not fit their weight: a clear error, no output.
    let broken = tmp.path().join("broken");
    std::fs::create_dir(&broken).unwrap();
    for f in std::fs::read_dir(&mlx).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, broken.join(f.file_name().unwrap())).unwrap();
    }
    let config_path = broken.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
    config["quantization"]["group_size"] = 64.into();
    std::fs::write(&config_path, serde_json::to_vec(&config).unwrap()).unwrap();
    let gguf = out("broken.gguf");
    let (code, stderr) = run(&[
        broken.to_str().unwrap(),
        &gguf,
        "--tokenizer-pre",
        "llama-bpe",
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("group"), "{stderr}");
    assert!(!Path::new(&gguf).exists());

    // A truncated shard.
    let st = broken.join("model.safetensors");
    let len = std::fs::metadata(&st).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&st).unwrap();
    f.set_len(len / 2).unwrap();
    let (code, stderr) = run(&[broken.to_str().unwrap(), &gguf]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(!Path::new(&gguf).exists());
}
