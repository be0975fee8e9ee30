//! Model folders from files: the input unpacks into a folder (see the
//! archive format in src/lib.rs) holding any of config.json,
//! model.safetensors.index.json, shards and symlinks, and the folder is
//! read the way `qforge inspect` and `convert` read it: format detection,
//! the safetensors folder reader (index, shard names, tensor views), the
//! MLX reader (config.json's quantization block checked against the packed
//! tensors) and the tokenizer side files. No file outside the folder may
//! be opened.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qforge::formats::detect;
use qforge::formats::mlx::MlxModel;
use qforge::formats::safetensors::SafetensorsModel;
use qforge::tokenizer::HfTokenizerFiles;
use qforge_fuzz::{assert_inside, decode, unpack};

fn read_all(model: &SafetensorsModel, dir: &std::path::Path) {
    for f in model.files() {
        assert_inside(f.path(), dir);
    }
    let mut n = 0;
    for (t, data) in model.tensors() {
        assert_eq!(data.len() as u64, t.size());
        assert!(model.tensor(&t.name).is_some());
        n += 1;
    }
    assert_eq!(n, model.tensor_count());
}

fuzz_target!(|data: &[u8]| {
    let (dir, _) = unpack(&decode(data));
    let _ = detect(&dir);
    if let Ok(model) = SafetensorsModel::open(&dir) {
        read_all(&model, &dir);
    }
    if let Ok(model) = MlxModel::open(&dir) {
        read_all(model.tensors(), &dir);
        let layers = model.quantized_layers().expect("checked when opened");
        for l in layers {
            assert!(model.tensors().tensor(&format!("{}.weight", l.path)).is_some());
        }
    }
    let _ = HfTokenizerFiles::read(&dir);
});
