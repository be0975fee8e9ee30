//! The engine against transformers: logits of the fixture prompt on every
//! tiny fixture model (fixtures/<arch>/golden.safetensors, float32 eager
//! attention) and greedy generation agreeing with the batched pass.

use std::path::{Path, PathBuf};

use qforge::engine::{Artifact, Model};
use qforge::formats::safetensors::SafetensorsModel;

/// Largest |ours - transformers| allowed, relative to the largest |logit|
/// of the row. Both sides compute in f32 from the same stored weights; the
/// difference is summation order (measured worst case 1.1e-6, phi3).
const REL_TOL: f32 = 1e-5;

fn fixture(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name);
    assert!(
        dir.join("golden.safetensors").is_file(),
        "{} is missing: generate the fixtures (fixtures/generate.py)",
        dir.display()
    );
    dir
}

fn golden(dir: &Path) -> (Vec<u32>, Vec<f32>, usize) {
    let st = SafetensorsModel::open(dir.join("golden.safetensors")).unwrap();
    let (_, ids) = st.tensor("input_ids").unwrap();
    let ids: Vec<u32> = ids
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32)
        .collect();
    let (info, logits) = st.tensor("logits").unwrap();
    let logits: Vec<f32> = logits
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (ids, logits, info.shape[1] as usize)
}

fn check_logits(name: &str) {
    let dir = fixture(name);
    let (ids, want, vocab) = golden(&dir);
    let artifact = Artifact::open(&dir).unwrap();
    let model = Model::load(&artifact).unwrap();
    assert_eq!(model.config().n_vocab, vocab);
    let mut cache = model.new_cache(ids.len());
    let got = model.forward(&mut cache, &ids, 0).unwrap();
    assert_eq!(got.len(), want.len());
    let mut worst = 0f32;
    for (t, (g, w)) in got.chunks(vocab).zip(want.chunks(vocab)).enumerate() {
        let scale = w.iter().fold(1f32, |m, v| m.max(v.abs()));
        let diff = g.iter().zip(w).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        worst = worst.max(diff / scale);
        assert!(
            diff <= REL_TOL * scale,
            "{name}: position {t}: max |diff| {diff} over max |logit| {scale}"
        );
    }
    eprintln!(
        "{name}: {} positions, worst relative diff {worst:.2e}",
        ids.len()
    );

    // One token at a time through the cache gives the same logits.
    let mut cache = model.new_cache(ids.len());
    for (t, &id) in ids.iter().enumerate() {
        let step = model.forward(&mut cache, &[id], 0).unwrap();
        let w = &want[t * vocab..(t + 1) * vocab];
        let scale = w.iter().fold(1f32, |m, v| m.max(v.abs()));
        let diff = step
            .iter()
            .zip(w)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(diff <= REL_TOL * scale, "{name}: step {t}: {diff}");
    }
}

#[test]
fn llama_matches_transformers() {
    check_logits("llama");
}

#[test]
fn mistral_matches_transformers() {
    check_logits("mistral");
}

#[test]
fn qwen2_matches_transformers() {
    check_logits("qwen2");
}

#[test]
fn qwen3_matches_transformers() {
    check_logits("qwen3");
}

#[test]
fn gemma3_matches_transformers() {
    check_logits("gemma3");
}

#[test]
fn phi3_matches_transformers() {
    check_logits("phi3");
}

#[test]
fn demo_llama_matches_transformers() {
    check_logits("demo-llama");
}

/// Results do not depend on the thread count: every output element is
/// computed by one task in an order fixed by the shapes alone.
#[test]
fn logits_are_identical_on_every_thread_count() {
    let dir = fixture("gemma3");
    let (ids, _, _) = golden(&dir);
    let artifact = Artifact::open(&dir).unwrap();
    let model = Model::load(&artifact).unwrap();
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let mut cache = model.new_cache(ids.len());
            model.forward(&mut cache, &ids, 0).unwrap()
        })
    };
    let one = run(1);
    for threads in [2, 3, 7] {
        assert!(one == run(threads), "{threads} threads differ from 1");
    }
}
