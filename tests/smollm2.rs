//! Round trips of the real SmolLM2-135M-Instruct Q4_1 GGUF through our
//! reader and writers. The model comes from the oracle setup
//! (tests/interop/setup.sh), so these tests exist only with
//! `--features interop`, and fail loudly when the model is missing.
#![cfg(feature = "interop")]

use std::fs;
use std::io::Write;
use std::path::PathBuf;

use qforge::formats::gguf::{
    merge_split, split_file, GgufFile, GgufModel, GgufWriter, SplitBy, TensorSpec,
};
use qforge::hashing::{sha256_bytes, sha256_file};

fn smollm2() -> PathBuf {
    let path = std::env::var_os("QFORGE_SMOLLM2_GGUF").map(PathBuf::from).expect(
        "QFORGE_SMOLLM2_GGUF is not set: run tests/interop/setup.sh and source tests/interop/oracles.env",
    );
    assert!(
        path.is_file(),
        "{} is missing: rerun tests/interop/setup.sh",
        path.display()
    );
    path
}

/// Writes `model` with our writer into memory, no keys added.
fn rewrite(model: &GgufFile) -> Vec<u8> {
    let specs: Vec<TensorSpec> = model.tensors().iter().map(TensorSpec::from).collect();
    let mut out = Vec::with_capacity(model.file_len() as usize);
    let mut w =
        GgufWriter::new(&mut out, model.header().version, model.metadata(), &specs).unwrap();
    for t in model.tensors() {
        w.write_tensor(&t.name, model.tensor_data(t)).unwrap();
    }
    w.finish().unwrap().flush().unwrap();
    out
}

#[test]
fn rewrite_is_byte_identical() {
    let path = smollm2();
    let model = GgufFile::open(&path).unwrap();
    let bytes = rewrite(&model);
    assert_eq!(bytes.len() as u64, model.file_len());
    assert_eq!(sha256_bytes(&bytes), sha256_file(&path).unwrap());
}

#[test]
fn split_in_three_and_merge_is_byte_identical() {
    let path = smollm2();
    let dir = tempfile::tempdir().unwrap();
    let model = GgufModel::open(&path).unwrap();
    let per_file = model.tensor_count().div_ceil(3);
    let parts = split_file(&model, &dir.path().join("smol"), SplitBy::Tensors(per_file)).unwrap();
    assert_eq!(parts.len(), 3);
    assert!(parts[2].ends_with("smol-00003-of-00003.gguf"));

    // Any part opens the whole set.
    let set = GgufModel::open(&parts[1]).unwrap();
    assert_eq!(set.files().len(), 3);
    assert_eq!(set.tensor_count(), model.tensor_count());

    let merged = dir.path().join("merged.gguf");
    merge_split(&set, &merged).unwrap();
    assert_eq!(sha256_file(&merged).unwrap(), sha256_file(&path).unwrap());
    // Nothing but the outputs is left in the folder: no temporary files.
    let mut names: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "merged.gguf",
            "smol-00001-of-00003.gguf",
            "smol-00002-of-00003.gguf",
            "smol-00003-of-00003.gguf"
        ]
    );
}

#[test]
fn split_by_size_keeps_each_part_under_the_limit() {
    let path = smollm2();
    let dir = tempfile::tempdir().unwrap();
    let model = GgufModel::open(&path).unwrap();
    let limit = 40_000_000;
    let parts = split_file(&model, &dir.path().join("s"), SplitBy::Bytes(limit)).unwrap();
    assert!(parts.len() >= 3, "{} parts", parts.len());
    for p in &parts {
        let f = GgufFile::open(p).unwrap();
        let data: u64 = f
            .tensors()
            .iter()
            .map(|t| t.size.next_multiple_of(32))
            .sum();
        assert!(
            data <= limit || f.tensors().len() == 1,
            "{}: {data} bytes",
            p.display()
        );
    }
    let merged = dir.path().join("m.gguf");
    merge_split(&GgufModel::open(&parts[0]).unwrap(), &merged).unwrap();
    assert_eq!(sha256_file(&merged).unwrap(), sha256_file(&path).unwrap());
}

fn llama_tool(name: &str) -> PathBuf {
    let bin = std::env::var_os("QFORGE_LLAMA_BIN").map(PathBuf::from).expect(
        "QFORGE_LLAMA_BIN is not set: run tests/interop/setup.sh and source tests/interop/oracles.env",
    );
    let path = bin.join(name);
    assert!(
        path.is_file(),
        "{} is missing: rerun tests/interop/setup.sh",
        path.display()
    );
    path
}

#[test]
fn our_split_is_byte_identical_to_llama_gguf_split() {
    let path = smollm2();
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(llama_tool("llama-gguf-split"))
        .args(["--split", "--split-max-tensors", "100"])
        .arg(&path)
        .arg(dir.path().join("ref"))
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let model = GgufModel::open(&path).unwrap();
    let ours = split_file(&model, &dir.path().join("ours"), SplitBy::Tensors(100)).unwrap();
    assert_eq!(ours.len(), 3);
    for (i, p) in ours.iter().enumerate() {
        let reference = dir.path().join(format!("ref-{:05}-of-00003.gguf", i + 1));
        assert_eq!(
            sha256_file(p).unwrap(),
            sha256_file(&reference).unwrap(),
            "split {} differs from llama-gguf-split's",
            i + 1
        );
    }

    // llama-gguf-split's set merges back through our reader and writer into
    // the original bytes (its merge tool instead keeps split.* keys).
    let merged = dir.path().join("merged.gguf");
    merge_split(
        &GgufModel::open(dir.path().join("ref-00002-of-00003.gguf")).unwrap(),
        &merged,
    )
    .unwrap();
    assert_eq!(sha256_file(&merged).unwrap(), sha256_file(&path).unwrap());
}
