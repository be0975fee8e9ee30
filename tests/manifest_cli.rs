//! `qforge run`, `plan` and `report` as a user runs them: the real binary.
//! (Building artifacts needs the stages; tests/manifest_run.rs drives the
//! runner with fakes, and `--check` here reads what it built.)

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use common::fake_stages::Fakes;
use qforge::manifest::runner::Quiet;
use qforge::manifest::stages::NoProgress;
use qforge::manifest::{load_resolved, run, RunOptions};

fn qforge(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qforge"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

const MANIFEST: &str = "\
from: ./model
verify:
  text: ./model/config.json
  gates: {max_kld: 0.5}
artifacts:
  - name: t-q8_0
    format: gguf
    quantization: Q8_0
  - name: t-mlx
    format: mlx
    quantization: {bits: 4}
";

fn setup(manifest: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    common::write_tiny_hf_model(&tmp.path().join("model"));
    fs::write(tmp.path().join("m.yaml"), manifest).unwrap();
    tmp
}

#[test]
fn a_bad_manifest_exits_2_with_every_problem_and_runs_nothing() {
    let tmp = setup(
        "from: ./model\nartifacts:\n  - name: a\n    format: gguf\n    quantization: {type: Q4_K_M, bits: 4}\n  - name: a\n    format: mlx\n    quantisation: {bits: 4}\n",
    );
    let out = qforge(tmp.path(), &["run", "m.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        "m.yaml:5:34: `bits` applies to mlx artifacts; a gguf artifact is quantized with `type` (e.g. Q4_K_M)\n\
         m.yaml:6:11: artifact name `a` is used twice (first at line 3)\n\
         m.yaml:8:5: unknown key `quantisation` in artifact `a` (did you mean `quantization`?)\n\
         error: m.yaml has 3 problems; nothing was run\n"
    );
    assert!(out.stdout.is_empty());
    assert!(!tmp.path().join("m.out").exists(), "nothing was run");
    let plan = qforge(tmp.path(), &["plan", "m.yaml", "--json"]);
    assert_eq!(plan.status.code(), Some(2));
}

#[test]
fn plan_prints_one_job_per_artifact() {
    let tmp = setup(MANIFEST);
    let out = qforge(tmp.path(), &["plan", "m.yaml", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let jobs = v["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 2);
    assert_eq!(jobs[0]["name"], "t-q8_0");
    assert_eq!(jobs[0]["command"], "qforge run m.yaml --only t-q8_0");
    assert_eq!(jobs[1]["outputs"], serde_json::json!(["t-mlx"]));
    assert_eq!(jobs[1]["settings_sha256"].as_str().unwrap().len(), 64);
    let out = qforge(tmp.path(), &["plan", "m.yaml"]);
    let table = text(&out.stdout);
    assert!(table.starts_with("artifact  format"), "{table}");
    assert!(table.contains("qforge run m.yaml --only t-mlx"), "{table}");
}

#[test]
fn only_with_a_wrong_name_suggests_the_right_one() {
    let tmp = setup(MANIFEST);
    let out = qforge(tmp.path(), &["run", "m.yaml", "--only", "t-q8"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "error: m.yaml has no artifact named `t-q8` (did you mean `t-q8_0`?); \
         its artifacts are: t-q8_0, t-mlx\n"
    );
}

#[test]
fn check_passes_on_a_built_folder_and_names_a_corrupted_artifact() {
    let tmp = setup(MANIFEST);
    let m = load_resolved(&tmp.path().join("m.yaml"), None).unwrap();
    let fakes = Fakes::default();
    let o = run(
        &m,
        &RunOptions::default(),
        fakes.stages(),
        &Quiet,
        &NoProgress,
    )
    .unwrap();
    assert!(o.pass());

    let out = qforge(tmp.path(), &["run", "m.yaml", "--check"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("t-q8_0  ok\nt-mlx   ok\n"));

    let gguf = tmp.path().join("m.out/t-q8_0.gguf");
    let mut bytes = fs::read(&gguf).unwrap();
    bytes[200] ^= 1;
    fs::write(&gguf, bytes).unwrap();
    let out = qforge(tmp.path(), &["run", "m.yaml", "--check", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["artifacts"][0]["name"], "t-q8_0");
    assert_eq!(v["artifacts"][0]["ok"], false);
    assert!(v["artifacts"][0]["status"]
        .as_str()
        .unwrap()
        .starts_with("damaged: t-q8_0.gguf has sha256 "));
    assert_eq!(v["artifacts"][1]["ok"], true);

    let out = qforge(tmp.path(), &["run", "m.yaml", "--check"]);
    assert_eq!(text(&out.stderr), "error: check failed for t-q8_0\n");

    // `qforge report` writes the report again from report.json.
    fs::remove_file(tmp.path().join("m.out/report.md")).unwrap();
    let out = qforge(tmp.path(), &["report", "m.yaml"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(tmp.path().join("m.out/report.md").is_file());
}
