//! GGUF models from files: the input unpacks into a folder (see the
//! archive format in src/lib.rs), and the first file is opened as a model,
//! split sets included (`m-00001-of-00002.gguf` finds its siblings, checks
//! `split.*` keys and tensor counts across files). An opened model is read
//! tensor by tensor, merged into one file and split again, and each result
//! must read back as the same tensors. No file outside the folder may be
//! opened (a sibling symlink out of it is refused).
#![no_main]

use libfuzzer_sys::fuzz_target;
use qforge::formats::gguf::{merge_split, split_file, GgufModel, SplitBy};
use qforge_fuzz::{assert_inside, decode, unpack};

fn same_tensors(a: &GgufModel, b: &GgufModel) {
    assert_eq!(a.tensor_count(), b.tensor_count());
    for ((ta, da), (tb, db)) in a.tensors().zip(b.tensors()) {
        assert_eq!((&ta.name, &ta.dims, ta.ggml_type), (&tb.name, &tb.dims, tb.ggml_type));
        assert_eq!(da, db, "data of {}", ta.name);
    }
}

fuzz_target!(|data: &[u8]| {
    let entries = decode(data);
    let (dir, created) = unpack(&entries);
    let Some(first) = created.first() else {
        return;
    };
    let Ok(model) = GgufModel::open(first) else {
        return;
    };
    // The file the user names may be a symlink to anywhere (they chose
    // it); the siblings qforge finds by name must stay in the folder.
    for f in model.files().iter().filter(|f| f.path() != first.as_path()) {
        assert_inside(f.path(), &dir);
    }
    let bytes: usize = model.tensors().map(|(_, d)| d.len()).sum();
    assert!(bytes as u64 <= model.file_bytes());

    let out = dir.join("out");
    std::fs::create_dir(&out).unwrap();
    let merged = out.join("merged.gguf");
    merge_split(&model, &merged).expect("a model that opens merges");
    let reread = GgufModel::open(&merged).expect("a merged model opens");
    same_tensors(&model, &reread);

    let per_file = 1 + data.len() % 3;
    let parts = split_file(&model, &out.join("split"), SplitBy::Tensors(per_file))
        .expect("a model that opens splits");
    let resplit = GgufModel::open(&parts[0]).expect("a split set opens");
    same_tensors(&model, &resplit);
});
