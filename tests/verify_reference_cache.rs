//! Reference logits kept between verifications (`VerifyOptions::
//! reference_cache`, what `qforge run` passes when several artifacts
//! share a reference): a verification that reads them back reports the
//! very numbers of one that runs the reference itself.

use std::path::{Path, PathBuf};
use std::process::Command;

use qforge::verify::{self, EvalInput, Gates, KlReport, NoProgress, VerifyOptions};

const GPL3: &str = "/usr/share/common-licenses/GPL-3";

fn demo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/demo-llama")
}

/// `qforge quantize` of the fixture to `ty` in `dir`.
fn quantize(dir: &Path, ty: &str) -> PathBuf {
    let path = dir.join(format!("demo-{ty}.gguf"));
    let out = Command::new(env!("CARGO_BIN_EXE_qforge"))
        .arg("quantize")
        .arg(demo())
        .arg(&path)
        .args(["--type", ty])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

fn kl(artifact: &Path, cache: Option<&Path>) -> KlReport {
    let opts = VerifyOptions {
        ctx: 128,
        chunks: Some(3),
        threads: 2,
        speed: false,
        sample_tokens: 0,
        reference_cache: cache.map(Path::to_path_buf),
        ..VerifyOptions::default()
    };
    let text = std::fs::read_to_string(GPL3).unwrap();
    let r = verify::run(
        artifact,
        Some(&demo()),
        &EvalInput::Text(text),
        &opts,
        &Gates::default(),
        &NoProgress,
    )
    .unwrap();
    r.kl.unwrap()
}

fn bits(k: &KlReport) -> Vec<u64> {
    [
        k.reference_ppl,
        k.ppl_ratio,
        k.ppl_ratio_error,
        k.mean_kld,
        k.mean_kld_error,
        k.kld_p99,
        k.kld_max,
        k.same_top,
        k.same_top_error,
    ]
    .map(f64::to_bits)
    .to_vec()
}

#[test]
fn reused_reference_logits_give_the_same_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let q4 = quantize(dir.path(), "Q4_0");

    let streamed = kl(&q4, None);
    assert_eq!(streamed.reused_reference_windows, 0);
    assert!(streamed.mean_kld > 0.0);
    let cache = dir.path().join("reference-logits");
    let first = kl(&q4, Some(&cache));
    assert_eq!(first.reused_reference_windows, 0);
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 3);
    let second = kl(&q4, Some(&cache));
    assert_eq!(second.reused_reference_windows, 3);
    assert_eq!(bits(&first), bits(&streamed));
    assert_eq!(bits(&second), bits(&streamed));

    // Another artifact against the same reference reads the same files.
    let q8 = quantize(dir.path(), "Q8_0");
    let other = kl(&q8, Some(&cache));
    assert_eq!(other.reused_reference_windows, 3);
    assert_eq!(bits(&other), bits(&kl(&q8, None)));
    assert!(other.mean_kld < streamed.mean_kld);
}
