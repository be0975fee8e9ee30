//! SHA-256 of files and of bytes as they are written.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};
use std::thread;

use sha2::{Digest, Sha256};

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
    recycled: mpsc::Receiver<Vec<u8>>,
    failed: Arc<Mutex<Option<io::Error>>>,
    writer: Option<thread::JoinHandle<W>>,
    hasher: Option<thread::JoinHandle<Sha256>>,
    written: u64,
}

impl<W: Write + Send + 'static> HashingWriter<W> {
    /// Wraps `inner`.
    pub fn new(mut inner: W) -> Self {
        let (batches, to_write) = mpsc::sync_channel::<Msg>(QUEUED);
        let (to_hash_tx, to_hash) = mpsc::sync_channel::<Vec<u8>>(QUEUED);
        let (give_back, recycled) = mpsc::channel();
        let failed = Arc::new(Mutex::new(None));
        let fail = failed.clone();
        let writer = thread::Builder::new()
            .name("write-behind".into())
            .spawn(move || {
                let mut ok = true;
                for m in to_write {
                    match m {
                        Msg::Data(b) => {
                            if ok {
                                if let Err(e) = inner.write_all(&b) {
                                    ok = false;
                                    *fail.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                                }
                            }
                            let _ = to_hash_tx.send(b);
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
            .spawn(move || {
                let mut h = Sha256::new();
                for mut b in to_hash {
                    h.update(&b);
                    b.clear();
                    let _ = give_back.send(b);
                }
                h
            })
            .expect("starting the hashing thread");
        HashingWriter {
            pending: Vec::new(),
            batches: Some(batches),
            recycled,
            failed,
            writer: Some(writer),
            hasher: Some(hasher),
            written: 0,
        }
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Waits for every byte to be written and hashed; returns the inner
    /// writer (unflushed, as written to) and the hex SHA-256 of everything
    /// written, or the first error writing met.
    pub fn finish(mut self) -> io::Result<(W, String)> {
        self.send_pending();
        drop(self.batches.take());
        let inner = joined(self.writer.take().expect("joined once").join());
        let h = joined(self.hasher.take().expect("joined once").join());
        self.check()?;
        Ok((inner, hex(&h.finalize())))
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
        assert_eq!(digest, sha256_bytes(&all));
        let (_, empty) = HashingWriter::new(Vec::new()).finish().unwrap();
        assert_eq!(
            empty,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
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
