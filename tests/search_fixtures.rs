//! `qforge imatrix`, `convert --to mlx --method search` and `quantize
//! --method search` on the fixture models: what the files hold, thread
//! independence, refusals. The comparisons with llama-imatrix, mlx-lm and
//! llama.cpp are in tests/interop/test_imatrix.py, test_mlx_search.py and
//! test_quantize_search.py.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use qforge::formats::gguf::{GgufFile, Value};
use qforge::quant::imatrix::ImportanceMatrix;

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

fn run_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_qforge"));
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn run(args: &[&str]) -> Output {
    run_env(args, &[])
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A text long enough for a few chunks of any fixture tokenizer.
fn text(dir: &Path) -> PathBuf {
    let p = dir.join("text.txt");
    let words = "the quick brown fox jumps over the lazy dog while a small model counts \
                 tokens and writes numbers like 12 345 into a license file; ";
    std::fs::write(&p, words.repeat(60)).unwrap();
    p
}

#[test]
fn imatrix_names_every_matrix_as_gguf_does_and_counts_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("phi3.imatrix.gguf");
    let o = run(&[
        "imatrix",
        path(&fixture("phi3")),
        "--text",
        path(&text(tmp.path())),
        "--ctx",
        "32",
        "--chunks",
        "3",
        "-o",
        path(&out),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let file = GgufFile::open(&out).unwrap();
    let md = file.metadata();
    assert_eq!(
        md.get("general.type"),
        Some(&Value::String("imatrix".into()))
    );
    assert_eq!(md.get("imatrix.chunk_count"), Some(&Value::U32(3)));
    assert_eq!(md.get("imatrix.chunk_size"), Some(&Value::U32(32)));
    let counts = file
        .tensors()
        .iter()
        .find(|t| t.name == "blk.1.ffn_down.weight.counts")
        .unwrap();
    let c = f32::from_le_bytes(file.tensor_data(counts).try_into().unwrap());
    assert_eq!(c, 96.0);
    // phi3's fused projections, 2 layers x 4 matrices, no output matrix.
    let m = ImportanceMatrix::open(&out).unwrap();
    let names: Vec<&str> = m.entries().map(|(n, _)| n).collect();
    assert_eq!(names.len(), 8, "{names:?}");
    assert_eq!(m.get("blk.0.attn_qkv.weight").unwrap().len(), 64);
    assert_eq!(m.get("blk.0.ffn_down.weight").unwrap().len(), 128);
    assert!(m.get("output.weight").is_none());
    assert!(m
        .entries()
        .all(|(_, v)| v.iter().all(|x| x.is_finite() && *x >= 0.0)));

    let bad = run(&[
        "imatrix",
        path(&fixture("phi3")),
        "--text",
        path(&text(tmp.path())),
        "--ctx",
        "8",
    ]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("--ctx"), "{}", stderr(&bad));
}

#[test]
fn mlx_search_is_the_same_on_any_thread_count_and_differs_from_rtn() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixture("demo-llama");
    let convert = |name: &str, threads: &str, method: &str| {
        let out = tmp.path().join(name);
        let o = run_env(
            &[
                "convert",
                path(&src),
                path(&out),
                "--to",
                "mlx",
                "--bits",
                "3",
                "--group-size",
                "64",
                "--method",
                method,
            ],
            &[("RAYON_NUM_THREADS", threads)],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        std::fs::read(out.join("model.safetensors")).unwrap()
    };
    let one = convert("t1", "1", "search");
    let three = convert("t3", "3", "search");
    let rtn = convert("rtn", "2", "rtn");
    assert!(one == three);
    assert_eq!(one.len(), rtn.len());
    assert!(one != rtn);
}

#[test]
fn gguf_search_is_the_same_on_any_thread_count() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixture("demo-llama");
    let outs: Vec<Vec<u8>> = ["1", "3"]
        .iter()
        .map(|threads| {
            let out = tmp.path().join(format!("t{threads}.gguf"));
            let o = run_env(
                &[
                    "quantize",
                    path(&src),
                    path(&out),
                    "--type",
                    "Q4_0",
                    "--method",
                    "search",
                    "--threads",
                    threads,
                ],
                &[("RAYON_NUM_THREADS", threads)],
            );
            assert!(o.status.success(), "{}", stderr(&o));
            std::fs::read(out).unwrap()
        })
        .collect();
    assert!(outs[0] == outs[1]);
}

#[test]
fn search_options_are_refused_where_they_mean_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixture("llama");
    let cases: &[(&[&str], &str)] = &[
        (&["--to", "gguf", "--method", "search"], "MLX outputs"),
        (
            &[
                "--to",
                "mlx",
                "--bits",
                "4",
                "--method",
                "rtn",
                "--imatrix",
                "x.gguf",
            ],
            "--method rtn",
        ),
        (
            &["--to", "mlx", "--bits", "4", "--calibration-tokens", "5"],
            "--calibration-tokens",
        ),
    ];
    for (extra, want) in cases {
        let out = tmp.path().join("never");
        let mut args = vec!["convert", path(&src), path(&out)];
        args.extend_from_slice(extra);
        let o = run(&args);
        assert!(!o.status.success(), "{extra:?}");
        assert!(stderr(&o).contains(want), "{extra:?}: {}", stderr(&o));
        assert!(!out.exists());
    }
}
