//! Progress on a terminal, silence everywhere else: bars draw to stderr only
//! when it is a terminal and the run was not asked for `--json`.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A byte-count progress bar that may be hidden.
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// A bar over `total` bytes labelled `label`; hidden when `quiet` or when
    /// stderr is not a terminal.
    pub fn bytes(total: u64, label: &str, quiet: bool) -> Progress {
        let bar = ProgressBar::with_draw_target(Some(total), draw_target(quiet));
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:>10.bold} [{bar:30}] {bytes:>10}/{total_bytes:<10} {binary_bytes_per_sec:>12} {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix(label.to_string());
        Progress { bar }
    }

    /// A bar over `total` items labelled `label` (hidden as [`Progress::bytes`]).
    pub fn count(total: u64, label: &str, quiet: bool) -> Progress {
        let bar = ProgressBar::with_draw_target(Some(total), draw_target(quiet));
        bar.set_style(
            ProgressStyle::with_template("{prefix:>10.bold} [{bar:30}] {pos}/{len} {elapsed}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(label.to_string());
        Progress { bar }
    }

    /// Shows what is being worked on.
    pub fn set_message(&self, msg: &str) {
        self.bar.set_message(msg.to_string());
    }

    /// Advances by `n` bytes.
    pub fn inc(&self, n: u64) {
        self.bar.inc(n);
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

pub(crate) fn draw_target(quiet: bool) -> ProgressDrawTarget {
    if quiet || !std::io::stderr().is_terminal() {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    }
}

/// A [`ProgressSink`](crate::convert::ProgressSink) that draws one bar per
/// output file, labelled with the file and showing the current tensor.
pub struct FileBars {
    quiet: bool,
    bar: std::sync::Mutex<Option<Progress>>,
}

impl FileBars {
    /// Bars on stderr (hidden when `quiet` or not a terminal).
    pub fn new(quiet: bool) -> FileBars {
        FileBars {
            quiet,
            bar: std::sync::Mutex::new(None),
        }
    }

    fn with(&self, f: impl FnOnce(&Progress)) {
        if let Ok(guard) = self.bar.lock() {
            if let Some(bar) = guard.as_ref() {
                f(bar);
            }
        }
    }
}

impl crate::convert::ProgressSink for FileBars {
    fn file(&self, label: &str, total_bytes: u64) {
        let name = std::path::Path::new(label)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| label.to_string());
        if let Ok(mut guard) = self.bar.lock() {
            if let Some(old) = guard.take() {
                old.finish();
            }
            *guard = Some(Progress::bytes(total_bytes, &name, self.quiet));
        }
    }

    fn tensor(&self, name: &str) {
        self.with(|b| b.set_message(name));
    }

    fn advance(&self, bytes: u64) {
        self.with(|b| b.inc(bytes));
    }

    fn done(&self) {
        if let Ok(mut guard) = self.bar.lock() {
            if let Some(old) = guard.take() {
                old.finish();
            }
        }
    }
}
