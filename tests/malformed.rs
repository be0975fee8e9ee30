//! A corpus of malformed model files, each run through `qforge inspect`:
//! every one must give a clear error naming the file and what is wrong, a
//! non-zero exit, and no panic.
//!
//! The files are assembled here byte by byte (not with qforge's writers) so
//! that any field can be wrong.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Little-endian GGUF assembler that lets every field be wrong.
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
    fn pad_to(mut self, align: usize) -> Self {
        while !self.0.len().is_multiple_of(align) {
            self.0.push(0);
        }
        self
    }
    fn len(&self) -> usize {
        self.0.len()
    }
}

/// GGUF v3 header start: magic, version, counts.
fn head(n_tensors: u64, n_kv: u64) -> Raw {
    Raw::default()
        .bytes(b"GGUF")
        .u32(3)
        .u64(n_tensors)
        .u64(n_kv)
}

/// A kv pair `general.architecture = "llama"`.
fn kv_arch(r: Raw) -> Raw {
    r.str("general.architecture").u32(8).str("llama")
}

/// A tensor info: name, dims, type, offset.
fn tinfo(r: Raw, name: &str, dims: &[u64], ty: u32, offset: u64) -> Raw {
    let mut r = r.str(name).u32(dims.len() as u32);
    for d in dims {
        r = r.u64(*d);
    }
    r.u32(ty).u64(offset)
}

/// A valid file: one kv, two F32 tensors of 8 elements.
fn valid_gguf() -> Raw {
    let r = kv_arch(head(2, 1));
    let r = tinfo(r, "a.weight", &[8], 0, 0);
    let r = tinfo(r, "b.weight", &[8], 0, 32);
    r.pad_to(32).bytes(&[1u8; 32]).bytes(&[2u8; 32])
}

/// safetensors file from a header string and a data length.
fn st(header: &str, data_len: usize) -> Vec<u8> {
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(header.as_bytes());
    v.extend(std::iter::repeat_n(0u8, data_len));
    v
}

const ST_OK: &str = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;

struct Case {
    name: &'static str,
    /// Files to create: relative path and bytes (folder cases have several).
    files: Vec<(String, Vec<u8>)>,
    /// Path given to inspect, relative to the case folder.
    target: &'static str,
    /// Substring the error message must contain.
    expect: &'static str,
}

fn file(name: &str, bytes: Vec<u8>) -> Vec<(String, Vec<u8>)> {
    vec![(name.to_string(), bytes)]
}

fn gguf_case(name: &'static str, bytes: Vec<u8>, expect: &'static str) -> Case {
    Case {
        name,
        files: file("m.gguf", bytes),
        target: "m.gguf",
        expect,
    }
}

fn st_case(name: &'static str, bytes: Vec<u8>, expect: &'static str) -> Case {
    Case {
        name,
        files: file("m.safetensors", bytes),
        target: "m.safetensors",
        expect,
    }
}

fn corpus() -> Vec<Case> {
    let valid = valid_gguf();
    let header_end = valid.len() - 64;
    let mut cases = vec![
        gguf_case("empty", vec![], "not a GGUF file"),
        gguf_case("three bytes", b"GGU".to_vec(), "not a GGUF file"),
        gguf_case(
            "ggml magic",
            b"ggmlxxxxxxxxxxxxxxxxxxxx".to_vec(),
            "not a GGUF file",
        ),
        gguf_case(
            "magic only",
            b"GGUF".to_vec(),
            "file ends in the middle of the version",
        ),
        gguf_case(
            "version 1",
            Raw::default().bytes(b"GGUF").u32(1).u64(0).u64(0).0,
            "GGUF version 1 is not supported",
        ),
        gguf_case(
            "version 4",
            Raw::default().bytes(b"GGUF").u32(4).u64(0).u64(0).0,
            "GGUF version 4 is not supported",
        ),
        gguf_case(
            "big endian",
            Raw::default()
                .bytes(b"GGUF")
                .bytes(&3u32.to_be_bytes())
                .u64(0)
                .u64(0)
                .0,
            "big-endian",
        ),
        gguf_case(
            "cut in counts",
            Raw::default().bytes(b"GGUF").u32(3).u64(0).0,
            "the metadata count",
        ),
        gguf_case(
            "2^63 tensors",
            head(1 << 63, 0).0,
            "tensor count is 9223372036854775808",
        ),
        gguf_case(
            "2^63 kv pairs",
            head(0, 1 << 63).0,
            "metadata count is 9223372036854775808",
        ),
        gguf_case(
            "cut in key",
            head(0, 1).u64(20).bytes(b"general").0,
            "a metadata key",
        ),
        gguf_case(
            "key past EOF",
            head(0, 1).u64(1 << 62).bytes(&[0; 8]).0,
            "string length is 4611686018427387904",
        ),
        gguf_case(
            "1 TB string",
            head(0, 1).str("k").u32(8).u64(1 << 40).0,
            "string length is 1099511627776, above the limit",
        ),
        gguf_case(
            "unknown value type",
            head(0, 1).str("k").u32(99).u32(0).0,
            "unknown value type 99",
        ),
        gguf_case(
            "bool byte 7",
            head(0, 1).str("k").u32(7).bytes(&[7]).0,
            "bool byte 7",
        ),
        gguf_case(
            "2^63 array",
            head(0, 1).str("k").u32(9).u32(4).u64(1 << 63).0,
            "array length is 9223372036854775808",
        ),
        gguf_case(
            "array past EOF",
            head(0, 1).str("k").u32(9).u32(4).u64(1000).u32(1).0,
            "array length is 1000, more than",
        ),
        gguf_case(
            "arrays nested 9 deep",
            {
                let mut r = head(0, 1).str("k").u32(9);
                for _ in 0..9 {
                    r = r.u32(9).u64(1);
                }
                r.u32(4).u64(0).0
            },
            "array nesting depth",
        ),
        gguf_case(
            "empty key",
            head(0, 1).str("").u32(4).u32(1).0,
            "key is empty",
        ),
        gguf_case(
            "duplicate key",
            kv_arch(kv_arch(head(0, 2))).0,
            "duplicate metadata key 'general.architecture'",
        ),
        gguf_case(
            "alignment 48",
            head(0, 1).str("general.alignment").u32(4).u32(48).0,
            "not a power of two",
        ),
        gguf_case(
            "alignment 0",
            head(0, 1).str("general.alignment").u32(4).u32(0).0,
            "not a power of two",
        ),
        gguf_case(
            "alignment as u64",
            head(0, 1).str("general.alignment").u32(10).u64(32).0,
            "must be a u32",
        ),
        gguf_case(
            "invalid UTF-8 key",
            head(0, 1).u64(2).bytes(&[0xff, 0xfe]).u32(4).u32(1).0,
            "not valid UTF-8",
        ),
        gguf_case(
            "cut in tensor infos",
            kv_arch(head(1, 1)).str("a.weight").u32(1).0,
            "a tensor dimension",
        ),
        gguf_case(
            "5 dims",
            tinfo(head(1, 0), "t", &[1, 1, 1, 1, 1], 0, 0).0,
            "5 dimensions, at most 4",
        ),
        gguf_case(
            "negative dim",
            tinfo(head(1, 0), "t", &[1 << 63], 0, 0).0,
            "negative as ggml reads it",
        ),
        gguf_case(
            "element overflow",
            tinfo(head(1, 0), "t", &[1 << 32, 1 << 32], 0, 0).0,
            "more elements than an int64",
        ),
        gguf_case(
            "unknown tensor type",
            tinfo(head(1, 0), "t", &[32], 99, 0).pad_to(32).0,
            "unknown ggml tensor type id 99",
        ),
        gguf_case(
            "row not a block multiple",
            tinfo(head(1, 0), "t", &[31], 2, 0).pad_to(32).0,
            "not a multiple of the Q4_0 block size 32",
        ),
        gguf_case(
            "misaligned offset",
            tinfo(head(1, 0), "t", &[8], 0, 4)
                .pad_to(32)
                .bytes(&[0; 64])
                .0,
            "not a multiple of the alignment 32",
        ),
        gguf_case(
            "data past EOF",
            tinfo(head(1, 0), "t", &[8], 0, 1 << 40)
                .pad_to(32)
                .bytes(&[0; 32])
                .0,
            "runs past the end of the file",
        ),
        gguf_case(
            "overlapping tensors",
            tinfo(tinfo(head(2, 0), "a", &[16], 0, 0), "b", &[8], 0, 32)
                .pad_to(32)
                .bytes(&[0; 64])
                .0,
            "overlaps tensor 'a'",
        ),
        gguf_case(
            "duplicate tensor names",
            tinfo(tinfo(head(2, 0), "a", &[8], 0, 0), "a", &[8], 0, 32)
                .pad_to(32)
                .bytes(&[0; 64])
                .0,
            "duplicate tensor name 'a'",
        ),
        gguf_case(
            "64-byte tensor name",
            tinfo(head(1, 0), &"x".repeat(64), &[8], 0, 0)
                .pad_to(32)
                .bytes(&[0; 32])
                .0,
            "tensor name length is 64",
        ),
        gguf_case(
            "cut in tensor data",
            valid.0[..valid.len() - 10].to_vec(),
            "tensor 'b.weight'",
        ),
        gguf_case(
            "cut in padding",
            valid.0[..header_end - 3].to_vec(),
            "padding before the tensor data",
        ),
        st_case("st: empty", vec![], "not a GGUF file"),
        st_case(
            "st: 1 GB header",
            {
                let mut v = 1_000_000_000u64.to_le_bytes().to_vec();
                v.push(b'{');
                v
            },
            "header length is 1000000000, above the limit",
        ),
        st_case(
            "st: header past EOF",
            {
                let mut v = 500u64.to_le_bytes().to_vec();
                v.extend_from_slice(b"{\"a\":");
                v
            },
            "the JSON header",
        ),
        st_case("st: invalid JSON", st("{\"a\":{", 0), "invalid JSON"),
        st_case(
            "st: duplicate names",
            st(
                r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
                8,
            ),
            "duplicate entry 'a'",
        ),
        st_case(
            "st: hole",
            st(
                r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#,
                12,
            ),
            "leaves a hole",
        ),
        st_case(
            "st: overlap",
            st(
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
                8,
            ),
            "overlaps",
        ),
        st_case(
            "st: end before begin",
            st(
                r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}}"#,
                8,
            ),
            "end before they begin",
        ),
        st_case(
            "st: size mismatch",
            st(
                r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
                8,
            ),
            "needs 12",
        ),
        st_case(
            "st: unknown dtype",
            st(
                r#"{"a":{"dtype":"F7","shape":[1],"data_offsets":[0,4]}}"#,
                4,
            ),
            "unknown dtype 'F7'",
        ),
        st_case(
            "st: truncated data",
            st(ST_OK, 4),
            "cover 8 bytes of data but the file holds 4",
        ),
        st_case(
            "st: trailing bytes",
            st(ST_OK, 12),
            "cover 8 bytes of data but the file holds 12",
        ),
        st_case(
            "st: metadata not strings",
            st(r#"{"__metadata__":{"a":1}}"#, 0),
            "__metadata__ must map strings to strings",
        ),
        st_case(
            "st: shape overflow",
            st(
                r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,4]}}"#,
                4,
            ),
            "overflows",
        ),
        st_case(
            "st: unknown field",
            st(
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1}}"#,
                8,
            ),
            "unknown field",
        ),
    ];

    let index =
        |shard: &str| format!(r#"{{"metadata":{{}},"weight_map":{{"a":"{shard}"}}}}"#).into_bytes();
    for (name, shard, expect) in [
        (
            "index: ../ escape",
            "../outside.safetensors",
            "refusing path '../outside.safetensors'",
        ),
        (
            "index: absolute path",
            "/etc/passwd",
            "refusing path '/etc/passwd'",
        ),
        (
            "index: NUL in name",
            "a\\u0000.safetensors",
            "NUL or control characters",
        ),
        (
            "index: missing shard",
            "model-00002-of-00002.safetensors",
            "No such file",
        ),
    ] {
        cases.push(Case {
            name,
            files: vec![
                ("model.safetensors.index.json".into(), index(shard)),
                ("model-00001-of-00002.safetensors".into(), st(ST_OK, 8)),
                ("config.json".into(), b"{}".to_vec()),
            ],
            target: ".",
            expect,
        });
    }
    cases.push(Case {
        name: "index: tensor in another shard",
        files: vec![
            (
                "model.safetensors.index.json".into(),
                br#"{"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00001-of-00002.safetensors"}}"#.to_vec(),
            ),
            ("model-00001-of-00002.safetensors".into(), st(ST_OK, 8)),
        ],
        target: ".",
        expect: "does not hold it",
    });
    cases.push(Case {
        name: "index: invalid JSON",
        files: vec![
            (
                "model.safetensors.index.json".into(),
                b"{\"weight_map\":".to_vec(),
            ),
            ("model.safetensors".into(), st(ST_OK, 8)),
        ],
        target: ".",
        expect: "model.safetensors.index.json: invalid JSON",
    });

    let q = |bits: u32| {
        format!(r#"{{"model_type":"llama","quantization":{{"group_size":32,"bits":{bits}}}}}"#)
            .into_bytes()
    };
    let packed = r#"{"l.weight":{"dtype":"U32","shape":[1,4],"data_offsets":[0,16]},"l.scales":{"dtype":"F16","shape":[1,1],"data_offsets":[16,18]},"l.biases":{"dtype":"F16","shape":[1,1],"data_offsets":[18,20]}}"#;
    for (name, config, tensors, len, expect) in [
        ("mlx: 7 bits", q(7), packed, 20, "quantization.bits is 7"),
        (
            "mlx: quantization not an object",
            b"{\"quantization\":4}".to_vec(),
            packed,
            20,
            "must be an object",
        ),
        (
            "mlx: scales without biases",
            q(4),
            r#"{"l.weight":{"dtype":"U32","shape":[1,4],"data_offsets":[0,16]},"l.scales":{"dtype":"F16","shape":[1,1],"data_offsets":[16,18]}}"#,
            18,
            "'l.biases' is missing",
        ),
        (
            "mlx: weight not U32",
            q(4),
            r#"{"l.weight":{"dtype":"F32","shape":[1,4],"data_offsets":[0,16]},"l.scales":{"dtype":"F16","shape":[1,1],"data_offsets":[16,18]},"l.biases":{"dtype":"F16","shape":[1,1],"data_offsets":[18,20]}}"#,
            20,
            "packed weights are U32",
        ),
        (
            "mlx: shapes do not fit",
            q(8),
            packed,
            20,
            "shapes do not fit 8 bits",
        ),
    ] {
        cases.push(Case {
            name,
            files: vec![
                ("config.json".into(), config),
                ("model.safetensors".into(), st(tensors, len)),
            ],
            target: ".",
            expect,
        });
    }

    // Split sets.
    let split_head = |no: u16, count: u16| {
        head(0, 3)
            .str("split.no")
            .u32(2)
            .bytes(&no.to_le_bytes())
            .str("split.count")
            .u32(2)
            .bytes(&count.to_le_bytes())
            .str("split.tensors.count")
            .u32(5)
            .bytes(&0i32.to_le_bytes())
    };
    cases.push(Case {
        name: "split: missing part",
        files: file("m-00001-of-00002.gguf", split_head(0, 2).0),
        target: "m-00001-of-00002.gguf",
        expect: "m-00002-of-00002.gguf: No such file",
    });
    cases.push(Case {
        name: "split: wrong split.no",
        files: vec![
            ("m-00001-of-00002.gguf".into(), split_head(0, 2).0),
            ("m-00002-of-00002.gguf".into(), split_head(0, 2).0),
        ],
        target: "m-00001-of-00002.gguf",
        expect: "split.no is Some(0), expected 1",
    });
    cases.push(Case {
        name: "split: name without part numbers",
        files: file("m.gguf", split_head(0, 2).0),
        target: "m.gguf",
        expect: "the other files cannot be found",
    });
    cases
}

fn qforge() -> Command {
    Command::new(env!("CARGO_BIN_EXE_qforge"))
}

fn write_case(root: &Path, i: usize, case: &Case) -> PathBuf {
    let dir = root.join(format!("case{i:02}"));
    fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in &case.files {
        fs::write(dir.join(name), bytes).unwrap();
    }
    dir.join(case.target)
}

#[test]
fn every_malformed_file_fails_cleanly() {
    let root = tempfile::tempdir().unwrap();
    let cases = corpus();
    assert!(
        cases.len() >= 30,
        "the corpus has only {} files",
        cases.len()
    );
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let target = write_case(root.path(), i, case);
        let out = qforge().arg("inspect").arg(&target).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let shown_name = case.files[0].0.as_str();
        let problems: Vec<&str> = [
            (out.status.code() != Some(1), "exit code is not 1"),
            (stderr.contains("panicked"), "it panicked"),
            (!stderr.starts_with("error: "), "no 'error: ' report"),
            (
                !stderr.contains(case.expect),
                "the expected message is missing",
            ),
            (
                !stderr.contains(&format!("case{i:02}")) && !stderr.contains(shown_name),
                "the file is not named",
            ),
        ]
        .into_iter()
        .filter(|(bad, _)| *bad)
        .map(|(_, why)| why)
        .collect();
        if !problems.is_empty() {
            failures.push(format!(
                "{} ({problems:?}): exit {:?}, stderr: {stderr}",
                case.name,
                out.status.code()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn symlinked_shard_outside_the_folder_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let outside = root.path().join("outside.safetensors");
    fs::write(&outside, st(ST_OK, 8)).unwrap();
    let model = root.path().join("model");
    fs::create_dir(&model).unwrap();
    std::os::unix::fs::symlink(&outside, model.join("model-00001-of-00001.safetensors")).unwrap();
    fs::write(
        model.join("model.safetensors.index.json"),
        br#"{"weight_map":{"a":"model-00001-of-00001.safetensors"}}"#,
    )
    .unwrap();
    let out = qforge().arg("inspect").arg(&model).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("symlink to a file outside the model folder"),
        "{stderr}"
    );
}

#[test]
fn the_valid_base_file_is_accepted() {
    // Guards the corpus: its base file must be valid, or every case above
    // could be failing for the same unrelated reason.
    let root = tempfile::tempdir().unwrap();
    let path = root.path().join("ok.gguf");
    fs::write(&path, valid_gguf().0).unwrap();
    let out = qforge().arg("inspect").arg(&path).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = root.path().join("ok.safetensors");
    fs::write(&path, st(ST_OK, 8)).unwrap();
    let out = qforge().arg("inspect").arg(&path).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
