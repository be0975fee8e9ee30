//! `qforge fetch ORG/REPO[@REVISION]`: download what conversion needs into
//! the Hugging Face cache, pinned to a commit and checked.

use std::collections::HashMap;
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde_json::json;

use super::progress::draw_target;
use super::{human_bytes, print_json};
use crate::fetch::{
    fetch, FetchObserver, FetchOptions, FetchedSnapshot, FileFilter, FileSource, HubConfig,
    PlannedFile, RepoRef,
};

#[derive(Debug, Args)]
pub(crate) struct FetchArgs {
    /// The repo, as ORG/REPO or ORG/REPO@REVISION (a branch, tag or commit;
    /// default main).
    repo: String,
    /// Fetch only files matching this glob (repeatable; fnmatch rules as in
    /// `hf download`: `*` crosses folders). Replaces the default set:
    /// config, generation config, tokenizer files, chat template and the
    /// safetensors weights with their index, or for a GGUF repo every
    /// `*.gguf` (pick one with e.g. --include '*Q4_K_M*').
    #[arg(long, value_name = "GLOB")]
    include: Vec<String>,
    /// Skip files matching this glob (repeatable).
    #[arg(long, value_name = "GLOB")]
    exclude: Vec<String>,
    /// Also copy the files into this folder (the cache keeps its copy).
    #[arg(long, value_name = "DIR")]
    local_dir: Option<PathBuf>,
    /// Files downloaded at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=16))]
    jobs: u16,
    /// Re-hash cached LFS files against the Hub's sha256.
    #[arg(long)]
    verify: bool,
    /// Print JSON instead of text (and no progress bars).
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: FetchArgs) -> Result<ExitCode> {
    let repo = RepoRef::parse(&args.repo)?;
    let filter = FileFilter {
        include: args.include,
        exclude: args.exclude,
    };
    let mut options = FetchOptions::new(HubConfig::from_env()?);
    options.local_dir = args.local_dir;
    options.jobs = usize::from(args.jobs);
    options.verify_cached = args.verify;
    let bars = Arc::new(Bars::new(args.json));
    options.observer = bars.clone();
    let result = fetch(&repo.repo, &repo.revision, &filter, &options);
    bars.clear();
    let snap = result?;
    if args.json {
        print_json(&to_json(&snap))?;
    } else {
        print_text(&snap)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn source_name(s: FileSource) -> String {
    match s {
        FileSource::Cached => "cached".into(),
        FileSource::Downloaded => "downloaded".into(),
        FileSource::Resumed { from } => format!("resumed at {}", human_bytes(from)),
    }
}

fn to_json(snap: &FetchedSnapshot) -> serde_json::Value {
    json!({
        "repo": snap.repo,
        "revision": snap.revision,
        "commit": snap.commit,
        "dir": snap.dir,
        "files": snap.files.iter().map(|f| json!({
            "path": f.path,
            "size": f.size,
            "sha256": f.sha256,
            "lfs": f.lfs,
            "etag": f.etag,
            "local_path": f.local_path,
            "source": match f.source {
                FileSource::Cached => json!("cached"),
                FileSource::Downloaded => json!("downloaded"),
                FileSource::Resumed { from } => json!({ "resumed_from": from }),
            },
        })).collect::<Vec<_>>(),
    })
}

fn print_text(snap: &FetchedSnapshot) -> io::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(
        out,
        "{}@{} is commit {}",
        snap.repo, snap.revision, snap.commit
    )?;
    let width = snap.files.iter().map(|f| f.path.len()).max().unwrap_or(0);
    for f in &snap.files {
        let check = if f.lfs { "sha256 ok " } else { "" };
        writeln!(
            out,
            "  {:<width$}  {:>10}  {check}{}",
            f.path,
            human_bytes(f.size),
            source_name(f.source)
        )?;
    }
    let total: u64 = snap.files.iter().map(|f| f.size).sum();
    writeln!(
        out,
        "{} files, {} in {}",
        snap.files.len(),
        human_bytes(total),
        snap.dir.display()
    )?;
    Ok(())
}

/// One bar per file being downloaded and one for the total; hidden with
/// --json or when stderr is not a terminal.
struct Bars {
    multi: MultiProgress,
    total: Mutex<Option<ProgressBar>>,
    files: Mutex<HashMap<String, ProgressBar>>,
    quiet: bool,
}

impl Bars {
    fn new(quiet: bool) -> Bars {
        Bars {
            multi: MultiProgress::with_draw_target(draw_target(quiet)),
            total: Mutex::new(None),
            files: Mutex::new(HashMap::new()),
            quiet,
        }
    }

    fn style(prefix_width: usize) -> ProgressStyle {
        ProgressStyle::with_template(&format!(
            "{{prefix:<{prefix_width}}} [{{bar:30}}] {{bytes:>10}}/{{total_bytes:<10}} {{binary_bytes_per_sec:>12}}"
        ))
        .expect("valid template")
        .progress_chars("=> ")
    }

    fn clear(&self) {
        for (_, b) in self.files.lock().expect("not poisoned").drain() {
            b.finish_and_clear();
        }
        if let Some(t) = self.total.lock().expect("not poisoned").take() {
            t.finish_and_clear();
        }
    }
}

impl FetchObserver for Bars {
    fn planned(&self, files: &[PlannedFile]) {
        let todo: u64 = files
            .iter()
            .filter(|f| !f.cached)
            .filter_map(|f| f.size)
            .sum();
        if todo == 0 {
            return;
        }
        let bar = self.multi.add(ProgressBar::new(todo));
        bar.set_style(Self::style(30));
        bar.set_prefix("total");
        *self.total.lock().expect("not poisoned") = Some(bar);
    }

    fn file_started(&self, path: &str, total: Option<u64>, offset: u64) {
        let mut files = self.files.lock().expect("not poisoned");
        let bar = files.entry(path.to_string()).or_insert_with(|| {
            let b = self.multi.insert(0, ProgressBar::new(total.unwrap_or(0)));
            b.set_style(Self::style(30));
            let chars: Vec<char> = path.chars().collect();
            let name = if chars.len() > 30 {
                let tail: String = chars[chars.len() - 29..].iter().collect();
                format!("…{tail}")
            } else {
                path.to_string()
            };
            b.set_prefix(name);
            if let Some(t) = &*self.total.lock().expect("not poisoned") {
                t.inc(offset);
            }
            b
        });
        if let Some(t) = total {
            bar.set_length(t);
        }
        bar.set_position(offset);
    }

    fn file_progress(&self, path: &str, bytes: u64) {
        if let Some(b) = self.files.lock().expect("not poisoned").get(path) {
            b.inc(bytes);
        }
        if let Some(t) = &*self.total.lock().expect("not poisoned") {
            t.inc(bytes);
        }
    }

    fn file_finished(&self, path: &str, _source: FileSource) {
        if let Some(b) = self.files.lock().expect("not poisoned").remove(path) {
            b.finish_and_clear();
        }
    }

    fn retrying(&self, url: &str, attempt: u32, why: &str, wait: Duration) {
        if !self.quiet {
            self.multi.suspend(|| {
                eprintln!(
                    "warning: {url}: {why}; retry {attempt} in {:.1}s",
                    wait.as_secs_f64()
                )
            });
        }
    }
}
