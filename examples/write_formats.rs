//! Test driver for the interop suite: writes a GGUF file, a safetensors
//! file or folder, or an MLX folder from a JSON spec and raw tensor bytes,
//! through qforge's writers, so the reference readers (gguf-py,
//! safetensors, mlx) can check what they read against the inputs.
//!
//! Usage: `write_formats SPEC.json`. Spec:
//! ```json
//! {"format": "gguf" | "safetensors" | "mlx", "out": "path",
//!  "max_shard_bytes": 1000,                       // safetensors only
//!  "metadata": {"k": "v"},                        // safetensors __metadata__
//!  "config": {...},                               // mlx config.json
//!  "total_parameters": 512,                       // mlx index metadata
//!  "kv": [{"key": "k", "type": "u32", "value": 1},
//!         {"key": "a", "type": "array", "element_type": "string", "value": ["x"]}],
//!  "tensors": [{"name": "t", "file": "raw.bin",
//!               "ggml_type": "Q4_0", "dims": [32, 2],   // gguf
//!               "dtype": "F16", "shape": [2, 32]}]}     // safetensors, mlx
//! ```

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::PathBuf;

use qforge::formats::atomic::AtomicFile;
use qforge::formats::gguf::{Array, GgufWriter, Metadata, TensorSpec, Value, ValueType};
use qforge::formats::safetensors::{parse_dtype, write_file, write_model, StTensorSpec};
use quant_kernels::GgmlType;
use serde_json::Value as Json;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn value_type(name: &str) -> Result<ValueType> {
    (0..13)
        .filter_map(ValueType::from_id)
        .find(|t| t.name() == name)
        .ok_or_else(|| format!("unknown value type {name}").into())
}

fn scalar(t: ValueType, v: &Json) -> Result<Value> {
    let int = || v.as_i64().ok_or("expected an integer");
    let uint = || v.as_u64().ok_or("expected an unsigned integer");
    Ok(match t {
        ValueType::U8 => Value::U8(uint()?.try_into()?),
        ValueType::I8 => Value::I8(int()?.try_into()?),
        ValueType::U16 => Value::U16(uint()?.try_into()?),
        ValueType::I16 => Value::I16(int()?.try_into()?),
        ValueType::U32 => Value::U32(uint()?.try_into()?),
        ValueType::I32 => Value::I32(int()?.try_into()?),
        ValueType::U64 => Value::U64(uint()?),
        ValueType::I64 => Value::I64(int()?),
        ValueType::F32 => Value::F32(v.as_f64().ok_or("expected a float")? as f32),
        ValueType::F64 => Value::F64(v.as_f64().ok_or("expected a float")?),
        ValueType::Bool => Value::Bool(v.as_bool().ok_or("expected a bool")?),
        ValueType::String => Value::String(v.as_str().ok_or("expected a string")?.into()),
        ValueType::Array => return Err("arrays need element_type".into()),
    })
}

fn array(element_type: &str, values: &Json) -> Result<Array> {
    let et = value_type(element_type)?;
    let items = values.as_array().ok_or("array value must be a list")?;
    let mut out = Array::empty(et);
    for item in items {
        match (&mut out, et) {
            (Array::Array(v), _) => v.push(array(
                item["element_type"]
                    .as_str()
                    .ok_or("nested arrays need element_type")?,
                &item["value"],
            )?),
            (arr, t) => match (arr, scalar(t, item)?) {
                (Array::U8(v), Value::U8(x)) => v.push(x),
                (Array::I8(v), Value::I8(x)) => v.push(x),
                (Array::U16(v), Value::U16(x)) => v.push(x),
                (Array::I16(v), Value::I16(x)) => v.push(x),
                (Array::U32(v), Value::U32(x)) => v.push(x),
                (Array::I32(v), Value::I32(x)) => v.push(x),
                (Array::U64(v), Value::U64(x)) => v.push(x),
                (Array::I64(v), Value::I64(x)) => v.push(x),
                (Array::F32(v), Value::F32(x)) => v.push(x),
                (Array::F64(v), Value::F64(x)) => v.push(x),
                (Array::Bool(v), Value::Bool(x)) => v.push(x),
                (Array::String(v), Value::String(x)) => v.push(x),
                _ => unreachable!("scalar() returns the element type asked for"),
            },
        }
    }
    Ok(out)
}

fn main() -> Result<()> {
    let spec_path = PathBuf::from(
        std::env::args()
            .nth(1)
            .ok_or("usage: write_formats SPEC.json")?,
    );
    let spec: Json = serde_json::from_str(&std::fs::read_to_string(&spec_path)?)?;
    let out = PathBuf::from(spec["out"].as_str().ok_or("spec needs out")?);
    let tensors = spec["tensors"].as_array().cloned().unwrap_or_default();
    let read = |t: &Json| -> Result<Vec<u8>> {
        Ok(std::fs::read(
            t["file"].as_str().ok_or("tensor needs file")?,
        )?)
    };

    match spec["format"].as_str() {
        Some("gguf") => {
            let mut meta = Metadata::new();
            for kv in spec["kv"].as_array().cloned().unwrap_or_default() {
                let key = kv["key"].as_str().ok_or("kv needs key")?;
                let ty = kv["type"].as_str().ok_or("kv needs type")?;
                let value = if ty == "array" {
                    Value::Array(array(
                        kv["element_type"]
                            .as_str()
                            .ok_or("array needs element_type")?,
                        &kv["value"],
                    )?)
                } else {
                    scalar(value_type(ty)?, &kv["value"])?
                };
                meta.set(key, value);
            }
            let specs: Vec<TensorSpec> = tensors
                .iter()
                .map(|t| -> Result<TensorSpec> {
                    Ok(TensorSpec {
                        name: t["name"].as_str().ok_or("tensor needs name")?.into(),
                        dims: serde_json::from_value(t["dims"].clone())?,
                        ggml_type: GgmlType::from_name(
                            t["ggml_type"].as_str().ok_or("tensor needs ggml_type")?,
                        )
                        .ok_or("unknown ggml type")?,
                    })
                })
                .collect::<Result<_>>()?;
            let mut file = AtomicFile::create(&out)?;
            let mut w = GgufWriter::new(&mut file, 3, &meta, &specs)?;
            for (t, s) in tensors.iter().zip(&specs) {
                w.write_tensor(&s.name, &read(t)?)?;
            }
            w.finish()?;
            file.commit()?;
        }
        Some(format @ ("safetensors" | "mlx")) => {
            let specs: Vec<StTensorSpec> = tensors
                .iter()
                .map(|t| -> Result<StTensorSpec> {
                    Ok(StTensorSpec {
                        name: t["name"].as_str().ok_or("tensor needs name")?.into(),
                        dtype: parse_dtype(t["dtype"].as_str().ok_or("tensor needs dtype")?)
                            .ok_or("unknown dtype")?,
                        shape: serde_json::from_value(t["shape"].clone())?,
                    })
                })
                .collect::<Result<_>>()?;
            let files: BTreeMap<&str, &Json> = tensors
                .iter()
                .map(|t| (t["name"].as_str().unwrap_or_default(), t))
                .collect();
            let produce = |s: &StTensorSpec| -> qforge::formats::Result<Cow<'static, [u8]>> {
                let t = files[s.name.as_str()];
                let path = t["file"].as_str().unwrap_or_default();
                std::fs::read(path)
                    .map(Cow::Owned)
                    .map_err(|e| qforge::formats::FormatError::io(std::path::Path::new(path), e))
            };
            if format == "mlx" {
                let config = spec["config"]
                    .as_object()
                    .cloned()
                    .ok_or("mlx needs config")?;
                let folder = qforge::formats::mlx::MlxFolder {
                    config: &config,
                    total_parameters: spec["total_parameters"].as_u64().unwrap_or(0),
                    extra_files: &[],
                };
                qforge::formats::mlx::write_folder(&out, &folder, &specs, produce)?;
            } else {
                let metadata: Option<BTreeMap<String, String>> =
                    serde_json::from_value(spec["metadata"].clone())?;
                match spec["max_shard_bytes"].as_u64() {
                    Some(max) => {
                        std::fs::create_dir_all(&out)?;
                        write_model(&out, &specs, metadata.as_ref(), Some(max), produce)?;
                    }
                    None => write_file(&out, &specs, metadata.as_ref(), produce)?,
                }
            }
        }
        other => return Err(format!("unknown format {other:?}").into()),
    }
    Ok(())
}
