//! `qforge run MANIFEST`, `qforge plan MANIFEST` and `qforge report
//! MANIFEST [PARTS...]`: manifests end to end, as CI jobs, and the merge
//! of CI parts.

use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;

use anyhow::Result;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use super::print_json;
use super::progress::draw_target;
use crate::manifest::check::{check, merge};
use crate::manifest::plan::jobs;
use crate::manifest::report::{Report, Status};
use crate::manifest::stages::StageProgress;
use crate::manifest::{
    load_resolved, run as run_manifest, ManifestError, ResolvedManifest, RunEvent, RunObserver,
    RunOptions, RunOutcome, Stages,
};

/// Exit status of a manifest that cannot be run (nothing ran).
const EXIT_BAD_MANIFEST: u8 = 2;

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// The manifest (YAML; see manifests/README.md).
    manifest: PathBuf,
    /// Build only this artifact (repeatable). The report and lockfile keep
    /// the other artifacts' entries.
    #[arg(long, value_name = "NAME")]
    only: Vec<String>,
    /// Rebuild and re-verify the selected artifacts even when up to date.
    #[arg(long, conflicts_with = "check")]
    force: bool,
    /// Build nothing: re-hash every artifact on disk and compare with
    /// qforge.lock and the manifest. Exit 1 on any difference.
    #[arg(long)]
    check: bool,
    /// Output folder (default: the manifest's `output:`, else NAME.out
    /// next to the manifest).
    #[arg(short, long, value_name = "DIR")]
    output: Option<PathBuf>,
    /// Worker threads for converting, quantizing and verifying (default:
    /// all cores).
    #[arg(long, value_name = "N", default_value_t = 0)]
    threads: usize,
    /// Print the result as JSON on stdout and nothing on stderr.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct PlanArgs {
    /// The manifest.
    manifest: PathBuf,
    /// Output folder, as `qforge run --output` would take it.
    #[arg(short, long, value_name = "DIR")]
    output: Option<PathBuf>,
    /// Print the jobs as JSON (for a CI job matrix).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ReportArgs {
    /// The manifest.
    manifest: PathBuf,
    /// Output folders of `qforge run --only` runs (CI runners) to gather
    /// into the output folder. Without any, the output folder's report is
    /// written again from its report.json.
    parts: Vec<PathBuf>,
    /// Output folder (default as for `qforge run`).
    #[arg(short, long, value_name = "DIR")]
    output: Option<PathBuf>,
    /// Print the merged report as JSON.
    #[arg(long)]
    json: bool,
}

/// Loads the manifest, or prints its problems and says how to exit.
fn load(path: &Path, output: Option<&Path>) -> Result<ResolvedManifest, ExitCode> {
    load_resolved(path, output).map_err(|e: ManifestError| {
        eprintln!("{e}");
        let n = e.problems.len();
        eprintln!(
            "error: {} has {n} problem{}; nothing was run",
            path.display(),
            if n == 1 { "" } else { "s" }
        );
        ExitCode::from(EXIT_BAD_MANIFEST)
    })
}

pub(crate) fn run(args: RunArgs) -> Result<ExitCode> {
    let m = match load(&args.manifest, args.output.as_deref()) {
        Ok(m) => m,
        Err(code) => return Ok(code),
    };
    if args.check {
        return run_check(&m, &args);
    }
    let lines = Lines::new(args.json);
    let bars = Bars::new(args.json);
    let opts = RunOptions {
        only: args.only.clone(),
        force: args.force,
        threads: args.threads,
    };
    let outcome = run_manifest(&m, &opts, Stages::real(), &lines, &bars)?;
    bars.clear();
    if args.json {
        print_json(&json!({
            "pass": outcome.pass(),
            "nothing_rebuilt": outcome.nothing_rebuilt(),
            "output": m.output,
            "seconds": outcome.seconds,
            "orphans": outcome.orphans,
            "report": outcome.report,
        }))?;
    } else {
        print_outcome(&m, &outcome)?;
    }
    Ok(if outcome.pass() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn run_check(m: &ResolvedManifest, args: &RunArgs) -> Result<ExitCode> {
    let results = check(m, &args.only)?;
    let ok = results.iter().all(|r| r.status.ok());
    if args.json {
        print_json(&json!({
            "ok": ok,
            "output": m.output,
            "artifacts": results.iter().map(|r| json!({
                "name": r.name,
                "ok": r.status.ok(),
                "status": r.status.describe(),
            })).collect::<Vec<_>>(),
        }))?;
    } else {
        let mut out = io::stdout().lock();
        let width = results.iter().map(|r| r.name.len()).max().unwrap_or(0);
        for r in &results {
            writeln!(out, "{:<width$}  {}", r.name, r.status.describe())?;
        }
        let bad: Vec<&str> = results
            .iter()
            .filter(|r| !r.status.ok())
            .map(|r| r.name.as_str())
            .collect();
        if bad.is_empty() {
            writeln!(
                out,
                "every artifact in {} matches qforge.lock",
                m.output.display()
            )?;
        } else {
            eprintln!("error: check failed for {}", bad.join(", "));
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub(crate) fn plan(args: PlanArgs) -> Result<ExitCode> {
    let m = match load(&args.manifest, args.output.as_deref()) {
        Ok(m) => m,
        Err(code) => return Ok(code),
    };
    let manifest_arg = args.manifest.display().to_string();
    let jobs = jobs(&m, &manifest_arg);
    if args.json {
        print_json(&json!({
            "manifest": manifest_arg,
            "output": m.output,
            "source": m.manifest.from.value,
            "jobs": jobs,
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            vec![
                j.name.clone(),
                format!("{} {}", j.format, j.quantization),
                j.settings_sha256[..12].to_string(),
                j.command.clone(),
            ]
        })
        .collect();
    let mut out = io::stdout().lock();
    write_table(
        &mut out,
        &["artifact", "format", "settings", "command"],
        &rows,
    )?;
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn report(args: ReportArgs) -> Result<ExitCode> {
    let m = match load(&args.manifest, args.output.as_deref()) {
        Ok(m) => m,
        Err(code) => return Ok(code),
    };
    let report = if args.parts.is_empty() {
        let r = Report::read(&m.output).ok_or_else(|| {
            anyhow::anyhow!(
                "{} has no readable report.json: run `qforge run {}` first",
                m.output.display(),
                args.manifest.display()
            )
        })?;
        r.write(&m.output)?;
        r
    } else {
        let outcome = merge(&m, &args.parts)?;
        if !args.json {
            for (part, names) in &outcome.taken {
                eprintln!("{}: {}", part.display(), names.join(", "));
            }
        }
        outcome.report
    };
    let missing: Vec<&str> = m
        .artifacts
        .iter()
        .map(|a| a.spec.name.as_str())
        .filter(|n| report.artifact(n).is_none())
        .collect();
    let pass = report.pass && missing.is_empty();
    if args.json {
        print_json(&json!({"pass": pass, "missing": missing, "report": report}))?;
    } else {
        let mut out = io::stdout().lock();
        let (header, rows) = report.table();
        write_table(&mut out, &header, &rows)?;
        writeln!(out, "report: {}", m.output.join("report.md").display())?;
        if !missing.is_empty() {
            eprintln!("error: no result for {}", missing.join(", "));
        }
    }
    Ok(if pass {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn write_table(out: &mut impl Write, header: &[&str], rows: &[Vec<String>]) -> io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    writeln!(out, "{}", line(header.to_vec()))?;
    for r in rows {
        writeln!(
            out,
            "{}",
            line(r.iter().map(|c| c.trim_matches('`')).collect())
        )?;
    }
    Ok(())
}

fn print_outcome(m: &ResolvedManifest, outcome: &RunOutcome) -> io::Result<()> {
    let mut out = io::stdout().lock();
    let (header, rows) = outcome.report.table();
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|r| r.into_iter().map(|c| c.replace("**", "")).collect())
        .collect();
    write_table(&mut out, &header, &rows)?;
    let this_run: Vec<_> = outcome.rows().collect();
    let count = |s: Status| this_run.iter().filter(|a| a.status == s).count();
    if outcome.nothing_rebuilt() {
        writeln!(
            out,
            "nothing to rebuild: {} artifact{} up to date ({:.1} s)",
            this_run.len(),
            if this_run.len() == 1 { "" } else { "s" },
            outcome.seconds
        )?;
    } else {
        writeln!(
            out,
            "built {}, up to date {}, failed {} in {:.1} s",
            count(Status::Built),
            count(Status::UpToDate),
            count(Status::Failed),
            outcome.seconds
        )?;
    }
    writeln!(
        out,
        "report: {}  lockfile: {}",
        m.output.join("report.md").display(),
        m.output.join("qforge.lock").display()
    )?;
    for name in &outcome.orphans {
        eprintln!(
            "note: `{name}` is no longer in the manifest; its files stay in {}",
            m.output.display()
        );
    }
    for a in this_run.iter().filter(|a| !a.pass) {
        let why = match &a.error {
            Some(e) => e.clone(),
            None => a
                .gates
                .iter()
                .filter(|g| !g.pass)
                .map(|g| g.describe())
                .collect::<Vec<_>>()
                .join(", "),
        };
        let what = if a.error.is_some() {
            "failed"
        } else {
            "failed its gates"
        };
        eprintln!("error: artifact `{}` {what}: {why}", a.name);
    }
    Ok(())
}

/// Status lines on stderr (a terminal or a CI log), none with `--json`.
struct Lines {
    quiet: bool,
    index: Mutex<(usize, usize)>,
}

impl Lines {
    fn new(quiet: bool) -> Lines {
        Lines {
            quiet,
            index: Mutex::new((0, 0)),
        }
    }

    fn say(&self, name: &str, what: &str) {
        let (i, n) = self.index.lock().map(|g| *g).unwrap_or((0, 0));
        eprintln!("[{i}/{n}] {name}: {what}");
    }
}

impl RunObserver for Lines {
    fn event(&self, event: RunEvent<'_>) {
        if self.quiet {
            return;
        }
        match event {
            RunEvent::Source(s) => eprintln!("source: {s}"),
            RunEvent::Artifact { index, total, .. } => {
                if let Ok(mut g) = self.index.lock() {
                    *g = (index, total);
                }
            }
            RunEvent::UpToDate(name) => self.say(name, "up to date"),
            RunEvent::Step(name, what) => self.say(name, what),
            RunEvent::Verifying(name) => self.say(name, "verifying"),
            RunEvent::VerifyCached(name) => self.say(name, "measurements up to date"),
            RunEvent::Done(row) => {
                let what = match (&row.error, row.pass) {
                    (Some(e), _) => format!("FAILED: {e}"),
                    (None, true) => "pass".to_string(),
                    (None, false) => format!(
                        "FAIL: {}",
                        row.gates
                            .iter()
                            .filter(|g| !g.pass)
                            .map(|g| g.describe())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                };
                self.say(&row.name, &what);
            }
        }
    }
}

/// One byte bar for the stage at work, on a terminal only.
struct Bars {
    quiet: bool,
    bar: Mutex<Option<ProgressBar>>,
}

impl Bars {
    fn new(json: bool) -> Bars {
        Bars {
            quiet: json || !io::stderr().is_terminal(),
            bar: Mutex::new(None),
        }
    }

    fn clear(&self) {
        if let Ok(mut g) = self.bar.lock() {
            if let Some(b) = g.take() {
                b.finish_and_clear();
            }
        }
    }
}

impl StageProgress for Bars {
    fn start(&self, what: &str, total: Option<u64>) {
        if self.quiet {
            return;
        }
        self.clear();
        let bar = ProgressBar::with_draw_target(total, draw_target(false));
        if let Ok(style) = ProgressStyle::with_template(
            "{prefix:>12.bold} [{bar:30}] {bytes:>10}/{total_bytes:<10} {binary_bytes_per_sec:>12}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(what.to_string());
        if let Ok(mut g) = self.bar.lock() {
            *g = Some(bar);
        }
    }

    fn advance(&self, bytes: u64) {
        if let Ok(g) = self.bar.lock() {
            if let Some(b) = g.as_ref() {
                b.inc(bytes);
            }
        }
    }

    fn finish(&self) {
        self.clear();
    }
}
