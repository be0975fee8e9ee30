//! `from: hf://...`: `qforge run` fetches the source through the Hub client
//! (the imitation Hub on loopback), pins its commit in the lockfile, and
//! builds from the HF cache; offline, the cached snapshot serves.

#[path = "../examples/fake_hub/server.rs"]
mod server;

use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use server::{FakeHub, HubFile};

fn qforge(hub: &FakeHub, dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_qforge"));
    c.args(args).current_dir(dir).stdin(Stdio::null());
    for var in [
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_HUB_CACHE",
        "HUGGINGFACE_HUB_CACHE",
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HF_TOKEN_PATH",
        "http_proxy",
        "HTTP_PROXY",
        "all_proxy",
        "ALL_PROXY",
    ] {
        c.env_remove(var);
    }
    c.env("HF_ENDPOINT", hub.endpoint())
        .env("HF_HOME", dir.join("hf-home"));
    c
}

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_hub_source_is_fetched_pinned_and_reused() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/llama");
    let files: Vec<HubFile> = [
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "model.safetensors",
    ]
    .iter()
    .map(|f| {
        HubFile::new(
            f,
            fs::read(fixture.join(f)).unwrap(),
            f.ends_with(".safetensors"),
        )
    })
    .collect();
    let model_sha = files[5].sha256();
    let hub = FakeHub::start(Duration::from_secs(120));
    let commit = hub.commit("qforge-test/llama", "main", files);

    let tmp = tempfile::tempdir().unwrap();
    fs::write(
        tmp.path().join("m.yaml"),
        "from: hf://qforge-test/llama@main\nartifacts:\n  - name: llama-f16\n    format: gguf\n    quantization: F16\n",
    )
    .unwrap();
    let out = json(
        &qforge(&hub, tmp.path(), &["run", "m.yaml", "--json"])
            .output()
            .unwrap(),
    );
    assert_eq!(out["pass"], true);
    assert_eq!(out["report"]["commit"], commit.as_str());

    let lock: serde_json::Value =
        serde_json::from_slice(&fs::read(tmp.path().join("m.out/qforge.lock")).unwrap()).unwrap();
    assert_eq!(lock["source"]["from"], "hf://qforge-test/llama@main");
    assert_eq!(lock["source"]["commit"], commit.as_str());
    let st = lock["source"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "model.safetensors")
        .unwrap();
    assert_eq!(st["sha256"], model_sha.as_str());

    let again = json(
        &qforge(&hub, tmp.path(), &["run", "m.yaml", "--json"])
            .output()
            .unwrap(),
    );
    assert_eq!(again["nothing_rebuilt"], true);

    hub.stop();
    let offline = json(
        &qforge(&hub, tmp.path(), &["run", "m.yaml", "--json"])
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .unwrap(),
    );
    assert_eq!(offline["nothing_rebuilt"], true);
}
