//! Malformed manifests: each file under tests/manifests/malformed (parse
//! errors) and tests/manifests/unresolvable (errors found against the
//! environment) ends with `# expect: LINE:COLUMN: MESSAGE` lines, the exact
//! problems qforge must report, in order. `QFORGE_BLESS=1` rewrites those
//! lines from what qforge says (review the diff before committing).

use std::fs;
use std::path::{Path, PathBuf};

use qforge::formats::gguf::{GgufWriter, Metadata, TensorSpec, Value};
use qforge::manifest::{resolve, Manifest, ManifestError};

const EXPECT: &str = "# expect: ";

fn corpus(folder: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/manifests")
        .join(folder);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn expected(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix(EXPECT))
        .map(str::to_string)
        .collect()
}

/// Compares, or with QFORGE_BLESS rewrites, the expectations of `file`.
fn check(file: &Path, text: &str, got: Vec<String>) -> Option<String> {
    let want = expected(text);
    if got == want {
        return None;
    }
    if std::env::var_os("QFORGE_BLESS").is_some() {
        let mut body: String = text
            .lines()
            .filter(|l| !l.starts_with(EXPECT))
            .map(|l| format!("{l}\n"))
            .collect();
        for g in &got {
            body.push_str(&format!("{EXPECT}{g}\n"));
        }
        fs::write(file, body).unwrap();
        return None;
    }
    Some(format!(
        "{}:\n  expected {want:#?}\n  got {got:#?}",
        file.display()
    ))
}

fn problems(err: &ManifestError) -> Vec<String> {
    err.problems.iter().map(|p| p.to_string()).collect()
}

#[test]
fn malformed_manifests_fail_with_the_exact_messages() {
    let files = corpus("malformed");
    assert!(files.len() >= 20, "the corpus has {} files", files.len());
    let mut failures = Vec::new();
    for file in &files {
        let text = fs::read_to_string(file).unwrap();
        let name = Path::new(file.file_name().unwrap());
        let got = match Manifest::parse(&text, name) {
            Ok(_) => vec!["(parsed without error)".to_string()],
            Err(e) => {
                assert_eq!(e.file, name);
                // The CLI prints FILE:LINE:COLUMN: MESSAGE per problem.
                assert!(e.to_string().starts_with(&format!("{}:", name.display())));
                problems(&e)
            }
        };
        failures.extend(check(file, &text, got));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A tiny GGUF model for `${MODEL}`: resolving detects the source's format.
fn tiny_gguf(path: &Path) {
    let mut meta = Metadata::default();
    meta.set("general.architecture", Value::String("llama".into()));
    let specs = vec![TensorSpec {
        name: "token_embd.weight".into(),
        dims: vec![4, 2],
        ggml_type: quant_kernels::GgmlType::F32,
    }];
    let mut out = fs::File::create(path).unwrap();
    let mut w = GgufWriter::new(&mut out, 3, &meta, &specs).unwrap();
    w.write_tensor("token_embd.weight", &[0u8; 32]).unwrap();
    w.finish().unwrap();
}

#[test]
fn unresolvable_manifests_fail_with_the_exact_messages() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model.gguf");
    tiny_gguf(&model);
    let text_file = tmp.path().join("text.txt");
    fs::write(&text_file, "some text").unwrap();
    let env = |k: &str| match k {
        "MODEL" => Some(model.display().to_string()),
        "TEXT" => Some(text_file.display().to_string()),
        "HOME" => Some(tmp.path().display().to_string()),
        _ => None,
    };
    let files = corpus("unresolvable");
    let dir = files[0].parent().unwrap().to_path_buf();
    let mut failures = Vec::new();
    for file in &files {
        let text = fs::read_to_string(file).unwrap();
        let manifest = Manifest::parse(&text, file).expect("parses");
        let got = match resolve(manifest, file, &env, None) {
            Ok(_) => vec!["(resolved without error)".to_string()],
            Err(e) => problems(&e)
                .into_iter()
                .map(|p| {
                    p.replace(&dir.display().to_string(), "<dir>")
                        .replace(&tmp.path().display().to_string(), "<tmp>")
                })
                .collect(),
        };
        failures.extend(check(file, &text, got));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
