//! The manifest runner with fake stages: what gets built, rebuilt,
//! verified and reported, and what the lockfile says.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::fake_stages::Fakes;
use qforge::manifest::check::{check, merge, CheckStatus};
use qforge::manifest::lock::Lockfile;
use qforge::manifest::plan::jobs;
use qforge::manifest::report::Status;
use qforge::manifest::runner::Quiet;
use qforge::manifest::stages::NoProgress;
use qforge::manifest::{resolve, run, Manifest, ResolvedManifest, RunOptions, RunOutcome};

const MANIFEST: &str = "\
name: Tiny
from: ./model
license: apache-2.0
system: You are terse.
template: \"{{ .Prompt }}\"
parameters:
  temperature: 0.6
  stop: [\"<|end|>\"]
verify:
  text: ./text.txt
  ctx: 64
  gates:
    max_kld: 0.5
    min_top1: 0.5
artifacts:
  - name: tiny-q8_0
    format: gguf
    quantization: Q8_0
  - name: tiny-q4_k_m
    format: gguf
    quantization: {type: Q4_K_M}
    verify:
      gates: {max_ppl_ratio: 1.5}
  - name: tiny-mlx-4bit
    format: mlx
    quantization: {bits: 4, group_size: 64}
";

struct Setup {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
}

impl Setup {
    /// A folder with a tiny HF-style model, a text and the manifest.
    fn new(manifest: &str) -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        common::write_tiny_hf_model(&dir.join("model"));
        fs::write(
            dir.join("text.txt"),
            "Some text to measure perplexity on.\n",
        )
        .unwrap();
        fs::write(dir.join("demo.yaml"), manifest).unwrap();
        Setup { _tmp: tmp, dir }
    }

    fn manifest_path(&self) -> PathBuf {
        self.dir.join("demo.yaml")
    }

    fn edit(&self, from: &str, to: &str) {
        let p = self.manifest_path();
        let text = fs::read_to_string(&p).unwrap();
        assert!(text.contains(from), "{from}");
        fs::write(p, text.replacen(from, to, 1)).unwrap();
    }

    fn resolved(&self) -> ResolvedManifest {
        let p = self.manifest_path();
        let text = fs::read_to_string(&p).unwrap();
        let m = Manifest::parse(&text, &p).unwrap();
        resolve(m, &p, &|_| None, None).unwrap()
    }

    fn out(&self) -> PathBuf {
        self.dir.join("demo.out")
    }

    fn run(&self, fakes: &Fakes, opts: RunOptions) -> RunOutcome {
        run(&self.resolved(), &opts, fakes.stages(), &Quiet, &NoProgress).unwrap()
    }
}

fn statuses(o: &RunOutcome) -> Vec<(String, Status)> {
    o.rows().map(|a| (a.name.clone(), a.status)).collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn first_run_builds_verifies_and_writes_report_lock_and_modelfiles() {
    let s = Setup::new(MANIFEST);
    let fakes = Fakes::default();
    let o = s.run(&fakes, RunOptions::default());
    assert!(o.pass(), "{:#?}", o.report);
    assert_eq!(
        fakes.take_calls(),
        [
            "convert tiny-q8_0.gguf",
            "verify tiny-q8_0.gguf",
            "convert source-F16.gguf",
            "quantize tiny-q4_k_m.gguf",
            "verify tiny-q4_k_m.gguf",
            "convert tiny-mlx-4bit",
            "verify tiny-mlx-4bit",
        ]
    );
    let out = s.out();
    for f in [
        "tiny-q8_0.gguf",
        "tiny-q8_0.Modelfile",
        "tiny-q4_k_m.gguf",
        "tiny-q4_k_m.Modelfile",
        "tiny-mlx-4bit/config.json",
        "report.json",
        "report.md",
        "report.svg",
        "qforge.lock",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    assert!(
        !out.join(".qforge-work").exists(),
        "intermediates are removed"
    );

    // The final GGUFs, and only they, get the manifest's metadata.
    let meta = fakes.metadata.lock().unwrap().clone();
    assert_eq!(
        meta.iter().map(|(f, _)| f.as_str()).collect::<Vec<_>>(),
        ["tiny-q8_0.gguf", "tiny-q4_k_m.gguf"]
    );
    assert_eq!(
        meta[0].1,
        [
            "general.name",
            "general.license",
            "qforge.template",
            "qforge.system",
            "general.sampling.temp",
            "qforge.parameters.temperature",
            "qforge.parameters.stop",
        ]
    );

    let modelfile = fs::read_to_string(out.join("tiny-q8_0.Modelfile")).unwrap();
    assert!(
        modelfile.ends_with(
            "FROM ./tiny-q8_0.gguf\nTEMPLATE \"{{ .Prompt }}\"\nSYSTEM \"You are terse.\"\n\
             PARAMETER temperature 0.6\nPARAMETER stop <|end|>\nLICENSE apache-2.0\n"
        ),
        "{modelfile}"
    );

    let lock = Lockfile::read(&out).unwrap().unwrap();
    assert_eq!(lock.qforge_version, qforge::VERSION);
    assert_eq!(lock.source.from, "./model");
    assert_eq!(
        lock.source
            .files
            .iter()
            .map(|f| f.path.as_str())
            .collect::<Vec<_>>(),
        ["config.json", "model.safetensors"]
    );
    let q8 = &lock.artifacts["tiny-q8_0"];
    assert_eq!(
        q8.outputs
            .iter()
            .map(|f| f.path.as_str())
            .collect::<Vec<_>>(),
        ["tiny-q8_0.Modelfile", "tiny-q8_0.gguf"]
    );
    assert_eq!(
        q8.sha256,
        qforge::hashing::sha256_file(&out.join("tiny-q8_0.gguf")).unwrap()
    );
    assert_eq!(q8.inputs["source"], lock.source.sha256);

    let md = fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.starts_with("# Tiny\n"), "{md}");
    assert!(md.contains("| tiny-q4_k_m | gguf Q4_K_M |"), "{md}");
    assert!(md.contains("max_ppl_ratio: "), "{md}");
    let svg = fs::read_to_string(out.join("report.svg")).unwrap();
    assert!(svg.starts_with("<svg ") && svg.ends_with("</svg>\n"));
    assert_eq!(svg.matches("<circle").count(), 3);
    let q8_row = o.report.artifact("tiny-q8_0").unwrap();
    assert_eq!(q8_row.bits_per_weight, Some(32.0), "the fake's F32 tensor");
}

#[test]
fn a_second_run_rebuilds_nothing_and_an_edit_rebuilds_only_its_artifact() {
    let s = Setup::new(MANIFEST);
    let fakes = Fakes::default();
    s.run(&fakes, RunOptions::default());
    let lock1 = fs::read(s.out().join("qforge.lock")).unwrap();
    fakes.take_calls();

    let o = s.run(&fakes, RunOptions::default());
    assert!(o.nothing_rebuilt() && o.pass());
    assert_eq!(fakes.take_calls(), Vec::<String>::new());
    assert_eq!(fs::read(s.out().join("qforge.lock")).unwrap(), lock1);

    // A gate edit re-evaluates without building or measuring anything.
    s.edit("min_top1: 0.5", "min_top1: 0.999");
    let o = s.run(&fakes, RunOptions::default());
    assert!(!o.pass());
    assert_eq!(fakes.take_calls(), Vec::<String>::new());
    s.edit("min_top1: 0.999", "min_top1: 0.5");

    // One artifact's settings: only it rebuilds (with its intermediate).
    s.edit("{type: Q4_K_M}", "{type: Q5_K_M}");
    let o = s.run(&fakes, RunOptions::default());
    assert_eq!(
        fakes.take_calls(),
        [
            "convert source-F16.gguf",
            "quantize tiny-q4_k_m.gguf",
            "verify tiny-q4_k_m.gguf"
        ]
    );
    assert_eq!(
        statuses(&o),
        [
            ("tiny-q8_0".into(), Status::UpToDate),
            ("tiny-q4_k_m".into(), Status::Built),
            ("tiny-mlx-4bit".into(), Status::UpToDate),
        ]
    );

    // Model metadata is part of every GGUF's settings, not the MLX folder's.
    s.edit("temperature: 0.6", "temperature: 0.7");
    s.run(&fakes, RunOptions::default());
    assert_eq!(
        sorted(fakes.take_calls()),
        sorted(vec![
            "convert tiny-q8_0.gguf".into(),
            "verify tiny-q8_0.gguf".into(),
            "convert source-F16.gguf".into(),
            "quantize tiny-q4_k_m.gguf".into(),
            "verify tiny-q4_k_m.gguf".into(),
        ])
    );

    // A new source file content rebuilds everything.
    fs::write(
        s.dir.join("model/config.json"),
        r#"{"model_type": "llama", "x": 1}"#,
    )
    .unwrap();
    let o = s.run(&fakes, RunOptions::default());
    assert!(o.rows().all(|a| a.status == Status::Built));
    fakes.take_calls();

    // --force rebuilds what is up to date.
    let o = s.run(
        &fakes,
        RunOptions {
            force: true,
            ..RunOptions::default()
        },
    );
    assert!(o.rows().all(|a| a.status == Status::Built));
    assert_eq!(fakes.take_calls().len(), 7);
}

#[test]
fn a_deleted_or_truncated_artifact_rebuilds_and_check_finds_corruption() {
    let s = Setup::new(MANIFEST);
    let fakes = Fakes::default();
    s.run(&fakes, RunOptions::default());
    fakes.take_calls();
    let m = s.resolved();
    let results = check(&m, &[]).unwrap();
    assert!(results.iter().all(|r| r.status.ok()), "{results:?}");

    // Same size, one byte changed: only --check can tell.
    let gguf = s.out().join("tiny-q8_0.gguf");
    let mut bytes = fs::read(&gguf).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&gguf, &bytes).unwrap();
    let results = check(&m, &[]).unwrap();
    let CheckStatus::Damaged(why) = &results[0].status else {
        panic!("{results:?}");
    };
    assert_eq!(why.len(), 1);
    assert!(
        why[0].starts_with("tiny-q8_0.gguf has sha256 "),
        "{}",
        why[0]
    );
    assert!(results[1].status.ok() && results[2].status.ok());

    // A file added to a folder artifact is found too.
    fs::write(s.out().join("tiny-mlx-4bit/extra.txt"), "x").unwrap();
    assert_eq!(
        check(&m, &["tiny-mlx-4bit".into()]).unwrap()[0].status,
        CheckStatus::Damaged(vec!["tiny-mlx-4bit/extra.txt is not in the lockfile".into()])
    );
    fs::remove_file(s.out().join("tiny-mlx-4bit/extra.txt")).unwrap();

    // A truncated file is seen by a plain run, which rebuilds it; the
    // rebuilt bytes are the same, so its measurements still stand.
    fs::write(&gguf, &bytes[..100]).unwrap();
    let o = s.run(&fakes, RunOptions::default());
    assert_eq!(
        o.report.artifact("tiny-q8_0").unwrap().status,
        Status::Built
    );
    assert_eq!(fakes.take_calls(), ["convert tiny-q8_0.gguf"]);
    assert!(check(&m, &[]).unwrap().iter().all(|r| r.status.ok()));

    // An edited manifest makes the entry stale.
    s.edit("{bits: 4, group_size: 64}", "{bits: 4, group_size: 32}");
    let results = check(&s.resolved(), &["tiny-mlx-4bit".into()]).unwrap();
    assert_eq!(
        results[0].status,
        CheckStatus::Stale("its settings in the manifest changed since it was built".into())
    );
}

#[test]
fn a_failing_gate_or_step_names_its_artifact_and_the_others_still_run() {
    let s = Setup::new(MANIFEST);
    s.edit(
        "gates: {max_ppl_ratio: 1.5}",
        "gates: {max_ppl_ratio: 1.0001}",
    );
    let fakes = Fakes::default();
    let o = s.run(&fakes, RunOptions::default());
    assert!(!o.pass());
    let bad: Vec<&str> = o
        .rows()
        .filter(|a| !a.pass)
        .map(|a| a.name.as_str())
        .collect();
    assert_eq!(bad, ["tiny-q4_k_m"]);
    let row = o.report.artifact("tiny-q4_k_m").unwrap();
    assert!(row
        .gates
        .iter()
        .any(|g| g.gate == "max_ppl_ratio" && !g.pass));
    assert!(fs::read_to_string(s.out().join("report.md"))
        .unwrap()
        .contains("**FAIL**"));

    *fakes.fail_quantize.lock().unwrap() = Some("Q4_K_M".into());
    let o = s.run(
        &fakes,
        RunOptions {
            force: true,
            ..RunOptions::default()
        },
    );
    let row = o.report.artifact("tiny-q4_k_m").unwrap();
    assert_eq!(row.status, Status::Failed);
    assert_eq!(
        row.error.as_deref(),
        Some("quantizing to Q4_K_M: the fake quantizer refuses Q4_K_M")
    );
    assert!(o.report.artifact("tiny-mlx-4bit").unwrap().pass);
    assert!(o.report.artifact("tiny-q8_0").unwrap().pass);
}

#[test]
fn only_runs_merge_into_one_report() {
    let s = Setup::new(MANIFEST);
    let fakes = Fakes::default();
    let m = s.resolved();
    // Three CI runners, each with its own output folder.
    let mut parts = Vec::new();
    for name in ["tiny-q8_0", "tiny-q4_k_m", "tiny-mlx-4bit"] {
        let part = s.dir.join(format!("part-{name}"));
        let mut mm = m.clone();
        mm.output = part.clone();
        let o = run(
            &mm,
            &RunOptions {
                only: vec![name.into()],
                ..RunOptions::default()
            },
            fakes.stages(),
            &Quiet,
            &NoProgress,
        )
        .unwrap();
        assert_eq!(o.report.artifacts.len(), 1);
        parts.push(part);
    }
    let merged = merge(&m, &parts).unwrap();
    assert_eq!(merged.report.artifacts.len(), 3);
    assert!(merged.report.pass);
    assert!(check(&m, &[]).unwrap().iter().all(|r| r.status.ok()));
    assert!(s.out().join("tiny-mlx-4bit/config.json").is_file());
    // A rerun in the merged folder has nothing to do.
    fakes.take_calls();
    let o = s.run(&fakes, RunOptions::default());
    assert!(o.nothing_rebuilt(), "{:?}", statuses(&o));
    assert!(fakes.take_calls().is_empty());
}

#[test]
fn plan_lists_jobs_whose_settings_hash_is_the_lockfiles() {
    let s = Setup::new(MANIFEST);
    let m = s.resolved();
    let jobs = jobs(&m, "demo.yaml");
    assert_eq!(
        jobs.iter().map(|j| j.command.as_str()).collect::<Vec<_>>(),
        [
            "qforge run demo.yaml --only tiny-q8_0",
            "qforge run demo.yaml --only tiny-q4_k_m",
            "qforge run demo.yaml --only tiny-mlx-4bit",
        ]
    );
    assert_eq!(jobs[2].outputs, ["tiny-mlx-4bit"]);
    let fakes = Fakes::default();
    s.run(&fakes, RunOptions::default());
    let lock = Lockfile::read(&s.out()).unwrap().unwrap();
    for j in &jobs {
        assert_eq!(j.settings_sha256, lock.artifacts[&j.name].settings_sha256);
    }
}

#[test]
fn an_unknown_only_name_is_refused_with_a_suggestion() {
    let s = Setup::new(MANIFEST);
    let fakes = Fakes::default();
    let err = run(
        &s.resolved(),
        &RunOptions {
            only: vec!["tiny-q8".into()],
            ..RunOptions::default()
        },
        fakes.stages(),
        &Quiet,
        &NoProgress,
    )
    .unwrap_err();
    assert!(
        err.0.ends_with(
            "has no artifact named `tiny-q8` (did you mean `tiny-q8_0`?); its artifacts are: \
             tiny-q8_0, tiny-q4_k_m, tiny-mlx-4bit"
        ),
        "{err}"
    );
    assert!(!Path::new(&s.out()).exists(), "nothing ran");
}

/// The real stages where they exist today: a GGUF source rewritten as
/// its own type with the manifest's metadata; other paths say which stage
/// is missing, and name the artifact.
#[test]
fn real_stages_rewrite_a_gguf_source_and_name_what_is_missing() {
    use qforge::formats::gguf::{GgufModel, GgufWriter, Metadata, TensorSpec, Value};
    use qforge::manifest::Stages;

    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src.gguf");
    {
        let mut meta = Metadata::default();
        meta.set("general.architecture", Value::String("llama".into()));
        meta.set("general.file_type", Value::U32(0));
        meta.set("general.name", Value::String("Old name".into()));
        let specs = vec![TensorSpec {
            name: "token_embd.weight".into(),
            dims: vec![8],
            ggml_type: quant_kernels::GgmlType::F32,
        }];
        let mut f = fs::File::create(&src).unwrap();
        let mut w = GgufWriter::new(&mut f, 3, &meta, &specs).unwrap();
        w.write_tensor("token_embd.weight", &[1u8; 32]).unwrap();
        w.finish().unwrap();
    }
    let manifest = tmp.path().join("m.yaml");
    fs::write(
        &manifest,
        "name: New name\nfrom: ./src.gguf\nparameters: {top_k: 20, stop: \"</s>\"}\n\
         artifacts:\n  - name: same\n    format: gguf\n    quantization: F32\n\
         \x20 - name: q8\n    format: gguf\n    quantization: {type: Q8_0, allow_requantize: true}\n",
    )
    .unwrap();
    let m = qforge::manifest::load_resolved(&manifest, None).unwrap();
    let o = run(
        &m,
        &RunOptions::default(),
        Stages::real(),
        &Quiet,
        &NoProgress,
    )
    .unwrap();
    let same = o.report.artifact("same").unwrap();
    assert!(same.pass, "{same:?}");
    let q8 = o.report.artifact("q8").unwrap();
    assert_eq!(q8.status, Status::Failed);
    // The quantize stage is llama-quantize's: a file with no layers cannot
    // place the layer-dependent types, and the error names file and key.
    let err = q8.error.as_deref().unwrap();
    assert!(
        err.starts_with("quantizing to Q8_0: reading ")
            && err.contains("src.gguf")
            && err.contains("llama.block_count is missing"),
        "{err}"
    );

    let out = GgufModel::open(m.output.join("same.gguf")).unwrap();
    let meta = out.metadata();
    assert_eq!(meta.get_str("general.name"), Some("New name"));
    assert_eq!(meta.get("general.sampling.top_k"), Some(&Value::I32(20)));
    assert_eq!(meta.get_str("qforge.command"), Some("run"));
    let (t, data) = out.tensors().next().unwrap();
    assert_eq!(
        (t.name.as_str(), data),
        ("token_embd.weight", &[1u8; 32][..])
    );
    let modelfile = fs::read_to_string(m.output.join("same.Modelfile")).unwrap();
    assert!(modelfile.ends_with("FROM ./same.gguf\nPARAMETER top_k 20\nPARAMETER stop </s>\n"));

    // Rebuilding nothing is the same with the real stages.
    let o = run(
        &m,
        &RunOptions {
            only: vec!["same".into()],
            ..RunOptions::default()
        },
        Stages::real(),
        &Quiet,
        &NoProgress,
    )
    .unwrap();
    assert!(o.nothing_rebuilt());
}

/// The real converter: a fixture's HF folder to a GGUF and a safetensors
/// folder, with the manifest's chat template and settings in both.
#[test]
fn real_stages_convert_an_hf_fixture_to_gguf_and_safetensors() {
    use qforge::formats::gguf::{GgufModel, Value};
    use qforge::manifest::Stages;

    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/llama");
    let tmp = tempfile::tempdir().unwrap();
    let manifest = tmp.path().join("m.yaml");
    fs::write(
        &manifest,
        format!(
            "name: Tiny llama\nfrom: {}\nchat_template: \"{{{{ messages }}}}\"\n\
             parameters: {{temperature: 0.5}}\nartifacts:\n\
             \x20 - name: tiny-f16\n    format: gguf\n    quantization: F16\n\
             \x20 - name: tiny-hf\n    format: safetensors\n    dtype: bf16\n",
            fixture.display()
        ),
    )
    .unwrap();
    let m = qforge::manifest::load_resolved(&manifest, None).unwrap();
    let o = run(
        &m,
        &RunOptions::default(),
        Stages::real(),
        &Quiet,
        &NoProgress,
    )
    .unwrap();
    assert!(o.pass(), "{:#?}", o.report.artifacts);

    let gguf = GgufModel::open(m.output.join("tiny-f16.gguf")).unwrap();
    let meta = gguf.metadata();
    assert_eq!(meta.get_str("general.name"), Some("Tiny llama"));
    assert_eq!(
        meta.get_str("tokenizer.chat_template"),
        Some("{{ messages }}")
    );
    assert_eq!(meta.get("general.sampling.temp"), Some(&Value::F32(0.5)));
    assert_eq!(meta.get_u64("general.file_type"), Some(1));
    // Unmapped before the forced run replaces it: commits check that no
    // file this process still maps changed underneath it.
    drop(gguf);

    let hf = m.output.join("tiny-hf");
    let template = match fs::read_to_string(hf.join("chat_template.jinja")) {
        Ok(t) => t,
        Err(_) => {
            let cfg: serde_json::Value =
                serde_json::from_slice(&fs::read(hf.join("tokenizer_config.json")).unwrap())
                    .unwrap();
            cfg["chat_template"].as_str().unwrap().to_string()
        }
    };
    assert_eq!(template, "{{ messages }}");
    assert!(hf.join("config.json").is_file());

    let again = run(
        &m,
        &RunOptions::default(),
        Stages::real(),
        &Quiet,
        &NoProgress,
    )
    .unwrap();
    assert!(again.nothing_rebuilt());
    let forced = run(
        &m,
        &RunOptions {
            force: true,
            ..RunOptions::default()
        },
        Stages::real(),
        &Quiet,
        &NoProgress,
    )
    .unwrap();
    assert!(forced.pass());
    // Same settings, same bytes.
    assert_eq!(forced.lock, o.lock);
}
