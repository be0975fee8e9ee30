//! Shared pieces of the fuzz targets: a small archive format that turns one
//! fuzz input into a folder of files (and symlinks), and the scratch folder
//! it is unpacked into.
//!
//! Archive: entries of `kind:u8, name_len:u8, name, data_len:u32 LE, data`
//! until the input ends. Kind 0 is a file, 1 a symlink whose target is the
//! data. Lengths past the end are clamped, so every input unpacks to
//! something. Names that cannot be created as a plain file are skipped
//! (a name *inside* a file, such as a shard name in an index, is what the
//! readers must refuse; a name of the archive is only how the fuzzer lays
//! out the folder).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// One archive entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// File or symlink name.
    pub name: String,
    /// Contents, or the symlink's target.
    pub data: Vec<u8>,
    /// A symlink rather than a file.
    pub symlink: bool,
}

/// Decodes an archive (never fails: a short input gives fewer entries).
pub fn decode(mut input: &[u8]) -> Vec<Entry> {
    fn take<'a>(input: &mut &'a [u8], n: usize) -> &'a [u8] {
        let n = n.min(input.len());
        let (head, rest) = input.split_at(n);
        *input = rest;
        head
    }
    let mut out = Vec::new();
    while input.len() >= 2 && out.len() < 16 {
        let head = take(&mut input, 2);
        let (kind, name_len) = (head[0], head[1] as usize);
        let name = String::from_utf8_lossy(take(&mut input, name_len)).into_owned();
        let len_bytes = take(&mut input, 4);
        let mut len = [0u8; 4];
        len[..len_bytes.len()].copy_from_slice(len_bytes);
        let data = take(&mut input, u32::from_le_bytes(len) as usize).to_vec();
        out.push(Entry {
            name,
            data,
            symlink: kind % 2 == 1,
        });
    }
    out
}

/// Encodes entries (for the seed generator).
pub fn encode(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        assert!(e.name.len() < 256, "archive names are short");
        out.push(u8::from(e.symlink));
        out.push(e.name.len() as u8);
        out.extend_from_slice(e.name.as_bytes());
        out.extend_from_slice(&(e.data.len() as u32).to_le_bytes());
        out.extend_from_slice(&e.data);
    }
    out
}

/// A file entry.
pub fn file(name: &str, data: impl Into<Vec<u8>>) -> Entry {
    Entry {
        name: name.to_string(),
        data: data.into(),
        symlink: false,
    }
}

/// Whether the harness may create `name` in the model folder.
fn creatable(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0'])
}

/// Symlink targets the harness creates: names inside the folder, and a
/// few fixed ones outside it that the readers must refuse to follow.
fn allowed_target(target: &str) -> bool {
    creatable(target)
        || matches!(
            target,
            "../outside.safetensors" | "../outside.gguf" | "../outside" | "/nonexistent"
        )
}

/// The per-process scratch folder: `base/` holds files outside the model
/// folder (`outside.safetensors`, `outside.gguf`), `base/model/` is
/// emptied for every input. On tmpfs where there is one: fsyncs are free.
pub fn scratch() -> &'static Path {
    static BASE: OnceLock<tempfile::TempDir> = OnceLock::new();
    BASE.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::Builder::new()
                .prefix("qforge-fuzz")
                .tempdir_in(shm)
        } else {
            tempfile::Builder::new().prefix("qforge-fuzz").tempdir()
        }
        .expect("scratch folder");
        let st = br#"{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
        let mut outside = (st.len() as u64).to_le_bytes().to_vec();
        outside.extend_from_slice(st);
        outside.extend_from_slice(&[0; 4]);
        fs::write(dir.path().join("outside.safetensors"), outside).unwrap();
        fs::write(dir.path().join("outside.gguf"), minimal_gguf()).unwrap();
        dir
    })
    .path()
}

/// A valid GGUF file with no tensors and no metadata.
pub fn minimal_gguf() -> Vec<u8> {
    let mut v = b"GGUF".to_vec();
    v.extend_from_slice(&3u32.to_le_bytes());
    v.extend_from_slice(&0u64.to_le_bytes());
    v.extend_from_slice(&0u64.to_le_bytes());
    v
}

/// Unpacks `entries` into a fresh `scratch()/model/` and returns it, with
/// the paths of the files created in entry order.
pub fn unpack(entries: &[Entry]) -> (PathBuf, Vec<PathBuf>) {
    let dir = scratch().join("model");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir(&dir).unwrap();
    let mut created = Vec::new();
    for e in entries {
        if !creatable(&e.name) {
            continue;
        }
        let path = dir.join(&e.name);
        if path.symlink_metadata().is_ok() {
            continue;
        }
        if e.symlink {
            let target = String::from_utf8_lossy(&e.data);
            if !allowed_target(&target) {
                continue;
            }
            std::os::unix::fs::symlink(target.as_ref(), &path).unwrap();
        } else {
            fs::write(&path, &e.data).unwrap();
        }
        created.push(path);
    }
    (dir, created)
}

/// Panics when `path` resolves outside `dir`: a reader followed a name or a
/// symlink out of the model folder.
pub fn assert_inside(path: &Path, dir: &Path) {
    let dir = dir.canonicalize().unwrap();
    let resolved = path
        .canonicalize()
        .unwrap_or_else(|e| panic!("{} was opened but does not resolve: {e}", path.display()));
    assert!(
        resolved.starts_with(&dir),
        "{} resolves to {}, outside {}",
        path.display(),
        resolved.display(),
        dir.display()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archives_round_trip() {
        let entries = vec![file("config.json", b"{}".to_vec()), file("a", vec![1, 2, 3])];
        assert_eq!(decode(&encode(&entries)), entries);
        // Truncated inputs still decode.
        let bytes = encode(&entries);
        for cut in 0..bytes.len() {
            let _ = decode(&bytes[..cut]);
        }
    }
}
