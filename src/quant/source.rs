//! What quantizing reads: a model seen as llama-quantize sees a GGUF file —
//! metadata keys, tensors with GGUF names, dims and types, and each
//! tensor's bytes on demand — whatever format it is stored in.
//!
//! A GGUF model is that already. A Hugging Face folder is seen through the
//! converter: the GGUF file convert_hf_to_gguf.py would write with
//! `--outtype auto` (the source's 16-bit type; norms and vectors in F32),
//! produced tensor by tensor in memory, never on disk. Quantizing that is
//! what `convert_hf_to_gguf.py` followed by `llama-quantize` gives.

use std::borrow::Cow;
use std::path::PathBuf;

use crate::convert::{
    gguf_metadata, materialize, plan_gguf as plan_conversion, GgufMetadataOptions, GgufOutType,
    ModelView, TensorPlan,
};
use crate::formats::error::{FormatError, Result};
use crate::formats::gguf::{GgufModel, Metadata};
use crate::formats::mmap::ReleasePages;

use super::plan::SourceTensor;

/// Where the writer gets each source tensor's bytes, in the type the
/// plan names as its `from`.
pub trait TensorSource: Sync {
    /// The bytes of source tensor `index` (borrowed from a mapped file, or
    /// made on the spot by a conversion).
    fn bytes(&self, index: usize) -> Result<Cow<'_, [u8]>>;
    /// The writer will not read `data` (a part of what [`Self::bytes`]
    /// returned) again: mapped pages under it may be dropped.
    fn release(&self, data: &[u8]);
}

/// A model ready to be planned and quantized.
pub struct QuantInput<'a> {
    /// Metadata as a GGUF file of the model holds it.
    pub metadata: Cow<'a, Metadata>,
    /// Its tensors, in file order.
    pub tensors: Vec<SourceTensor>,
    /// The files it was read from (their hashes go into the provenance).
    pub files: Vec<PathBuf>,
    /// The tensors' bytes.
    pub source: Box<dyn TensorSource + 'a>,
    /// What seeing the model as GGUF could not do exactly.
    pub warnings: Vec<String>,
}

/// The tensors of a GGUF model, straight from its mapped files.
struct GgufSource<'a> {
    model: &'a GgufModel,
    data: Vec<&'a [u8]>,
}

impl TensorSource for GgufSource<'_> {
    fn bytes(&self, index: usize) -> Result<Cow<'_, [u8]>> {
        Ok(Cow::Borrowed(self.data[index]))
    }

    fn release(&self, data: &[u8]) {
        self.model.release(data);
    }
}

impl<'a> QuantInput<'a> {
    /// A GGUF model (one file or a split set).
    pub fn gguf(model: &'a GgufModel) -> QuantInput<'a> {
        let mut tensors = Vec::with_capacity(model.tensor_count());
        for (split, file) in model.files().iter().enumerate() {
            for t in file.tensors() {
                tensors.push(SourceTensor {
                    name: t.name.clone(),
                    dims: t.dims.clone(),
                    ggml_type: t.ggml_type,
                    split,
                    offset: t.offset,
                });
            }
        }
        QuantInput {
            metadata: Cow::Borrowed(model.metadata()),
            tensors,
            files: model
                .files()
                .iter()
                .map(|f| f.path().to_path_buf())
                .collect(),
            source: Box::new(GgufSource {
                model,
                data: model.tensors().map(|(_, d)| d).collect(),
            }),
            warnings: Vec::new(),
        }
    }

    /// A model the converter reads (a Hugging Face folder), as the GGUF file
    /// `qforge convert --type auto` writes from it.
    pub fn view(
        view: &'a ModelView<'a>,
        tokenizer_pre: Option<&str>,
    ) -> std::result::Result<QuantInput<'a>, crate::convert::ConvertError> {
        let plan = plan_conversion(view, GgufOutType::Auto)?;
        let (metadata, notes) = gguf_metadata(
            view,
            &plan,
            &GgufMetadataOptions {
                model_name: None,
                tokenizer_pre,
                provenance: None,
            },
        )?;
        let mut tensors = Vec::with_capacity(plan.tensors.len());
        for (i, t) in plan.tensors.iter().enumerate() {
            let ggml_type = t.to.to_ggml().ok_or_else(|| {
                crate::convert::ConvertError::Unsupported(format!(
                    "{} is planned as {}, which has no ggml type",
                    t.name, t.to
                ))
            })?;
            tensors.push(SourceTensor {
                name: t.name.clone(),
                dims: t.gguf_dims(),
                ggml_type,
                split: 0,
                offset: i as u64,
            });
        }
        Ok(QuantInput {
            metadata: Cow::Owned(metadata),
            tensors,
            files: view.files.clone(),
            source: Box::new(ViewSource {
                view,
                plans: plan.tensors,
            }),
            warnings: notes.warnings,
        })
    }
}

/// Tensors converted on demand from a model view.
struct ViewSource<'v, 'a> {
    view: &'v ModelView<'a>,
    plans: Vec<TensorPlan>,
}

impl TensorSource for ViewSource<'_, '_> {
    fn bytes(&self, index: usize) -> Result<Cow<'_, [u8]>> {
        let plan = &self.plans[index];
        let made = materialize(self.view, plan, false)
            .map_err(|e| FormatError::other(e.to_string()).for_tensor(&plan.name))?;
        // The conversion copied what it needed out of the mapped source.
        self.view.release_source(plan);
        Ok(Cow::Owned(made.bytes))
    }

    fn release(&self, _: &[u8]) {}
}
