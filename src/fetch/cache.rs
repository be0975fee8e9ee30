//! The Hugging Face cache layout, written the way `huggingface_hub` writes
//! it, so either side finds what the other fetched:
//!
//! ```text
//! <cache>/models--ORG--REPO/
//!   blobs/<etag>                 file contents; etag = sha256 (LFS) or git blob id
//!   blobs/<etag>.incomplete      a download in progress; qforge resumes from it
//!   snapshots/<commit>/<path>    relative symlink to ../../blobs/<etag>
//!   refs/<revision>              the commit a branch or tag pointed at
//! <cache>/.locks/models--ORG--REPO/<etag>.lock   flock while a blob is written
//! ```
//!
//! `huggingface_hub` 2.x downloads to a per-process `<etag>.<uuid>.incomplete`
//! and deletes it on failure; qforge keeps the stable `<etag>.incomplete` name
//! (the one older `huggingface_hub` releases resumed from) so a killed run
//! resumes. Both take the same lock file, so they never write one blob twice
//! at once.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};

use hf_hub::{Repo, RepoType};

use super::error::{FetchError, FetchErrorKind, Result};
use super::hub::is_safe_blob_name;
use crate::formats::atomic::{sync_parent, temp_path_for};

/// The standard CACHEDIR.TAG, so backup tools skip the cache.
const CACHEDIR_TAG: &str = "Signature: 8a477f597d28d172789f06886806bc55\n\
# This file is a cache directory tag created by huggingface_hub.\n\
# For information about cache directory tags, see:\n\
#\thttps://bford.info/cachedir/\n";

/// One repo's folder in the hub cache.
#[derive(Debug, Clone)]
pub struct RepoCache {
    root: PathBuf,
    folder: PathBuf,
    locks: PathBuf,
}

impl RepoCache {
    /// The folder of model repo `repo` under hub cache `root`.
    pub fn new(root: &Path, repo: &str) -> RepoCache {
        let name = Repo::new(repo.to_string(), RepoType::Model).folder_name();
        RepoCache {
            root: root.to_path_buf(),
            folder: root.join(&name),
            locks: root.join(".locks").join(&name),
        }
    }

    /// `<cache>/models--ORG--REPO`.
    pub fn folder(&self) -> &Path {
        &self.folder
    }

    /// Where the blob named `etag` lives.
    pub fn blob(&self, etag: &str) -> PathBuf {
        debug_assert!(is_safe_blob_name(etag));
        self.folder.join("blobs").join(etag)
    }

    /// The partial download of blob `etag`.
    pub fn partial(&self, etag: &str) -> PathBuf {
        self.folder.join("blobs").join(format!("{etag}.incomplete"))
    }

    /// The snapshot folder of `commit`.
    pub fn snapshot_dir(&self, commit: &str) -> PathBuf {
        self.folder.join("snapshots").join(commit)
    }

    /// The snapshot entry of `path` at `commit`; refuses paths that would
    /// leave the snapshot folder.
    pub fn pointer(&self, commit: &str, path: &str) -> Result<PathBuf> {
        Ok(self.snapshot_dir(commit).join(safe_relative_path(path)?))
    }

    /// The commit `revision` pointed at when last fetched, if recorded.
    pub fn read_ref(&self, revision: &str) -> Option<String> {
        let p = self
            .folder
            .join("refs")
            .join(safe_relative_path(revision).ok()?);
        fs::read_to_string(p).ok().map(|s| s.trim().to_string())
    }

    /// Records that `revision` resolved to `commit` (atomically: readers never
    /// see half a ref). Nothing is written for a commit hash.
    pub fn write_ref(&self, revision: &str, commit: &str) -> Result<()> {
        if revision == commit {
            return Ok(());
        }
        let path = self.folder.join("refs").join(safe_relative_path(revision)?);
        if fs::read_to_string(&path).is_ok_and(|s| s == commit) {
            return Ok(());
        }
        let parent = path.parent().expect("refs/<revision> has a parent");
        fs::create_dir_all(parent).map_err(|e| FetchError::io(parent, e))?;
        let tmp = temp_path_for(&path);
        let write = || -> io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(commit.as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, &path)
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            FetchError::io(&path, e)
        })?;
        sync_parent(&path);
        Ok(())
    }

    /// Creates the folders a download needs and tags the cache root.
    pub fn prepare(&self) -> Result<()> {
        for d in [self.folder.join("blobs"), self.locks.clone()] {
            fs::create_dir_all(&d).map_err(|e| FetchError::io(&d, e))?;
        }
        let tag = self.root.join("CACHEDIR.TAG");
        if !tag.exists() {
            let _ = fs::write(&tag, CACHEDIR_TAG);
        }
        Ok(())
    }

    /// Takes the lock of blob `etag` (blocks while another qforge or
    /// `huggingface_hub` holds it); released when the file is dropped, or
    /// by the kernel when the process dies.
    pub fn lock_blob(&self, etag: &str) -> Result<File> {
        let path = self.locks.join(format!("{etag}.lock"));
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| FetchError::io(&path, e))?;
        lock_exclusive(&f).map_err(|e| FetchError::io(&path, e))?;
        Ok(f)
    }

    /// Points `snapshots/<commit>/<path>` at blob `etag` with a relative
    /// symlink, replacing whatever was there in one rename.
    pub fn link(&self, commit: &str, path: &str, etag: &str) -> Result<PathBuf> {
        let pointer = self.pointer(commit, path)?;
        let target = relative_blob_target(path, etag)?;
        if fs::read_link(&pointer).is_ok_and(|t| t == target) {
            return Ok(pointer);
        }
        let parent = pointer.parent().expect("pointer has a parent");
        fs::create_dir_all(parent).map_err(|e| FetchError::io(parent, e))?;
        let tmp = temp_path_for(&pointer);
        symlink(&target, &tmp)
            .and_then(|()| fs::rename(&tmp, &pointer))
            .map_err(|e| {
                let _ = fs::remove_file(&tmp);
                FetchError::io(&pointer, e)
            })?;
        Ok(pointer)
    }

    /// Every file under `snapshots/<commit>`, as repo paths with their
    /// snapshot entries, sorted; `None` when the snapshot is not there.
    pub fn snapshot_files(&self, commit: &str) -> Result<Option<Vec<(String, PathBuf)>>> {
        let dir = self.snapshot_dir(commit);
        if !dir.is_dir() {
            return Ok(None);
        }
        let mut out = Vec::new();
        let mut stack = vec![dir.clone()];
        while let Some(d) = stack.pop() {
            let entries = fs::read_dir(&d).map_err(|e| FetchError::io(&d, e))?;
            for entry in entries {
                let entry = entry.map_err(|e| FetchError::io(&d, e))?;
                let p = entry.path();
                if is_qforge_temp(&entry.file_name().to_string_lossy()) {
                    continue;
                }
                let meta = fs::metadata(&p);
                match meta {
                    Ok(m) if m.is_dir() => stack.push(p),
                    Ok(_) => {
                        let rel = p.strip_prefix(&dir).expect("under the snapshot folder");
                        let rel: Vec<String> = rel
                            .components()
                            .map(|c| c.as_os_str().to_string_lossy().into_owned())
                            .collect();
                        out.push((rel.join("/"), p));
                    }
                    // A dangling symlink: its blob is gone, the file is not cached.
                    Err(_) => {}
                }
            }
        }
        out.sort();
        Ok(Some(out))
    }
}

/// The blob name a snapshot entry points at, when it is a symlink into
/// `blobs/`.
pub fn blob_name_of(pointer: &Path) -> Option<String> {
    let target = fs::read_link(pointer).ok()?;
    let name = target.file_name()?.to_str()?.to_string();
    is_safe_blob_name(&name).then_some(name)
}

/// A temporary name from [`temp_path_for`] that a killed run left behind.
fn is_qforge_temp(name: &str) -> bool {
    name.starts_with('.') && name.contains(".qforge-") && name.ends_with(".tmp")
}

/// `../../blobs/<etag>` with one more `..` per folder in `path`.
fn relative_blob_target(path: &str, etag: &str) -> Result<PathBuf> {
    let depth = safe_relative_path(path)?.components().count();
    let mut t = PathBuf::new();
    for _ in 0..depth + 1 {
        t.push("..");
    }
    t.push("blobs");
    t.push(etag);
    Ok(t)
}

/// A repo path as a relative file path: no root, no `..`, no empty or `.`
/// parts, no backslashes (the Hub uses `/`), no NUL or control characters.
pub fn safe_relative_path(path: &str) -> Result<PathBuf> {
    let bad = || FetchError::from(FetchErrorKind::UnsafePath(path.escape_debug().to_string()));
    if path.is_empty() || path.contains('\\') || path.chars().any(char::is_control) {
        return Err(bad());
    }
    let mut out = PathBuf::new();
    for part in path.split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return Err(bad());
        }
        out.push(part);
    }
    if out.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(bad());
    }
    Ok(out)
}

/// `flock(LOCK_EX)`, as Python's filelock takes it; the kernel drops it
/// when the file is closed or the process dies.
#[cfg(unix)]
fn lock_exclusive(f: &File) -> io::Result<()> {
    rustix::fs::flock(f, rustix::fs::FlockOperation::LockExclusive).map_err(io::Error::from)
}

/// No advisory lock off Unix: concurrent fetches of one blob may download
/// it twice there, each into the same partial file.
#[cfg(not(unix))]
fn lock_exclusive(_f: &File) -> io::Result<()> {
    Ok(())
}

#[cfg(unix)]
fn symlink(target: &Path, link: &Path) -> io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

#[cfg(windows)]
fn symlink(target: &Path, link: &Path) -> io::Result<()> {
    std::os::windows::fs::symlink_file(target, link)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_names_match_huggingface_hub() {
        let c = RepoCache::new(Path::new("/c"), "org/name");
        assert_eq!(c.folder(), Path::new("/c/models--org--name"));
        assert_eq!(c.blob("ab12"), Path::new("/c/models--org--name/blobs/ab12"));
        assert_eq!(
            c.partial("ab12"),
            Path::new("/c/models--org--name/blobs/ab12.incomplete")
        );
        assert_eq!(
            c.pointer("c0", "sub/f.json").unwrap(),
            Path::new("/c/models--org--name/snapshots/c0/sub/f.json")
        );
        assert_eq!(
            relative_blob_target("f.json", "e").unwrap(),
            Path::new("../../blobs/e")
        );
        assert_eq!(
            relative_blob_target("a/b/f.json", "e").unwrap(),
            Path::new("../../../../blobs/e")
        );
    }

    #[test]
    fn unsafe_paths_are_refused() {
        for p in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "./a",
            "a\\b",
            "a\0b",
            "a\nb.json",
            "sub/\u{1b}[2Jx",
            "a/.",
        ] {
            assert!(safe_relative_path(p).is_err(), "{p}");
        }
        assert!(safe_relative_path("a/b.json").is_ok());
    }

    #[test]
    fn link_ref_and_listing_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let c = RepoCache::new(dir.path(), "org/name");
        c.prepare().unwrap();
        fs::write(c.blob("e1"), b"hello").unwrap();
        let p = c.link("c0", "sub/f.txt", "e1").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"hello");
        assert_eq!(blob_name_of(&p).as_deref(), Some("e1"));
        c.write_ref("main", "c0").unwrap();
        assert_eq!(c.read_ref("main").as_deref(), Some("c0"));
        let files = c.snapshot_files("c0").unwrap().unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].0, "sub/f.txt");
        assert!(c.snapshot_files("nope").unwrap().is_none());
        assert!(dir.path().join("CACHEDIR.TAG").is_file());
    }
}
