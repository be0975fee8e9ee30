//! File names that come from inside model files (shard names in an index,
//! split names) are untrusted: they may only name a file directly inside
//! the model's folder.

use std::path::{Path, PathBuf};

use super::error::{FormatError, FormatErrorKind, Result};

/// `root/name` when `name` is a plain file name that stays inside `root`:
/// no separators, no `..`, no absolute path, no NUL or control characters,
/// and not a symlink that leads out of the folder.
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
            if !target.starts_with(&root_abs) {
                return refuse("it is a symlink to a file outside the model folder");
            }
        }
    }
    Ok(path)
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
            "a\0b",
            "a\nb",
        ] {
            assert!(safe_child(root, bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            safe_child(root, "model-00001-of-00002.safetensors").unwrap(),
            root.join("model-00001-of-00002.safetensors")
        );
    }
}
