//! `qforge verify` end to end on the trained fixture model: report
//! contents, gates and exit codes, and perplexity against the number
//! transformers computed when the fixture was made.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const GPL3: &str = "/usr/share/common-licenses/GPL-3";

fn demo() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/demo-llama");
    assert!(
        dir.join("config.json").is_file(),
        "{} is missing",
        dir.display()
    );
    dir
}

fn qforge(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_qforge"))
        .arg("verify")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn demo_json(extra: &[&str]) -> (i32, Value) {
    let dir = demo();
    let mut args = vec![
        dir.to_str().unwrap(),
        "--json",
        "--threads",
        "2",
        "--speed-reps",
        "1",
        "--prompt-tokens",
        "32",
        "--gen-tokens",
        "8",
        "--sample-tokens",
        "8",
    ];
    args.extend_from_slice(extra);
    let (code, out, err) = qforge(&args);
    assert!(code == 0 || code == 3, "exit {code}: {err}");
    (code, serde_json::from_str(&out).unwrap())
}

/// The fixture generator measured transformers' perplexity of demo-llama
/// on GPL-3 at ctx 512, llama-perplexity style (golden metadata
/// `gpl3_ppl_ctx512` = 54.334); ours must be within 0.5%.
#[test]
fn demo_llama_perplexity_matches_transformers() {
    let (code, r) = demo_json(&["--text", GPL3]);
    assert_eq!(code, 0);
    let ppl = r["perplexity"]["ppl"].as_f64().unwrap();
    assert!((ppl / 54.334 - 1.0).abs() < 0.005, "ppl {ppl}");
    assert_eq!(r["perplexity"]["ctx"], 512);
    assert_eq!(r["perplexity"]["bos"], 500);
    assert!(r["speed"]["prompt_tok_s"].as_f64().unwrap() > 0.0);
    assert!(r["speed"]["gen_tok_s"].as_f64().unwrap() > 0.0);
    assert!(r["peak_rss_bytes"].as_u64().unwrap() > 0);
    assert_eq!(r["sample"]["tokens"].as_array().unwrap().len(), 8);
    assert_eq!(r["architecture"], "llama");
}

#[test]
fn a_model_against_itself_has_zero_kld_and_full_agreement() {
    let dir = demo();
    let (code, r) = demo_json(&[
        "--text",
        GPL3,
        "--ctx",
        "128",
        "--chunks",
        "2",
        "--reference",
        dir.to_str().unwrap(),
        "--max-kld",
        "0.0001",
        "--min-top1",
        "0.99",
        "--max-ppl-ratio",
        "1.001",
    ]);
    assert_eq!(code, 0, "{r}");
    // Only the reference's 16-bit log-prob rounding separates the two.
    assert!(r["kl"]["mean_kld"].as_f64().unwrap() < 1e-5);
    assert_eq!(r["kl"]["same_top"], 1.0);
    assert_eq!(r["perplexity"]["scored_tokens"], 2 * 63);
    assert_eq!(r["gates"].as_array().unwrap().len(), 3);
    assert_eq!(r["pass"], true);
}

#[test]
fn a_failed_gate_exits_3_and_says_which() {
    let (code, r) = demo_json(&[
        "--text",
        GPL3,
        "--ctx",
        "128",
        "--chunks",
        "1",
        "--max-ppl",
        "2",
    ]);
    assert_eq!(code, 3);
    assert_eq!(r["pass"], false);
    assert_eq!(r["gates"][0]["gate"], "max_ppl");
    assert_eq!(r["gates"][0]["pass"], false);
}

#[test]
fn gates_that_need_a_reference_or_speed_are_usage_errors() {
    let dir = demo();
    let (code, _, err) = qforge(&[dir.to_str().unwrap(), "--max-kld", "0.1"]);
    assert_eq!(code, 1);
    assert!(err.contains("--reference"), "{err}");
    let (code, _, err) = qforge(&[dir.to_str().unwrap(), "--no-speed", "--min-gen-tok-s", "1"]);
    assert_eq!(code, 1);
    assert!(err.contains("--no-speed"), "{err}");
}

#[test]
fn a_tokens_file_that_is_not_json_is_an_error_that_says_so() {
    let dir = demo();
    let (code, _, err) = qforge(&[dir.to_str().unwrap(), "--tokens", "/dev/null", "--no-speed"]);
    assert_eq!(code, 1);
    assert!(err.contains("JSON array"), "{err}");
}
