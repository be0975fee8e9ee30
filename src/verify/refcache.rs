//! Reference logits kept on disk between the verifications of one
//! `qforge run`, so that a manifest's artifacts checked against the same
//! reference on the same text run the reference once per window, not
//! once per artifact (llama-perplexity's `--kl-divergence-base` file
//! does the same for its users, by hand).
//!
//! Each window's logits are stored as they came out of the reference's
//! forward pass (f32, little-endian), so a KL divergence measured from
//! the store has the bits of one measured without it. A file is keyed
//! by everything the logits depend on: the reference's path, the device
//! it ran on, the vocabulary, the window's size, its first scored
//! position and its tokens. The store lives in the run's work folder,
//! which the run removes when it ends.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The most bytes of logits a store takes; larger evaluations stream
/// the reference as `qforge verify` does alone.
pub const BUDGET_BYTES: u64 = 4 << 30;

/// What a window's reference logits depend on besides its tokens.
pub struct RefKey<'a> {
    /// The reference model.
    pub reference: &'a Path,
    /// Where its forward passes run.
    pub device: &'a str,
    /// Its vocabulary.
    pub vocab: usize,
    /// The window size.
    pub ctx: usize,
    /// The first position whose logits the window keeps.
    pub first: usize,
}

/// A folder of reference logits for one reference, device and window
/// shape.
pub struct RefStore {
    dir: PathBuf,
    /// What every key starts with: reference, device, vocabulary, window.
    prefix: String,
    /// f32 values per window.
    len: usize,
}

impl RefStore {
    /// A store in `dir` for windows of `len` logits each, or `None` when
    /// `windows` of them exceed [`BUDGET_BYTES`].
    pub fn new(dir: &Path, key: &RefKey<'_>, windows: usize, len: usize) -> Option<RefStore> {
        let bytes = (windows as u64).checked_mul(len as u64)?.checked_mul(4)?;
        if bytes > BUDGET_BYTES {
            return None;
        }
        let prefix = format!(
            "{}\n{}\n{}\n{}\n{}\n",
            key.reference.display(),
            key.device,
            key.vocab,
            key.ctx,
            key.first
        );
        Some(RefStore {
            dir: dir.to_path_buf(),
            prefix,
            len,
        })
    }

    fn path(&self, window: &[u32]) -> PathBuf {
        let mut h = Sha256::new();
        h.update(self.prefix.as_bytes());
        for t in window {
            h.update(t.to_le_bytes());
        }
        let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        self.dir.join(format!("{hex}.f32"))
    }

    /// The stored logits of `window`, if a whole file of them is there.
    pub fn get(&self, window: &[u32]) -> Option<Vec<f32>> {
        let bytes = fs::read(self.path(window)).ok()?;
        if bytes.len() != 4 * self.len {
            return None;
        }
        Some(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        )
    }

    /// Stores `logits` for `window` (written aside, then renamed into
    /// place). A failure (a full disk) only costs the reuse.
    pub fn put(&self, window: &[u32], logits: &[f32]) {
        if logits.len() != self.len {
            return;
        }
        let path = self.path(window);
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let written = fs::create_dir_all(&self.dir).and_then(|()| {
            let mut f = fs::File::create(&tmp)?;
            let mut buf = Vec::with_capacity(4 * logits.len());
            for v in logits {
                buf.extend_from_slice(&v.to_le_bytes());
            }
            f.write_all(&buf)?;
            fs::rename(&tmp, &path)
        });
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path, device: &str, windows: usize) -> Option<RefStore> {
        let key = RefKey {
            reference: Path::new("ref.gguf"),
            device,
            vocab: 3,
            ctx: 4,
            first: 1,
        };
        RefStore::new(dir, &key, windows, 9)
    }

    #[test]
    fn logits_come_back_with_their_bits_under_their_own_key() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), "CPU", 2).unwrap();
        let logits: Vec<f32> = vec![
            1.5,
            -0.0,
            f32::MIN_POSITIVE,
            3e38,
            -7.25,
            0.1,
            2.0,
            3.0,
            4.0,
        ];
        assert!(s.get(&[1, 2, 3, 4]).is_none());
        s.put(&[1, 2, 3, 4], &logits);
        let got = s.get(&[1, 2, 3, 4]).unwrap();
        assert_eq!(
            got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            logits.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        // Other tokens, another device: other keys.
        assert!(s.get(&[1, 2, 3, 5]).is_none());
        assert!(store(dir.path(), "GPU", 2)
            .unwrap()
            .get(&[1, 2, 3, 4])
            .is_none());
        // A short file is a miss, not a short window.
        let p = s.path(&[1, 2, 3, 4]);
        fs::write(&p, [0u8; 8]).unwrap();
        assert!(s.get(&[1, 2, 3, 4]).is_none());
        // Logits of the wrong length are not stored.
        s.put(&[9, 9, 9, 9], &logits[..3]);
        assert!(s.get(&[9, 9, 9, 9]).is_none());
    }

    #[test]
    fn evaluations_beyond_the_budget_get_no_store() {
        let dir = tempfile::tempdir().unwrap();
        let windows = (BUDGET_BYTES / 36) as usize;
        assert!(store(dir.path(), "CPU", windows).is_some());
        assert!(store(dir.path(), "CPU", windows + 1).is_none());
        assert!(store(dir.path(), "CPU", usize::MAX).is_none());
    }
}
