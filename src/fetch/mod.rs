//! Fetching models from the Hugging Face Hub into the standard HF cache:
//! a branch or tag pinned to its commit, every LFS file checked against the
//! Hub's sha256, interrupted downloads resumed, several files at once.
//!
//! ```no_run
//! use qforge::fetch::{fetch, FetchOptions, FileFilter, HubConfig};
//! let options = FetchOptions::new(HubConfig::from_env()?);
//! let snap = fetch("HuggingFaceTB/SmolLM2-135M-Instruct", "main", &FileFilter::default(), &options)?;
//! println!("{} files of commit {} in {}", snap.files.len(), snap.commit, snap.dir.display());
//! # Ok::<(), qforge::fetch::FetchError>(())
//! ```
//!
//! # What hf-hub does and what our code does
//!
//! The Rust `hf-hub` crate comes in two lines. 1.0 is async (tokio,
//! reqwest 0.13) and always links `hf-xet`: about 280 crates against our
//! ~100, and still no resume (it truncates `.incomplete`) and no sha256
//! check. 0.4's blocking API (`ureq` feature, no tokio) is small, but its
//! download path does not fit either: no sha256 check, retries off by
//! default and then on every error (401/404 included, `Retry-After`
//! ignored), the bearer token sent along to the CDN a file redirects to,
//! a `Range` resume that appends whatever comes back (a server that ignores
//! the range corrupts the file), partial files named `<etag>.part` and
//! locks in `blobs/` where `huggingface_hub` uses `<etag>.incomplete` and
//! `.locks/`, one file at a time, and a cache root that ignores
//! `HF_HUB_CACHE` and `HF_TOKEN`.
//!
//! So qforge takes hf-hub 0.4 (`default-features = false, features =
//! ["ureq"]`) for what it gets right and shares with the Rust tools that
//! use it (candle, mistral.rs): the repo folder name
//! (`models--ORG--REPO`, [`hf_hub::Repo::folder_name`]), the revision API
//! path ([`hf_hub::Repo::api_url`]) and the request for it
//! (`ApiRepo::info_request`, which carries the token and user agent; we add
//! `?blobs=true` for sizes and LFS sha256 and parse the richer answer), and
//! its HTTP client, ureq 2, so there is one HTTP stack. Our code does the
//! rest, following `huggingface_hub` 2.4's source: reading the environment
//! ([`config`]), HEAD metadata and redirects with the token kept on the Hub,
//! retries ([`hub`]), the cache writes and locks ([`cache`]), resumable
//! verified downloads ([`download`]), the include/exclude globs and the
//! default set ([`filter`]), parallel workers and progress (here).

pub mod cache;
pub mod config;
pub mod download;
pub mod error;
pub mod filter;
pub mod hub;

use std::collections::VecDeque;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use cache::RepoCache;
pub use config::HubConfig;
pub use error::{FetchError, FetchErrorKind, Result};
pub use filter::FileFilter;
pub use hub::{RetryPolicy, RevisionListing};

use crate::formats::atomic::{sync_parent, temp_path_for};
use crate::hashing::sha256_file;
use download::{download_blob, BlobJob};
use hub::{is_commit_hash, HubClient, RemoteFile};

/// A repo and revision as typed: `ORG/REPO[@REVISION]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoRef {
    /// `ORG/REPO` (or a bare `REPO` of the Hub's legacy namespace).
    pub repo: String,
    /// Branch, tag or commit; `main` when not given.
    pub revision: String,
}

impl RepoRef {
    /// Parses `ORG/REPO[@REVISION]`, also with an `hf://` prefix.
    pub fn parse(s: &str) -> Result<RepoRef> {
        let bad = || FetchError::from(FetchErrorKind::BadRepoId(s.to_string()));
        let body = s.strip_prefix("hf://").unwrap_or(s);
        let (repo, revision) = match body.split_once('@') {
            Some((r, rev)) if !rev.is_empty() => (r, rev),
            Some(_) => return Err(bad()),
            None => (body, "main"),
        };
        validate_repo_id(repo).map_err(|_| bad())?;
        validate_revision(revision).map_err(|_| bad())?;
        Ok(RepoRef {
            repo: repo.to_string(),
            revision: revision.to_string(),
        })
    }
}

impl std::fmt::Display for RepoRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.repo, self.revision)
    }
}

/// Checks a repo id the way the Hub names repos: one or two parts of
/// letters, digits, `-`, `_`, `.`; no `--` or `..`, no leading or trailing
/// `-`/`.`, at most 96 characters a part.
pub fn validate_repo_id(repo: &str) -> Result<()> {
    let bad = || FetchError::from(FetchErrorKind::BadRepoId(repo.to_string()));
    let parts: Vec<&str> = repo.split('/').collect();
    if parts.is_empty() || parts.len() > 2 || repo.contains("--") || repo.contains("..") {
        return Err(bad());
    }
    for p in parts {
        let ok = !p.is_empty()
            && p.len() <= 96
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && !p.starts_with(['-', '.'])
            && !p.ends_with(['-', '.']);
        if !ok {
            return Err(bad());
        }
    }
    Ok(())
}

/// Checks a branch, tag or commit name: letters, digits and `-_./+`, no
/// `..`, so it is safe in a URL and as a `refs/` file name.
pub fn validate_revision(revision: &str) -> Result<()> {
    let ok = !revision.is_empty()
        && revision.len() <= 256
        && !revision.contains("..")
        && !revision.starts_with('/')
        && !revision.ends_with('/')
        && revision
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./+".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(FetchErrorKind::RevisionNotFound {
            repo: String::new(),
            revision: revision.to_string(),
        }
        .into())
    }
}

/// How a fetch runs.
#[derive(Clone)]
pub struct FetchOptions {
    /// Endpoint, cache, token, offline.
    pub hub: HubConfig,
    /// Also place the files as plain copies in this folder, with
    /// `huggingface_hub`'s `.cache/huggingface/download/*.metadata` so
    /// `hf download --local-dir` sees them as current.
    pub local_dir: Option<PathBuf>,
    /// Files downloaded at once.
    pub jobs: usize,
    /// Retries on 429/5xx and network errors.
    pub retry: RetryPolicy,
    /// Re-hash cached LFS files against the Hub's sha256 (a bad one is
    /// deleted and downloaded again).
    pub verify_cached: bool,
    /// Told about progress.
    pub observer: Arc<dyn FetchObserver>,
}

impl FetchOptions {
    /// Defaults: 4 files at once, huggingface_hub's retry numbers, no
    /// local dir, silent.
    pub fn new(hub: HubConfig) -> FetchOptions {
        FetchOptions {
            hub,
            local_dir: None,
            jobs: 4,
            retry: RetryPolicy::default(),
            verify_cached: false,
            observer: Arc::new(Silent),
        }
    }
}

/// Hears about a fetch as it runs; called from several threads at once.
pub trait FetchObserver: Send + Sync {
    /// The files chosen, with their sizes, and which need downloading.
    fn planned(&self, _files: &[PlannedFile]) {}
    /// A download (re)starts at byte `offset` of `total`.
    fn file_started(&self, _path: &str, _total: Option<u64>, _offset: u64) {}
    /// `bytes` more of `path` arrived.
    fn file_progress(&self, _path: &str, _bytes: u64) {}
    /// `path` is in place.
    fn file_finished(&self, _path: &str, _source: FileSource) {}
    /// A request failed in a way that may pass; waiting `wait` before
    /// attempt `attempt + 1`.
    fn retrying(&self, _url: &str, _attempt: u32, _why: &str, _wait: Duration) {}
}

/// An observer that hears nothing.
pub struct Silent;
impl FetchObserver for Silent {}

/// One file a fetch is about to bring in.
#[derive(Debug, Clone)]
pub struct PlannedFile {
    /// Repo path.
    pub path: String,
    /// Size the Hub announced.
    pub size: Option<u64>,
    /// Already in the cache at this commit.
    pub cached: bool,
}

/// Where a file's bytes came from on this run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileSource {
    /// The snapshot already had it, or its blob was there (fetched before,
    /// by qforge or another tool); nothing was downloaded.
    Cached,
    /// Downloaded from the first byte.
    Downloaded,
    /// A partial download from an earlier run was continued from `from`.
    Resumed {
        /// Bytes that were already on disk.
        from: u64,
    },
}

/// One fetched file.
#[derive(Debug, Clone)]
pub struct FetchedFile {
    /// Repo path, `/`-separated.
    pub path: String,
    /// Bytes.
    pub size: u64,
    /// SHA-256 of the contents.
    pub sha256: String,
    /// An LFS file: `sha256` was checked against the Hub's metadata when its
    /// bytes were downloaded.
    pub lfs: bool,
    /// The blob's name in the cache (LFS sha256 or git blob id).
    pub etag: String,
    /// The file on disk: the snapshot entry, or the copy in `local_dir`.
    pub local_path: PathBuf,
    /// How it got there.
    pub source: FileSource,
}

/// A fetched revision.
#[derive(Debug, Clone)]
pub struct FetchedSnapshot {
    /// `ORG/REPO`.
    pub repo: String,
    /// The revision asked for.
    pub revision: String,
    /// The commit it resolved to (what a lockfile pins).
    pub commit: String,
    /// The snapshot folder (or `local_dir`).
    pub dir: PathBuf,
    /// The files, in the repo's order.
    pub files: Vec<FetchedFile>,
}

/// Fetches the files of `repo` at `revision` that `filter` selects into the
/// HF cache (and `options.local_dir`), and says where they are.
pub fn fetch(
    repo: &str,
    revision: &str,
    filter: &FileFilter,
    options: &FetchOptions,
) -> Result<FetchedSnapshot> {
    validate_repo_id(repo)?;
    validate_revision(revision).map_err(|_| {
        FetchError::from(FetchErrorKind::RevisionNotFound {
            repo: repo.to_string(),
            revision: revision.to_string(),
        })
    })?;
    filter.validate()?;
    let cache = RepoCache::new(&options.hub.cache_dir, repo);
    let mut snap = if options.hub.offline {
        fetch_offline(repo, revision, filter, &cache)?
    } else {
        fetch_online(repo, revision, filter, options, &cache)?
    };
    if let Some(dir) = &options.local_dir {
        place_in_local_dir(dir, &mut snap)?;
    }
    Ok(snap)
}

fn fetch_online(
    repo: &str,
    revision: &str,
    filter: &FileFilter,
    options: &FetchOptions,
    cache: &RepoCache,
) -> Result<FetchedSnapshot> {
    let client = HubClient::new(
        &options.hub,
        options.retry.clone(),
        options.observer.clone(),
    )?;
    let listing = client.revision_listing(repo, revision)?;
    let commit = listing.commit.clone();
    let paths: Vec<&str> = listing.files.iter().map(|f| f.path.as_str()).collect();
    let chosen = filter.select(&paths)?;
    if chosen.is_empty() {
        return Err(nothing_matched(repo, &commit, filter, &paths));
    }
    let remote: Vec<&RemoteFile> = chosen
        .iter()
        .map(|p| {
            listing
                .files
                .iter()
                .find(|f| f.path == *p)
                .expect("chosen from the listing")
        })
        .collect();

    let mut plan = Vec::with_capacity(remote.len());
    for f in &remote {
        let pointer = cache.pointer(&commit, &f.path)?;
        let cached = pointer.is_file() && cached_entry_ok(&pointer, f, options.verify_cached)?;
        plan.push(PlannedFile {
            path: f.path.clone(),
            size: f.size,
            cached,
        });
    }
    if listing.gated && options.hub.token.is_none() && plan.iter().any(|p| !p.cached) {
        // The listing of a gated repo is public; its files are not. Say so
        // now rather than after a 401 per file.
        return Err(client.gated_without_token(repo));
    }
    options.observer.planned(&plan);
    cache.prepare()?;

    let queue: Mutex<VecDeque<usize>> = Mutex::new((0..remote.len()).collect());
    let results: Mutex<Vec<Option<Result<FetchedFile>>>> =
        Mutex::new((0..remote.len()).map(|_| None).collect());
    let failed = AtomicBool::new(false);
    let workers = options.jobs.clamp(1, 16).min(remote.len());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                if failed.load(Ordering::Relaxed) {
                    return;
                }
                let Some(i) = queue.lock().expect("not poisoned").pop_front() else {
                    return;
                };
                let r = fetch_one(
                    &client,
                    cache,
                    repo,
                    &commit,
                    remote[i],
                    plan[i].cached,
                    options,
                );
                if r.is_err() {
                    failed.store(true, Ordering::Relaxed);
                }
                results.lock().expect("not poisoned")[i] = Some(r);
            });
        }
    });
    let mut files = Vec::with_capacity(remote.len());
    for r in results
        .into_inner()
        .expect("not poisoned")
        .into_iter()
        .flatten()
    {
        files.push(r?);
    }
    cache.write_ref(revision, &commit)?;
    Ok(FetchedSnapshot {
        repo: repo.to_string(),
        revision: revision.to_string(),
        dir: cache.snapshot_dir(&commit),
        commit,
        files,
    })
}

/// Whether a snapshot entry can be served as is: its size is the Hub's,
/// and with `verify` its contents hash to the Hub's LFS sha256. A bad blob
/// is deleted here so the download that follows replaces it.
fn cached_entry_ok(pointer: &Path, f: &RemoteFile, verify: bool) -> Result<bool> {
    let size = fs::metadata(pointer)
        .map_err(|e| FetchError::io(pointer, e))?
        .len();
    let bad = f.size.is_some_and(|s| s != size)
        || match (&f.lfs_sha256, verify) {
            (Some(want), true) => {
                &sha256_file(pointer).map_err(|e| FetchError::io(pointer, e))? != want
            }
            _ => false,
        };
    if bad {
        if let Ok(blob) = fs::canonicalize(pointer) {
            let _ = fs::remove_file(blob);
        }
        let _ = fs::remove_file(pointer);
    }
    Ok(!bad)
}

fn fetch_one(
    client: &HubClient,
    cache: &RepoCache,
    repo: &str,
    commit: &str,
    f: &RemoteFile,
    cached: bool,
    options: &FetchOptions,
) -> Result<FetchedFile> {
    let observer = options.observer.as_ref();
    let pointer = cache.pointer(commit, &f.path)?;
    if cached {
        let etag = cache::blob_name_of(&pointer).unwrap_or_default();
        let file = describe_cached(&f.path, &pointer, &etag, f.lfs_sha256.as_deref())?;
        observer.file_finished(&f.path, FileSource::Cached);
        return Ok(file);
    }
    let meta = client.file_meta(repo, commit, &f.path)?;
    if let Some(lfs) = &f.lfs_sha256 {
        if !meta.etag.eq_ignore_ascii_case(lfs) {
            return Err(FetchErrorKind::BadResponse {
                url: client.resolve_url(repo, commit, &f.path),
                what: format!(
                    "the revision listing gives {} LFS sha256 {lfs} but the file's headers name {}",
                    f.path, meta.etag
                ),
            }
            .into());
        }
    }
    let blob = cache.blob(&meta.etag);
    let (sha256, size, source) = if blob.is_file() {
        let size = fs::metadata(&blob)
            .map_err(|e| FetchError::io(&blob, e))?
            .len();
        let sha = match &f.lfs_sha256 {
            Some(s) => s.clone(),
            None => sha256_file(&blob).map_err(|e| FetchError::io(&blob, e))?,
        };
        (sha, size, FileSource::Cached)
    } else {
        let job = BlobJob {
            path: &f.path,
            url: &meta.location,
            etag: &meta.etag,
            size: meta.size.or(f.size),
            sha256: f.lfs_sha256.as_deref(),
        };
        let done = download_blob(client, cache, &job, observer)?;
        let source = match done.resumed_from {
            None => FileSource::Cached,
            Some(0) => FileSource::Downloaded,
            Some(from) => FileSource::Resumed { from },
        };
        (done.sha256, done.size, source)
    };
    let local_path = cache.link(commit, &f.path, &meta.etag)?;
    observer.file_finished(&f.path, source);
    Ok(FetchedFile {
        path: f.path.clone(),
        size,
        sha256,
        lfs: f.lfs_sha256.is_some(),
        etag: meta.etag,
        local_path,
        source,
    })
}

/// A file served from the cache: LFS blobs are named by their sha256 (and
/// were checked when downloaded); other files are small and hashed here.
fn describe_cached(
    path: &str,
    pointer: &Path,
    etag: &str,
    lfs: Option<&str>,
) -> Result<FetchedFile> {
    let size = fs::metadata(pointer)
        .map_err(|e| FetchError::io(pointer, e))?
        .len();
    let looks_lfs = etag.len() == 64 && etag.bytes().all(|b| b.is_ascii_hexdigit());
    let sha256 = match lfs {
        Some(s) => s.to_string(),
        None if looks_lfs => etag.to_ascii_lowercase(),
        None => sha256_file(pointer).map_err(|e| FetchError::io(pointer, e))?,
    };
    Ok(FetchedFile {
        path: path.to_string(),
        size,
        sha256,
        lfs: lfs.is_some() || looks_lfs,
        etag: etag.to_string(),
        local_path: pointer.to_path_buf(),
        source: FileSource::Cached,
    })
}

/// `HF_HUB_OFFLINE`: the snapshot the cache has for `revision`, filtered.
fn fetch_offline(
    repo: &str,
    revision: &str,
    filter: &FileFilter,
    cache: &RepoCache,
) -> Result<FetchedSnapshot> {
    let not_cached = |what: String| {
        FetchError::from(FetchErrorKind::NotCached {
            repo: repo.to_string(),
            revision: revision.to_string(),
            cache: cache
                .folder()
                .parent()
                .unwrap_or(Path::new(""))
                .to_path_buf(),
            what,
        })
    };
    let commit = if is_commit_hash(revision) {
        revision.to_string()
    } else {
        cache.read_ref(revision).ok_or_else(|| {
            not_cached(format!(
                "there is no {}",
                cache.folder().join("refs").join(revision).display()
            ))
        })?
    };
    let entries = cache.snapshot_files(&commit)?.ok_or_else(|| {
        not_cached(format!(
            "there is no snapshot folder {}",
            cache.snapshot_dir(&commit).display()
        ))
    })?;
    let paths: Vec<&str> = entries.iter().map(|(p, _)| p.as_str()).collect();
    let chosen = filter.select(&paths)?;
    if chosen.is_empty() {
        return Err(not_cached(format!(
            "none of its cached files matches {}",
            filter.describe()
        )));
    }
    let mut files = Vec::with_capacity(chosen.len());
    for path in chosen {
        let (_, pointer) = entries
            .iter()
            .find(|(p, _)| p == path)
            .expect("chosen from entries");
        let etag = cache::blob_name_of(pointer).unwrap_or_default();
        files.push(describe_cached(path, pointer, &etag, None)?);
    }
    Ok(FetchedSnapshot {
        repo: repo.to_string(),
        revision: revision.to_string(),
        dir: cache.snapshot_dir(&commit),
        commit,
        files,
    })
}

/// Copies the fetched files into `dir` (atomically, each), skipping those
/// already there at the same etag, and writes `huggingface_hub`'s download
/// metadata next to them.
fn place_in_local_dir(dir: &Path, snap: &mut FetchedSnapshot) -> Result<()> {
    let meta_root = dir.join(".cache").join("huggingface");
    let download = meta_root.join("download");
    fs::create_dir_all(&download).map_err(|e| FetchError::io(&download, e))?;
    let gitignore = meta_root.join(".gitignore");
    if !gitignore.exists() {
        let _ = fs::write(&gitignore, "*");
    }
    for f in &mut snap.files {
        let rel = cache::safe_relative_path(&f.path)?;
        let dest = dir.join(&rel);
        let meta_path = download.join(format!("{}.metadata", rel.display()));
        let current = fs::read_to_string(&meta_path).is_ok_and(|m| {
            let mut lines = m.lines();
            lines.next() == Some(snap.commit.as_str()) && lines.next() == Some(f.etag.as_str())
        }) && fs::metadata(&dest).is_ok_and(|m| m.len() == f.size);
        if !current {
            let parent = dest.parent().expect("under dir");
            fs::create_dir_all(parent).map_err(|e| FetchError::io(parent, e))?;
            let tmp = temp_path_for(&dest);
            let copy = || -> std::io::Result<()> {
                fs::copy(&f.local_path, &tmp)?;
                fs::File::open(&tmp)?.sync_all()?;
                fs::rename(&tmp, &dest)
            };
            copy().map_err(|e| {
                let _ = fs::remove_file(&tmp);
                FetchError::io(&dest, e)
            })?;
            sync_parent(&dest);
            let meta_parent = meta_path.parent().expect("under download/");
            fs::create_dir_all(meta_parent).map_err(|e| FetchError::io(meta_parent, e))?;
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            fs::write(&meta_path, format!("{}\n{}\n{now}\n", snap.commit, f.etag))
                .map_err(|e| FetchError::io(&meta_path, e))?;
        }
        f.local_path = dest;
    }
    snap.dir = dir.to_path_buf();
    Ok(())
}

fn nothing_matched(repo: &str, commit: &str, filter: &FileFilter, all: &[&str]) -> FetchError {
    let mut sample: Vec<&str> = all.iter().copied().take(8).collect();
    if all.len() > sample.len() {
        sample.push("...");
    }
    FetchErrorKind::NothingMatched {
        repo: repo.to_string(),
        commit: commit.to_string(),
        patterns: filter.describe(),
        sample: sample.join(", "),
    }
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_refs_parse() {
        let r = RepoRef::parse("HuggingFaceTB/SmolLM2-135M@v1.0").unwrap();
        assert_eq!(
            (r.repo.as_str(), r.revision.as_str()),
            ("HuggingFaceTB/SmolLM2-135M", "v1.0")
        );
        let r = RepoRef::parse("hf://org/name").unwrap();
        assert_eq!(r.revision, "main");
        assert_eq!(r.to_string(), "org/name@main");
        for bad in [
            "",
            "a/b/c",
            "org/",
            "/name",
            "a--b/c",
            "org/na me",
            "org/name@",
            "../x",
        ] {
            assert!(RepoRef::parse(bad).is_err(), "{bad}");
        }
    }
}
