//! Talking to the Hub over HTTP: the revision listing (through hf-hub's
//! request builder), HEAD metadata of one file, ranged GETs of its bytes;
//! each with retries on 429/5xx and network errors, none on 401/403/404, and
//! the Authorization header only ever sent to the Hub itself, never to the
//! CDN a file redirects to.

use std::io;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use hf_hub::api::sync::{Api, ApiBuilder};
use hf_hub::{Cache, Repo, RepoType};
use serde::Deserialize;
use url::Url;

use super::config::HubConfig;
use super::error::{FetchError, FetchErrorKind, Result};
use super::FetchObserver;

/// How requests are retried.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Requests per URL before giving up (the first one included).
    pub max_attempts: u32,
    /// Wait before the first retry; doubles each time.
    pub base_delay: Duration,
    /// The most the doubling grows to.
    pub max_delay: Duration,
    /// The most a server's `Retry-After` is obeyed for; longer asks are cut
    /// to this so a run never hangs on one header.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    /// huggingface_hub's numbers: 5 retries, 1 s doubling to 8 s.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(8),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `retry` (1-based), or what the server
    /// asked for, bounded.
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(ra) = retry_after {
            return ra.min(self.max_retry_after);
        }
        let factor = 1u32 << (retry.saturating_sub(1)).min(16);
        (self.base_delay * factor).min(self.max_delay)
    }
}

/// One file in a revision listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFile {
    /// Repo-relative path, `/`-separated.
    pub path: String,
    /// Size in bytes, when the Hub gave it.
    pub size: Option<u64>,
    /// Git blob id (the etag of a non-LFS file).
    pub blob_id: Option<String>,
    /// SHA-256 of an LFS file's contents.
    pub lfs_sha256: Option<String>,
}

/// A revision resolved to its commit, with its files.
#[derive(Debug, Clone)]
pub struct RevisionListing {
    /// The 40-hex commit.
    pub commit: String,
    /// Every file at that commit.
    pub files: Vec<RemoteFile>,
    /// The repo is gated: its listing is public, its files need a token.
    pub gated: bool,
}

#[derive(Deserialize)]
struct RawInfo {
    sha: Option<String>,
    /// `false`, or `"auto"`/`"manual"` for a gated repo.
    #[serde(default)]
    gated: serde_json::Value,
    #[serde(default)]
    siblings: Vec<RawSibling>,
}

#[derive(Deserialize)]
struct RawSibling {
    rfilename: String,
    size: Option<u64>,
    #[serde(rename = "blobId")]
    blob_id: Option<String>,
    lfs: Option<RawLfs>,
}

#[derive(Deserialize)]
struct RawLfs {
    sha256: String,
    size: Option<u64>,
}

/// What a HEAD on `/{repo}/resolve/{commit}/{path}` says.
#[derive(Debug, Clone)]
pub struct FileMeta {
    /// `X-Repo-Commit`.
    pub commit: String,
    /// `X-Linked-Etag` (the sha256 of an LFS file) or `ETag`, unquoted: the
    /// blob's name in the cache.
    pub etag: String,
    /// `X-Linked-Size` or `Content-Length`.
    pub size: Option<u64>,
    /// Where the bytes are: the CDN URL a redirect named, or the resolve URL.
    pub location: String,
}

/// The HTTP side of a fetch.
pub struct HubClient {
    config: HubConfig,
    endpoint: Url,
    agent: ureq::Agent,
    api: Api,
    retry: RetryPolicy,
    user_agent: String,
    observer: Arc<dyn FetchObserver>,
}

/// A failed attempt: retry it, or give up with this error.
enum Failure {
    Retry {
        why: String,
        retry_after: Option<Duration>,
    },
    Fatal(FetchError),
}

impl HubClient {
    /// A client for `config`'s endpoint and token.
    pub fn new(
        config: &HubConfig,
        retry: RetryPolicy,
        observer: Arc<dyn FetchObserver>,
    ) -> Result<HubClient> {
        let endpoint = Url::parse(&config.endpoint).map_err(|e| FetchErrorKind::BadEnv {
            var: "HF_ENDPOINT",
            value: config.endpoint.clone(),
            why: e.to_string(),
        })?;
        let user_agent = format!("qforge/{}; hf-hub/0.4", crate::VERSION);
        let api = ApiBuilder::from_cache(Cache::new(config.cache_dir.clone()))
            .with_endpoint(config.endpoint.clone())
            .with_token(config.token.clone())
            .with_progress(false)
            .with_user_agent("qforge", crate::VERSION)
            .build()
            .map_err(|e| FetchErrorKind::BadResponse {
                url: config.endpoint.clone(),
                what: format!("cannot set up the HTTP client: {e}"),
            })?;
        let agent = ureq::AgentBuilder::new()
            .redirects(0)
            .try_proxy_from_env(true)
            .timeout_connect(config.connect_timeout)
            .timeout_read(config.read_timeout)
            .user_agent(&user_agent)
            .build();
        Ok(HubClient {
            config: config.clone(),
            endpoint,
            agent,
            api,
            retry,
            user_agent,
            observer,
        })
    }

    /// The error for a gated repo's files when no token is set.
    pub fn gated_without_token(&self, repo: &str) -> FetchError {
        FetchErrorKind::Gated {
            repo: repo.to_string(),
            endpoint: self.config.endpoint.clone(),
            token_sent: false,
            token_path: self.config.token_path.clone(),
            server_message: None,
        }
        .into()
    }

    /// The configuration this client was made with.
    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    /// Resolves `revision` (branch, tag or commit) of `repo` to its commit
    /// and lists its files with sizes and LFS sha256:
    /// `GET /api/models/{repo}/revision/{revision}?blobs=true`.
    pub fn revision_listing(&self, repo: &str, revision: &str) -> Result<RevisionListing> {
        let hf_repo = Repo::with_revision(repo.to_string(), RepoType::Model, revision.to_string());
        let api_repo = self.api.repo(hf_repo.clone());
        let url = format!("{}/api/{}", self.config.endpoint, hf_repo.api_url());
        let ctx = Ctx {
            repo,
            revision: Some(revision),
            path: None,
        };
        let resp = self.with_retry(&url, |_| {
            let req = api_repo
                .info_request()
                .query("blobs", "true")
                .timeout(self.config.read_timeout * 2);
            self.classify(req.call(), &url, &ctx)
        })?;
        let raw: RawInfo = resp
            .into_json()
            .map_err(|e| bad_response(&url, format!("the revision listing is not JSON: {e}")))?;
        let commit = raw
            .sha
            .filter(|s| is_commit_hash(s))
            .ok_or_else(|| bad_response(&url, "the revision listing has no 40-hex 'sha'"))?;
        let gated = !matches!(
            raw.gated,
            serde_json::Value::Null | serde_json::Value::Bool(false)
        );
        let files = raw
            .siblings
            .into_iter()
            .map(|s| RemoteFile {
                size: s.lfs.as_ref().and_then(|l| l.size).or(s.size),
                lfs_sha256: s.lfs.map(|l| l.sha256.to_ascii_lowercase()),
                blob_id: s.blob_id,
                path: s.rfilename,
            })
            .collect();
        Ok(RevisionListing {
            commit,
            files,
            gated,
        })
    }

    /// `HEAD /{repo}/resolve/{commit}/{path}`, following redirects that stay
    /// on the Hub and stopping at the first one that leaves it (its headers
    /// carry the metadata; its `Location` is where the bytes are).
    pub fn file_meta(&self, repo: &str, commit: &str, path: &str) -> Result<FileMeta> {
        let start = self.resolve_url(repo, commit, path);
        let ctx = Ctx {
            repo,
            revision: Some(commit),
            path: Some(path),
        };
        let mut url = start.clone();
        for _ in 0..10 {
            let resp = self.with_retry(&url, |_| {
                let req = self
                    .request("HEAD", &url)
                    .set("Accept-Encoding", "identity");
                self.classify(req.call(), &url, &ctx)
            })?;
            if (300..400).contains(&resp.status()) {
                let target = redirect_target(&resp, &url)?;
                if self.is_hub_origin(&target) {
                    url = target;
                    continue;
                }
                return meta_from(&resp, &url, Some(target));
            }
            return meta_from(&resp, &url, None);
        }
        Err(bad_response(&start, "more than 10 redirects"))
    }

    /// Opens `GET url` for the bytes from `offset` on (a `Range` request when
    /// `offset > 0`), following every redirect; the caller reads the body.
    /// Statuses are classified but the body's own failures (a cut
    /// connection) are the caller's to retry, with [`HubClient::retry_wait`].
    pub fn open_bytes(
        &self,
        url: &str,
        offset: u64,
        path: &str,
        attempt: &mut u32,
    ) -> Result<ureq::Response> {
        let ctx = Ctx {
            repo: "",
            revision: None,
            path: Some(path),
        };
        let mut url = url.to_string();
        for _ in 0..10 {
            let resp = self.with_retry_from(&url, attempt, |_| {
                let mut req = self.request("GET", &url).set("Accept-Encoding", "identity");
                if offset > 0 {
                    req = req.set("Range", &format!("bytes={offset}-"));
                }
                match req.call() {
                    // The partial file is longer than the file: the caller
                    // starts over.
                    Err(ureq::Error::Status(416, r)) => Ok(r),
                    other => self.classify(other, &url, &ctx),
                }
            })?;
            if (300..400).contains(&resp.status()) {
                url = redirect_target(&resp, &url)?;
                continue;
            }
            return Ok(resp);
        }
        Err(bad_response(&url, "more than 10 redirects"))
    }

    /// Sleeps before retry `attempt` of `url` after a body that broke off,
    /// or fails when the attempts are used up.
    pub fn retry_wait(&self, url: &str, attempt: &mut u32, why: &str) -> Result<()> {
        *attempt += 1;
        if *attempt >= self.retry.max_attempts {
            return Err(FetchErrorKind::RetriesExhausted {
                url: url.to_string(),
                attempts: *attempt,
                last: why.to_string(),
            }
            .into());
        }
        let wait = self.retry.delay(*attempt, None);
        self.observer.retrying(url, *attempt, why, wait);
        thread::sleep(wait);
        Ok(())
    }

    /// The URL of a file's bytes at a commit, its path percent-encoded as
    /// `huggingface_hub` does (`quote(path)`, `/` kept).
    pub fn resolve_url(&self, repo: &str, commit: &str, path: &str) -> String {
        format!(
            "{}/{}/resolve/{}/{}",
            self.config.endpoint,
            repo,
            commit,
            quote_path(path)
        )
    }

    fn request(&self, method: &str, url: &str) -> ureq::Request {
        let mut req = self
            .agent
            .request(method, url)
            .set("User-Agent", &self.user_agent);
        if let Some(token) = &self.config.token {
            if self.is_hub_origin(url) {
                req = req.set("Authorization", &format!("Bearer {token}"));
            }
        }
        req
    }

    /// Whether `url` is served by the Hub endpoint itself (same scheme, host
    /// and port): the only place the token goes.
    fn is_hub_origin(&self, url: &str) -> bool {
        Url::parse(url).is_ok_and(|u| {
            u.scheme() == self.endpoint.scheme()
                && u.host_str() == self.endpoint.host_str()
                && u.port_or_known_default() == self.endpoint.port_or_known_default()
        })
    }

    fn with_retry<T>(
        &self,
        url: &str,
        op: impl FnMut(u32) -> std::result::Result<T, Failure>,
    ) -> Result<T> {
        let mut attempt = 0;
        self.with_retry_from(url, &mut attempt, op)
    }

    fn with_retry_from<T>(
        &self,
        url: &str,
        attempt: &mut u32,
        mut op: impl FnMut(u32) -> std::result::Result<T, Failure>,
    ) -> Result<T> {
        loop {
            match op(*attempt) {
                Ok(v) => return Ok(v),
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Retry { why, retry_after }) => {
                    *attempt += 1;
                    if *attempt >= self.retry.max_attempts {
                        return Err(FetchErrorKind::RetriesExhausted {
                            url: url.to_string(),
                            attempts: *attempt,
                            last: why,
                        }
                        .into());
                    }
                    let wait = self.retry.delay(*attempt, retry_after);
                    self.observer.retrying(url, *attempt, &why, wait);
                    thread::sleep(wait);
                }
            }
        }
    }

    /// Sorts a response into success, retry, or a typed error.
    fn classify(
        &self,
        result: std::result::Result<ureq::Response, ureq::Error>,
        url: &str,
        ctx: &Ctx,
    ) -> std::result::Result<ureq::Response, Failure> {
        let resp = match result {
            Ok(r) => return Ok(r),
            Err(ureq::Error::Transport(t)) => {
                return Err(Failure::Retry {
                    why: t.to_string(),
                    retry_after: None,
                })
            }
            Err(ureq::Error::Status(_, r)) => r,
        };
        let status = resp.status();
        let code = resp.header("X-Error-Code").map(str::to_string);
        let message = resp.header("X-Error-Message").map(str::to_string);
        if status == 408 || status == 429 || status >= 500 {
            let retry_after = resp
                .header("Retry-After")
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            return Err(Failure::Retry {
                why: format!(
                    "HTTP {status}{}",
                    message.map(|m| format!(" ({m})")).unwrap_or_default()
                ),
                retry_after,
            });
        }
        let token_sent = self.config.token.is_some() && self.is_hub_origin(url);
        let kind = match (status, code.as_deref()) {
            (401 | 403, Some("GatedRepo")) => FetchErrorKind::Gated {
                repo: ctx.repo.to_string(),
                endpoint: self.config.endpoint.clone(),
                token_sent,
                token_path: self.config.token_path.clone(),
                server_message: message,
            },
            (_, Some("RevisionNotFound")) => FetchErrorKind::RevisionNotFound {
                repo: ctx.repo.to_string(),
                revision: ctx.revision.unwrap_or_default().to_string(),
            },
            (_, Some("EntryNotFound")) => FetchErrorKind::EntryNotFound {
                repo: ctx.repo.to_string(),
                commit: ctx.revision.unwrap_or_default().to_string(),
                path: ctx.path.unwrap_or_default().to_string(),
            },
            (401 | 404, Some("RepoNotFound")) | (401, _) if !ctx.repo.is_empty() => {
                FetchErrorKind::RepoNotFound {
                    repo: ctx.repo.to_string(),
                    endpoint: self.config.endpoint.clone(),
                    status,
                    token_sent,
                    server_message: message,
                }
            }
            (403, _) => FetchErrorKind::Forbidden {
                url: url.to_string(),
                server_message: message,
            },
            _ => FetchErrorKind::Http {
                url: url.to_string(),
                status,
                server_message: message,
            },
        };
        Err(Failure::Fatal(kind.into()))
    }
}

struct Ctx<'a> {
    repo: &'a str,
    revision: Option<&'a str>,
    path: Option<&'a str>,
}

fn meta_from(resp: &ureq::Response, url: &str, location: Option<String>) -> Result<FileMeta> {
    let commit = resp
        .header("X-Repo-Commit")
        .map(str::to_string)
        .ok_or_else(|| bad_response(url, "the response has no X-Repo-Commit header"))?;
    let etag = resp
        .header("X-Linked-Etag")
        .or_else(|| resp.header("ETag"))
        .map(normalize_etag)
        .filter(|e| is_safe_blob_name(e))
        .ok_or_else(|| bad_response(url, "the response has no usable ETag"))?;
    let size = resp
        .header("X-Linked-Size")
        .or_else(|| {
            if location.is_none() {
                resp.header("Content-Length")
            } else {
                None
            }
        })
        .and_then(|v| v.trim().parse().ok());
    Ok(FileMeta {
        commit,
        etag,
        size,
        location: location.unwrap_or_else(|| url.to_string()),
    })
}

fn redirect_target(resp: &ureq::Response, url: &str) -> Result<String> {
    let loc = resp
        .header("Location")
        .ok_or_else(|| bad_response(url, "a redirect without Location"))?;
    Url::parse(url)
        .and_then(|base| base.join(loc))
        .map(String::from)
        .map_err(|e| bad_response(url, format!("redirect to '{loc}': {e}")))
}

/// `W/"abc"` or `"abc"` to `abc`, as huggingface_hub's `_normalize_etag`.
pub fn normalize_etag(e: &str) -> String {
    e.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .to_string()
}

/// An etag that can name a file in `blobs/`: hex and a few safe characters,
/// never a path.
pub fn is_safe_blob_name(e: &str) -> bool {
    !e.is_empty()
        && e.len() <= 128
        && e.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A full 40-hex commit id.
pub fn is_commit_hash(s: &str) -> bool {
    s.len() == 40
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Percent-encodes a repo path like Python's `urllib.parse.quote(path)`:
/// letters, digits, `_.-~` and `/` stay, every other byte is `%XX`.
pub fn quote_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"_.-~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn bad_response(url: &str, what: impl Into<String>) -> FetchError {
    FetchErrorKind::BadResponse {
        url: url.to_string(),
        what: what.into(),
    }
    .into()
}

/// Whether an I/O error while reading a body may pass on a retry.
pub fn is_transient(e: &io::Error) -> bool {
    !matches!(
        e.kind(),
        io::ErrorKind::PermissionDenied
            | io::ErrorKind::StorageFull
            | io::ErrorKind::ReadOnlyFilesystem
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_quote_like_python() {
        assert_eq!(
            quote_path("model-00001-of-00002.safetensors"),
            "model-00001-of-00002.safetensors"
        );
        assert_eq!(quote_path("sub dir/a+b#c.json"), "sub%20dir/a%2Bb%23c.json");
        assert_eq!(quote_path("é"), "%C3%A9");
    }

    #[test]
    fn etags_normalize() {
        assert_eq!(normalize_etag("W/\"abc\""), "abc");
        assert_eq!(normalize_etag("\"abc\""), "abc");
        assert!(is_safe_blob_name("a3f1"));
        assert!(!is_safe_blob_name("../x"));
        assert!(!is_safe_blob_name(""));
    }

    #[test]
    fn backoff_doubles_and_is_bounded() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay(1, None), Duration::from_secs(1));
        assert_eq!(p.delay(2, None), Duration::from_secs(2));
        assert_eq!(p.delay(4, None), Duration::from_secs(8));
        assert_eq!(p.delay(9, None), Duration::from_secs(8));
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(3600))),
            Duration::from_secs(60)
        );
    }
}
