//! File names that come from inside model files (shard names in an index,
//! split names, chat template names) are untrusted: they may only name a
//! file directly inside the model's folder. Side files (config.json, the
//! index, tokenizer files) are read through [`read_side_file`], which also
//! caps their size before reading them whole.

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};

use super::error::{FormatError, FormatErrorKind, Result};

/// Largest JSON side file read whole (config.json, generation_config.json,
/// model.safetensors.index.json, tokenizer_config.json...): real ones are
/// kilobytes, the largest shard indexes a few megabytes.
pub const MAX_JSON_SIDE_FILE: u64 = 64 << 20;

/// Largest tokenizer file read whole (tokenizer.json, tokenizer.model):
/// real ones reach about 35 MB (Gemma 3's 262k-token vocabulary).
pub const MAX_TOKENIZER_FILE: u64 = 256 << 20;

/// `root/name` when `name` is a plain file name that stays inside `root`:
/// no separators, no `..`, no absolute path, no NUL or control characters,
/// and not a symlink that leads out of the folder. A symlink from a
/// Hugging Face cache snapshot into the same repo's `blobs/` (the cache's
/// own layout) stays inside.
pub fn safe_child(root: &Path, name: &str) -> Result<PathBuf> {
    let refuse = |why: &'static str| {
        Err(FormatError::new(FormatErrorKind::UnsafePath {
            path: name.escape_debug().to_string(),
            why,
        }))
    };
    if name.is_empty() {
        return refuse("the name is empty");
    }
    if name.chars().any(|c| c == '\0' || c.is_control()) {
        return refuse("it contains NUL or control characters");
    }
    if name.contains('/') || name.contains('\\') {
        return refuse("it is not a plain file name inside the model folder");
    }
    if name == "." || name == ".." {
        return refuse("it names a folder, not a file");
    }
    let path = root.join(name);
    if let Ok(meta) = std::fs::symlink_metadata(&path) {
        if meta.file_type().is_symlink() {
            let (Ok(target), Ok(root_abs)) = (path.canonicalize(), root.canonicalize()) else {
                return refuse("it is a symlink that cannot be resolved");
            };
            let in_cache_blobs = hf_cache_blobs(&root_abs).is_some_and(|b| target.starts_with(b));
            if !target.starts_with(&root_abs) && !in_cache_blobs {
                return refuse("it is a symlink to a file outside the model folder");
            }
        }
    }
    Ok(path)
}

/// For a folder inside a Hugging Face cache snapshot
/// (`.../models--ORG--NAME/snapshots/COMMIT/...`), that repo's `blobs/`.
fn hf_cache_blobs(dir: &Path) -> Option<PathBuf> {
    dir.ancestors().find_map(|a| {
        let repo = a.parent()?;
        let repo_name = repo.file_name()?.to_str()?;
        let is_repo = ["models--", "datasets--", "spaces--"]
            .iter()
            .any(|p| repo_name.starts_with(p));
        (a.file_name()? == "snapshots" && is_repo).then(|| repo.join("blobs"))
    })
}

/// The bytes of side file `name` in `root` (checked with [`safe_child`]),
/// `None` when it does not exist, an error when it is larger than `max`
/// bytes (checked before reading, and again while reading in case it grows).
pub fn read_side_file(root: &Path, name: &str, max: u64) -> Result<Option<Vec<u8>>> {
    let path = safe_child(root, name).map_err(|e| e.in_file(&root.join(name)))?;
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(FormatError::io(&path, e)),
    };
    read_capped(file, &path, max).map(Some)
}

/// Reads an open file whole, refusing one larger than `max` bytes.
pub fn read_capped(file: File, path: &Path, max: u64) -> Result<Vec<u8>> {
    let too_large = |len: u64| {
        Err(FormatError::new(FormatErrorKind::LimitExceeded {
            what: "file size in bytes",
            count: len,
            limit: max,
        })
        .in_file(path))
    };
    let len = file.metadata().map_err(|e| FormatError::io(path, e))?.len();
    if len > max {
        return too_large(len);
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| FormatError::io(path, e))?;
    if bytes.len() as u64 > max {
        return too_large(bytes.len() as u64);
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_escapes() {
        let root = Path::new("/models/x");
        for bad in [
            "",
            "../a.safetensors",
            "/etc/passwd",
            "a/b",
            "a\\b",
            "..",
            ".",
            "a\0b",
            "a\nb",
            "a\u{1b}[31mb",
            "a\u{7f}",
        ] {
            assert!(safe_child(root, bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            safe_child(root, "model-00001-of-00002.safetensors").unwrap(),
            root.join("model-00001-of-00002.safetensors")
        );
    }

    #[test]
    fn symlinks_stay_in_the_folder_or_the_hub_cache() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("models--org--name");
        let snap = repo.join("snapshots").join("c0ffee");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(repo.join("blobs")).unwrap();
        std::fs::write(repo.join("blobs/e1"), b"blob").unwrap();
        std::fs::write(tmp.path().join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink("../../blobs/e1", snap.join("model.safetensors")).unwrap();
        std::os::unix::fs::symlink("../../../secret", snap.join("evil.safetensors")).unwrap();
        std::os::unix::fs::symlink("model.safetensors", snap.join("alias.safetensors")).unwrap();
        assert!(safe_child(&snap, "model.safetensors").is_ok());
        assert!(safe_child(&snap, "alias.safetensors").is_ok());
        let err = safe_child(&snap, "evil.safetensors").unwrap_err();
        assert!(
            err.to_string().contains("outside the model folder"),
            "{err}"
        );
        // The blobs exception is the cache's own: another folder named
        // "blobs" next to a plain model folder does not count.
        let plain = tmp.path().join("model");
        std::fs::create_dir_all(&plain).unwrap();
        std::os::unix::fs::symlink(repo.join("blobs/e1"), plain.join("m.safetensors")).unwrap();
        assert!(safe_child(&plain, "m.safetensors").is_err());
    }

    #[test]
    fn side_files_are_capped() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("config.json"), b"{\"a\": 1}").unwrap();
        assert_eq!(
            read_side_file(tmp.path(), "config.json", 8).unwrap(),
            Some(b"{\"a\": 1}".to_vec())
        );
        let err = read_side_file(tmp.path(), "config.json", 7).unwrap_err();
        assert!(err.to_string().contains("above the limit of 7"), "{err}");
        assert_eq!(read_side_file(tmp.path(), "absent.json", 8).unwrap(), None);
    }
}
