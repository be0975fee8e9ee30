//! Faults during real work: `qforge convert` (GGUF rewrite and split) run
//! as a child process while the disk fills up, the process is killed, the
//! output folder is read-only, the input is truncated or rewritten under
//! it, or another run writes the same output. Every case must end with a
//! clear error that names the file, leave nothing under the final name
//! unless it is complete (checked by reading it back against the input),
//! leave no temporary file behind (or one that the next run removes), and
//! a rerun must succeed.
//!
//! Unix only: the faults are made with unix tools (`ulimit`, signals,
//! `setpriv`).
#![cfg(unix)]

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use qforge::formats::gguf::{GgufModel, GgufWriter, Metadata, TensorSpec, Value};
use quant_kernels::GgmlType;

fn qforge() -> Command {
    Command::new(env!("CARGO_BIN_EXE_qforge"))
}

/// A GGUF of `n` F32 tensors of 1 MiB each, every byte depending on its
/// tensor and position (so a wrong or shifted copy shows).
fn big_gguf(path: &Path, n: usize) {
    let mut meta = Metadata::new();
    meta.set("general.architecture", Value::String("llama".into()));
    meta.set("general.name", Value::String("fault-test".into()));
    let specs: Vec<TensorSpec> = (0..n)
        .map(|i| TensorSpec {
            name: format!("blk.{i}.ffn_up.weight"),
            dims: vec![512, 512],
            ggml_type: GgmlType::F32,
        })
        .collect();
    let mut out = BufWriter::new(File::create(path).unwrap());
    let mut w = GgufWriter::new(&mut out, 3, &meta, &specs).unwrap();
    for (i, s) in specs.iter().enumerate() {
        let data: Vec<u8> = (0..1usize << 20)
            .map(|j| (j.wrapping_mul(31) ^ (i * 7 + j / 4096)) as u8)
            .collect();
        w.write_tensor(&s.name, &data).unwrap();
    }
    w.finish().unwrap();
    out.flush().unwrap();
}

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The temporary files qforge left in `dir`.
fn temps(dir: &Path) -> Vec<String> {
    names(dir)
        .into_iter()
        .filter(|n| n.contains(".qforge-") && n.ends_with(".tmp"))
        .collect()
}

/// `out` reads as a model with exactly the tensors (names, types, bytes)
/// of `input`.
fn assert_same_model(input: &Path, out: &Path) {
    let a = GgufModel::open(input).unwrap();
    let b = GgufModel::open(out).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
    assert_eq!(a.tensor_count(), b.tensor_count());
    for ((ta, da), (tb, db)) in a.tensors().zip(b.tensors()) {
        assert_eq!(
            (&ta.name, &ta.dims, ta.ggml_type),
            (&tb.name, &tb.dims, tb.ggml_type)
        );
        assert!(da == db, "tensor {} differs", ta.name);
    }
}

/// Runs to the end; returns exit code and stderr.
fn run(cmd: &mut Command) -> (Option<i32>, String) {
    let Output { status, stderr, .. } = cmd.output().unwrap();
    (status.code(), String::from_utf8_lossy(&stderr).into_owned())
}

fn convert(input: &Path, output: &Path) -> Command {
    let mut c = qforge();
    c.arg("convert").arg(input).arg(output);
    c
}

/// A failed run: exit 1, one `error: ` report naming `file` and saying
/// `what`, and no panic.
fn assert_clean_error(code: Option<i32>, stderr: &str, file: &Path, what: &[&str]) {
    assert_eq!(code, Some(1), "exit code; stderr: {stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let name = file.file_name().unwrap().to_string_lossy();
    assert!(stderr.contains(name.as_ref()), "{name} not named: {stderr}");
    assert!(
        what.iter().any(|w| stderr.contains(w)),
        "none of {what:?} in: {stderr}"
    );
}

/// Starts `cmd` and returns it once a temporary output holding at least one
/// byte appears in `dir`: the run is then in the middle of writing.
fn start_and_wait_for_temp(cmd: &mut Command, dir: &Path) -> (Child, PathBuf) {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        for name in temps(dir) {
            let p = dir.join(&name);
            if fs::metadata(&p).is_ok_and(|m| m.len() > 0 || m.is_dir()) {
                return (child, p);
            }
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before it was caught writing; make the input larger");
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no temporary output appeared"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Sends `signal` (`STOP`, `CONT`) to the child. A stopped run keeps its
/// files and locks, so what another process does meanwhile happens,
/// deterministically, in the middle of its write.
fn signal(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal}");
}

fn stderr_of(child: Child) -> (Option<i32>, String) {
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn disk_full_mid_write_leaves_nothing_and_a_rerun_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.gguf");
    big_gguf(&input, 4);
    let out_dir = dir.path().join("out");
    fs::create_dir(&out_dir).unwrap();

    // The child may write files of at most 1 MiB (RLIMIT_FSIZE; SIGXFSZ
    // ignored, so a write past it fails with EFBIG as on a full disk).
    let limited = |args: &[&Path]| {
        let mut c = Command::new("bash");
        c.arg("-c")
            .arg(r#"trap '' XFSZ; ulimit -f 1024; exec "$0" "$@""#)
            .arg(env!("CARGO_BIN_EXE_qforge"))
            .arg("convert")
            .args(args);
        c
    };
    let out = out_dir.join("m.gguf");
    let (code, stderr) = run(&mut limited(&[&input, &out]));
    assert_clean_error(code, &stderr, &out, &["File too large", "No space left"]);
    assert!(names(&out_dir).is_empty(), "left: {:?}", names(&out_dir));

    // A split set whose second part does not fit: no part is left either.
    let split = out_dir.join("s.gguf");
    let mut cmd = limited(&[&input, &split]);
    cmd.args(["--split-max-tensors", "1"]);
    let (code, stderr) = run(&mut cmd);
    assert_clean_error(
        code,
        &stderr,
        &split.with_file_name("s-00001-of-00004.gguf"),
        &["File too large"],
    );
    assert!(names(&out_dir).is_empty(), "left: {:?}", names(&out_dir));

    let (code, stderr) = run(&mut convert(&input, &out));
    assert_eq!(code, Some(0), "{stderr}");
    assert_same_model(&input, &out);
    assert_eq!(names(&out_dir), ["m.gguf"]);
}

#[test]
fn sigkill_mid_convert_leaves_no_output_and_the_rerun_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.gguf");
    big_gguf(&input, 64);
    let out_dir = dir.path().join("out");
    fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("m.gguf");

    let (mut child, temp) = start_and_wait_for_temp(&mut convert(&input, &out), &out_dir);
    let pid = child.id();
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert_eq!(status.code(), None, "killed by a signal");
    assert!(!out.exists(), "a killed run left {}", out.display());
    let left = temps(&out_dir);
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].contains(&format!(".qforge-{pid}-")), "{left:?}");
    assert!(temp.exists());

    // A killed split: none of the parts is under its final name.
    let split = out_dir.join("s.gguf");
    let mut cmd = convert(&input, &split);
    cmd.args(["--split-max-tensors", "16"]);
    let (mut child, _) = start_and_wait_for_temp(&mut cmd, &out_dir);
    // Let it get into a later part: the first is then finished, waiting
    // under its temporary name for the others.
    let start = Instant::now();
    while !temps(&out_dir)
        .iter()
        .any(|n| n.starts_with(".s-00002-of-00004.gguf"))
    {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the split ended too soon"
        );
        assert!(start.elapsed() < Duration::from_secs(120));
        std::thread::sleep(Duration::from_micros(200));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        names(&out_dir).iter().all(|n| n.ends_with(".tmp")),
        "a killed split left final parts: {:?}",
        names(&out_dir)
    );

    // The next runs that write those outputs remove what the killed ones
    // left (their process is gone and nobody holds their lock).
    let (code, stderr) = run(&mut convert(&input, &out));
    assert_eq!(code, Some(0), "{stderr}");
    assert_same_model(&input, &out);
    let (code, stderr) = run(convert(&input, &split).args(["--split-max-tensors", "16"]));
    assert_eq!(code, Some(0), "{stderr}");
    assert_same_model(&input, &split.with_file_name("s-00001-of-00004.gguf"));
    assert!(temps(&out_dir).is_empty(), "left: {:?}", temps(&out_dir));
}

#[test]
fn a_read_only_output_folder_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.gguf");
    big_gguf(&input, 2);

    // /sys is read-only for everyone, root included (EACCES, or EROFS where
    // it is mounted read-only).
    let out = Path::new("/sys/qforge-fault-test.gguf");
    let (code, stderr) = run(&mut convert(&input, out));
    assert_clean_error(
        code,
        &stderr,
        out,
        &["Permission denied", "Read-only file system"],
    );
    assert!(!out.exists());

    // A folder made read-only with chmod. Root ignores modes through
    // CAP_DAC_OVERRIDE, so as root the child runs without the capabilities
    // that bypass file permissions (setpriv drops them from its bounding
    // set, which an exec as root then cannot regain).
    let ro = dir.path().join("ro");
    fs::create_dir(&ro).unwrap();
    set_mode(&ro, 0o555);
    let out = ro.join("m.gguf");
    let mut cmd = if is_root() {
        let mut c = Command::new("setpriv");
        c.arg("--bounding-set=-dac_override,-dac_read_search,-fowner")
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_qforge"));
        c
    } else {
        qforge()
    };
    cmd.arg("convert").arg(&input).arg(&out);
    let (code, stderr) = run(&mut cmd);
    assert_clean_error(
        code,
        &stderr,
        &out,
        &["Permission denied", "Read-only file system"],
    );
    assert!(names(&ro).is_empty(), "left: {:?}", names(&ro));

    set_mode(&ro, 0o755);
    let (code, stderr) = run(&mut convert(&input, &out));
    assert_eq!(code, Some(0), "{stderr}");
    assert_same_model(&input, &out);
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    // A file we create is owned by our effective uid.
    let f = tempfile::NamedTempFile::new().unwrap();
    f.as_file().metadata().unwrap().uid() == 0
}

#[test]
fn an_input_truncated_while_read_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.gguf");
    big_gguf(&input, 64);
    let out_dir = dir.path().join("out");
    fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("m.gguf");

    let (child, _) = start_and_wait_for_temp(&mut convert(&input, &out), &out_dir);
    signal(&child, "STOP");
    File::options()
        .write(true)
        .open(&input)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    signal(&child, "CONT");
    let (code, stderr) = stderr_of(child);
    // Mid-read, the map faults (SIGBUS, turned into this report); if the
    // writer had read everything already, the check before the commit
    // finds the new size. Both name the input.
    assert_clean_error(
        code,
        &stderr,
        &input,
        &[
            "shrank or could not be read",
            "changed while qforge was reading it",
        ],
    );
    assert!(names(&out_dir).is_empty(), "left: {:?}", names(&out_dir));

    big_gguf(&input, 64);
    let (code, stderr) = run(&mut convert(&input, &out));
    assert_eq!(code, Some(0), "{stderr}");
    assert_same_model(&input, &out);
    assert_eq!(names(&out_dir), ["m.gguf"]);
}

#[test]
fn an_input_rewritten_or_replaced_while_read_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.gguf");
    big_gguf(&input, 64);
    let out_dir = dir.path().join("out");
    fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("m.gguf");

    // Rewritten in place: same size, other bytes.
    let (child, _) = start_and_wait_for_temp(&mut convert(&input, &out), &out_dir);
    signal(&child, "STOP");
    {
        use std::os::unix::fs::FileExt;
        let f = File::options().write(true).open(&input).unwrap();
        let len = f.metadata().unwrap().len();
        f.write_all_at(&[0xAA; 4096], len - 4096).unwrap();
    }
    signal(&child, "CONT");
    let (code, stderr) = stderr_of(child);
    assert_clean_error(
        code,
        &stderr,
        &input,
        &["changed while qforge was reading it (it was written to)"],
    );
    assert!(names(&out_dir).is_empty(), "left: {:?}", names(&out_dir));

    // Replaced: another file renamed over it.
    let (child, _) = start_and_wait_for_temp(&mut convert(&input, &out), &out_dir);
    signal(&child, "STOP");
    let other = dir.path().join("other.gguf");
    fs::copy(&input, &other).unwrap();
    fs::rename(&other, &input).unwrap();
    signal(&child, "CONT");
    let (code, stderr) = stderr_of(child);
    assert_clean_error(
        code,
        &stderr,
        &input,
        &["another file was put in its place"],
    );
    assert!(names(&out_dir).is_empty(), "left: {:?}", names(&out_dir));

    let (code, stderr) = run(&mut convert(&input, &out));
    assert_eq!(code, Some(0), "{stderr}");
    assert_same_model(&input, &out);
}

#[test]
fn two_runs_writing_one_output_do_not_mix() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.gguf");
    big_gguf(&input, 64);
    let out_dir = dir.path().join("out");
    fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("m.gguf");

    let (first, _) = start_and_wait_for_temp(&mut convert(&input, &out), &out_dir);
    signal(&first, "STOP");
    let pid = first.id();
    let (code, stderr) = run(&mut convert(&input, &out));
    assert_clean_error(
        code,
        &stderr,
        &out,
        &[&format!(
            "another process (pid {pid}) is writing this output now"
        )],
    );
    signal(&first, "CONT");
    let (code, stderr) = stderr_of(first);
    assert_eq!(code, Some(0), "the first run: {stderr}");
    assert_same_model(&input, &out);
    assert_eq!(names(&out_dir), ["m.gguf"]);

    let (code, stderr) = run(&mut convert(&input, &out));
    assert_eq!(code, Some(0), "{stderr}");
    assert_same_model(&input, &out);
    assert_eq!(names(&out_dir), ["m.gguf"]);
}
