//! A GGUF file as qforge writes its outputs: under a temporary name until
//! it is complete ([`AtomicFile`]), hashed as it is written
//! ([`HashingWriter`]), and naming its sources' SHA-256 in its header while
//! they are still being computed ([`FileDigests`]).

use std::path::{Path, PathBuf};

use super::value::{Array, Metadata, Value};
use super::writer::{header_bytes, GgufWriter, TensorSpec};
use crate::formats::atomic::AtomicFile;
use crate::formats::error::{FormatError, Result};
use crate::hashing::{FileDigests, HashingWriter, DIGEST_PLACEHOLDER};

/// The metadata key naming the SHA-256 of each source file (an array of
/// hex strings, in the order of `qforge.source.files`).
pub const SOURCE_SHA256: &str = "qforge.source.sha256";

/// One GGUF output being written.
pub struct GgufOutput {
    path: PathBuf,
    w: GgufWriter<HashingWriter<AtomicFile>>,
    /// The sources' digests being computed, with what completes the header.
    pending: Option<Pending>,
    /// The completed header, written over the placeholder one at the end.
    header: Option<Vec<u8>>,
}

struct Pending {
    digests: FileDigests,
    /// Whether the output's digest waits for the completed header.
    deferred: bool,
    version: u32,
    meta: Metadata,
    specs: Vec<TensorSpec>,
    /// Length of the header written with the placeholders.
    len: u64,
}

/// A finished GGUF output.
#[derive(Debug, Clone)]
pub struct GgufWritten {
    /// Its size.
    pub bytes: u64,
    /// SHA-256 of its bytes, hex (when asked for).
    pub sha256: Option<String>,
}

impl GgufWritten {
    /// The digest of an output created with `digest` set.
    pub fn digest(&self) -> &str {
        self.sha256
            .as_deref()
            .expect("outputs created with a digest have one")
    }
}

impl GgufOutput {
    /// Creates `path` (under a temporary name) and writes the header of
    /// `meta` and `specs`.
    ///
    /// With `sources`, `meta` may name their digests as
    /// [`FileDigests::placeholders`] gives them, under [`SOURCE_SHA256`]:
    /// the tensors are then written while the sources are hashed, and the
    /// header is completed (same length) once the digests are known. A
    /// value the caller set there itself is kept, and the hashing stopped.
    ///
    /// With `digest`, the output's own SHA-256 is computed as it is written
    /// ([`GgufWritten::sha256`]); without, nothing hashes it.
    pub fn create(
        path: &Path,
        version: u32,
        meta: &Metadata,
        specs: &[TensorSpec],
        sources: Option<FileDigests>,
        digest: bool,
    ) -> Result<GgufOutput> {
        let file = AtomicFile::create(path)?;
        let sources = sources.filter(|d| names_placeholders(meta, d.len()));
        let hashed = match &sources {
            _ if !digest => HashingWriter::unhashed(file),
            Some(_) => {
                let readback = file.reader().map_err(|e| FormatError::io(path, e))?;
                HashingWriter::deferred(file, readback)
            }
            None => HashingWriter::new(file),
        };
        let mut w = GgufWriter::new(hashed, version, meta, specs).map_err(|e| e.in_file(path))?;
        let pending = sources.map(|digests| Pending {
            digests,
            deferred: digest,
            version,
            meta: meta.clone(),
            specs: specs.to_vec(),
            len: w.sink_mut().written(),
        });
        let mut out = GgufOutput {
            path: path.to_path_buf(),
            w,
            pending,
            header: None,
        };
        out.complete(false)?;
        Ok(out)
    }

    /// Writes the data of the next tensor (see [`GgufWriter::write_tensor`]).
    pub fn write_tensor(&mut self, name: &str, data: &[u8]) -> Result<()> {
        self.w
            .write_tensor(name, data)
            .map_err(|e| e.in_file(&self.path))?;
        self.complete(false)
    }

    /// Checks every tensor was written, waits for the sources' digests,
    /// completes the header, and renames the file into place (fsynced).
    pub fn finish(mut self) -> Result<GgufWritten> {
        self.complete(true)?;
        let path = self.path;
        let hashed = self.w.finish().map_err(|e| e.in_file(&path))?;
        let bytes = hashed.written();
        let (mut file, sha256) = hashed.finish().map_err(|e| FormatError::io(&path, e))?;
        if let Some(h) = &self.header {
            file.rewrite_start(h)
                .map_err(|e| FormatError::io(&path, e))?;
        }
        file.commit()?;
        Ok(GgufWritten { bytes, sha256 })
    }

    /// Once the digests are known (or, with `wait`, when they are): the
    /// completed header goes to the hashing thread and is kept for
    /// [`GgufOutput::finish`].
    fn complete(&mut self, wait: bool) -> Result<()> {
        let Some(p) = self.pending.take_if(|p| wait || p.digests.ready()) else {
            return Ok(());
        };
        let digests = p.digests.finish()?;
        let mut meta = p.meta;
        meta.set(
            SOURCE_SHA256,
            Value::Array(Array::String(digests.into_iter().map(|(_, h)| h).collect())),
        );
        let header = header_bytes(p.version, &meta, &p.specs).map_err(|e| e.in_file(&self.path))?;
        if header.len() as u64 != p.len {
            return Err(FormatError::other(format!(
                "the completed header is {} bytes, the one written {}",
                header.len(),
                p.len
            ))
            .in_file(&self.path));
        }
        if p.deferred {
            self.w
                .sink_mut()
                .set_prefix(header.clone())
                .map_err(|e| FormatError::io(&self.path, e))?;
        }
        self.header = Some(header);
        Ok(())
    }
}

/// True when `meta` names `n` digests under [`SOURCE_SHA256`], all of them
/// [`DIGEST_PLACEHOLDER`].
fn names_placeholders(meta: &Metadata, n: usize) -> bool {
    match meta.get(SOURCE_SHA256) {
        Some(Value::Array(Array::String(v))) => {
            v.len() == n && v.iter().all(|h| h == DIGEST_PLACEHOLDER)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::gguf::{GgufFile, VERSION};
    use crate::hashing::sha256_bytes;
    use quant_kernels::GgmlType;

    fn strings(v: &[&str]) -> Value {
        Value::Array(Array::String(v.iter().map(|s| s.to_string()).collect()))
    }

    /// Writes a two-tensor GGUF whose metadata names `sources` (or the
    /// value `named`) under SOURCE_SHA256; returns the result and the file.
    fn write(
        dir: &Path,
        sources: &[PathBuf],
        named: Option<Value>,
        digest: bool,
    ) -> (Result<GgufWritten>, PathBuf) {
        let digests = FileDigests::start(sources.to_vec());
        let mut meta = Metadata::new();
        meta.set("general.architecture", Value::String("llama".into()));
        let hashes: Vec<String> = digests.placeholders().into_iter().map(|(_, h)| h).collect();
        meta.set(
            SOURCE_SHA256,
            named.unwrap_or(Value::Array(Array::String(hashes))),
        );
        meta.set("after", Value::U32(7));
        let specs = vec![
            TensorSpec {
                name: "a".into(),
                dims: vec![3_000_000],
                ggml_type: GgmlType::F32,
            },
            TensorSpec {
                name: "b".into(),
                dims: vec![5],
                ggml_type: GgmlType::F32,
            },
        ];
        let path = dir.join("out.gguf");
        let r = (|| {
            let mut out = GgufOutput::create(&path, VERSION, &meta, &specs, Some(digests), digest)?;
            out.write_tensor("a", &vec![1; 12_000_000])?;
            out.write_tensor("b", &[2; 20])?;
            out.finish()
        })();
        (r, path)
    }

    #[test]
    fn the_header_names_the_digests_computed_while_writing() {
        let dir = tempfile::tempdir().unwrap();
        let sources: Vec<PathBuf> = (0..3)
            .map(|i| {
                let p = dir.path().join(format!("src{i}"));
                std::fs::write(&p, vec![i as u8 + 1; 3_000_000 * (i + 1)]).unwrap();
                p
            })
            .collect();
        let (r, path) = write(dir.path(), &sources, None, true);
        let written = r.unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(written.bytes, bytes.len() as u64);
        assert_eq!(written.digest(), sha256_bytes(&bytes));
        let want: Vec<String> = sources
            .iter()
            .map(|p| sha256_bytes(&std::fs::read(p).unwrap()))
            .collect();
        let file = GgufFile::open(&path).unwrap();
        let got = match file.metadata().get(SOURCE_SHA256) {
            Some(Value::Array(a)) => a.as_strings().unwrap().to_vec(),
            v => panic!("{v:?}"),
        };
        assert_eq!(got, want);
        assert_eq!(file.metadata().get("after"), Some(&Value::U32(7)));

        // A value the caller set itself is kept as it is.
        let own = strings(&["mine"]);
        let (r, path) = write(dir.path(), &sources, Some(own.clone()), true);
        r.unwrap();
        let file = GgufFile::open(&path).unwrap();
        assert_eq!(file.metadata().get(SOURCE_SHA256), Some(&own));
    }

    #[test]
    fn a_source_that_cannot_be_hashed_is_named_and_nothing_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let absent = dir.path().join("absent.safetensors");
        for digest in [true, false] {
            let (r, path) = write(dir.path(), std::slice::from_ref(&absent), None, digest);
            let e = r.expect_err("the source cannot be read").to_string();
            assert!(e.contains("absent.safetensors"), "{e}");
            assert!(!path.exists());
            let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
            assert!(left.is_empty(), "{left:?}");
        }
    }
}
