//! Names from model files never lead out of their folder: every place a
//! name read from a file (or found in a model folder) becomes a path refuses
//! `..`, absolute paths, separators, NUL and control characters, and
//! symlinks that resolve outside the folder, with an error that names the
//! file and the reason. The Hugging Face cache's own layout (snapshot
//! symlinks into the repo's `blobs/`) still reads.
#![cfg(unix)]

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;

use qforge::formats::gguf::{Array, GgufWriter, Metadata, TensorSpec, Value};
use qforge::tokenizer::{gguf_to_hf, HfTokenizerFiles};
use quant_kernels::GgmlType;

fn qforge() -> Command {
    Command::new(env!("CARGO_BIN_EXE_qforge"))
}

/// `qforge inspect PATH`: exit code and stderr.
fn inspect(path: &Path) -> (Option<i32>, String) {
    let out = qforge().arg("inspect").arg(path).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_refused(path: &Path, expect: &str) {
    let (code, stderr) = inspect(path);
    assert_eq!(code, Some(1), "{}: {stderr}", path.display());
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains(expect), "expected {expect:?} in: {stderr}");
}

fn assert_reads(path: &Path) {
    let (code, stderr) = inspect(path);
    assert_eq!(code, Some(0), "{}: {stderr}", path.display());
}

/// A safetensors file with one F32 tensor of 2 elements.
fn st_file() -> Vec<u8> {
    let h = br#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    let mut v = (h.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(h);
    v.extend_from_slice(&[0; 8]);
    v
}

fn index(shard: &str) -> String {
    format!(
        r#"{{"metadata":{{}},"weight_map":{{"a":{}}}}}"#,
        serde_json::to_string(shard).unwrap()
    )
}

#[test]
fn shard_names_in_an_index_stay_in_the_folder() {
    let root = tempfile::tempdir().unwrap();
    fs::write(root.path().join("outside.safetensors"), st_file()).unwrap();
    for (i, (shard, expect)) in [
        ("../outside.safetensors", "not a plain file name"),
        ("/etc/passwd", "not a plain file name"),
        ("sub/model.safetensors", "not a plain file name"),
        ("..\\outside.safetensors", "not a plain file name"),
        ("..", "names a folder"),
        ("", "the name is empty"),
        ("a\0.safetensors", "NUL or control characters"),
        ("a\n.safetensors", "NUL or control characters"),
        ("\u{1b}[2J.safetensors", "NUL or control characters"),
        (
            "link.safetensors",
            "symlink to a file outside the model folder",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let dir = root.path().join(format!("m{i}"));
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("model.safetensors.index.json"), index(shard)).unwrap();
        symlink("../outside.safetensors", dir.join("link.safetensors")).unwrap();
        assert_refused(&dir, expect);
        // The refusal names the index the name came from.
        assert_refused(&dir, "model.safetensors.index.json");
    }
}

#[test]
fn symlinks_out_of_a_model_folder_are_refused_everywhere() {
    let root = tempfile::tempdir().unwrap();
    fs::write(root.path().join("outside.safetensors"), st_file()).unwrap();
    fs::write(
        root.path().join("outside.json"),
        br#"{"quantization":{"group_size":32,"bits":4}}"#,
    )
    .unwrap();

    // A folder without an index: the shards it lists.
    let listed = root.path().join("listed");
    fs::create_dir(&listed).unwrap();
    symlink(
        "../outside.safetensors",
        listed.join("model-00001-of-00001.safetensors"),
    )
    .unwrap();
    assert_refused(&listed, "symlink to a file outside the model folder");

    // model.safetensors itself.
    let single = root.path().join("single");
    fs::create_dir(&single).unwrap();
    symlink("../outside.safetensors", single.join("model.safetensors")).unwrap();
    assert_refused(&single, "symlink to a file outside the model folder");

    // config.json of an MLX folder.
    let mlx = root.path().join("mlx");
    fs::create_dir(&mlx).unwrap();
    fs::write(mlx.join("model.safetensors"), st_file()).unwrap();
    symlink("../outside.json", mlx.join("config.json")).unwrap();
    let err = qforge::formats::mlx::MlxModel::open(&mlx).unwrap_err();
    assert!(err.to_string().contains("config.json"), "{err}");
    assert!(
        err.to_string().contains("outside the model folder"),
        "{err}"
    );

    // Tokenizer side files.
    let tok = root.path().join("tok");
    fs::create_dir(&tok).unwrap();
    symlink("../outside.json", tok.join("tokenizer_config.json")).unwrap();
    let err = HfTokenizerFiles::read(&tok).unwrap_err();
    assert!(err.to_string().contains("tokenizer_config.json"), "{err}");
    assert!(
        err.to_string().contains("outside the model folder"),
        "{err}"
    );
    fs::remove_file(tok.join("tokenizer_config.json")).unwrap();
    fs::create_dir(tok.join("additional_chat_templates")).unwrap();
    symlink(
        "../../outside.json",
        tok.join("additional_chat_templates/tool_use.jinja"),
    )
    .unwrap();
    let err = HfTokenizerFiles::read(&tok).unwrap_err();
    assert!(err.to_string().contains("tool_use.jinja"), "{err}");

    // A symlink that stays inside the folder is fine.
    let inside = root.path().join("inside");
    fs::create_dir(&inside).unwrap();
    fs::write(inside.join("real.safetensors"), st_file()).unwrap();
    symlink("real.safetensors", inside.join("model.safetensors")).unwrap();
    assert_reads(&inside);
}

fn gguf_bytes(meta: &Metadata) -> Vec<u8> {
    let specs = [TensorSpec {
        name: "t".into(),
        dims: vec![8],
        ggml_type: GgmlType::F32,
    }];
    let mut out = Vec::new();
    let mut w = GgufWriter::new(&mut out, 3, meta, &specs).unwrap();
    w.write_tensor("t", &[0; 32]).unwrap();
    w.finish().unwrap();
    out
}

#[test]
fn gguf_split_parts_stay_in_the_folder() {
    let root = tempfile::tempdir().unwrap();
    // Part 1 holds the one tensor, part 2 none.
    let part = |no: u16| {
        let mut meta = Metadata::new();
        meta.set("split.no", Value::U16(no));
        meta.set("split.count", Value::U16(2));
        meta.set("split.tensors.count", Value::I32(1));
        if no == 0 {
            return gguf_bytes(&meta);
        }
        let mut out = Vec::new();
        GgufWriter::new(&mut out, 3, &meta, &[])
            .unwrap()
            .finish()
            .unwrap();
        out
    };
    fs::write(root.path().join("outside.gguf"), part(1)).unwrap();
    let dir = root.path().join("m");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("m-00001-of-00002.gguf"), part(0)).unwrap();
    symlink("../outside.gguf", dir.join("m-00002-of-00002.gguf")).unwrap();
    assert_refused(
        &dir.join("m-00001-of-00002.gguf"),
        "refusing path 'm-00002-of-00002.gguf': it is a symlink to a file outside the model folder",
    );
    // The same part inside the folder (here through a symlink that stays in
    // it) reads as one model.
    fs::remove_file(dir.join("m-00002-of-00002.gguf")).unwrap();
    fs::write(dir.join("part2"), part(1)).unwrap();
    symlink("part2", dir.join("m-00002-of-00002.gguf")).unwrap();
    assert_reads(&dir.join("m-00001-of-00002.gguf"));
}

#[test]
fn the_hub_cache_layout_still_reads() {
    // snapshots/COMMIT/* are symlinks to ../../blobs/ETAG, outside the
    // snapshot folder but inside the cache's repo folder.
    let root = tempfile::tempdir().unwrap();
    let repo = root.path().join("hub/models--org--name");
    let snap = repo.join("snapshots/0123456789abcdef0123456789abcdef01234567");
    fs::create_dir_all(&snap).unwrap();
    fs::create_dir_all(repo.join("blobs")).unwrap();
    let st = st_file();
    let b_header = br#"{"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    let mut st_b = (b_header.len() as u64).to_le_bytes().to_vec();
    st_b.extend_from_slice(b_header);
    st_b.extend_from_slice(&[0; 8]);
    let idx = r#"{"metadata":{},"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors"}}"#;
    for (name, etag, bytes) in [
        ("model-00001-of-00002.safetensors", "e1", st),
        ("model-00002-of-00002.safetensors", "e2", st_b),
        (
            "model.safetensors.index.json",
            "e3",
            idx.as_bytes().to_vec(),
        ),
        ("config.json", "e4", b"{}".to_vec()),
    ] {
        fs::write(repo.join("blobs").join(etag), bytes).unwrap();
        symlink(format!("../../blobs/{etag}"), snap.join(name)).unwrap();
    }
    assert_reads(&snap);
}

#[test]
fn chat_template_names_from_gguf_cannot_become_paths() {
    let base = || {
        let mut md = Metadata::new();
        md.set("tokenizer.ggml.model", Value::String("llama".into()));
        md.set(
            "tokenizer.ggml.tokens",
            Value::Array(Array::String(vec![
                "<unk>".into(),
                "<s>".into(),
                "</s>".into(),
                "a".into(),
            ])),
        );
        md.set(
            "tokenizer.ggml.scores",
            Value::Array(Array::F32(vec![0.0, 0.0, 0.0, -1.0])),
        );
        md
    };
    let mut ok = base();
    ok.set(
        "tokenizer.chat_template.tool_use",
        Value::String("{{ x }}".into()),
    );
    let out = gguf_to_hf(&ok).unwrap();
    let dir = tempfile::tempdir().unwrap();
    out.write_to_dir(dir.path().join("t")).unwrap();
    assert!(dir
        .path()
        .join("t/additional_chat_templates/tool_use.jinja")
        .is_file());

    for name in [
        "../../escape",
        "/tmp/escape",
        "a/b",
        "..",
        "",
        "a\nb",
        "x\u{1b}y",
    ] {
        let mut md = base();
        md.set(
            format!("tokenizer.chat_template.{name}"),
            Value::String("{{ x }}".into()),
        );
        let err = gguf_to_hf(&md).unwrap_err().to_string();
        assert!(err.contains("cannot be a file name"), "{name:?}: {err}");
    }
}
