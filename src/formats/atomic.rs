//! Atomic outputs: write to a temporary name in the target folder, fsync,
//! check, rename. A failed or killed run leaves no half-written file under
//! the final name; a dropped, uncommitted output removes its temporary file.
//!
//! Temporary names carry the writer's pid (`.NAME.qforge-PID-N.tmp`), and
//! the writer holds an exclusive `flock` on its temporary while it writes.
//! The next run that writes the same output uses both: a temporary whose
//! lock is free and whose process is gone was left by a killed run and is
//! removed; a temporary whose lock is held belongs to a live writer, and
//! the run stops with an error naming that pid instead of racing it.
//!
//! Before a rename, every input this process has memory-mapped is checked
//! against the size, modification time and inode it had when it was mapped
//! ([`super::mmap::check_inputs_unchanged`]): an output is only committed
//! when its inputs held still while it was made.

use std::fs::{self, File};
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::error::{FormatError, FormatErrorKind, Result};
use super::mmap::{check_inputs_unchanged, TempOutputGuard};
use super::paths::safe_child;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// The temporary sibling of `path`: hidden, named after the final file, the
/// process and a counter, so concurrent writers never share one.
pub fn temp_path_for(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".into());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.qforge-{}-{n}.tmp", std::process::id()))
}

/// The pid in `temp_name` when it is a [`temp_path_for`] name of an output
/// named `final_name`.
fn temp_owner(temp_name: &str, final_name: &str) -> Option<u32> {
    let rest = temp_name
        .strip_prefix('.')?
        .strip_prefix(final_name)?
        .strip_prefix(".qforge-")?
        .strip_suffix(".tmp")?;
    let (pid, n) = rest.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(pid) || !digits(n) {
        return None;
    }
    pid.parse().ok()
}

/// Removes the temporaries of `final_path` that killed runs left behind,
/// and errs when a live process is writing `final_path` now.
///
/// A temporary is stale when nobody holds its lock and its process is gone
/// (or is this process, which has no other writer of this output: a pid
/// reused from a killed run). A free lock with a live owner is left alone:
/// that writer is between creating its file and locking it, or committing.
pub fn clean_stale_temps(final_path: &Path) -> Result<()> {
    let Some(name) = final_path.file_name().and_then(|n| n.to_str()) else {
        return Ok(());
    };
    let Ok(entries) = fs::read_dir(parent_dir(final_path)) else {
        // No folder to look in: creating the output reports it.
        return Ok(());
    };
    for entry in entries.flatten() {
        let entry_name = entry.file_name();
        let Some(pid) = entry_name.to_str().and_then(|n| temp_owner(n, name)) else {
            continue;
        };
        let path = entry.path();
        match try_lock(&path) {
            Lock::Held => {
                return Err(
                    FormatError::new(FormatErrorKind::OutputBusy { pid }).in_file(final_path)
                )
            }
            Lock::Taken(_lock) => {
                if pid == std::process::id() || !process_alive(pid) {
                    let _ = if path.is_dir() {
                        fs::remove_dir_all(&path)
                    } else {
                        fs::remove_file(&path)
                    };
                }
            }
            Lock::Unavailable => {}
        }
    }
    Ok(())
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// What a non-blocking exclusive lock attempt on a temporary found.
enum Lock {
    /// Another open file holds it: a live writer.
    Held,
    /// Nobody held it; we hold it until this handle drops. (Also returned
    /// where the file system has no locks: the pid check alone decides.)
    Taken(#[allow(dead_code)] File),
    /// The file could not be opened (gone meanwhile, or no permission).
    Unavailable,
}

#[cfg(unix)]
fn try_lock(path: &Path) -> Lock {
    use rustix::fs::{flock, FlockOperation};
    let Ok(file) = File::open(path) else {
        return Lock::Unavailable;
    };
    match flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => Lock::Held,
        _ => Lock::Taken(file),
    }
}

#[cfg(not(unix))]
fn try_lock(path: &Path) -> Lock {
    match File::open(path) {
        Ok(f) => Lock::Taken(f),
        Err(_) => Lock::Unavailable,
    }
}

/// Holds an exclusive lock on a freshly created temporary (best effort:
/// where locks are unsupported, the pid in the name still protects it).
#[cfg(unix)]
fn lock_own(file: &File) {
    let _ = rustix::fs::flock(file, rustix::fs::FlockOperation::NonBlockingLockExclusive);
}

#[cfg(not(unix))]
fn lock_own(_file: &File) {}

/// Whether process `pid` exists (a process we may not signal exists too).
#[cfg(unix)]
fn process_alive(pid: u32) -> bool {
    use rustix::process::{test_kill_process, Pid};
    let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return false;
    };
    !matches!(test_kill_process(pid), Err(e) if e == rustix::io::Errno::SRCH)
}

/// Off unix, every owner counts as alive: nothing is removed.
#[cfg(not(unix))]
fn process_alive(_pid: u32) -> bool {
    true
}

/// A file being written under a temporary name until [`AtomicFile::commit`].
pub struct AtomicFile {
    final_path: PathBuf,
    temp_path: PathBuf,
    out: Option<BufWriter<File>>,
    /// Bytes accepted so far; the committed file must hold exactly these.
    written: u64,
    /// Bytes written since the file was last synced to disk.
    unsynced: u64,
    committed: bool,
    _fault_guard: TempOutputGuard,
}

/// Bytes between intermediate syncs: `finish` then waits for the disk to
/// take the last of them only, not the whole file (and, behind a
/// [`crate::hashing::HashingWriter`], the syncs run while the caller
/// computes what comes next).
const SYNC_EVERY: u64 = 64 << 20;

impl AtomicFile {
    /// Creates the temporary file next to `path`, after removing stale
    /// temporaries of `path`; errs when another live process writes `path`.
    pub fn create(path: impl AsRef<Path>) -> Result<AtomicFile> {
        let final_path = path.as_ref().to_path_buf();
        clean_stale_temps(&final_path)?;
        let temp_path = temp_path_for(&final_path);
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(&temp_path)
            .map_err(|e| FormatError::io(&final_path, e))?;
        lock_own(&file);
        Ok(AtomicFile {
            _fault_guard: TempOutputGuard::new(&temp_path),
            final_path,
            temp_path,
            out: Some(BufWriter::with_capacity(1 << 20, file)),
            written: 0,
            unsynced: 0,
            committed: false,
        })
    }

    /// The name the file will have once committed.
    pub fn final_path(&self) -> &Path {
        &self.final_path
    }

    /// A second handle on the temporary file, for reading back what was
    /// written (it has its own position).
    pub fn reader(&self) -> io::Result<File> {
        File::open(&self.temp_path)
    }

    /// Writes `bytes` over the file's first bytes (a header completed after
    /// the data behind it was written); the file must be at least as long.
    pub fn rewrite_start(&mut self, bytes: &[u8]) -> io::Result<()> {
        if bytes.len() as u64 > self.written {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a start of {} bytes for a file of {}",
                    bytes.len(),
                    self.written
                ),
            ));
        }
        let out = self.out.as_mut().expect("not committed");
        out.flush()?;
        let file = out.get_mut();
        file.seek(SeekFrom::Start(0))?;
        file.write_all(bytes)?;
        file.seek(SeekFrom::End(0))?;
        Ok(())
    }

    /// Flushes, fsyncs, checks and renames the file to its final name, then
    /// fsyncs the folder so the rename itself is durable.
    pub fn commit(self) -> Result<()> {
        commit_all(vec![self.finish()?])
    }

    /// Flushes and fsyncs the file, checks it holds every byte written, and
    /// closes it, still under its temporary name: [`commit_all`] renames a
    /// set of finished files at once. Dropping the result removes the file.
    pub fn finish(mut self) -> Result<FinishedFile> {
        let path = self.final_path.clone();
        let out = self.out.take().expect("finished once");
        let file = out
            .into_inner()
            .map_err(|e| FormatError::io(&path, e.into_error()))?;
        file.sync_all().map_err(|e| FormatError::io(&path, e))?;
        let len = file
            .metadata()
            .map_err(|e| FormatError::io(&path, e))?
            .len();
        if len != self.written {
            return Err(FormatError::other(format!(
                "{} bytes were written but the temporary file {} holds {len}; \
                 another process changed it",
                self.written,
                self.temp_path.display()
            ))
            .in_file(&path));
        }
        // Hand the temporary over: from here the finished file removes it.
        self.committed = true;
        Ok(FinishedFile {
            final_path: std::mem::take(&mut self.final_path),
            temp_path: std::mem::take(&mut self.temp_path),
            committed: false,
            _fault_guard: std::mem::replace(&mut self._fault_guard, TempOutputGuard::none()),
        })
    }
}

/// A written, fsynced file under its temporary name, waiting for
/// [`commit_all`]; removed if dropped.
pub struct FinishedFile {
    final_path: PathBuf,
    temp_path: PathBuf,
    committed: bool,
    _fault_guard: TempOutputGuard,
}

impl FinishedFile {
    /// The name the file will have once committed.
    pub fn final_path(&self) -> &Path {
        &self.final_path
    }
}

impl Drop for FinishedFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.temp_path);
        }
    }
}

/// Commits finished files as one: the inputs are checked, then every file
/// is renamed into place. If a rename fails, the files already renamed are
/// removed again, so a set (a split GGUF, safetensors shards) is never left
/// half in place by an error.
pub fn commit_all(mut files: Vec<FinishedFile>) -> Result<()> {
    check_inputs_unchanged()?;
    let mut renamed: Vec<&Path> = Vec::new();
    for f in &files {
        if let Err(e) = fs::rename(&f.temp_path, &f.final_path) {
            for done in renamed {
                let _ = fs::remove_file(done);
            }
            return Err(FormatError::io(&f.final_path, e));
        }
        renamed.push(&f.final_path);
    }
    for f in &mut files {
        f.committed = true;
    }
    let mut synced: Vec<&Path> = Vec::new();
    for f in &files {
        let dir = parent_dir(&f.final_path);
        if !synced.contains(&dir) {
            sync_dir(dir);
            synced.push(dir);
        }
    }
    Ok(())
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let out = self.out.as_mut().expect("not committed");
        let n = out.write(buf)?;
        self.written += n as u64;
        self.unsynced += n as u64;
        if self.unsynced >= SYNC_EVERY {
            out.flush()?;
            out.get_ref().sync_data()?;
            self.unsynced = 0;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.as_mut().expect("not committed").flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.temp_path);
        }
    }
}

/// Best-effort fsync of the folder holding `path` (makes a rename durable on
/// Linux; a no-op where folders cannot be opened).
pub fn sync_parent(path: &Path) {
    sync_dir(parent_dir(path));
}

fn sync_dir(dir: &Path) {
    if let Ok(dir) = File::open(dir) {
        let _ = dir.sync_all();
    }
}

/// A folder being filled under a temporary name until
/// [`AtomicDir::commit`] renames it into place.
pub struct AtomicDir {
    final_path: PathBuf,
    temp_path: PathBuf,
    committed: bool,
    /// The temporary folder, open and locked while it is filled.
    _lock: Option<File>,
    _fault_guard: TempOutputGuard,
}

impl AtomicDir {
    /// Creates the temporary folder next to `path`, after removing stale
    /// temporaries of `path`; errs when another live process writes `path`.
    pub fn create(path: impl AsRef<Path>) -> Result<AtomicDir> {
        let final_path = path.as_ref().to_path_buf();
        clean_stale_temps(&final_path)?;
        let temp_path = temp_path_for(&final_path);
        fs::create_dir(&temp_path).map_err(|e| FormatError::io(&final_path, e))?;
        let lock = File::open(&temp_path).ok();
        if let Some(f) = &lock {
            lock_own(f);
        }
        Ok(AtomicDir {
            _fault_guard: TempOutputGuard::new(&temp_path),
            final_path,
            temp_path,
            committed: false,
            _lock: lock,
        })
    }

    /// Where to write the folder's files until commit.
    pub fn path(&self) -> &Path {
        &self.temp_path
    }

    /// Writes one small file into the folder. `name` may come from a
    /// model's metadata: it is a plain file name, or plain names joined by
    /// `/` (`additional_chat_templates/tool_use.jinja`), whose folders are
    /// created; `..`, absolute paths and control characters are refused.
    pub fn write_file(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let mut path = self.temp_path.clone();
        let parts: Vec<&str> = name.split('/').collect();
        for (i, part) in parts.iter().enumerate() {
            path = safe_child(&path, part).map_err(|e| e.in_file(&self.final_path.join(name)))?;
            if i + 1 < parts.len() {
                fs::create_dir_all(&path).map_err(|e| FormatError::io(&path, e))?;
            }
        }
        let mut f = AtomicFile::create(path)?;
        f.write_all(bytes)
            .map_err(|e| FormatError::io(&self.final_path.join(name), e))?;
        f.commit()
    }

    /// Moves the folder to its final name. An existing folder there is
    /// replaced: it is moved aside first and removed once the new one is in
    /// place.
    pub fn commit(mut self) -> Result<()> {
        check_inputs_unchanged()?;
        let old = if fs::symlink_metadata(&self.final_path).is_ok() {
            let aside = temp_path_for(&self.final_path);
            fs::rename(&self.final_path, &aside)
                .map_err(|e| FormatError::io(&self.final_path, e))?;
            Some(aside)
        } else {
            None
        };
        if let Err(e) = fs::rename(&self.temp_path, &self.final_path) {
            if let Some(aside) = &old {
                let _ = fs::rename(aside, &self.final_path);
            }
            return Err(FormatError::io(&self.final_path, e));
        }
        self.committed = true;
        sync_parent(&self.final_path);
        if let Some(aside) = old {
            let _ = if aside.is_dir() {
                fs::remove_dir_all(&aside)
            } else {
                fs::remove_file(&aside)
            };
        }
        Ok(())
    }
}

impl Drop for AtomicDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.temp_path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_carry_the_owner() {
        let t = temp_path_for(Path::new("/out/m.gguf"));
        let name = t.file_name().unwrap().to_str().unwrap();
        assert_eq!(temp_owner(name, "m.gguf"), Some(std::process::id()));
        assert_eq!(temp_owner(name, "m"), None);
        assert_eq!(temp_owner(".m.gguf.qforge-12-x.tmp", "m.gguf"), None);
        assert_eq!(temp_owner(".m.gguf.qforge--1.tmp", "m.gguf"), None);
        assert_eq!(temp_owner("m.gguf", "m.gguf"), None);
    }

    #[test]
    fn stale_temporaries_of_dead_processes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("m.gguf");
        // A pid no process has: above the kernel's pid_max (at most 2^22).
        let dead = dir.path().join(".m.gguf.qforge-2147483000-0.tmp");
        fs::write(&dead, b"half").unwrap();
        let dead_dir = dir.path().join(".m.gguf.qforge-2147483001-3.tmp");
        fs::create_dir(&dead_dir).unwrap();
        fs::write(dead_dir.join("x"), b"x").unwrap();
        // Another output's temporary, and one of a live process (pid 1).
        let other = dir.path().join(".n.gguf.qforge-2147483000-0.tmp");
        fs::write(&other, b"n").unwrap();
        let live = dir.path().join(".m.gguf.qforge-1-0.tmp");
        fs::write(&live, b"live").unwrap();

        let mut f = AtomicFile::create(&out).unwrap();
        f.write_all(b"done").unwrap();
        f.commit().unwrap();
        assert_eq!(fs::read(&out).unwrap(), b"done");
        assert!(!dead.exists() && !dead_dir.exists());
        assert!(other.exists(), "another output's temporary was removed");
        assert!(live.exists(), "a live process's temporary was removed");
    }

    #[test]
    fn writes_across_the_intermediate_syncs_keep_every_byte_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("big.gguf");
        let mut f = AtomicFile::create(&out).unwrap();
        // Uneven writes so that syncs fall inside and between them.
        let mut expect = Vec::new();
        let mut i = 0u32;
        while expect.len() < 2 * SYNC_EVERY as usize + 12_345 {
            let n = 1 + (i as usize * 7919) % (3 << 20);
            let chunk: Vec<u8> = (0..n).map(|j| (j as u32 ^ i) as u8).collect();
            f.write_all(&chunk).unwrap();
            expect.extend_from_slice(&chunk);
            i += 1;
        }
        f.commit().unwrap();
        assert!(
            fs::read(&out).unwrap() == expect,
            "the committed bytes differ"
        );
    }

    #[test]
    fn a_second_writer_of_one_output_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("m.gguf");
        let mut first = AtomicFile::create(&out).unwrap();
        let err = AtomicFile::create(&out)
            .err()
            .expect("second writer refused");
        assert!(
            matches!(err.kind, FormatErrorKind::OutputBusy { pid } if pid == std::process::id()),
            "{err}"
        );
        assert!(
            err.to_string().contains("is writing this output now"),
            "{err}"
        );
        first.write_all(b"one").unwrap();
        first.commit().unwrap();
        // Once the first is done, the output can be written again.
        AtomicFile::create(&out).unwrap().commit().unwrap();
        assert_eq!(fs::read(&out).unwrap(), b"");
        let left: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "temporaries left: {left:?}");
    }

    #[test]
    fn an_uncommitted_set_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let a = AtomicFile::create(dir.path().join("a")).unwrap();
        let b = AtomicFile::create(dir.path().join("b")).unwrap();
        drop((a, b));
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
        let a = AtomicFile::create(dir.path().join("a")).unwrap();
        let b = AtomicFile::create(dir.path().join("b")).unwrap();
        let finished = vec![a.finish().unwrap(), b.finish().unwrap()];
        drop(finished);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
        let a = AtomicFile::create(dir.path().join("a")).unwrap();
        let b = AtomicFile::create(dir.path().join("b")).unwrap();
        commit_all(vec![a.finish().unwrap(), b.finish().unwrap()]).unwrap();
        assert!(dir.path().join("a").is_file() && dir.path().join("b").is_file());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn folder_files_must_be_plain_names() {
        let dir = tempfile::tempdir().unwrap();
        let out = AtomicDir::create(dir.path().join("m")).unwrap();
        for bad in [
            "../escape.json",
            "/tmp/x",
            "a/../../x",
            "a//b",
            "..",
            "a\nb",
            "a\\b",
            "",
        ] {
            assert!(out.write_file(bad, b"x").is_err(), "{bad:?} accepted");
        }
        assert!(!dir.path().join("escape.json").exists());
        out.write_file("config.json", b"{}").unwrap();
        out.write_file("additional_chat_templates/tool_use.jinja", b"t")
            .unwrap();
        out.commit().unwrap();
        assert_eq!(fs::read(dir.path().join("m/config.json")).unwrap(), b"{}");
        assert!(dir
            .path()
            .join("m/additional_chat_templates/tool_use.jinja")
            .is_file());
    }
}
