//! Size facts of an artifact on disk: tensor bytes and weights, for the
//! report's bits per weight.

use std::collections::HashSet;
use std::path::Path;

use crate::formats::gguf::GgufModel;
use crate::formats::mlx::MlxModel;
use crate::formats::safetensors::SafetensorsModel;
use crate::formats::{detect, ModelFormat, Result};

/// Bits per weight of the model at `path`: tensor data bits over tensor
/// elements, with an MLX layer's packed weight, scales and biases counted
/// as its unpacked matrix.
pub fn bits_per_weight(path: &Path) -> Result<f64> {
    let (bytes, elements) = match detect(path)? {
        ModelFormat::Gguf => {
            let m = GgufModel::open(path)?;
            m.tensors().fold((0u64, 0u64), |(b, e), (t, _)| {
                (b + t.size, e + t.n_elements())
            })
        }
        ModelFormat::Safetensors => {
            let m = SafetensorsModel::open(path)?;
            m.tensors()
                .fold((0, 0), |(b, e), (t, _)| (b + t.size(), e + t.n_elements()))
        }
        ModelFormat::Mlx => {
            let m = MlxModel::open(path)?;
            let layers = m.quantized_layers()?;
            let mut packed: HashSet<&str> = HashSet::new();
            let (mut bytes, mut elements) = (0u64, 0u64);
            for l in &layers {
                for t in [l.weight, l.scales, l.biases] {
                    packed.insert(t.name.as_str());
                    bytes += t.size();
                }
                elements += l.rows * l.cols;
            }
            for (t, _) in m.tensors().tensors() {
                if !packed.contains(t.name.as_str()) {
                    bytes += t.size();
                    elements += t.n_elements();
                }
            }
            (bytes, elements)
        }
    };
    Ok(if elements == 0 {
        0.0
    } else {
        bytes as f64 * 8.0 / elements as f64
    })
}
