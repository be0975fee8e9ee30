//! Reader of the "qgold" golden files written by
//! fixtures/golden/mlx/generate.py (format described there).

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use quant_kernels::mlx::ScaleBuf;

/// fixtures/golden/mlx in the workspace.
pub fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/golden/mlx")
}

/// One array of a golden file.
pub struct Tensor {
    pub dtype: String,
    pub bytes: Vec<u8>,
}

impl Tensor {
    pub fn as_u32(&self) -> Vec<u32> {
        assert_eq!(self.dtype, "uint32");
        self.bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    pub fn as_u16(&self) -> Vec<u16> {
        assert!(self.dtype == "float16" || self.dtype == "bfloat16");
        self.bytes
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    pub fn as_f32(&self) -> Vec<f32> {
        assert_eq!(self.dtype, "float32");
        self.bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    /// Any float dtype widened to f32 (exactly).
    pub fn as_f32_widened(&self) -> Vec<f32> {
        match self.dtype.as_str() {
            "float32" => self.as_f32(),
            "float16" => self
                .as_u16()
                .into_iter()
                .map(|b| f16::from_bits(b).to_f32())
                .collect(),
            "bfloat16" => self
                .as_u16()
                .into_iter()
                .map(|b| bf16::from_bits(b).to_f32())
                .collect(),
            other => panic!("{other} is not a float dtype"),
        }
    }

    pub fn as_scale_buf(&self) -> ScaleBuf {
        match self.dtype.as_str() {
            "float32" => ScaleBuf::F32(self.as_f32()),
            "float16" => ScaleBuf::F16(self.as_u16().into_iter().map(f16::from_bits).collect()),
            "bfloat16" => ScaleBuf::BF16(self.as_u16().into_iter().map(bf16::from_bits).collect()),
            "uint8" => ScaleBuf::U8(self.bytes.clone()),
            other => panic!("{other} scales"),
        }
    }
}

/// A parsed golden file.
pub struct Golden {
    pub path: PathBuf,
    pub meta: HashMap<String, String>,
    pub tensors: HashMap<String, Tensor>,
}

impl Golden {
    pub fn tensor(&self, name: &str) -> &Tensor {
        self.try_tensor(name)
            .unwrap_or_else(|| panic!("{} has no tensor {name}", self.path.display()))
    }

    pub fn try_tensor(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    pub fn scales(&self, name: &str) -> ScaleBuf {
        self.tensor(name).as_scale_buf()
    }

    pub fn meta(&self, key: &str) -> &str {
        self.try_meta(key)
            .unwrap_or_else(|| panic!("{} has no meta {key}", self.path.display()))
    }

    pub fn try_meta(&self, key: &str) -> Option<&str> {
        self.meta.get(key).map(String::as_str)
    }

    pub fn meta_usize(&self, key: &str) -> usize {
        self.meta(key).parse().unwrap()
    }
}

fn line<'a>(data: &'a [u8], pos: &mut usize) -> &'a str {
    let end = data[*pos..]
        .iter()
        .position(|&b| b == b'\n')
        .expect("unterminated line")
        + *pos;
    let s = std::str::from_utf8(&data[*pos..end]).expect("header lines are UTF-8");
    *pos = end + 1;
    s
}

/// Reads a golden file; panics with the path on any format error.
pub fn load(path: &Path) -> Golden {
    let data = std::fs::read(path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run fixtures/golden/mlx/generate.py)",
            path.display()
        )
    });
    let mut pos = 0;
    assert_eq!(line(&data, &mut pos), "qgold 1", "{}", path.display());
    let meta_line = line(&data, &mut pos);
    let meta = meta_line
        .strip_prefix("meta")
        .expect("meta line")
        .split_whitespace()
        .map(|kv| {
            let (k, v) = kv.split_once('=').expect("key=value");
            (k.to_string(), v.to_string())
        })
        .collect();
    let mut tensors = HashMap::new();
    loop {
        let l = line(&data, &mut pos);
        if l == "end" {
            break;
        }
        let parts: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(parts.len(), 4, "{}: bad line {l:?}", path.display());
        assert_eq!(parts[0], "tensor");
        let elem = match parts[2] {
            "float32" | "uint32" => 4,
            "float16" | "bfloat16" => 2,
            "uint8" => 1,
            other => panic!("unknown dtype {other}"),
        };
        let n: usize = parts[3].parse().unwrap();
        let bytes = data[pos..pos + n * elem].to_vec();
        pos += n * elem;
        tensors.insert(
            parts[1].to_string(),
            Tensor {
                dtype: parts[2].to_string(),
                bytes,
            },
        );
    }
    assert_eq!(pos, data.len(), "{}: trailing bytes", path.display());
    Golden {
        path: path.to_path_buf(),
        meta,
        tensors,
    }
}
