//! SHA-256 of files and of bytes as they are written.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;

use sha2::{Digest, Sha256};

use crate::formats::mmap::MappedFile;
use crate::formats::FormatError;

/// Lower-case hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of a file's contents, read in 1 MiB chunks.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// SHA-256 of a file read through a memory map (no copy out of the page
/// cache: reading it with `read` cost as much as the hashing), given up
/// once `cancel` is set.
fn sha256_mapped(path: &Path, cancel: &AtomicBool) -> Result<String, FormatError> {
    const CHUNK: usize = 8 << 20;
    let map = MappedFile::open(path)?;
    let mut h = Sha256::new();
    for chunk in map.bytes().chunks(CHUNK) {
        if cancel.load(Ordering::Relaxed) {
            return Err(FormatError::other("hashing cancelled").in_file(path));
        }
        h.update(chunk);
        // Hashed pages need not stay in this process's resident set.
        map.release(chunk);
    }
    Ok(hex(&h.finalize()))
}

/// Stands for a SHA-256 not known yet: lower-case hex of the same length,
/// so a header written with it keeps its size when the digest replaces it.
pub const DIGEST_PLACEHOLDER: &str =
    "0000000000000000000000000000000000000000000000000000000000000000";

/// Files hashed at most at once by [`FileDigests`].
const DIGEST_THREADS: usize = 4;

/// The SHA-256 of files, computed on background threads while the caller
/// goes on. A converter names its sources' digests in the header of its
/// output, and hashing a source up front cost `qforge quantize` up to a
/// third of its time on 16 cores (SHA-256 runs at about 2 GB/s on one core: 8 s for
/// a 16 GB model); the header is completed once they are known instead
/// (see [`HashingWriter::deferred`]). Dropping it stops the threads.
pub struct FileDigests {
    paths: Vec<PathBuf>,
    results: mpsc::Receiver<(usize, Result<String, FormatError>)>,
    got: Vec<Option<String>>,
    failed: Option<FormatError>,
    cancel: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl FileDigests {
    /// Starts hashing `paths`, up to four files at once.
    pub fn start(paths: Vec<PathBuf>) -> FileDigests {
        let (tx, results) = mpsc::channel();
        let next = Arc::new(AtomicUsize::new(0));
        let cancel = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(paths.clone());
        let threads = (0..paths.len().min(DIGEST_THREADS))
            .map(|_| {
                let (tx, next, cancel, paths) =
                    (tx.clone(), next.clone(), cancel.clone(), shared.clone());
                thread::Builder::new()
                    .name("sha256-source".into())
                    .spawn(move || loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(p) = paths.get(i) else { break };
                        if tx.send((i, sha256_mapped(p, &cancel))).is_err() {
                            break;
                        }
                    })
                    .expect("starting a hashing thread")
            })
            .collect();
        FileDigests {
            got: vec![None; paths.len()],
            paths,
            results,
            failed: None,
            cancel,
            threads,
        }
    }

    /// How many files.
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// True for no files.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// The files, each with [`DIGEST_PLACEHOLDER`] for its digest.
    pub fn placeholders(&self) -> Vec<(PathBuf, String)> {
        self.paths
            .iter()
            .map(|p| (p.clone(), DIGEST_PLACEHOLDER.to_string()))
            .collect()
    }

    /// True once every digest is known or one file failed; does not wait.
    pub fn ready(&mut self) -> bool {
        while let Ok(r) = self.results.try_recv() {
            self.take(r);
        }
        self.settled()
    }

    /// Waits for every digest: the files with their hex SHA-256, in the
    /// order given, or the first error met (naming its file).
    pub fn finish(mut self) -> Result<Vec<(PathBuf, String)>, FormatError> {
        while !self.settled() {
            match self.results.recv() {
                Ok(r) => self.take(r),
                Err(_) => break,
            }
        }
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        let paths = std::mem::take(&mut self.paths);
        let got = std::mem::take(&mut self.got);
        paths
            .into_iter()
            .zip(got)
            .map(|(p, h)| match h {
                Some(h) => Ok((p, h)),
                None => Err(FormatError::other("the hashing thread stopped").in_file(&p)),
            })
            .collect()
    }

    fn take(&mut self, (i, r): (usize, Result<String, FormatError>)) {
        match r {
            Ok(h) => self.got[i] = Some(h),
            Err(e) => {
                if self.failed.is_none() {
                    self.failed = Some(e);
                }
            }
        }
    }

    fn settled(&self) -> bool {
        self.failed.is_some() || self.got.iter().all(Option::is_some)
    }
}

impl Drop for FileDigests {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// SHA-256 of a byte slice.
pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Bytes per batch handed to the writing thread.
const BATCH: usize = 4 << 20;

/// Batches queued for the writing thread at most (and for the hashing
/// thread): bounds the memory of a writer that falls behind.
const QUEUED: usize = 6;

enum Msg {
    Data(Vec<u8>),
    /// Flush the inner writer and answer with the outcome.
    Flush(mpsc::SyncSender<io::Result<()>>),
}

/// What the hashing thread hears.
enum ToHash {
    /// The next bytes written.
    Bytes(Vec<u8>),
    /// (Deferred.) The next so many bytes are in the file.
    Written(u64),
    /// (Deferred.) What the digest takes for the first bytes written.
    Prefix(Vec<u8>),
}

/// A writer that hashes and counts everything written through it, and
/// writes behind: the bytes are copied into 4 MiB batches that one thread
/// writes to the inner writer and a second hashes, while the caller goes
/// on (to quantize the next tensor). Writing (the kernel's copy into the
/// page cache) and SHA-256 (about 2 GB/s on one core) took three fifths of
/// `qforge quantize -t Q8_0`'s time on the caller's thread, by perf.
///
/// A failed write is returned by the next call on this writer, and by
/// [`HashingWriter::finish`].
pub struct HashingWriter<W> {
    pending: Vec<u8>,
    batches: Option<mpsc::SyncSender<Msg>>,
    /// (Deferred.) Where [`HashingWriter::set_prefix`] sends the prefix.
    prefix: Option<mpsc::SyncSender<ToHash>>,
    recycled: mpsc::Receiver<Vec<u8>>,
    failed: Arc<Mutex<Option<io::Error>>>,
    writer: Option<thread::JoinHandle<W>>,
    hasher: Option<thread::JoinHandle<io::Result<Sha256>>>,
    written: u64,
    /// Whether the bytes are hashed ([`HashingWriter::unhashed`]: no).
    hashing: bool,
}

impl<W: Write + Send + 'static> HashingWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        Self::start(inner, None, true)
    }

    /// Wraps `inner`, counting and writing behind but not hashing: for an
    /// output whose digest nobody reports (SHA-256 runs at about 2 GB/s
    /// on one core, and a deferred digest cannot start before the header
    /// it hashes first is complete).
    pub fn unhashed(inner: W) -> Self {
        Self::start(inner, None, false)
    }

    /// Wraps `inner`, whose first bytes are placeholders: the digest takes
    /// the bytes given to [`HashingWriter::set_prefix`] for them instead,
    /// and the caller writes those over the placeholders once this writer
    /// is finished (a header that names digests still being computed; see
    /// [`FileDigests`]). Until the prefix is known nothing is hashed;
    /// then the hashing thread reads back, through `readback` (a second
    /// handle on the file `inner` writes), what was written in the
    /// meantime, and follows the writes from there. The batches go back
    /// to the caller as soon as they are written, so waiting for the
    /// prefix holds no memory.
    pub fn deferred(inner: W, readback: File) -> Self {
        Self::start(inner, Some(readback), true)
    }

    fn start(mut inner: W, readback: Option<File>, hashing: bool) -> Self {
        let deferred = readback.is_some();
        let (batches, to_write) = mpsc::sync_channel::<Msg>(QUEUED);
        // Deferred, the hashing thread hears only counts: a long queue of
        // them holds no batches.
        let (to_hash_tx, to_hash) =
            mpsc::sync_channel::<ToHash>(if deferred { 1024 } else { QUEUED });
        let prefix = deferred.then(|| to_hash_tx.clone());
        let (give_back, recycled) = mpsc::channel();
        let give_back_written = give_back.clone();
        let failed = Arc::new(Mutex::new(None));
        let fail = failed.clone();
        let writer = thread::Builder::new()
            .name("write-behind".into())
            .spawn(move || {
                let mut ok = true;
                for m in to_write {
                    match m {
                        Msg::Data(mut b) => {
                            if ok {
                                // Deferred, the bytes are read back from the
                                // file: they must be in it, not in a buffer.
                                let r = inner.write_all(&b).and_then(|()| {
                                    if deferred {
                                        inner.flush()
                                    } else {
                                        Ok(())
                                    }
                                });
                                if let Err(e) = r {
                                    ok = false;
                                    *fail.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                                }
                            }
                            if !deferred {
                                let _ = to_hash_tx.send(ToHash::Bytes(b));
                            } else {
                                if ok {
                                    let _ = to_hash_tx.send(ToHash::Written(b.len() as u64));
                                }
                                b.clear();
                                let _ = give_back_written.send(b);
                            }
                        }
                        Msg::Flush(answer) => {
                            let r = if ok { inner.flush() } else { Ok(()) };
                            let _ = answer.send(r);
                        }
                    }
                }
                inner
            })
            .expect("starting the write-behind thread");
        let hasher = thread::Builder::new()
            .name("sha256".into())
            .spawn(move || hash_thread(to_hash, readback, give_back, hashing))
            .expect("starting the hashing thread");
        HashingWriter {
            pending: Vec::new(),
            batches: Some(batches),
            prefix,
            recycled,
            failed,
            writer: Some(writer),
            hasher: Some(hasher),
            written: 0,
            hashing,
        }
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// (Made by [`HashingWriter::deferred`].) The bytes the digest takes
    /// for the first `prefix.len()` bytes written; given once, at any time
    /// before [`HashingWriter::finish`].
    pub fn set_prefix(&mut self, prefix: Vec<u8>) -> io::Result<()> {
        let tx = self
            .prefix
            .take()
            .ok_or_else(|| io::Error::other("the prefix was given already, or is not deferred"))?;
        tx.send(ToHash::Prefix(prefix))
            .map_err(|_| io::Error::other("the hashing thread stopped"))
    }

    /// Waits for every byte to be written and hashed; returns the inner
    /// writer (unflushed, as written to) and the hex SHA-256 of everything
    /// written (with the prefix given, if deferred; `None` when made
    /// [`HashingWriter::unhashed`]), or the first error writing or hashing
    /// met.
    pub fn finish(mut self) -> io::Result<(W, Option<String>)> {
        self.send_pending();
        drop(self.batches.take());
        // Deferred without a prefix, the hashing thread says so.
        drop(self.prefix.take());
        let inner = joined(self.writer.take().expect("joined once").join());
        let h = joined(self.hasher.take().expect("joined once").join());
        self.check()?;
        let h = h?;
        Ok((inner, self.hashing.then(|| hex(&h.finalize()))))
    }

    /// The error an earlier batch met, once.
    fn check(&self) -> io::Result<()> {
        match self.failed.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn send(&self, m: Msg) -> io::Result<()> {
        let tx = self.batches.as_ref().expect("not finished");
        tx.send(m)
            .map_err(|_| io::Error::other("the write-behind thread stopped"))
    }

    fn send_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let next = self
            .recycled
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(BATCH));
        let full = std::mem::replace(&mut self.pending, next);
        // A stopped thread shows up as its error in `check` or `finish`.
        let _ = self.send(Msg::Data(full));
    }
}

/// The hashing thread: hashes the batches it is sent or, deferred, the
/// prefix and then what the file holds beyond it, read back up to what
/// has been written.
fn hash_thread(
    input: mpsc::Receiver<ToHash>,
    mut readback: Option<File>,
    give_back: mpsc::Sender<Vec<u8>>,
    hashing: bool,
) -> io::Result<Sha256> {
    let mut h = Sha256::new();
    // Deferred: bytes known to be in the file, and hashed so far (from the
    // prefix on).
    let (mut written, mut hashed) = (0u64, None::<u64>);
    let mut buf = Vec::new();
    for m in input {
        match m {
            ToHash::Bytes(mut b) => {
                if hashing {
                    h.update(&b);
                }
                b.clear();
                let _ = give_back.send(b);
            }
            ToHash::Written(n) => written += n,
            ToHash::Prefix(p) => {
                h.update(&p);
                hashed = Some(p.len() as u64);
            }
        }
        if let (Some(from), Some(file)) = (hashed, readback.as_mut()) {
            if from < written {
                hash_range(file, from, written, &mut h, &mut buf)?;
                hashed = Some(written);
            }
        }
    }
    if readback.is_some() {
        match hashed {
            None => return Err(io::Error::other("the file's header was never completed")),
            Some(n) if n > written => {
                return Err(io::Error::other(format!(
                    "the header completed is {n} bytes, the file only {written}"
                )))
            }
            Some(_) => {}
        }
    }
    Ok(h)
}

/// Hashes bytes `from..to` of `file`.
fn hash_range(
    file: &mut File,
    from: u64,
    to: u64,
    h: &mut Sha256,
    buf: &mut Vec<u8>,
) -> io::Result<()> {
    buf.resize(BATCH, 0);
    file.seek(SeekFrom::Start(from))?;
    let mut left = to - from;
    while left > 0 {
        let n = left.min(BATCH as u64) as usize;
        file.read_exact(&mut buf[..n])?;
        h.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(())
}

impl<W: Write + Send + 'static> Write for HashingWriter<W> {
    fn write(&mut self, mut buf: &[u8]) -> io::Result<usize> {
        self.check()?;
        let n = buf.len();
        while !buf.is_empty() {
            if self.pending.capacity() < BATCH {
                self.pending.reserve_exact(BATCH - self.pending.len());
            }
            let take = buf.len().min(BATCH - self.pending.len());
            self.pending.extend_from_slice(&buf[..take]);
            buf = &buf[take..];
            if self.pending.len() == BATCH {
                self.send_pending();
            }
        }
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_pending();
        let (answer, outcome) = mpsc::sync_channel(1);
        self.send(Msg::Flush(answer))?;
        let r = outcome
            .recv()
            .map_err(|_| io::Error::other("the write-behind thread stopped"))?;
        self.check()?;
        r
    }
}

/// A thread's result, its panic carried on to the caller.
fn joined<T>(r: thread::Result<T>) -> T {
    r.unwrap_or_else(|e| std::panic::resume_unwind(e))
}

impl<W> Drop for HashingWriter<W> {
    fn drop(&mut self) {
        // Unfinished (an error path): let the threads drain and end, and
        // wait for them, so that the inner writer (a temporary file) is
        // dropped before the caller goes on.
        drop(self.batches.take());
        drop(self.prefix.take());
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        if let Some(h) = self.hasher.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashing_writer_matches_the_one_shot_digest_across_batch_edges() {
        // Writes of 1 byte, a batch less one, a batch, two and a half
        // batches: every way a write can straddle the hashing thread's
        // batches.
        let sizes = [1, BATCH - 1, 3, BATCH, 5 * BATCH / 2, 7, 0, BATCH + 1];
        let mut all = Vec::new();
        let mut w = HashingWriter::new(Vec::new());
        for (i, &n) in sizes.iter().enumerate() {
            let chunk: Vec<u8> = (0..n).map(|j| (j * 31 + i * 7) as u8).collect();
            w.write_all(&chunk).unwrap();
            all.extend_from_slice(&chunk);
        }
        assert_eq!(w.written(), all.len() as u64);
        let (inner, digest) = w.finish().unwrap();
        assert_eq!(inner, all);
        // sha2's one-shot digest of the same bytes, and the empty input's
        // published digest.
        assert_eq!(digest, Some(sha256_bytes(&all)));
        let (_, empty) = HashingWriter::new(Vec::new()).finish().unwrap();
        assert_eq!(
            empty.as_deref(),
            Some("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        );
        // Unhashed: the same bytes written and counted, no digest.
        let mut w = HashingWriter::unhashed(Vec::new());
        w.write_all(&all).unwrap();
        assert_eq!(w.written(), all.len() as u64);
        let (inner, digest) = w.finish().unwrap();
        assert_eq!(inner, all);
        assert_eq!(digest, None);
    }

    /// Writes `data` through a deferred writer on a real file, giving the
    /// prefix after `at` bytes (`None`: after all of them); returns the
    /// digest and the file's bytes once the prefix is written over them.
    fn deferred_round(data: &[u8], prefix: &[u8], at: Option<usize>) -> (String, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let file = File::create(&path).unwrap();
        let mut w = HashingWriter::deferred(file, File::open(&path).unwrap());
        let at = at.unwrap_or(data.len());
        // Odd-sized writes, so batches and writes do not line up.
        for chunk in data[..at].chunks(1_000_003) {
            w.write_all(chunk).unwrap();
        }
        w.set_prefix(prefix.to_vec()).unwrap();
        for chunk in data[at..].chunks(777_777) {
            w.write_all(chunk).unwrap();
        }
        let (mut file, digest) = w.finish().unwrap();
        file.seek(SeekFrom::Start(0)).unwrap();
        file.write_all(prefix).unwrap();
        drop(file);
        (digest.unwrap(), std::fs::read(&path).unwrap())
    }

    #[test]
    fn a_deferred_prefix_is_hashed_in_place_of_the_placeholder() {
        // Three and a half batches, the first 100 bytes placeholders.
        let data: Vec<u8> = (0..7 * BATCH / 2).map(|i| (i * 13 % 251) as u8).collect();
        let prefix: Vec<u8> = (0..100).map(|i| 200 - i as u8).collect();
        let mut expect = data.clone();
        expect[..100].copy_from_slice(&prefix);
        let want = sha256_bytes(&expect);
        // The prefix before anything reached the file, after part of a
        // batch, after two batches (read back), and after everything.
        for at in [Some(0), Some(50), Some(2 * BATCH + 5), None] {
            let (digest, bytes) = deferred_round(&data, &prefix, at);
            assert_eq!(bytes, expect, "{at:?}");
            assert_eq!(digest, want, "{at:?}");
        }
    }

    #[test]
    fn a_deferred_writer_without_its_prefix_fails() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let file = File::create(&path).unwrap();
        let mut w = HashingWriter::deferred(file, File::open(&path).unwrap());
        w.write_all(&[1; 1000]).unwrap();
        let e = w.finish().expect_err("no prefix was given");
        assert!(e.to_string().contains("never completed"), "{e}");
        // A prefix longer than the file.
        let file = File::create(&path).unwrap();
        let mut w = HashingWriter::deferred(file, File::open(&path).unwrap());
        w.write_all(&[1; 10]).unwrap();
        w.set_prefix(vec![0; 11]).unwrap();
        assert!(w.finish().is_err());
        // Not deferred: there is no prefix to give.
        let mut w = HashingWriter::new(Vec::new());
        assert!(w.set_prefix(vec![0]).is_err());
    }

    #[test]
    fn file_digests_are_each_files_sha256() {
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<PathBuf> = (0..6)
            .map(|i| {
                let p = dir.path().join(format!("f{i}"));
                std::fs::write(&p, vec![i as u8; i * 700_001]).unwrap();
                p
            })
            .collect();
        let mut d = FileDigests::start(paths.clone());
        assert_eq!(d.len(), 6);
        assert!(d
            .placeholders()
            .iter()
            .all(|(_, h)| h == DIGEST_PLACEHOLDER && h.len() == 64));
        while !d.ready() {
            thread::yield_now();
        }
        let got = d.finish().unwrap();
        for ((p, h), want) in got.iter().zip(&paths) {
            assert_eq!(p, want);
            assert_eq!(*h, sha256_bytes(&std::fs::read(p).unwrap()));
        }
        // The empty file's published digest.
        assert_eq!(
            got[0].1,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        // A file that cannot be read is named.
        let mut missing = paths.clone();
        missing.insert(2, dir.path().join("absent"));
        let e = FileDigests::start(missing)
            .finish()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&dir.path().join("absent").display().to_string()),
            "{e}"
        );
        // Dropped unfinished: the threads stop, nothing hangs.
        drop(FileDigests::start(paths));
    }

    /// Accepts `room` bytes, then fails every write.
    struct Full {
        room: usize,
    }

    impl Write for Full {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"));
            }
            let n = buf.len().min(self.room);
            self.room -= n;
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_failed_write_behind_reaches_the_caller() {
        // Found at finish...
        let mut w = HashingWriter::new(Full { room: 10 });
        w.write_all(&[1; 100]).unwrap();
        let e = w.finish().err().expect("the write failed");
        assert_eq!(e.kind(), io::ErrorKind::StorageFull);
        // ... or by a later flush or write, whichever comes first.
        let mut w = HashingWriter::new(Full { room: BATCH });
        w.write_all(&vec![2; 2 * BATCH]).unwrap();
        let e = w.flush().expect_err("flush waits for the writes");
        assert_eq!(e.kind(), io::ErrorKind::StorageFull);
        // Dropped unfinished: the threads end, nothing hangs.
        let mut w = HashingWriter::new(Full { room: 0 });
        w.write_all(&vec![3; 3 * BATCH]).ok();
        drop(w);
    }
}
