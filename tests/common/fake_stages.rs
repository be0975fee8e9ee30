//! Fake stages for runner tests: they write small real files (GGUF through
//! qforge's writer, so the runner's hashing, Modelfiles and bits/weight see
//! real artifacts), log every call, and can be told to fail.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use qforge::formats::gguf::{GgufWriter, Metadata, TensorSpec, Value};
use qforge::manifest::resolve::HubSource;
use qforge::manifest::stages::{
    Convert, ConvertRequest, ConvertTarget, Fetch, FetchedModel, Measurements, MlxQuant, Quantize,
    QuantizeRequest, StageError, StageProgress, StageResult, Stages, Verify, VerifyRequest,
};
use qforge::quant::ftype::file_type_id;

/// Elements of the one tensor a fake GGUF holds, by type: smaller types
/// make smaller files, so sizes differ as real ones would.
fn elements(file_type: &str) -> usize {
    match file_type {
        "F32" => 256,
        "F16" | "BF16" => 128,
        "Q8_0" => 68,
        "Q6_K" => 52,
        "Q5_K_M" => 44,
        _ => 36,
    }
}

/// Records calls and fails on request.
#[derive(Default)]
pub struct Fakes {
    /// `convert OUTPUT_NAME`, `quantize OUTPUT_NAME`, `verify ARTIFACT_NAME`.
    pub calls: Mutex<Vec<String>>,
    /// Quantizing to this type fails.
    pub fail_quantize: Mutex<Option<String>>,
    /// The GGUF metadata each final GGUF was given, by file name.
    pub metadata: Mutex<Vec<(String, Vec<String>)>>,
}

impl Fakes {
    /// The stages, all four fake.
    pub fn stages(&self) -> Stages<'_> {
        Stages {
            fetch: self,
            convert: self,
            quantize: self,
            verify: self,
        }
    }

    /// The calls so far, and forget them.
    pub fn take_calls(&self) -> Vec<String> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }

    fn log(&self, what: &str, path: &Path) {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        self.calls.lock().unwrap().push(format!("{what} {name}"));
    }
}

fn write_gguf(
    path: &Path,
    file_type: &str,
    seed: u8,
    extra: &[(String, Value)],
) -> std::io::Result<()> {
    let mut meta = Metadata::default();
    meta.set("general.architecture", Value::String("llama".into()));
    meta.set(
        "general.file_type",
        Value::U32(file_type_id(file_type).unwrap_or(0)),
    );
    for (k, v) in extra {
        meta.set(k.clone(), v.clone());
    }
    let n = elements(file_type);
    let specs = vec![TensorSpec {
        name: "token_embd.weight".into(),
        dims: vec![n as u64],
        ggml_type: quant_kernels::GgmlType::F32,
    }];
    let data: Vec<u8> = (0..n * 4).map(|i| (i as u8).wrapping_mul(seed)).collect();
    let tmp = path.with_extension("fake-tmp");
    {
        let mut out = fs::File::create(&tmp)?;
        let mut w = GgufWriter::new(&mut out, 3, &meta, &specs).map_err(std::io::Error::other)?;
        w.write_tensor("token_embd.weight", &data)
            .map_err(std::io::Error::other)?;
        w.finish().map_err(std::io::Error::other)?;
        out.flush()?;
    }
    fs::rename(tmp, path)
}

fn seed_of(input: &Path) -> u8 {
    let bytes = if input.is_dir() {
        fs::read(input.join("model.safetensors")).unwrap_or_default()
    } else {
        fs::read(input).unwrap_or_default()
    };
    bytes
        .iter()
        .fold(7u8, |a, b| a.wrapping_mul(31).wrapping_add(*b))
        | 1
}

fn io(e: std::io::Error) -> StageError {
    StageError(e.to_string())
}

impl Fetch for Fakes {
    fn fetch(&self, source: &HubSource, _: &dyn StageProgress) -> StageResult<FetchedModel> {
        Err(StageError(format!("no network in tests: {source}")))
    }
}

impl Convert for Fakes {
    fn convert(&self, req: &ConvertRequest<'_>) -> StageResult<()> {
        self.log("convert", req.output);
        let seed = seed_of(req.input);
        match &req.target {
            ConvertTarget::Gguf { outtype } => {
                if !req.gguf_metadata.is_empty() {
                    let name = req
                        .output
                        .file_name()
                        .unwrap()
                        .to_string_lossy()
                        .into_owned();
                    let keys = req.gguf_metadata.iter().map(|(k, _)| k.clone()).collect();
                    self.metadata.lock().unwrap().push((name, keys));
                }
                write_gguf(req.output, outtype, seed, req.gguf_metadata).map_err(io)
            }
            ConvertTarget::Mlx { quantize, .. } => {
                let tmp = req.output.with_extension("fake-tmp");
                let _ = fs::remove_dir_all(&tmp);
                fs::create_dir_all(&tmp).map_err(io)?;
                let (bits, group) = match quantize {
                    Some(MlxQuant::Affine { bits, group_size }) => (*bits, *group_size),
                    Some(MlxQuant::Recipe { group_size, .. }) => (0, *group_size),
                    None => (16, 0),
                };
                fs::write(
                    tmp.join("config.json"),
                    format!(
                        "{{\"quantization\": {{\"bits\": {bits}, \"group_size\": {group}}}}}\n"
                    ),
                )
                .map_err(io)?;
                fs::write(
                    tmp.join("weights.bin"),
                    vec![seed; 100 + usize::from(bits) * 10],
                )
                .map_err(io)?;
                let _ = fs::remove_dir_all(req.output);
                fs::rename(&tmp, req.output).map_err(io)
            }
            ConvertTarget::Safetensors { .. } => {
                fs::create_dir_all(req.output).map_err(io)?;
                fs::write(req.output.join("model.bin"), [seed; 64]).map_err(io)
            }
        }
    }
}

impl Quantize for Fakes {
    fn quantize(&self, req: &QuantizeRequest<'_>) -> StageResult<()> {
        self.log("quantize", req.output);
        if self.fail_quantize.lock().unwrap().as_deref() == Some(req.file_type) {
            return Err(StageError(format!(
                "the fake quantizer refuses {}",
                req.file_type
            )));
        }
        let name = req
            .output
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let keys = req.gguf_metadata.iter().map(|(k, _)| k.clone()).collect();
        self.metadata.lock().unwrap().push((name, keys));
        write_gguf(
            req.output,
            req.file_type,
            seed_of(req.input),
            req.gguf_metadata,
        )
        .map_err(io)
    }
}

impl Verify for Fakes {
    fn verify(&self, req: &VerifyRequest<'_>) -> StageResult<Measurements> {
        self.log("verify", req.artifact);
        // Quality falls with size, as it does for real quantizations.
        let size: u64 = if req.artifact.is_dir() {
            fs::read_dir(req.artifact)
                .unwrap()
                .map(|e| e.unwrap().metadata().unwrap().len())
                .sum()
        } else {
            fs::metadata(req.artifact).unwrap().len()
        };
        let kld = 10.0 / size as f64;
        Ok(Measurements {
            ppl: Some(12.0 * (1.0 + kld)),
            ppl_err: Some(0.2),
            kld_mean: Some(kld),
            kld_p99: Some(kld * 5.0),
            top1: Some(1.0 - kld * 2.0),
            ppl_ratio: Some(1.0 + kld),
            prompt_tok_s: Some(500.0),
            gen_tok_s: Some(50.0),
            peak_rss: Some(64 << 20),
            sample: Some(format!("the fake model at ctx {}", req.ctx)),
        })
    }
}
