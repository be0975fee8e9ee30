//! The one error type of `fetch`: what went wrong, said so a user can act on
//! it (which repo, which file, which URL, and what to do next).

use std::io;
use std::path::{Path, PathBuf};

/// What went wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchErrorKind {
    /// `ORG/REPO[@REVISION]` that does not parse.
    #[error("'{0}' is not a Hub repo id: expected ORG/REPO or ORG/REPO@REVISION")]
    BadRepoId(String),
    /// A glob the matcher cannot use.
    #[error("bad glob '{pattern}': {why}")]
    BadPattern {
        /// The pattern as given.
        pattern: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// An environment variable with a value that cannot be used.
    #[error("{var}={value:?} cannot be used: {why}")]
    BadEnv {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        why: String,
    },
    /// The repo is gated and the request carried no token, or one without access.
    #[error(
        "{repo} is a gated repo: {reason}. Accept its terms at {endpoint}/{repo} with your account, \
         then give qforge a token of that account: set HF_TOKEN=hf_... or run `hf auth login` \
         (it stores the token in {token_path}){server}",
        reason = if *.token_sent { "the token sent has no access to it" } else { "its files need a token and none was sent" },
        token_path = .token_path.display(),
        server = server_says(.server_message)
    )]
    Gated {
        /// The repo id.
        repo: String,
        /// The Hub endpoint.
        endpoint: String,
        /// Whether a token was sent.
        token_sent: bool,
        /// Where `hf auth login` keeps the token.
        token_path: PathBuf,
        /// The Hub's own words (X-Error-Message), if any.
        server_message: Option<String>,
    },
    /// The repo does not exist, or is private and needs a token.
    #[error(
        "repo {repo} was not found at {endpoint} (HTTP {status}){hint}{server}",
        hint = if *.token_sent {
            ": check the name, and that the token's account can read it"
        } else {
            ": check the name; if it is private or gated, set HF_TOKEN=hf_... (or run `hf auth login`)"
        },
        server = server_says(.server_message)
    )]
    RepoNotFound {
        /// The repo id.
        repo: String,
        /// The Hub endpoint.
        endpoint: String,
        /// The HTTP status (401 or 404).
        status: u16,
        /// Whether a token was sent.
        token_sent: bool,
        /// The Hub's own words, if any.
        server_message: Option<String>,
    },
    /// The token was refused for this resource.
    #[error("access to {url} is forbidden (HTTP 403): the token lacks permission for it{server}", server = server_says(.server_message))]
    Forbidden {
        /// The URL.
        url: String,
        /// The Hub's own words, if any.
        server_message: Option<String>,
    },
    /// No such branch, tag or commit.
    #[error(
        "revision '{revision}' does not exist in {repo}: name a branch, a tag or a commit hash"
    )]
    RevisionNotFound {
        /// The repo id.
        repo: String,
        /// The revision asked for.
        revision: String,
    },
    /// A file the repo listing named is not there.
    #[error("{repo}@{commit} has no file '{path}' (HTTP 404)")]
    EntryNotFound {
        /// The repo id.
        repo: String,
        /// The commit.
        commit: String,
        /// The path in the repo.
        path: String,
    },
    /// An HTTP status that is neither success nor one of the cases above.
    #[error("{url} answered HTTP {status}{server}", server = server_says(.server_message))]
    Http {
        /// The URL.
        url: String,
        /// The status.
        status: u16,
        /// The Hub's own words, if any.
        server_message: Option<String>,
    },
    /// Retries ran out on a status or a network error that may pass.
    #[error("gave up on {url} after {attempts} attempts: {last}")]
    RetriesExhausted {
        /// The URL.
        url: String,
        /// How many requests were made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
    /// A response that does not look like the Hub's.
    #[error("{url}: {what}; is HF_ENDPOINT a Hugging Face Hub (or a mirror of one)?")]
    BadResponse {
        /// The URL.
        url: String,
        /// What is missing or malformed.
        what: String,
    },
    /// The downloaded bytes do not hash to the Hub's LFS sha256.
    #[error(
        "sha256 mismatch for {path}: the Hub's LFS metadata says {expected}, the downloaded bytes hash to {actual}; \
         the download was deleted, run the fetch again"
    )]
    ChecksumMismatch {
        /// The path in the repo.
        path: String,
        /// The Hub's sha256.
        expected: String,
        /// What the bytes hash to.
        actual: String,
    },
    /// The downloaded bytes are more than the Hub said.
    #[error(
        "{path}: the Hub says {expected} bytes but {actual} arrived; the download was deleted"
    )]
    SizeMismatch {
        /// The path in the repo.
        path: String,
        /// The Hub's size.
        expected: u64,
        /// Bytes received.
        actual: u64,
    },
    /// Offline (HF_HUB_OFFLINE) and the cache does not hold what was asked.
    #[error(
        "HF_HUB_OFFLINE is set and {repo}@{revision} is not in the cache at {cache}: {what}. \
         Fetch it once with network access, or unset HF_HUB_OFFLINE",
        cache = .cache.display()
    )]
    NotCached {
        /// The repo id.
        repo: String,
        /// The revision asked for.
        revision: String,
        /// The hub cache folder.
        cache: PathBuf,
        /// What exactly is missing.
        what: String,
    },
    /// The include/exclude globs left nothing to fetch.
    #[error("no file of {repo}@{commit} matches {patterns} (the repo has: {sample})")]
    NothingMatched {
        /// The repo id.
        repo: String,
        /// The commit.
        commit: String,
        /// The patterns, as the user would read them.
        patterns: String,
        /// A few of the repo's files.
        sample: String,
    },
    /// A path from the Hub listing that would leave the snapshot folder.
    #[error("refusing repo path '{0}': it is absolute, empty, has control characters, or leaves the snapshot folder")]
    UnsafePath(String),
    /// An operating-system error on a file.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

fn server_says(msg: &Option<String>) -> String {
    match msg {
        Some(m) if !m.is_empty() => format!(" (the Hub says: {m})"),
        _ => String::new(),
    }
}

/// An error from [`crate::fetch::fetch`].
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct FetchError {
    /// What went wrong.
    pub kind: Box<FetchErrorKind>,
}

impl FetchError {
    /// An I/O error on `path`.
    pub fn io(path: &Path, source: io::Error) -> FetchError {
        FetchErrorKind::Io {
            path: path.to_path_buf(),
            source,
        }
        .into()
    }

    /// What went wrong.
    pub fn kind(&self) -> &FetchErrorKind {
        &self.kind
    }
}

impl From<FetchErrorKind> for FetchError {
    fn from(kind: FetchErrorKind) -> Self {
        FetchError {
            kind: Box::new(kind),
        }
    }
}

/// Result with a [`FetchError`].
pub type Result<T, E = FetchError> = std::result::Result<T, E>;
