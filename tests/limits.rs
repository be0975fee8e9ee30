//! Resource limits on hostile files: counts and lengths that claim more
//! than the file holds or more than a documented cap (README "Limits") are
//! refused before anything is allocated from them, and `qforge inspect`
//! stays small on every such file: the peak RSS of all the child runs,
//! read from `getrusage(RUSAGE_CHILDREN)`, stays under 64 MiB.
//!
//! One test in its own test binary: RUSAGE_CHILDREN covers every child this
//! process has waited for, so no other test may spawn children here.
#![cfg(target_os = "linux")]

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The bound on the peak resident memory of `qforge inspect` on any of the
/// files below (a valid tiny model takes about 10 MiB).
const RSS_BOUND_KIB: i64 = 64 * 1024;

#[derive(Clone, Default)]
struct Raw(Vec<u8>);

impl Raw {
    fn bytes(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    fn u32(self, v: u32) -> Self {
        self.bytes(&v.to_le_bytes())
    }
    fn u64(self, v: u64) -> Self {
        self.bytes(&v.to_le_bytes())
    }
    fn str(self, s: &str) -> Self {
        self.u64(s.len() as u64).bytes(s.as_bytes())
    }
}

fn gguf_head(n_tensors: u64, n_kv: u64) -> Raw {
    Raw::default()
        .bytes(b"GGUF")
        .u32(3)
        .u64(n_tensors)
        .u64(n_kv)
}

fn safetensors(header: &[u8]) -> Vec<u8> {
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(header);
    v
}

/// A file of `len` bytes that takes no disk space (a hole).
fn sparse(path: &Path, len: u64) {
    File::create(path).unwrap().set_len(len).unwrap();
}

fn peak_children_rss_kib() -> i64 {
    // SAFETY: getrusage only writes the struct it is given, which is a
    // zeroed, properly aligned libc::rusage on this stack frame.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage), 0);
        usage
    };
    usage.ru_maxrss // KiB on Linux
}

#[test]
fn hostile_sizes_are_refused_before_allocating_and_memory_stays_bounded() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    let mut cases: Vec<(&str, PathBuf, &str)> = Vec::new();
    let mut gguf = |name: &'static str, raw: Raw, expect: &'static str| {
        let path = dir.join(format!("{}.gguf", name.replace(' ', "_")));
        fs::write(&path, raw.0).unwrap();
        cases.push((name, path, expect));
    };

    gguf(
        "2^40 tensors",
        gguf_head(1 << 40, 0),
        "tensor count is 1099511627776, above the limit of 1048576",
    );
    gguf(
        "2^20+1 tensors",
        gguf_head((1 << 20) + 1, 0),
        "tensor count is 1048577, above the limit of 1048576",
    );
    gguf(
        "2^20 tensors in a short file",
        gguf_head(1 << 20, 0),
        "tensor count is 1048576, more than the 0 the rest of the file could hold",
    );
    gguf(
        "2^40 metadata pairs",
        gguf_head(0, 1 << 40),
        "metadata count is 1099511627776, above the limit",
    );
    gguf(
        "1 TB key",
        gguf_head(0, 1).u64(1 << 40).bytes(&[0; 16]),
        "string length is 1099511627776, above the limit of 1073741824",
    );
    gguf(
        "1 TB string value",
        gguf_head(0, 1).str("general.name").u32(8).u64(1 << 40),
        "string length is 1099511627776, above the limit",
    );
    gguf(
        "1 GiB string in a short file",
        gguf_head(0, 1).str("general.name").u32(8).u64(1 << 30),
        "file ends in the middle of a metadata string",
    );
    gguf(
        "2^30 u64 array in a short file",
        gguf_head(0, 1)
            .str("tokenizer.ggml.scores")
            .u32(9)
            .u32(10)
            .u64(1 << 30),
        "array length is 1073741824, more than the 0 the rest of the file could hold",
    );
    gguf(
        "2^40 array",
        gguf_head(0, 1)
            .str("tokenizer.ggml.tokens")
            .u32(9)
            .u32(8)
            .u64(1 << 40),
        "array length is 1099511627776, above the limit of 1073741824",
    );
    let mut nested = gguf_head(0, 1).str("deep").u32(9);
    for _ in 0..9 {
        nested = nested.u32(9).u64(1);
    }
    gguf(
        "arrays nested 9 deep",
        nested,
        "array nesting depth is 9, above the limit of 8",
    );
    gguf(
        "tensor with 2^40 x 2^40 elements",
        gguf_head(1, 0)
            .str("t")
            .u32(2)
            .u64(1 << 40)
            .u64(1 << 40)
            .u32(0)
            .u64(0),
        "more elements than an int64 can count",
    );
    gguf(
        "tensor of 2^60 bytes",
        gguf_head(1, 0)
            .str("t")
            .u32(1)
            .u64(1 << 58)
            .u32(0)
            .u64(0)
            .bytes(&[0; 64]),
        "runs past the end of the file",
    );

    let mut st = |name: &'static str, bytes: Vec<u8>, expect: &'static str| {
        let path = dir.join(format!("{}.safetensors", name.replace(' ', "_")));
        fs::write(&path, bytes).unwrap();
        cases.push((name, path, expect));
    };
    st(
        "st header of 2^40 bytes",
        safetensors(b"{").into_iter().skip(8).fold(
            (1u64 << 40).to_le_bytes().to_vec(),
            |mut v, b| {
                v.push(b);
                v
            },
        ),
        "header length is 1099511627776, above the limit of 100000000",
    );
    // Large headers are written piece by piece: the kernel records this
    // process's own peak RSS into each child's at exec, so the test must
    // stay small itself.
    let mut streamed = |name: &'static str,
                        head: &str,
                        item: &dyn Fn(usize) -> String,
                        n: usize,
                        tail: &str,
                        expect: &'static str| {
        let path = dir.join(format!("{}.safetensors", name.replace(' ', "_")));
        let body_len: usize =
            head.len() + tail.len() + (0..n).map(|i| item(i).len() + 1).sum::<usize>() - 1;
        let mut f = BufWriter::new(File::create(&path).unwrap());
        f.write_all(&(body_len as u64).to_le_bytes()).unwrap();
        f.write_all(head.as_bytes()).unwrap();
        for i in 0..n {
            if i > 0 {
                f.write_all(b",").unwrap();
            }
            f.write_all(item(i).as_bytes()).unwrap();
        }
        f.write_all(tail.as_bytes()).unwrap();
        f.flush().unwrap();
        cases.push((name, path, expect));
    };
    // 8 MiB of JSON that a generic JSON tree would make 16 times larger.
    streamed(
        "st shape of 4M dims",
        r#"{"a":{"dtype":"F32","shape":["#,
        &|_| "1".to_string(),
        4 << 20,
        r#"],"data_offsets":[0,4]}}"#,
        "more than 64 dimensions",
    );
    streamed(
        "st 2^17 metadata entries",
        r#"{"__metadata__":{"#,
        &|i| format!(r#""k{i}":"v""#),
        1 << 17,
        "}}",
        "more than 65536 entries",
    );

    // Side files over their caps are refused by size, unread.
    let idx = dir.join("big-index");
    fs::create_dir(&idx).unwrap();
    sparse(&idx.join("model.safetensors.index.json"), 1 << 40);
    cases.push((
        "1 TB index.json",
        idx,
        "file size in bytes is 1099511627776, above the limit of 67108864",
    ));
    let mlx = dir.join("big-config");
    fs::create_dir(&mlx).unwrap();
    sparse(&mlx.join("config.json"), 100 << 20);
    fs::write(mlx.join("model.safetensors"), safetensors(b"{}")).unwrap();
    cases.push((
        "100 MiB config.json",
        mlx.clone(),
        "above the limit of 67108864",
    ));

    let mut failures = Vec::new();
    // The case that raised the peak, and the peak after it.
    let mut peaks: Vec<(&str, i64)> = Vec::new();
    for (name, path, expect) in &cases {
        let out = Command::new(env!("CARGO_BIN_EXE_qforge"))
            .arg("inspect")
            .arg(path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.code() != Some(1) || !stderr.contains(expect) || stderr.contains("panicked") {
            failures.push(format!(
                "{name}: exit {:?}, stderr: {stderr}",
                out.status.code()
            ));
        }
        let peak = peak_children_rss_kib();
        if peaks.last().is_none_or(|&(_, p)| peak > p) {
            peaks.push((name, peak));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    let peak = peak_children_rss_kib();
    assert!(peak > 0, "getrusage reported no children");
    assert!(
        peak < RSS_BOUND_KIB,
        "peak RSS of qforge inspect on hostile files is {peak} KiB, bound {RSS_BOUND_KIB} KiB \
         (each case that raised it, with the peak after it: {peaks:?})"
    );
    eprintln!(
        "peak RSS over {} hostile files: {peak} KiB (bound {RSS_BOUND_KIB} KiB); raised by {peaks:?}",
        cases.len(),
    );
}
