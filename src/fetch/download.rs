//! One blob from the Hub into the cache: under the blob's lock, appended to
//! `blobs/<etag>.incomplete` with `Range` requests from wherever an earlier
//! (killed, cut off) run stopped, hashed as it arrives, checked against the
//! Hub's size and LFS sha256, then renamed to `blobs/<etag>`. A bad hash
//! deletes the bytes; nothing half-written ever carries the blob's name.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::cache::RepoCache;
use super::error::{FetchError, FetchErrorKind, Result};
use super::hub::{is_transient, HubClient};
use super::FetchObserver;
use crate::formats::atomic::sync_parent;
use crate::hashing::{hex, sha256_file};

/// What to download.
pub struct BlobJob<'a> {
    /// Repo path (for messages and progress).
    pub path: &'a str,
    /// Where the bytes are (resolve URL or CDN URL).
    pub url: &'a str,
    /// The blob name.
    pub etag: &'a str,
    /// Size the Hub announced.
    pub size: Option<u64>,
    /// The Hub's LFS sha256, checked before the blob gets its name.
    pub sha256: Option<&'a str>,
}

/// How the blob came to be.
pub struct BlobDone {
    /// SHA-256 of the contents.
    pub sha256: String,
    /// Bytes.
    pub size: u64,
    /// Bytes that were already in the partial file (0: a fresh download;
    /// `None`: the blob was already complete, fetched by another process).
    pub resumed_from: Option<u64>,
}

const CHUNK: usize = 1 << 20;

/// Downloads `job` into `cache`'s blob store, resuming a partial file.
pub fn download_blob(
    client: &HubClient,
    cache: &RepoCache,
    job: &BlobJob,
    observer: &dyn FetchObserver,
) -> Result<BlobDone> {
    let blob = cache.blob(job.etag);
    let partial = cache.partial(job.etag);
    let _lock = cache.lock_blob(job.etag)?;
    if blob.is_file() {
        // Another process finished it while this one waited for the lock.
        let sha256 = match job.sha256 {
            Some(s) => s.to_string(),
            None => sha256_file(&blob).map_err(|e| FetchError::io(&blob, e))?,
        };
        let size = fs::metadata(&blob)
            .map_err(|e| FetchError::io(&blob, e))?
            .len();
        return Ok(BlobDone {
            sha256,
            size,
            resumed_from: None,
        });
    }

    let mut file = File::options()
        .read(true)
        .append(true)
        .create(true)
        .open(&partial)
        .map_err(|e| FetchError::io(&partial, e))?;
    let mut expected = job.size;
    let mut hasher = Sha256::new();
    let mut have = len_of(&file, &partial)?;
    if expected.is_some_and(|s| have > s) {
        restart(&file, &partial, &mut hasher, &mut have)?;
    }
    if have > 0 {
        hash_prefix(&partial, have, &mut hasher)?;
    }
    let resumed_from = have;
    let mut attempt = 0u32;

    loop {
        if expected == Some(have) {
            break;
        }
        observer.file_started(job.path, expected, have);
        let resp = client.open_bytes(job.url, have, job.path, &mut attempt)?;
        match resp.status() {
            206 => {
                let (start, total) = parse_content_range(resp.header("Content-Range"));
                if start != Some(have) {
                    restart(&file, &partial, &mut hasher, &mut have)?;
                    client.retry_wait(
                        job.url,
                        &mut attempt,
                        "the server answered another range",
                    )?;
                    continue;
                }
                expected = expected.or(total);
            }
            200 => {
                if have > 0 {
                    // The server ignored the Range header: start over.
                    restart(&file, &partial, &mut hasher, &mut have)?;
                    observer.file_started(job.path, expected, 0);
                }
                expected = expected.or_else(|| content_length(&resp));
            }
            416 => {
                restart(&file, &partial, &mut hasher, &mut have)?;
                client.retry_wait(
                    job.url,
                    &mut attempt,
                    "HTTP 416: the partial file did not fit",
                )?;
                continue;
            }
            status => {
                return Err(FetchErrorKind::Http {
                    url: job.url.to_string(),
                    status,
                    server_message: None,
                }
                .into())
            }
        }

        let before = have;
        let streamed = stream_into(resp.into_reader(), &mut file, &mut hasher, &mut have, |n| {
            observer.file_progress(job.path, n)
        });
        if have > before {
            // Progress was made: the next failure gets a full set of retries.
            attempt = 0;
        }
        let why = match streamed {
            Ok(()) => match expected {
                Some(size) if have < size => format!("the body ended at byte {have} of {size}"),
                Some(size) if have > size => {
                    drop(file);
                    let _ = fs::remove_file(&partial);
                    return Err(FetchErrorKind::SizeMismatch {
                        path: job.path.to_string(),
                        expected: size,
                        actual: have,
                    }
                    .into());
                }
                _ => break,
            },
            Err(Stream::Write(e)) => return Err(FetchError::io(&partial, e)),
            Err(Stream::Read(e)) if !is_transient(&e) => {
                return Err(FetchErrorKind::RetriesExhausted {
                    url: job.url.to_string(),
                    attempts: attempt + 1,
                    last: e.to_string(),
                }
                .into())
            }
            Err(Stream::Read(e)) => format!("reading the body: {e}"),
        };
        client.retry_wait(job.url, &mut attempt, &why)?;
    }

    file.sync_all().map_err(|e| FetchError::io(&partial, e))?;
    drop(file);
    let actual = hex(&hasher.finalize());
    if let Some(want) = job.sha256 {
        if !actual.eq_ignore_ascii_case(want) {
            let _ = fs::remove_file(&partial);
            return Err(FetchErrorKind::ChecksumMismatch {
                path: job.path.to_string(),
                expected: want.to_string(),
                actual,
            }
            .into());
        }
    }
    fs::rename(&partial, &blob).map_err(|e| FetchError::io(&blob, e))?;
    sync_parent(&blob);
    Ok(BlobDone {
        sha256: actual,
        size: have,
        resumed_from: Some(resumed_from),
    })
}

enum Stream {
    Read(io::Error),
    Write(io::Error),
}

/// Appends the body to the partial file, hashing and counting as it goes.
fn stream_into(
    mut body: impl Read,
    file: &mut File,
    hasher: &mut Sha256,
    have: &mut u64,
    mut progress: impl FnMut(u64),
) -> std::result::Result<(), Stream> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Stream::Read(e)),
        };
        file.write_all(&buf[..n]).map_err(Stream::Write)?;
        hasher.update(&buf[..n]);
        *have += n as u64;
        progress(n as u64);
    }
}

fn len_of(file: &File, path: &Path) -> Result<u64> {
    Ok(file.metadata().map_err(|e| FetchError::io(path, e))?.len())
}

/// Empties the partial file and the hash: the next request starts at 0.
fn restart(file: &File, path: &Path, hasher: &mut Sha256, have: &mut u64) -> Result<()> {
    file.set_len(0).map_err(|e| FetchError::io(path, e))?;
    *hasher = Sha256::new();
    *have = 0;
    Ok(())
}

/// Feeds the first `len` bytes already on disk to the hash.
fn hash_prefix(path: &Path, len: u64, hasher: &mut Sha256) -> Result<()> {
    let f = File::open(path).map_err(|e| FetchError::io(path, e))?;
    let mut r = f.take(len);
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = r.read(&mut buf).map_err(|e| FetchError::io(path, e))?;
        if n == 0 {
            return Ok(());
        }
        hasher.update(&buf[..n]);
    }
}

fn content_length(resp: &ureq::Response) -> Option<u64> {
    resp.header("Content-Length")
        .and_then(|v| v.trim().parse().ok())
}

/// `bytes START-END/TOTAL` to `(START, TOTAL)`.
fn parse_content_range(v: Option<&str>) -> (Option<u64>, Option<u64>) {
    let Some(rest) = v.and_then(|v| v.trim().strip_prefix("bytes ")) else {
        return (None, None);
    };
    let (range, total) = rest.split_once('/').unwrap_or((rest, "*"));
    let start = range
        .split_once('-')
        .and_then(|(s, _)| s.trim().parse().ok());
    (start, total.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_parses() {
        assert_eq!(
            parse_content_range(Some("bytes 100-199/200")),
            (Some(100), Some(200))
        );
        assert_eq!(parse_content_range(Some("bytes 5-9/*")), (Some(5), None));
        assert_eq!(parse_content_range(Some("items 1-2/3")), (None, None));
        assert_eq!(parse_content_range(None), (None, None));
    }
}
