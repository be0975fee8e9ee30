//! Writes the seed corpora of every fuzz target into `fuzz/corpus/TARGET/`
//! from the committed fixtures (fixtures/*) and small files built here the
//! way tests/malformed.rs builds its corpus. Seeds are kept under 64 KiB so
//! the fuzzer runs fast; the corpora are generated, never committed.
//!
//! Run: `cargo run --manifest-path fuzz/Cargo.toml --bin make_seeds`
//! (fuzz/run.sh does it when a corpus folder is missing).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use qforge::formats::gguf::{
    split_file, Array, GgufModel, GgufWriter, Metadata, SplitBy, TensorSpec, Value,
};
use qforge::formats::safetensors::{
    write_file, write_model, Dtype, SafetensorsModel, StTensorSpec,
};
use qforge::tokenizer::{hf_to_gguf_keys, HfToGgufOptions};
use qforge_fuzz::{encode, file, Entry};
use quant_kernels::GgmlType;

const MAX_SEED: usize = 64 << 10;

fn main() {
    let fuzz_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fixtures = fuzz_dir.join("../fixtures");
    let corpus = fuzz_dir.join("corpus");
    let models: Vec<PathBuf> = ["llama", "mistral", "qwen2", "qwen3", "gemma3", "phi3", "demo-llama"]
        .iter()
        .map(|m| fixtures.join(m))
        .collect();
    let work = tempfile::tempdir().unwrap();

    let mut seeds: BTreeMap<&str, Vec<(String, Vec<u8>)>> = BTreeMap::new();
    let mut add = |target: &'static str, name: String, bytes: Vec<u8>| {
        if bytes.len() <= MAX_SEED {
            seeds.entry(target).or_default().push((name, bytes));
        }
    };

    // Manifests: the committed examples and the malformed ones the parser
    // tests name errors for.
    for dir in [fuzz_dir.join("../manifests"), fuzz_dir.join("../tests/manifests")] {
        let mut files: Vec<PathBuf> = walk(&dir)
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect();
        files.sort();
        for p in files {
            let name = p.strip_prefix(&dir).unwrap().to_string_lossy().replace('/', "_");
            add("manifest", name, std::fs::read(&p).unwrap());
        }
    }

    // GGUF: tokenizer keys of each fixture plus a few small tensors of
    // several types; also each one split in two.
    for (i, m) in models.iter().enumerate() {
        let name = m.file_name().unwrap().to_string_lossy().into_owned();
        let tok = hf_to_gguf_keys(m, &HfToGgufOptions::default())
            .unwrap_or_else(|e| panic!("{}: {e}", m.display()));
        add("tokenizer_gguf", format!("{name}.gguf"), gguf(&tok, &[]));
        let mut meta = Metadata::new();
        meta.set("general.architecture", Value::String("llama".into()));
        meta.set("general.name", Value::String(name.clone()));
        meta.set("llama.context_length", Value::U32(128));
        meta.set("general.alignment", Value::U32(if i % 2 == 0 { 32 } else { 64 }));
        meta.set(
            "nested",
            Value::Array(Array::Array(vec![
                Array::I16(vec![1, -2]),
                Array::String(vec!["a".into()]),
            ])),
        );
        let tensors = small_tensors();
        let bytes = gguf(&meta, &tensors);
        add("gguf_header", format!("{name}.gguf"), bytes.clone());
        add("gguf_split", format!("{name}-single"), encode(&[file("m.gguf", bytes.clone())]));
        let mut both = meta.clone();
        for (k, v) in tok.iter() {
            both.set(k, v.clone());
        }
        add("gguf_header", format!("{name}-tok.gguf"), gguf(&both, &tensors));
        add("tokenizer_gguf", format!("{name}-model.gguf"), gguf(&both, &tensors));

        let src = work.path().join(format!("{name}.gguf"));
        fs::write(&src, &bytes).unwrap();
        let model = GgufModel::open(&src).unwrap();
        let parts = split_file(&model, &work.path().join(format!("{name}-split")), SplitBy::Tensors(2)).unwrap();
        let entries: Vec<Entry> = parts
            .iter()
            .map(|p| {
                let n = p.file_name().unwrap().to_string_lossy().replace(&format!("{name}-split"), "m");
                file(&n, fs::read(p).unwrap())
            })
            .collect();
        for p in &parts {
            add("gguf_header", p.file_name().unwrap().to_string_lossy().into_owned(), fs::read(p).unwrap());
        }
        add("gguf_split", format!("{name}-split"), encode(&entries));
    }
    add("gguf_header", "minimal.gguf".into(), qforge_fuzz::minimal_gguf());

    // safetensors: each fixture's tensors with their names and dtypes, shrunk
    // to small shapes; folders of them (single, sharded with an index, MLX).
    for m in &models {
        let name = m.file_name().unwrap().to_string_lossy().into_owned();
        let model = SafetensorsModel::open(m.join("model.safetensors")).unwrap();
        let specs: Vec<StTensorSpec> = model
            .tensors()
            .take(12)
            .map(|(t, _)| StTensorSpec {
                name: t.name.clone(),
                dtype: t.dtype,
                shape: t.shape.iter().map(|&d| d.min(3)).collect(),
            })
            .collect();
        let small = work.path().join(format!("{name}.safetensors"));
        let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
        write_file(&small, &specs, Some(&meta), |s| Ok(Cow::Owned(vec![7u8; s.size()?as usize]))).unwrap();
        let bytes = fs::read(&small).unwrap();
        add("safetensors_header", format!("{name}.safetensors"), bytes.clone());

        let config = fs::read(m.join("config.json")).unwrap();
        let tok_config = fs::read(m.join("tokenizer_config.json")).unwrap();
        add(
            "model_folder",
            format!("{name}-single"),
            encode(&[
                file("config.json", config.clone()),
                file("model.safetensors", bytes),
                file("tokenizer_config.json", tok_config),
            ]),
        );

        let sharded = work.path().join(format!("{name}-sharded"));
        fs::create_dir(&sharded).unwrap();
        let names = write_model(&sharded, &specs, None, Some(64), |s| {
            Ok(Cow::Owned(vec![1u8; s.size()? as usize]))
        })
        .unwrap();
        let mut entries = vec![file("config.json", config)];
        for n in names.iter().take(6) {
            entries.push(file(n, fs::read(sharded.join(n)).unwrap()));
        }
        add("model_folder", format!("{name}-sharded"), encode(&entries));
    }
    for m in &models {
        if let Ok(bytes) = fs::read(m.join("tokenizer.model")) {
            let name = m.file_name().unwrap().to_string_lossy().into_owned();
            add("sentencepiece", format!("{name}.model"), bytes.clone());
            add(
                "model_folder",
                format!("{name}-spm"),
                encode(&[file("tokenizer.model", bytes), file("tokenizer_config.json", b"{}".to_vec())]),
            );
        }
    }

    // MLX folders: packed layers at every supported width, overrides, and
    // the unquantized "format: mlx" marker.
    for (bits, group) in [(4u32, 32u64), (8, 64), (2, 128), (3, 32), (6, 64)] {
        let cols = group * 2;
        let packed = cols * u64::from(bits) / 32;
        let specs = vec![
            spec("model.layers.0.mlp.up_proj.weight", Dtype::U32, &[4, packed]),
            spec("model.layers.0.mlp.up_proj.scales", Dtype::F16, &[4, 2]),
            spec("model.layers.0.mlp.up_proj.biases", Dtype::F16, &[4, 2]),
            spec("model.norm.weight", Dtype::BF16, &[cols]),
        ];
        let path = work.path().join(format!("mlx-{bits}.safetensors"));
        let meta = BTreeMap::from([("format".to_string(), "mlx".to_string())]);
        write_file(&path, &specs, Some(&meta), |s| Ok(Cow::Owned(vec![3u8; s.size()? as usize]))).unwrap();
        let config = format!(
            r#"{{"model_type":"llama","quantization":{{"group_size":{group},"bits":{bits},"mode":"affine","model.layers.1.mlp.down_proj":false,"model.layers.2.mlp.up_proj":{{"group_size":64,"bits":8}}}}}}"#
        );
        add(
            "model_folder",
            format!("mlx-{bits}"),
            encode(&[file("config.json", config.into_bytes()), file("model.safetensors", fs::read(&path).unwrap())]),
        );
    }

    // Hostile names and links, as tests/malformed.rs has them.
    let st_ok = {
        let h = br#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
        let mut v = (h.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(h);
        v.extend_from_slice(&[0; 8]);
        v
    };
    add("safetensors_header", "ok.safetensors".into(), st_ok.clone());
    for shard in ["../outside.safetensors", "/etc/passwd", "a\nb.safetensors", "link.safetensors"] {
        let index = format!(r#"{{"metadata":{{"total_size":8}},"weight_map":{{"a":{shard:?}}}}}"#);
        add(
            "model_folder",
            format!("index-{}", shard.replace(['/', '\n', '.'], "_")),
            encode(&[
                file("model.safetensors.index.json", index.into_bytes()),
                file("model-00001-of-00001.safetensors", st_ok.clone()),
                Entry {
                    name: "link.safetensors".into(),
                    data: b"../outside.safetensors".to_vec(),
                    symlink: true,
                },
            ]),
        );
    }
    add(
        "gguf_split",
        "sibling-link".into(),
        encode(&[
            file("m-00001-of-00002.gguf", split_head(0, 2)),
            Entry {
                name: "m-00002-of-00002.gguf".into(),
                data: b"../outside.gguf".to_vec(),
                symlink: true,
            },
        ]),
    );

    for (target, files) in &seeds {
        let dir = corpus.join(target);
        fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in files {
            fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
        }
        println!("{target}: {} seeds", files.len());
    }
}

fn spec(name: &str, dtype: Dtype, shape: &[u64]) -> StTensorSpec {
    StTensorSpec {
        name: name.into(),
        dtype,
        shape: shape.to_vec(),
    }
}

/// Tensors of several GGML types, one or two blocks each.
fn small_tensors() -> Vec<(TensorSpec, Vec<u8>)> {
    [
        ("token_embd.weight", vec![32, 2], GgmlType::Q8_0),
        ("blk.0.attn_q.weight", vec![32, 1], GgmlType::Q4_0),
        ("blk.0.ffn_up.weight", vec![256], GgmlType::Q4K),
        ("output_norm.weight", vec![8], GgmlType::F32),
        ("blk.0.attn_norm.weight", vec![4, 2], GgmlType::F16),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (name, dims, ty))| {
        let spec = TensorSpec {
            name: name.into(),
            dims,
            ggml_type: ty,
        };
        let size = qforge::formats::gguf::tensor_size(&spec.dims, ty).unwrap() as usize;
        (spec, vec![i as u8 + 1; size])
    })
    .collect()
}

fn gguf(meta: &Metadata, tensors: &[(TensorSpec, Vec<u8>)]) -> Vec<u8> {
    let specs: Vec<TensorSpec> = tensors.iter().map(|(s, _)| s.clone()).collect();
    let mut out = Vec::new();
    let mut w = GgufWriter::new(&mut out, 3, meta, &specs).unwrap();
    for (s, data) in tensors {
        w.write_tensor(&s.name, data).unwrap();
    }
    w.finish().unwrap();
    out
}

/// A split header with no tensors (tests/malformed.rs's `split_head`).
fn split_head(no: u16, count: u16) -> Vec<u8> {
    let mut meta = Metadata::new();
    meta.set("split.no", Value::U16(no));
    meta.set("split.count", Value::U16(count));
    meta.set("split.tensors.count", Value::I32(0));
    gguf(&meta, &[])
}

/// Every file under `dir`, recursively (nothing when it does not exist).
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
