//! Test driver for the interop suite: qforge's tokenizer conversions and
//! runtime tokenizer, run from Python without FFI.
//!
//! ```text
//! tokenizer_tool hf-to-gguf-keys DIR OUT.gguf [--tokenizer-pre NAME] [--arch HF_ARCH] [--into BASE.gguf]
//!     the tokenizer.* keys for a Hugging Face folder, in a GGUF with no tensors;
//!     with --into, BASE's keys (a tensorless vocab-only file) with its
//!     tokenizer.* keys replaced by ours, where its first one stood
//! tokenizer_tool gguf-to-hf IN.gguf OUTDIR
//!     tokenizer.json, tokenizer_config.json, special_tokens_map.json, chat template
//! tokenizer_tool encode MODEL TEXTFILE [--no-add-special] [--no-parse-special]
//!     token ids of the file's text as a JSON list; MODEL is a folder or a .gguf
//! tokenizer_tool check-hash DIR
//!     convert_hf_to_gguf.py's check-text hash of the folder's tokenizer.json
//! ```

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use qforge::formats::atomic::AtomicFile;
use qforge::formats::gguf::{GgufModel, GgufWriter, Metadata, VERSION};
use qforge::tokenizer::{check_text_hash, gguf_to_hf, hf_to_gguf_keys, HfToGgufOptions, Tokenizer};

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tokenizer_tool: {e}");
            ExitCode::FAILURE
        }
    }
}

fn flag(args: &mut Vec<String>, name: &str) -> bool {
    let before = args.len();
    args.retain(|a| a != name);
    args.len() != before
}

fn option(args: &mut Vec<String>, name: &str) -> Result<Option<String>, String> {
    match args.iter().position(|a| a == name) {
        None => Ok(None),
        Some(i) if i + 1 < args.len() => {
            let v = args.remove(i + 1);
            args.remove(i);
            Ok(Some(v))
        }
        Some(_) => Err(format!("{name} needs a value")),
    }
}

fn run(mut args: Vec<String>) -> Result<(), String> {
    let usage = "usage: tokenizer_tool hf-to-gguf-keys DIR OUT.gguf [--tokenizer-pre NAME] [--arch A] [--into BASE.gguf] | \
                 gguf-to-hf IN.gguf OUTDIR | encode MODEL TEXTFILE [--no-add-special] [--no-parse-special] | \
                 check-hash DIR";
    if args.is_empty() {
        return Err(usage.into());
    }
    let command = args.remove(0);
    match command.as_str() {
        "hf-to-gguf-keys" => {
            let options = HfToGgufOptions {
                tokenizer_pre: option(&mut args, "--tokenizer-pre")?,
                architecture: option(&mut args, "--arch")?,
            };
            let into = option(&mut args, "--into")?;
            let [dir, out] = args.as_slice() else {
                return Err(usage.into());
            };
            let mut keys = hf_to_gguf_keys(dir, &options).map_err(|e| e.to_string())?;
            if let Some(base) = into {
                keys = splice(&base, keys)?;
            }
            let mut file = AtomicFile::create(out).map_err(|e| e.to_string())?;
            GgufWriter::new(&mut file, VERSION, &keys, &[])
                .and_then(|w| w.finish())
                .map_err(|e| e.to_string())?;
            file.commit().map_err(|e| e.to_string())
        }
        "gguf-to-hf" => {
            let [input, out] = args.as_slice() else {
                return Err(usage.into());
            };
            let model = GgufModel::open(input).map_err(|e| e.to_string())?;
            let hf = gguf_to_hf(model.metadata()).map_err(|e| format!("{input}: {e}"))?;
            hf.write_to_dir(out).map_err(|e| e.to_string())
        }
        "encode" => {
            let add_special = !flag(&mut args, "--no-add-special");
            let parse_special = !flag(&mut args, "--no-parse-special");
            let [model, text] = args.as_slice() else {
                return Err(usage.into());
            };
            let tokenizer = load(Path::new(model))?;
            let text = std::fs::read_to_string(text).map_err(|e| format!("{text}: {e}"))?;
            let ids = tokenizer
                .encode_with(&text, add_special, parse_special)
                .map_err(|e| e.to_string())?;
            println!("{}", serde_json::to_string(&ids).expect("ids serialize"));
            Ok(())
        }
        "check-hash" => {
            let [dir] = args.as_slice() else {
                return Err(usage.into());
            };
            let path = PathBuf::from(dir).join("tokenizer.json");
            let t = tokenizers::Tokenizer::from_file(&path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            println!("{}", check_text_hash(&t).map_err(|e| e.to_string())?);
            Ok(())
        }
        _ => Err(usage.into()),
    }
}

/// BASE's metadata with its tokenizer.* keys replaced by `ours`.
fn splice(base: &str, ours: Metadata) -> Result<Metadata, String> {
    let model = GgufModel::open(base).map_err(|e| e.to_string())?;
    if model.tensor_count() != 0 {
        return Err(format!(
            "{base}: --into takes a vocab-only file with no tensors"
        ));
    }
    let mut out = Metadata::new();
    let mut placed = false;
    for (key, value) in model.metadata().iter() {
        if key.starts_with("tokenizer.") {
            if !placed {
                for (k, v) in ours.iter() {
                    out.set(k, v.clone());
                }
                placed = true;
            }
        } else {
            out.set(key, value.clone());
        }
    }
    if !placed {
        for (k, v) in ours.iter() {
            out.set(k, v.clone());
        }
    }
    Ok(out)
}

fn load(model: &Path) -> Result<Tokenizer, String> {
    if model.is_dir() {
        Tokenizer::from_hf_dir(model).map_err(|e| e.to_string())
    } else {
        Tokenizer::from_gguf_file(model).map_err(|e| e.to_string())
    }
}
