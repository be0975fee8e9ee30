//! `qforge fetch` as a user runs it: the real binary, configured only by
//! the environment (HF_ENDPOINT, HF_HOME, HF_TOKEN, the token file,
//! HF_HUB_OFFLINE), against the imitation Hub on loopback; and a download
//! killed with SIGKILL halfway, then resumed from its partial file.

#[path = "../examples/fake_hub/server.rs"]
mod server;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use server::{noise, FakeHub, HubFile};

const REPO: &str = "qforge-test/tiny";

fn qforge(hub: &FakeHub, hf_home: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_qforge"));
    c.arg("fetch").args(args);
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
    c.env("HF_ENDPOINT", hub.endpoint()).env("HF_HOME", hf_home);
    c
}

fn run(mut c: Command) -> Output {
    c.stdin(Stdio::null()).output().expect("qforge runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn files() -> Vec<HubFile> {
    vec![
        HubFile::new("README.md", "# tiny\n", false),
        HubFile::new("config.json", r#"{"model_type": "llama"}"#, false),
        HubFile::new("tokenizer.json", r#"{"version": "1.0"}"#, false),
        HubFile::new("model.safetensors", noise(1 << 20, 21), true),
    ]
}

#[test]
fn fetch_prints_the_commit_and_files_and_json() {
    let hub = FakeHub::start(Duration::from_secs(120));
    let commit = hub.commit(REPO, "main", files());
    let tmp = tempfile::tempdir().unwrap();
    let out = run(qforge(&hub, tmp.path(), &[REPO]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!("{REPO}@main is commit {commit}")),
        "{stdout}"
    );
    assert!(
        stdout.contains("model.safetensors") && stdout.contains("sha256 ok"),
        "{stdout}"
    );
    assert!(!stdout.contains("README.md"), "{stdout}");
    assert!(
        out.stderr.is_empty(),
        "no bars off a terminal: {}",
        text(&out.stderr)
    );

    let out = run(qforge(
        &hub,
        tmp.path(),
        &[&format!("{REPO}@{commit}"), "--json", "--include", "*.json"],
    ));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["commit"], commit.as_str());
    let names: Vec<&str> = v["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["config.json", "tokenizer.json"]);
    assert!(v["files"]
        .as_array()
        .unwrap()
        .iter()
        .all(|f| f["source"] == "cached"));
    let dir = PathBuf::from(v["dir"].as_str().unwrap());
    assert_eq!(
        dir,
        tmp.path()
            .join("hub/models--qforge-test--tiny/snapshots")
            .join(&commit)
    );
}

#[test]
fn the_environment_decides_token_and_offline_mode() {
    let hub = FakeHub::start(Duration::from_secs(120));
    hub.commit(REPO, "main", files());
    hub.gate(REPO, "hf_secret", true);
    let tmp = tempfile::tempdir().unwrap();

    let out = run(qforge(&hub, tmp.path(), &[REPO]));
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("gated") && err.contains("HF_TOKEN") && err.contains("hf auth login"),
        "{err}"
    );
    assert!(
        err.contains(&tmp.path().join("token").display().to_string()),
        "names the token file: {err}"
    );

    let mut c = qforge(&hub, tmp.path(), &[REPO]);
    c.env("HF_TOKEN", "hf_secret");
    let out = run(c);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // The token file in HF_HOME works too (what `hf auth login` writes).
    fs::write(tmp.path().join("token"), "hf_secret\n").unwrap();
    let other_home = tempfile::tempdir().unwrap();
    fs::copy(tmp.path().join("token"), other_home.path().join("token")).unwrap();
    let out = run(qforge(
        &hub,
        other_home.path(),
        &[REPO, "--include", "config.json"],
    ));
    assert!(out.status.success(), "{}", text(&out.stderr));

    // Offline: the cache answers, nothing is asked of the Hub.
    hub.clear_log();
    let mut c = qforge(&hub, tmp.path(), &[REPO, "--json"]);
    c.env("HF_HUB_OFFLINE", "1");
    let out = run(c);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        hub.log().is_empty(),
        "offline made requests: {:?}",
        hub.log()
    );
    let mut c = qforge(&hub, tmp.path(), &["qforge-test/absent"]);
    c.env("HF_HUB_OFFLINE", "1");
    let out = run(c);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("HF_HUB_OFFLINE is set"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_bad_repo_id_is_refused_before_any_request() {
    let hub = FakeHub::start(Duration::from_secs(60));
    let tmp = tempfile::tempdir().unwrap();
    let out = run(qforge(&hub, tmp.path(), &["not a repo"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("ORG/REPO"),
        "{}",
        text(&out.stderr)
    );
    assert!(hub.log().is_empty());
}

/// Must-show 3: SIGKILL in the middle of a large download (the server
/// streams slowly), rerun, and it resumes from the partial file.
#[test]
fn a_download_killed_with_sigkill_resumes_from_its_partial_file() {
    let hub = FakeHub::start(Duration::from_secs(120));
    let big = HubFile::new("model.safetensors", noise(24 << 20, 99), true);
    hub.commit(
        REPO,
        "main",
        vec![HubFile::new("config.json", "{}", false), big.clone()],
    );
    hub.slow("/cdn/", 64 << 10, Duration::from_millis(25));
    let tmp = tempfile::tempdir().unwrap();
    let blobs = tmp.path().join("hub/models--qforge-test--tiny/blobs");
    let partial = blobs.join(format!("{}.incomplete", big.sha256()));

    let mut child = qforge(&hub, tmp.path(), &[REPO, "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while fs::metadata(&partial).map(|m| m.len()).unwrap_or(0) < 2 << 20 {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the download never got going"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "qforge ended before it was killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL: no destructor, no cleanup runs.
    child.wait().unwrap();
    let kept = fs::metadata(&partial).unwrap().len();
    assert!(
        kept >= 2 << 20 && kept < big.bytes.len() as u64,
        "partial has {kept} bytes"
    );
    assert!(!blobs.join(big.sha256()).exists());

    // The server logs the cut-off request once its writes fail; wait for
    // that before counting the rerun's requests.
    let t = Instant::now();
    while !hub.log().iter().any(|l| l.path.starts_with("/cdn/")) {
        assert!(t.elapsed() < Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(20));
    }
    hub.unslow();
    hub.clear_log();
    let out = run(qforge(&hub, tmp.path(), &[REPO, "--json"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let model = v["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "model.safetensors")
        .unwrap();
    assert_eq!(model["source"]["resumed_from"], kept);
    assert_eq!(model["sha256"], big.sha256().as_str());
    let cdn: Vec<_> = hub
        .log()
        .into_iter()
        .filter(|l| l.path.starts_with("/cdn/"))
        .collect();
    assert_eq!(cdn.len(), 1, "{cdn:?}");
    assert_eq!(
        cdn[0].range.as_deref(),
        Some(format!("bytes={kept}-").as_str())
    );
    assert_eq!(cdn[0].sent, big.bytes.len() as u64 - kept);
    assert!(!partial.exists());
    assert_eq!(
        qforge::hashing::sha256_file(&blobs.join(big.sha256())).unwrap(),
        big.sha256()
    );
}
