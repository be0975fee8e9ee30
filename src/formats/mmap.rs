//! Read-only memory maps of model files, and what keeps them honest: the
//! one place this crate uses `unsafe`.
//!
//! A map is only as stable as the file under it, and qforge does not own
//! its inputs. Two things can happen while it reads one:
//!
//! - Another process truncates the file. Touching a mapped page past the new
//!   end raises SIGBUS, which would kill the process with no word about why.
//!   qforge installs a handler for its own maps (unix): it names the file,
//!   removes the run's unfinished temporary outputs, and exits with
//!   status 1. A fault at any other address goes to the handler that was
//!   there before (Rust's stack-overflow report, or the default).
//! - Another process rewrites or replaces the file. The bytes may change
//!   under us without any fault. Every output commit first checks that each
//!   file still mapped has the size, modification time and inode it had when
//!   it was mapped ([`check_inputs_unchanged`]), so an output made from
//!   moving bytes is never committed.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use memmap2::{Mmap, UncheckedAdvice};

use super::error::{FormatError, FormatErrorKind, Result};

/// A file mapped read-only, or an empty file (which cannot be mapped).
#[derive(Debug)]
pub struct MappedFile {
    /// Drops before `map` (fields drop in order), so the SIGBUS handler
    /// forgets the range before it is unmapped.
    watch: Option<Watch>,
    map: Option<Mmap>,
}

impl MappedFile {
    /// Maps `path` read-only.
    pub fn open(path: &Path) -> Result<MappedFile> {
        let file = File::open(path).map_err(|e| FormatError::io(path, e))?;
        let meta = file.metadata().map_err(|e| FormatError::io(path, e))?;
        if meta.len() == 0 {
            return Ok(MappedFile {
                watch: None,
                map: None,
            });
        }
        // SAFETY: the map is read-only and private to this process, and
        // qforge never writes to its inputs (outputs go to a temporary file
        // and a rename, which leaves mapped inputs intact). Another process
        // may still change the file: a truncation faults on access past the
        // new end, which the SIGBUS handler below turns into a clean exit
        // naming the file; a rewrite is caught before any output is
        // committed (`check_inputs_unchanged`). Either way no reference into
        // the map outlives `MappedFile`, which unmaps on drop.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| FormatError::io(path, e))?;
        let watch = Watch::new(path, &map, FileIdentity::of(&meta));
        Ok(MappedFile {
            watch: Some(watch),
            map: Some(map),
        })
    }

    /// The mapped bytes.
    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }

    /// Errs when the file on disk is no longer the one that was mapped (a
    /// different size, modification time or inode, or gone).
    pub fn check_unchanged(&self) -> Result<()> {
        match &self.watch {
            Some(w) => check_identity(&w.path, w.identity),
            None => Ok(()),
        }
    }

    /// Tells the kernel that the whole pages inside `data` (a slice of this
    /// map) will not be read again soon, so it can drop them from this
    /// process's resident set. Reading them later faults them back in from
    /// the file. Slices from elsewhere are ignored; so are errors (this is
    /// advice only).
    pub fn release(&self, data: &[u8]) {
        let Some(map) = &self.map else { return };
        let base = map.as_ptr() as usize;
        let start = data.as_ptr() as usize;
        if start < base || start + data.len() > base + map.len() {
            return;
        }
        const PAGE: usize = 4096;
        let first = (start - base).next_multiple_of(PAGE);
        let end = (start - base + data.len()) / PAGE * PAGE;
        if end > first {
            // SAFETY: the map is read-only and private and was never
            // written, so MADV_DONTNEED only drops clean pages; any later
            // access reads the bytes back from the file: the same bytes,
            // unless another process changed the file, which the SIGBUS
            // handler and the commit check catch (see `open`). References
            // into the range stay valid: the mapping itself is untouched.
            let _ = unsafe {
                map.unchecked_advise_range(UncheckedAdvice::DontNeed, first, end - first)
            };
        }
    }
}

/// Models whose tensor bytes are mapped files: a writer that is done with a
/// tensor hands its bytes back so that reading a model never keeps more
/// than a few tensors resident.
pub trait ReleasePages: Sync + std::fmt::Debug {
    /// Releases the mapped pages under `data`, if this model maps them.
    fn release(&self, data: &[u8]);
}

/// What identifies a file's contents cheaply: if none of these changed, no
/// other process wrote to it through the file system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileIdentity {
    len: u64,
    modified: Option<SystemTime>,
    device: u64,
    inode: u64,
}

impl FileIdentity {
    fn of(meta: &fs::Metadata) -> FileIdentity {
        #[cfg(unix)]
        let (device, inode) = {
            use std::os::unix::fs::MetadataExt;
            (meta.dev(), meta.ino())
        };
        #[cfg(not(unix))]
        let (device, inode) = (0, 0);
        FileIdentity {
            len: meta.len(),
            modified: meta.modified().ok(),
            device,
            inode,
        }
    }
}

fn check_identity(path: &Path, was: FileIdentity) -> Result<()> {
    let changed =
        |what: String| Err(FormatError::new(FormatErrorKind::InputChanged { what }).in_file(path));
    let now = match fs::metadata(path) {
        Ok(meta) => FileIdentity::of(&meta),
        Err(e) => return changed(format!("it can no longer be read: {e}")),
    };
    if now.device != was.device || now.inode != was.inode {
        changed("another file was put in its place".into())
    } else if now.len != was.len {
        changed(format!(
            "its size went from {} to {} bytes",
            was.len, now.len
        ))
    } else if now.modified != was.modified {
        changed("it was written to".into())
    } else {
        Ok(())
    }
}

/// Every file this process has mapped and not yet unmapped, by watch id.
static LIVE_INPUTS: Mutex<BTreeMap<u64, (PathBuf, FileIdentity)>> = Mutex::new(BTreeMap::new());
static NEXT_WATCH: AtomicU64 = AtomicU64::new(0);

/// Errs, naming the file, when any file this process has mapped changed
/// since it was mapped. Outputs call this right before they are committed.
pub fn check_inputs_unchanged() -> Result<()> {
    let live: Vec<(PathBuf, FileIdentity)> = LIVE_INPUTS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .cloned()
        .collect();
    for (path, identity) in live {
        check_identity(&path, identity)?;
    }
    Ok(())
}

/// A mapped file's entries in the change check and the SIGBUS table.
#[derive(Debug)]
struct Watch {
    id: u64,
    path: PathBuf,
    identity: FileIdentity,
    #[cfg(unix)]
    _fault: Option<sigbus::MapRegistration>,
}

impl Watch {
    fn new(path: &Path, map: &Mmap, identity: FileIdentity) -> Watch {
        let id = NEXT_WATCH.fetch_add(1, Ordering::Relaxed);
        LIVE_INPUTS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, (path.to_path_buf(), identity));
        Watch {
            id,
            path: path.to_path_buf(),
            identity,
            #[cfg(unix)]
            _fault: sigbus::MapRegistration::new(path, map),
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        LIVE_INPUTS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

/// A temporary output the SIGBUS handler removes before it exits, for as
/// long as this value lives. [`super::atomic`] holds one per temporary.
#[derive(Debug)]
pub struct TempOutputGuard {
    #[cfg(unix)]
    _registration: Option<sigbus::TempRegistration>,
}

impl TempOutputGuard {
    /// Registers `path`.
    pub fn new(path: &Path) -> TempOutputGuard {
        TempOutputGuard {
            #[cfg(unix)]
            _registration: sigbus::TempRegistration::new(path),
        }
    }

    /// A guard of nothing (what is left when a guard is handed over).
    pub fn none() -> TempOutputGuard {
        TempOutputGuard {
            #[cfg(unix)]
            _registration: None,
        }
    }
}

/// The SIGBUS handler and the tables it reads. A signal handler may only
/// call async-signal-safe functions and may not allocate or lock, so the
/// tables are fixed arrays of atomics, filled outside the handler; the
/// messages are formatted when a file is mapped.
#[cfg(unix)]
mod sigbus {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;
    use std::ptr;
    use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering::SeqCst};
    use std::sync::{Once, OnceLock};

    use memmap2::Mmap;

    /// Maps watched at once; more are still read, a fault in them is then
    /// reported without the file name.
    const MAP_SLOTS: usize = 256;
    /// Temporary outputs removed on a fault; more are left for the next
    /// run's stale-file cleanup.
    const TEMP_SLOTS: usize = 256;

    struct MapSlot {
        claimed: AtomicBool,
        /// 0 while the slot is being filled or emptied.
        start: AtomicUsize,
        len: AtomicUsize,
        message: AtomicPtr<u8>,
        message_len: AtomicUsize,
    }

    struct TempSlot {
        claimed: AtomicBool,
        path: AtomicPtr<libc::c_char>,
    }

    static MAPS: [MapSlot; MAP_SLOTS] = [const {
        MapSlot {
            claimed: AtomicBool::new(false),
            start: AtomicUsize::new(0),
            len: AtomicUsize::new(0),
            message: AtomicPtr::new(ptr::null_mut()),
            message_len: AtomicUsize::new(0),
        }
    }; MAP_SLOTS];

    static TEMPS: [TempSlot; TEMP_SLOTS] = [const {
        TempSlot {
            claimed: AtomicBool::new(false),
            path: AtomicPtr::new(ptr::null_mut()),
        }
    }; TEMP_SLOTS];

    static INSTALL: Once = Once::new();
    /// The SIGBUS action before ours, put back for faults that are not ours.
    static PREVIOUS: OnceLock<PreviousAction> = OnceLock::new();

    struct PreviousAction(libc::sigaction);
    // SAFETY: a plain C struct of integers, a signal mask and function
    // addresses; it is written once before the handler is installed and only
    // read afterwards.
    unsafe impl Sync for PreviousAction {}
    unsafe impl Send for PreviousAction {}

    const GENERIC: &[u8] = b"error: a memory-mapped input could not be read (truncated by another process, or an I/O error); unfinished outputs were removed\n";

    fn claim<T>(slots: &'static [T], claimed: impl Fn(&T) -> &AtomicBool) -> Option<&'static T> {
        slots.iter().find(|s| {
            claimed(s)
                .compare_exchange(false, true, SeqCst, SeqCst)
                .is_ok()
        })
    }

    /// A map's entry in the table; cleared on drop, before the unmap.
    #[derive(Debug)]
    pub struct MapRegistration {
        slot: usize,
        _message: Box<[u8]>,
    }

    impl MapRegistration {
        pub fn new(path: &Path, map: &Mmap) -> Option<MapRegistration> {
            install();
            let message: Box<[u8]> = format!(
                "error: {}: the file shrank or could not be read while qforge was reading it \
                 (truncated or rewritten by another process, or an I/O error); \
                 this run's unfinished outputs were removed, run it again once the file is complete\n",
                path.display()
            )
            .into_bytes()
            .into_boxed_slice();
            let slot = claim(&MAPS, |s| &s.claimed)?;
            slot.message.store(message.as_ptr().cast_mut(), SeqCst);
            slot.message_len.store(message.len(), SeqCst);
            slot.len.store(map.len(), SeqCst);
            slot.start.store(map.as_ptr() as usize, SeqCst);
            let index = MAPS
                .iter()
                .position(|s| ptr::eq(s, slot))
                .expect("slot is in the table");
            Some(MapRegistration {
                slot: index,
                _message: message,
            })
        }
    }

    impl Drop for MapRegistration {
        fn drop(&mut self) {
            let slot = &MAPS[self.slot];
            slot.start.store(0, SeqCst);
            slot.len.store(0, SeqCst);
            slot.message.store(ptr::null_mut(), SeqCst);
            slot.message_len.store(0, SeqCst);
            slot.claimed.store(false, SeqCst);
        }
    }

    /// A temporary output's entry in the table; cleared on drop.
    #[derive(Debug)]
    pub struct TempRegistration {
        slot: usize,
        _path: CString,
    }

    impl TempRegistration {
        pub fn new(path: &Path) -> Option<TempRegistration> {
            let path = CString::new(path.as_os_str().as_bytes()).ok()?;
            let slot = claim(&TEMPS, |s| &s.claimed)?;
            slot.path.store(path.as_ptr().cast_mut(), SeqCst);
            let index = TEMPS
                .iter()
                .position(|s| ptr::eq(s, slot))
                .expect("slot is in the table");
            Some(TempRegistration {
                slot: index,
                _path: path,
            })
        }
    }

    impl Drop for TempRegistration {
        fn drop(&mut self) {
            let slot = &TEMPS[self.slot];
            slot.path.store(ptr::null_mut(), SeqCst);
            slot.claimed.store(false, SeqCst);
        }
    }

    fn install() {
        INSTALL.call_once(|| {
            // SAFETY: sigaction with a zeroed (empty) struct to read the
            // current action, then with ours: a handler of the SA_SIGINFO
            // signature, which only touches atomics and calls write(2),
            // unlink(2), rmdir(2), sigaction(2) and _exit(2), all
            // async-signal-safe.
            unsafe {
                let mut previous: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(libc::SIGBUS, ptr::null(), &mut previous) != 0 {
                    return;
                }
                let _ = PREVIOUS.set(PreviousAction(previous));
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_sigbus as *const () as usize;
                action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
                libc::sigemptyset(&mut action.sa_mask);
                libc::sigaction(libc::SIGBUS, &action, ptr::null_mut());
            }
        });
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    unsafe fn fault_address(info: *const libc::siginfo_t) -> usize {
        // SAFETY: the kernel passes a valid siginfo_t for SA_SIGINFO
        // handlers, and for SIGBUS si_addr is the faulting address.
        unsafe { (*info).si_addr() as usize }
    }

    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    unsafe fn fault_address(info: *const libc::siginfo_t) -> usize {
        // SAFETY: as above; BSD-derived systems name it a field.
        unsafe { (*info).si_addr as usize }
    }

    extern "C" fn on_sigbus(
        _signal: libc::c_int,
        info: *mut libc::siginfo_t,
        _context: *mut libc::c_void,
    ) {
        // SAFETY: see `install`; every pointer read here was stored from a
        // live Box or CString that its registration keeps alive until it
        // clears the slot.
        unsafe {
            let addr = fault_address(info);
            let ours = MAPS.iter().find(|s| {
                let start = s.start.load(SeqCst);
                start != 0 && addr >= start && addr - start < s.len.load(SeqCst)
            });
            let Some(slot) = ours else {
                // Not a map of ours: the previous action takes this fault
                // when the access runs again.
                if let Some(prev) = PREVIOUS.get() {
                    libc::sigaction(libc::SIGBUS, &prev.0, ptr::null_mut());
                } else {
                    libc::signal(libc::SIGBUS, libc::SIG_DFL);
                }
                return;
            };
            let message = slot.message.load(SeqCst);
            let len = slot.message_len.load(SeqCst);
            if message.is_null() {
                libc::write(2, GENERIC.as_ptr().cast(), GENERIC.len());
            } else {
                libc::write(2, message.cast(), len);
            }
            for t in &TEMPS {
                let path = t.path.load(SeqCst);
                if !path.is_null() && libc::unlink(path) != 0 {
                    // A temporary folder: removed here when empty, else by
                    // the next run that writes the same output.
                    libc::rmdir(path);
                }
            }
            libc::_exit(1);
        }
    }
}
