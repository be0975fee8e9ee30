//! `qforge.lock`: what each artifact on disk was built from and what it
//! is — the source revision and files, every input's and output's sha256,
//! the qforge version and each artifact's settings and their hash.
//!
//! An artifact is up to date when its entry has the current qforge
//! version, settings hash and input hashes and its files are on disk at
//! their recorded sizes; `qforge run --check` also re-hashes every file.
//! JSON, keys in a fixed order, no timestamps: the same build gives the
//! same lockfile.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use super::stages::InputFile;
use crate::formats::atomic::AtomicFile;
use crate::hashing::{sha256_bytes, sha256_file};

/// The lockfile's name in the output folder.
pub const LOCK_FILE: &str = "qforge.lock";
/// The lockfile format this qforge writes. A lockfile of another version
/// is not trusted: every artifact rebuilds.
pub const LOCK_VERSION: u32 = 1;

/// The whole lockfile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lockfile {
    /// [`LOCK_VERSION`].
    pub lock_version: u32,
    /// The qforge that wrote it.
    pub qforge_version: String,
    /// The manifest's file name.
    pub manifest: String,
    /// The source model.
    pub source: SourceLock,
    /// Artifacts by name.
    pub artifacts: BTreeMap<String, ArtifactLock>,
}

/// The source model, pinned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceLock {
    /// `from:` as written in the manifest.
    pub from: String,
    /// The Hub commit its revision resolved to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// Its format (gguf, safetensors, mlx).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// `general.file_type` of a GGUF source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_type: Option<String>,
    /// Its files (model-relative paths), with their hashes.
    pub files: Vec<FileLock>,
    /// SHA-256 over the files list: one hash standing for the source.
    pub sha256: String,
}

/// One file and its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileLock {
    /// Path: relative to the output folder for outputs, to the model for
    /// source files, as given for other inputs.
    pub path: String,
    /// Bytes.
    pub size: u64,
    /// SHA-256, hex.
    pub sha256: String,
}

impl From<&InputFile> for FileLock {
    fn from(f: &InputFile) -> FileLock {
        FileLock {
            path: f.path.clone(),
            size: f.size,
            sha256: f.sha256.clone(),
        }
    }
}

/// One artifact's entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArtifactLock {
    /// gguf, mlx or safetensors.
    pub format: String,
    /// The settings it was built with (format, quantization, steps,
    /// metadata), as hashed.
    pub settings: Json,
    /// SHA-256 of `settings`.
    pub settings_sha256: String,
    /// Inputs by role (`source`, `imatrix`): their SHA-256.
    pub inputs: BTreeMap<String, String>,
    /// Inputs of its verification by role (`text`, `reference`): their
    /// SHA-256. A change re-measures; it does not rebuild.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub verify_inputs: BTreeMap<String, String>,
    /// The files written, relative to the output folder, sorted.
    pub outputs: Vec<FileLock>,
    /// The artifact's own hash: the GGUF file's SHA-256, or for a folder
    /// the SHA-256 of its `sha256sum`-style listing.
    pub sha256: String,
}

impl Lockfile {
    /// Reads the lockfile in `dir`: `Ok(None)` when there is none.
    pub fn read(dir: &Path) -> Result<Option<Lockfile>, String> {
        let path = dir.join(LOCK_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let lock: Lockfile = serde_json::from_str(&text).map_err(|e| {
            format!(
                "{} is not a qforge lockfile ({e}); delete it or run with --force",
                path.display()
            )
        })?;
        Ok(Some(lock))
    }

    /// Writes the lockfile into `dir`, atomically.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        let mut text = serde_json::to_string_pretty(self).expect("lockfiles serialize");
        text.push('\n');
        write_atomic(&dir.join(LOCK_FILE), text.as_bytes())
    }
}

/// Writes `bytes` to `path` through a temporary file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = AtomicFile::create(path).map_err(std::io::Error::other)?;
    f.write_all(bytes)?;
    f.commit().map_err(std::io::Error::other)
}

/// SHA-256 of a JSON value's compact text (keys in the order built).
pub fn json_sha256(v: &Json) -> String {
    sha256_bytes(
        serde_json::to_string(v)
            .expect("JSON serializes")
            .as_bytes(),
    )
}

/// SHA-256 standing for a list of files: the hash of its `sha256sum`
/// listing (`HASH  PATH\n` per file, sorted by path).
pub fn listing_sha256(files: &[FileLock]) -> String {
    let mut sorted: Vec<&FileLock> = files.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    let listing: String = sorted
        .iter()
        .map(|f| format!("{}  {}\n", f.sha256, f.path))
        .collect();
    sha256_bytes(listing.as_bytes())
}

/// Every regular file under `root` (a file or a folder), with paths
/// relative to `base`, `/`-separated and sorted. Hidden files (temporary
/// files of an interrupted write) are left out.
pub fn list_files(root: &Path, base: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let meta = fs::metadata(root)?;
    if meta.is_file() {
        out.push(root.strip_prefix(base).unwrap_or(root).to_path_buf());
        return Ok(out);
    }
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let p = entry.path();
            let ty = entry.file_type()?;
            if ty.is_dir() {
                stack.push(p);
            } else if ty.is_file() || (ty.is_symlink() && p.is_file()) {
                out.push(p.strip_prefix(base).unwrap_or(&p).to_path_buf());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// `path` with `/` separators, for lockfiles written the same everywhere.
pub fn slash_path(path: &Path) -> String {
    path.components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

/// Hashes every file in `rels` (relative to `base`).
pub fn hash_files(base: &Path, rels: &[PathBuf]) -> std::io::Result<Vec<FileLock>> {
    rels.iter()
        .map(|rel| {
            let p = base.join(rel);
            Ok(FileLock {
                path: slash_path(rel),
                size: fs::metadata(&p)?.len(),
                sha256: sha256_file(&p)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listings_hash_in_path_order() {
        let a = FileLock {
            path: "b".into(),
            size: 1,
            sha256: "22".into(),
        };
        let b = FileLock {
            path: "a".into(),
            size: 1,
            sha256: "11".into(),
        };
        assert_eq!(
            listing_sha256(&[a.clone(), b.clone()]),
            listing_sha256(&[b, a])
        );
        assert_eq!(
            listing_sha256(&[]),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
