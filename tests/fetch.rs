//! `qforge::fetch` against an imitation Hub on loopback (the `fake_hub`
//! example's server, started by each test, stopping itself after two
//! minutes at most): the HF cache layout, redirects to a CDN origin, LFS
//! sha256 checks, Range resumes, retries, gated repos, moving branches,
//! offline mode. Every test ends with no partial file left in the cache.

#[path = "../examples/fake_hub/server.rs"]
mod server;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use qforge::fetch::{
    fetch, FetchErrorKind, FetchObserver, FetchOptions, FetchedSnapshot, FileFilter, FileSource,
    HubConfig, PlannedFile, RetryPolicy,
};
use qforge::hashing::sha256_bytes;
use server::{noise, FakeHub, Fault, HubFile};

const REPO: &str = "qforge-test/tiny";

fn start() -> FakeHub {
    FakeHub::start(Duration::from_secs(120))
}

fn tiny_files(model_seed: u64) -> Vec<HubFile> {
    vec![
        HubFile::new(".gitattributes", "*.safetensors filter=lfs\n", false),
        HubFile::new("README.md", "# tiny\n", false),
        HubFile::new("config.json", r#"{"model_type": "llama"}"#, false),
        HubFile::new("generation_config.json", r#"{"bos_token_id": 1}"#, false),
        HubFile::new("tokenizer.json", r#"{"version": "1.0"}"#, false),
        HubFile::new(
            "tokenizer_config.json",
            r#"{"model_max_length": 64}"#,
            false,
        ),
        HubFile::new("model.safetensors", noise(1 << 20, model_seed), true),
        HubFile::new("original/consolidated.00.pth", noise(1000, 3), true),
    ]
}

fn model_file(files: &[HubFile]) -> HubFile {
    files
        .iter()
        .find(|f| f.path == "model.safetensors")
        .unwrap()
        .clone()
}

fn options(hub: &FakeHub, cache: &Path, token: Option<&str>) -> FetchOptions {
    let config = HubConfig {
        endpoint: hub.endpoint(),
        cache_dir: cache.join("hub"),
        token: token.map(str::to_string),
        token_path: cache.join("token"),
        offline: false,
        connect_timeout: Duration::from_secs(5),
        read_timeout: Duration::from_secs(5),
    };
    let mut o = FetchOptions::new(config);
    o.retry = RetryPolicy {
        max_attempts: 5,
        base_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(100),
        max_retry_after: Duration::from_secs(3),
    };
    o
}

fn defaults() -> FileFilter {
    FileFilter::default()
}

/// No partial download, no stray temporary, anywhere in the cache.
fn assert_nothing_partial(root: &Path) {
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            assert!(
                !name.ends_with(".incomplete") && !name.ends_with(".tmp"),
                "partial file left: {}",
                p.display()
            );
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            }
        }
    }
}

fn repo_dir(cache: &Path) -> PathBuf {
    cache.join("hub").join("models--qforge-test--tiny")
}

fn paths(snap: &FetchedSnapshot) -> Vec<&str> {
    snap.files.iter().map(|f| f.path.as_str()).collect()
}

fn count(hub: &FakeHub, method: &str, path_part: &str) -> usize {
    hub.log()
        .iter()
        .filter(|l| l.method == method && l.path.contains(path_part))
        .count()
}

#[test]
fn fetches_the_default_set_into_the_standard_cache_layout() {
    let hub = start();
    let files = tiny_files(1);
    let commit = hub.commit(REPO, "main", files.clone());
    let tmp = tempfile::tempdir().unwrap();
    let snap = fetch(
        REPO,
        "main",
        &defaults(),
        &options(&hub, tmp.path(), Some("hf_public")),
    )
    .unwrap();

    assert_eq!(snap.commit, commit);
    assert_eq!(
        paths(&snap),
        [
            "config.json",
            "generation_config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "model.safetensors"
        ]
    );
    let dir = repo_dir(tmp.path());
    assert_eq!(snap.dir, dir.join("snapshots").join(&commit));
    assert_eq!(fs::read_to_string(dir.join("refs/main")).unwrap(), commit);
    for f in &snap.files {
        let hub_file = files.iter().find(|h| h.path == f.path).unwrap();
        let pointer = dir.join("snapshots").join(&commit).join(&f.path);
        assert_eq!(
            fs::read_link(&pointer).unwrap(),
            Path::new("../../blobs").join(hub_file.etag()),
            "{} is a relative symlink to its blob",
            f.path
        );
        assert_eq!(fs::read(&pointer).unwrap(), *hub_file.bytes);
        assert_eq!(f.sha256, hub_file.sha256());
        assert_eq!(f.lfs, hub_file.lfs);
        assert_eq!(f.source, FileSource::Downloaded);
    }
    // The LFS file came from the CDN origin, without the token; the Hub
    // itself got the token.
    let log = hub.log();
    let cdn: Vec<_> = log.iter().filter(|l| l.path.starts_with("/cdn/")).collect();
    assert_eq!(cdn.len(), 1);
    assert!(cdn[0].host.starts_with("localhost:"), "{:?}", cdn[0]);
    assert_eq!(cdn[0].authorization, None, "the token never leaves the Hub");
    assert!(log
        .iter()
        .filter(|l| !l.path.starts_with("/cdn/"))
        .all(|l| l.authorization.as_deref() == Some("Bearer hf_public")));
    // hf-hub (the Rust client candle and mistral.rs use) finds the files too.
    let cached = hf_hub::Cache::new(tmp.path().join("hub"))
        .model(REPO.to_string())
        .get("model.safetensors")
        .expect("hf-hub sees qforge's cache");
    assert_eq!(fs::read(cached).unwrap(), *model_file(&files).bytes);
    assert_nothing_partial(tmp.path());
}

#[test]
fn a_second_fetch_downloads_nothing() {
    let hub = start();
    hub.commit(REPO, "main", tiny_files(1));
    let tmp = tempfile::tempdir().unwrap();
    let opts = options(&hub, tmp.path(), None);
    fetch(REPO, "main", &defaults(), &opts).unwrap();
    hub.clear_log();
    let snap = fetch(REPO, "main", &defaults(), &opts).unwrap();
    assert!(snap.files.iter().all(|f| f.source == FileSource::Cached));
    let log = hub.log();
    assert_eq!(log.len(), 1, "only the revision listing: {log:?}");
    assert!(log[0]
        .path
        .starts_with("/api/models/qforge-test/tiny/revision/main"));
    assert_nothing_partial(tmp.path());
}

#[test]
fn rate_limits_and_server_errors_are_retried_honouring_retry_after() {
    let hub = start();
    let files = tiny_files(2);
    hub.commit(REPO, "main", files.clone());
    hub.fault(
        "GET",
        "/api/models/",
        1,
        Fault::Status {
            status: 429,
            retry_after: Some(1),
        },
    );
    hub.fault(
        "HEAD",
        "/config.json",
        1,
        Fault::Status {
            status: 503,
            retry_after: None,
        },
    );
    hub.fault(
        "GET",
        "/cdn/",
        1,
        Fault::Status {
            status: 502,
            retry_after: None,
        },
    );
    let tmp = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let snap = fetch(REPO, "main", &defaults(), &options(&hub, tmp.path(), None)).unwrap();
    assert!(
        t.elapsed() >= Duration::from_secs(1),
        "Retry-After: 1 was honoured"
    );
    assert_eq!(count(&hub, "GET", "/api/models/"), 2);
    assert_eq!(count(&hub, "HEAD", "/config.json"), 2, "{:#?}", hub.log());
    assert_eq!(count(&hub, "GET", "/cdn/"), 2);
    let model = snap
        .files
        .iter()
        .find(|f| f.path == "model.safetensors")
        .unwrap();
    assert_eq!(model.sha256, model_file(&files).sha256());
    assert_nothing_partial(tmp.path());
}

#[test]
fn a_long_retry_after_is_cut_to_the_bound() {
    let hub = start();
    hub.commit(REPO, "main", tiny_files(2));
    hub.fault(
        "GET",
        "/api/models/",
        1,
        Fault::Status {
            status: 429,
            retry_after: Some(3600),
        },
    );
    let tmp = tempfile::tempdir().unwrap();
    let mut opts = options(&hub, tmp.path(), None);
    opts.retry.max_retry_after = Duration::from_millis(200);
    let t = Instant::now();
    fetch(REPO, "main", &defaults(), &opts).unwrap();
    assert!(t.elapsed() < Duration::from_secs(10));
}

#[test]
fn retries_run_out_with_a_clear_error() {
    let hub = start();
    hub.commit(REPO, "main", tiny_files(2));
    hub.fault(
        "GET",
        "/api/models/",
        100,
        Fault::Status {
            status: 500,
            retry_after: None,
        },
    );
    let tmp = tempfile::tempdir().unwrap();
    let err = fetch(REPO, "main", &defaults(), &options(&hub, tmp.path(), None)).unwrap_err();
    assert!(
        matches!(
            err.kind(),
            FetchErrorKind::RetriesExhausted { attempts: 5, .. }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("HTTP 500"), "{err}");
    assert_eq!(count(&hub, "GET", "/api/models/"), 5);
}

#[test]
fn a_truncated_response_is_resumed_with_a_range_request() {
    let hub = start();
    let files = tiny_files(3);
    hub.commit(REPO, "main", files.clone());
    hub.fault("GET", "/cdn/", 1, Fault::Truncate { after: 300_000 });
    let tmp = tempfile::tempdir().unwrap();
    let snap = fetch(REPO, "main", &defaults(), &options(&hub, tmp.path(), None)).unwrap();
    let gets: Vec<_> = hub
        .log()
        .into_iter()
        .filter(|l| l.path.starts_with("/cdn/"))
        .collect();
    assert_eq!(gets.len(), 2);
    assert_eq!(gets[0].range, None);
    assert_eq!(gets[0].sent, 300_000);
    assert_eq!(gets[1].range.as_deref(), Some("bytes=300000-"));
    assert_eq!(gets[1].status, 206);
    let model = snap
        .files
        .iter()
        .find(|f| f.path == "model.safetensors")
        .unwrap();
    assert_eq!(model.sha256, model_file(&files).sha256());
    assert_nothing_partial(tmp.path());
}

#[test]
fn a_partial_file_from_an_earlier_run_is_resumed() {
    let hub = start();
    let files = tiny_files(4);
    hub.commit(REPO, "main", files.clone());
    let model = model_file(&files);
    let tmp = tempfile::tempdir().unwrap();
    let blobs = repo_dir(tmp.path()).join("blobs");
    fs::create_dir_all(&blobs).unwrap();
    fs::write(
        blobs.join(format!("{}.incomplete", model.sha256())),
        &model.bytes[..123_456],
    )
    .unwrap();

    let snap = fetch(REPO, "main", &defaults(), &options(&hub, tmp.path(), None)).unwrap();
    let got = snap
        .files
        .iter()
        .find(|f| f.path == "model.safetensors")
        .unwrap();
    assert_eq!(got.source, FileSource::Resumed { from: 123_456 });
    assert_eq!(got.sha256, model.sha256());
    let cdn: Vec<_> = hub
        .log()
        .into_iter()
        .filter(|l| l.path.starts_with("/cdn/"))
        .collect();
    assert_eq!(cdn.len(), 1);
    assert_eq!(cdn[0].range.as_deref(), Some("bytes=123456-"));
    assert_eq!(cdn[0].sent, (1 << 20) - 123_456);
    assert_nothing_partial(tmp.path());
}

#[test]
fn a_server_that_ignores_range_gets_a_fresh_download() {
    let hub = start();
    let files = tiny_files(5);
    hub.commit(REPO, "main", files.clone());
    let model = model_file(&files);
    let tmp = tempfile::tempdir().unwrap();
    let blobs = repo_dir(tmp.path()).join("blobs");
    fs::create_dir_all(&blobs).unwrap();
    fs::write(
        blobs.join(format!("{}.incomplete", model.sha256())),
        &model.bytes[..1000],
    )
    .unwrap();
    hub.fault("GET", "/cdn/", 1, Fault::IgnoreRange);

    let snap = fetch(REPO, "main", &defaults(), &options(&hub, tmp.path(), None)).unwrap();
    let got = snap
        .files
        .iter()
        .find(|f| f.path == "model.safetensors")
        .unwrap();
    assert_eq!(
        got.sha256,
        model.sha256(),
        "the 200 body replaced the partial, not appended to it"
    );
    assert_nothing_partial(tmp.path());
}

#[test]
fn a_corrupted_body_is_deleted_and_both_hashes_are_shown() {
    let hub = start();
    let files = tiny_files(6);
    let commit = hub.commit(REPO, "main", files.clone());
    let model = model_file(&files);
    hub.fault("GET", "/cdn/", 1, Fault::Corrupt);
    let tmp = tempfile::tempdir().unwrap();
    let opts = options(&hub, tmp.path(), None);
    let err = fetch(REPO, "main", &defaults(), &opts).unwrap_err();
    let FetchErrorKind::ChecksumMismatch {
        path,
        expected,
        actual,
    } = err.kind()
    else {
        panic!("expected a checksum mismatch, got {err}");
    };
    assert_eq!(path, "model.safetensors");
    assert_eq!(*expected, model.sha256());
    let mut bad = model.bytes.to_vec();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    assert_eq!(*actual, sha256_bytes(&bad));
    let msg = err.to_string();
    assert!(
        msg.contains(expected.as_str()) && msg.contains(actual.as_str()),
        "{msg}"
    );
    let dir = repo_dir(tmp.path());
    assert!(
        !dir.join("blobs").join(model.sha256()).exists(),
        "no blob under the good name"
    );
    let pointer = dir
        .join("snapshots")
        .join(&commit)
        .join("model.safetensors");
    assert!(
        fs::symlink_metadata(pointer).is_err(),
        "no snapshot entry for it"
    );
    assert_nothing_partial(tmp.path());
    assert!(
        !dir.join("refs/main").exists(),
        "a failed fetch records no ref"
    );

    // The next run downloads it again and succeeds.
    let snap = fetch(REPO, "main", &defaults(), &opts).unwrap();
    let got = snap
        .files
        .iter()
        .find(|f| f.path == "model.safetensors")
        .unwrap();
    assert_eq!(got.sha256, model.sha256());
    assert_nothing_partial(tmp.path());
}

#[test]
fn a_gated_repo_says_how_to_give_a_token_and_is_not_retried() {
    let hub = start();
    hub.commit(REPO, "main", tiny_files(7));
    hub.gate(REPO, "hf_good", true);
    let tmp = tempfile::tempdir().unwrap();

    // The listing says gated and no token is set: stop before any file.
    let err = fetch(REPO, "main", &defaults(), &options(&hub, tmp.path(), None)).unwrap_err();
    assert!(
        matches!(
            err.kind(),
            FetchErrorKind::Gated {
                token_sent: false,
                ..
            }
        ),
        "{err}"
    );
    let msg = err.to_string();
    for needle in ["gated", "HF_TOKEN", "hf auth login", "token", "accept"] {
        assert!(
            msg.to_lowercase().contains(&needle.to_lowercase()),
            "'{needle}' missing from: {msg}"
        );
    }
    assert!(
        msg.contains(&tmp.path().join("token").display().to_string()),
        "{msg}"
    );
    assert_eq!(hub.log().len(), 1, "only the listing: {:?}", hub.log());

    // A token without access: 403 GatedRepo on the files, not retried.
    hub.clear_log();
    let err = fetch(
        REPO,
        "main",
        &defaults(),
        &options(&hub, tmp.path(), Some("hf_bad")),
    )
    .unwrap_err();
    assert!(
        matches!(
            err.kind(),
            FetchErrorKind::Gated {
                token_sent: true,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("has no access"), "{err}");
    assert_no_retries(&hub);

    hub.clear_log();
    let snap = fetch(
        REPO,
        "main",
        &defaults(),
        &options(&hub, tmp.path(), Some("hf_good")),
    )
    .unwrap();
    assert_eq!(snap.files.len(), 5);
    let cdn: Vec<_> = hub
        .log()
        .into_iter()
        .filter(|l| l.path.starts_with("/cdn/"))
        .collect();
    assert_eq!(cdn.len(), 1);
    assert_eq!(cdn[0].authorization, None);
    assert_nothing_partial(tmp.path());
}

#[test]
fn a_gated_401_on_the_files_is_not_retried_and_says_what_to_do() {
    let hub = start();
    hub.commit(REPO, "main", tiny_files(13));
    hub.gate(REPO, "hf_good", false); // a listing that does not say gated
    let tmp = tempfile::tempdir().unwrap();
    let err = fetch(REPO, "main", &defaults(), &options(&hub, tmp.path(), None)).unwrap_err();
    assert!(
        matches!(
            err.kind(),
            FetchErrorKind::Gated {
                token_sent: false,
                ..
            }
        ),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("HF_TOKEN") && msg.contains("restricted"),
        "the Hub's words too: {msg}"
    );
    let log = hub.log();
    assert!(log.iter().any(|l| l.status == 401), "{log:?}");
    assert_no_retries(&hub);
    assert!(log
        .iter()
        .all(|l| l.method != "GET" || l.path.starts_with("/api/")));
    assert_nothing_partial(tmp.path());
}

/// Every URL was asked once: nothing was retried.
fn assert_no_retries(hub: &FakeHub) {
    let log = hub.log();
    let mut seen = std::collections::HashSet::new();
    for l in &log {
        assert!(
            seen.insert((l.method.clone(), l.path.clone())),
            "retried: {l:?}"
        );
    }
}

#[test]
fn missing_repos_and_revisions_fail_at_once() {
    let hub = start();
    hub.commit(REPO, "main", tiny_files(8));
    let tmp = tempfile::tempdir().unwrap();
    let opts = options(&hub, tmp.path(), None);
    let err = fetch("qforge-test/nope", "main", &defaults(), &opts).unwrap_err();
    assert!(
        matches!(err.kind(), FetchErrorKind::RepoNotFound { status: 401, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("HF_TOKEN"), "{err}");
    let err = fetch(REPO, "v9", &defaults(), &opts).unwrap_err();
    assert!(
        matches!(err.kind(), FetchErrorKind::RevisionNotFound { .. }),
        "{err}"
    );
    assert_eq!(hub.log().len(), 2);
    assert!(
        !tmp.path().join("hub").exists()
            || fs::read_dir(tmp.path().join("hub")).unwrap().count() == 0
    );
}

#[test]
fn a_moving_branch_is_pinned_to_its_new_commit_and_unchanged_blobs_are_reused() {
    let hub = start();
    let v1 = tiny_files(9);
    let first = hub.commit(REPO, "main", v1.clone());
    let tmp = tempfile::tempdir().unwrap();
    let opts = options(&hub, tmp.path(), None);
    let a = fetch(REPO, "main", &defaults(), &opts).unwrap();
    assert_eq!(a.commit, first);

    // main moves: a new config, the same weights.
    let mut v2 = v1.clone();
    v2[2] = HubFile::new(
        "config.json",
        r#"{"model_type": "llama", "rope_theta": 1e6}"#,
        false,
    );
    let second = hub.commit(REPO, "main", v2);
    assert_ne!(first, second);
    hub.clear_log();
    let b = fetch(REPO, "main", &defaults(), &opts).unwrap();
    assert_eq!(b.commit, second);
    let dir = repo_dir(tmp.path());
    assert_eq!(fs::read_to_string(dir.join("refs/main")).unwrap(), second);
    assert_eq!(
        count(&hub, "GET", "/cdn/"),
        0,
        "the weights' blob is reused"
    );
    assert_eq!(
        count(&hub, "GET", "config.json"),
        1,
        "the new config is downloaded"
    );
    let cfg = b.files.iter().find(|f| f.path == "config.json").unwrap();
    assert!(fs::read_to_string(&cfg.local_path)
        .unwrap()
        .contains("rope_theta"));
    assert_eq!(
        b.files
            .iter()
            .find(|f| f.path == "model.safetensors")
            .unwrap()
            .source,
        FileSource::Cached
    );
    assert!(dir
        .join("snapshots")
        .join(&first)
        .join("config.json")
        .is_file());

    // The old commit, pinned by hash, still resolves to the old files.
    let pinned = fetch(REPO, &first, &defaults(), &opts).unwrap();
    assert_eq!(pinned.commit, first);
    assert!(pinned.files.iter().all(|f| f.source == FileSource::Cached));
    assert_nothing_partial(tmp.path());
}

#[test]
fn offline_mode_serves_the_cache_and_fails_clearly_without_it() {
    let hub = start();
    let commit = hub.commit(REPO, "main", tiny_files(10));
    let tmp = tempfile::tempdir().unwrap();
    let mut opts = options(&hub, tmp.path(), None);
    let online = fetch(REPO, "main", &defaults(), &opts).unwrap();
    drop(hub);

    opts.hub.offline = true;
    let offline = fetch(REPO, "main", &defaults(), &opts).unwrap();
    assert_eq!(offline.commit, commit);
    let sums = |s: &FetchedSnapshot| -> Vec<(String, String)> {
        s.files
            .iter()
            .map(|f| (f.path.clone(), f.sha256.clone()))
            .collect()
    };
    let mut want = sums(&online);
    want.sort();
    assert_eq!(sums(&offline), want);

    let err = fetch("qforge-test/other", "main", &defaults(), &opts).unwrap_err();
    assert!(
        matches!(err.kind(), FetchErrorKind::NotCached { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("HF_HUB_OFFLINE"), "{err}");
    let err = fetch(
        REPO,
        "main",
        &FileFilter {
            include: vec!["*.gguf".into()],
            exclude: vec![],
        },
        &opts,
    )
    .unwrap_err();
    assert!(
        matches!(err.kind(), FetchErrorKind::NotCached { .. }),
        "{err}"
    );
}

#[test]
fn gguf_repos_default_to_every_quantization_and_a_glob_picks_one() {
    let hub = start();
    let q4 = HubFile::new("smol-Q4_K_M.gguf", noise(5000, 1), true);
    let q8 = HubFile::new("smol-Q8_0.gguf", noise(9000, 2), true);
    hub.commit(
        REPO,
        "main",
        vec![HubFile::new("README.md", "gguf", false), q4, q8],
    );
    let tmp = tempfile::tempdir().unwrap();
    let opts = options(&hub, tmp.path(), None);
    let all = fetch(REPO, "main", &defaults(), &opts).unwrap();
    assert_eq!(paths(&all), ["smol-Q4_K_M.gguf", "smol-Q8_0.gguf"]);
    let one = FileFilter {
        include: vec!["*Q4_K_M*".into()],
        exclude: vec![],
    };
    assert_eq!(
        paths(&fetch(REPO, "main", &one, &opts).unwrap()),
        ["smol-Q4_K_M.gguf"]
    );
    let none = FileFilter {
        include: vec!["*Q2_K*".into()],
        exclude: vec![],
    };
    let err = fetch(REPO, "main", &none, &opts).unwrap_err();
    assert!(
        matches!(err.kind(), FetchErrorKind::NothingMatched { .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("smol-Q8_0.gguf"),
        "the message lists the repo's files: {err}"
    );
}

#[test]
fn local_dir_gets_plain_copies_with_huggingface_hub_metadata() {
    let hub = start();
    let files = tiny_files(11);
    let commit = hub.commit(REPO, "main", files.clone());
    let tmp = tempfile::tempdir().unwrap();
    let mut opts = options(&hub, tmp.path(), None);
    let out = tmp.path().join("out");
    opts.local_dir = Some(out.clone());
    let snap = fetch(REPO, "main", &defaults(), &opts).unwrap();
    assert_eq!(snap.dir, out);
    for f in &snap.files {
        let p = out.join(&f.path);
        assert!(!fs::symlink_metadata(&p).unwrap().file_type().is_symlink());
        assert_eq!(f.local_path, p);
        let meta = fs::read_to_string(
            out.join(".cache/huggingface/download")
                .join(format!("{}.metadata", f.path)),
        )
        .unwrap();
        let lines: Vec<&str> = meta.lines().collect();
        assert_eq!(lines[0], commit);
        assert_eq!(lines[1], f.etag);
        assert!(lines[2].parse::<f64>().is_ok());
    }
    assert_eq!(
        fs::read(out.join("model.safetensors")).unwrap(),
        *model_file(&files).bytes
    );
    assert_nothing_partial(tmp.path());
}

#[derive(Default)]
struct Recorder {
    planned: Mutex<Vec<PlannedFile>>,
    progress: Mutex<std::collections::HashMap<String, u64>>,
    finished: Mutex<Vec<(String, FileSource)>>,
}

impl FetchObserver for Recorder {
    fn planned(&self, files: &[PlannedFile]) {
        self.planned.lock().unwrap().extend_from_slice(files);
    }
    fn file_progress(&self, path: &str, bytes: u64) {
        *self
            .progress
            .lock()
            .unwrap()
            .entry(path.into())
            .or_default() += bytes;
    }
    fn file_finished(&self, path: &str, source: FileSource) {
        self.finished.lock().unwrap().push((path.into(), source));
    }
}

#[test]
fn several_files_download_at_once_with_progress_per_file() {
    let hub = start();
    let shards: Vec<HubFile> = (1..=4)
        .map(|i| {
            HubFile::new(
                &format!("model-0000{i}-of-00004.safetensors"),
                noise(256 << 10, i),
                true,
            )
        })
        .chain([HubFile::new("config.json", "{}", false)])
        .collect();
    hub.commit(REPO, "main", shards.clone());
    hub.slow("/cdn/", 32 << 10, Duration::from_millis(20));
    let tmp = tempfile::tempdir().unwrap();
    let mut opts = options(&hub, tmp.path(), None);
    let rec = Arc::new(Recorder::default());
    opts.observer = rec.clone();
    opts.jobs = 4;
    fetch(REPO, "main", &defaults(), &opts).unwrap();

    let cdn: Vec<_> = hub
        .log()
        .into_iter()
        .filter(|l| l.path.starts_with("/cdn/"))
        .collect();
    assert_eq!(cdn.len(), 4);
    let overlapping = cdn.iter().enumerate().any(|(i, a)| {
        cdn.iter()
            .skip(i + 1)
            .any(|b| a.started < b.ended && b.started < a.ended)
    });
    assert!(overlapping, "shard downloads overlapped in time: {cdn:?}");
    assert_eq!(rec.planned.lock().unwrap().len(), 5);
    let progress = rec.progress.lock().unwrap();
    for s in shards.iter().filter(|s| s.lfs) {
        assert_eq!(
            progress.get(&s.path),
            Some(&(s.bytes.len() as u64)),
            "{}",
            s.path
        );
    }
    assert_eq!(rec.finished.lock().unwrap().len(), 5);
    assert_nothing_partial(tmp.path());
}

#[test]
fn verify_rehashes_cached_blobs_and_replaces_a_bad_one() {
    let hub = start();
    let files = tiny_files(12);
    hub.commit(REPO, "main", files.clone());
    let tmp = tempfile::tempdir().unwrap();
    let mut opts = options(&hub, tmp.path(), None);
    fetch(REPO, "main", &defaults(), &opts).unwrap();
    // Rot one byte of the cached weights behind the cache's back.
    let model = model_file(&files);
    let blob = repo_dir(tmp.path()).join("blobs").join(model.sha256());
    let mut bytes = fs::read(&blob).unwrap();
    bytes[10] ^= 1;
    fs::write(&blob, bytes).unwrap();
    hub.clear_log();
    opts.verify_cached = true;
    let snap = fetch(REPO, "main", &defaults(), &opts).unwrap();
    assert_eq!(
        count(&hub, "GET", "/cdn/"),
        1,
        "the bad blob was downloaded again"
    );
    let got = snap
        .files
        .iter()
        .find(|f| f.path == "model.safetensors")
        .unwrap();
    assert_eq!(got.source, FileSource::Downloaded);
    assert_eq!(fs::read(&blob).unwrap(), *model.bytes);
    assert_nothing_partial(tmp.path());
}
