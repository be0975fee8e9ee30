//! Which stage calls make an artifact from the source: the one policy the
//! runner follows, kept in one function so it reads as a table.
//!
//! | source | artifact | steps |
//! | --- | --- | --- |
//! | HF folder | gguf F32/F16/BF16/Q8_0 | convert |
//! | HF folder | gguf other types | convert to an F16 GGUF (shared by the run's artifacts), quantize |
//! | GGUF | gguf of the source's own type | convert (rewrite with the manifest's metadata) |
//! | GGUF or MLX | gguf other types | quantize |
//! | any | mlx | convert (with bits/group size or recipe) |
//! | any | safetensors | convert |
//!
//! HF sources go through F16 first as llama.cpp's documented flow does
//! (convert_hf_to_gguf.py --outtype f16, then llama-quantize), so the bytes
//! can match llama-quantize's.

use serde_json::{json, Value as Json};

use super::schema::{ArtifactFormat, ArtifactSpec, Quantization};
use super::stages::{ConvertTarget, MlxQuant};
use crate::formats::ModelFormat;

/// A model a step reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepInput {
    /// The manifest's source.
    Source,
    /// A file an earlier step wrote into the run's work folder.
    Work(String),
}

/// Where a step writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepOutput {
    /// The artifact itself.
    Artifact,
    /// A file in the run's work folder, named so artifacts can share it.
    Work(String),
}

/// One stage call.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// A conversion.
    Convert {
        /// What it reads.
        input: StepInput,
        /// What it writes.
        output: StepOutput,
        /// Into which format.
        target: ConvertTarget,
    },
    /// A GGUF quantization.
    Quantize {
        /// What it reads.
        input: StepInput,
        /// What it writes.
        output: StepOutput,
        /// llama-quantize's type name.
        file_type: &'static str,
    },
}

impl Step {
    /// What the step writes.
    pub fn output(&self) -> &StepOutput {
        match self {
            Step::Convert { output, .. } | Step::Quantize { output, .. } => output,
        }
    }

    /// A few words for progress lines.
    pub fn describe(&self) -> String {
        let into = |o: &StepOutput| match o {
            StepOutput::Artifact => String::new(),
            StepOutput::Work(name) => format!(" (intermediate {name})"),
        };
        match self {
            Step::Convert { target, output, .. } => {
                let what = match target {
                    ConvertTarget::Gguf { outtype } => format!("converting to GGUF {outtype}"),
                    ConvertTarget::Mlx {
                        quantize: Some(MlxQuant::Affine { bits, group_size }),
                        ..
                    } => format!("converting to MLX {bits}-bit, group {group_size}"),
                    ConvertTarget::Mlx {
                        quantize: Some(MlxQuant::Recipe { recipe, group_size }),
                        ..
                    } => format!("converting to MLX with recipe {recipe}, group {group_size}"),
                    ConvertTarget::Mlx { .. } => "converting to MLX".to_string(),
                    ConvertTarget::Safetensors { .. } => "converting to safetensors".to_string(),
                };
                format!("{what}{}", into(output))
            }
            Step::Quantize {
                file_type, output, ..
            } => format!("quantizing to {file_type}{}", into(output)),
        }
    }

    /// The step as JSON, part of the artifact's settings (a change of
    /// policy rebuilds).
    pub fn to_json(&self) -> Json {
        let io = |i: &StepInput, o: &StepOutput| {
            (
                match i {
                    StepInput::Source => "source".to_string(),
                    StepInput::Work(n) => n.clone(),
                },
                match o {
                    StepOutput::Artifact => "artifact".to_string(),
                    StepOutput::Work(n) => n.clone(),
                },
            )
        };
        match self {
            Step::Convert {
                input,
                output,
                target,
            } => {
                let (i, o) = io(input, output);
                let target = match target {
                    ConvertTarget::Gguf { outtype } => json!({"gguf": outtype}),
                    ConvertTarget::Mlx { quantize, dtype } => {
                        let (bits, recipe, group_size) = match quantize {
                            Some(MlxQuant::Affine { bits, group_size }) => {
                                (Some(*bits), None, Some(*group_size))
                            }
                            Some(MlxQuant::Recipe { recipe, group_size }) => {
                                (None, Some(*recipe), Some(*group_size))
                            }
                            None => (None, None, None),
                        };
                        json!({"mlx": {
                            "bits": bits,
                            "recipe": recipe,
                            "group_size": group_size,
                            "dtype": dtype.map(|d| d.name()),
                        }})
                    }
                    ConvertTarget::Safetensors { dtype } => {
                        json!({"safetensors": {"dtype": dtype.map(|d| d.name())}})
                    }
                };
                json!({"convert": {"from": i, "to": o, "target": target}})
            }
            Step::Quantize {
                input,
                output,
                file_type,
            } => {
                let (i, o) = io(input, output);
                json!({"quantize": {"from": i, "to": o, "type": file_type}})
            }
        }
    }
}

/// GGUF types a conversion writes directly (convert_hf_to_gguf.py's
/// `--outtype`).
const CONVERT_OUTTYPES: &[&str] = &["F32", "F16", "BF16", "Q8_0"];

/// The steps that make `artifact` from a source of `source_format` whose
/// GGUF file type (for GGUF sources) is `source_file_type`.
pub fn plan(
    source_format: ModelFormat,
    source_file_type: Option<&str>,
    artifact: &ArtifactSpec,
) -> Vec<Step> {
    let artifact_out = StepOutput::Artifact;
    match (&artifact.quantization, artifact.format) {
        (Quantization::Gguf { file_type, .. }, _) => {
            let t: &'static str = file_type;
            match source_format {
                ModelFormat::Safetensors if CONVERT_OUTTYPES.contains(&t) => vec![Step::Convert {
                    input: StepInput::Source,
                    output: artifact_out,
                    target: ConvertTarget::Gguf { outtype: t },
                }],
                ModelFormat::Safetensors => {
                    let f16 = "source-F16.gguf".to_string();
                    vec![
                        Step::Convert {
                            input: StepInput::Source,
                            output: StepOutput::Work(f16.clone()),
                            target: ConvertTarget::Gguf { outtype: "F16" },
                        },
                        Step::Quantize {
                            input: StepInput::Work(f16),
                            output: artifact_out,
                            file_type: t,
                        },
                    ]
                }
                ModelFormat::Gguf
                    if source_file_type.is_some_and(|s| s.eq_ignore_ascii_case(t)) =>
                {
                    vec![Step::Convert {
                        input: StepInput::Source,
                        output: artifact_out,
                        target: ConvertTarget::Gguf { outtype: t },
                    }]
                }
                ModelFormat::Gguf | ModelFormat::Mlx => vec![Step::Quantize {
                    input: StepInput::Source,
                    output: artifact_out,
                    file_type: t,
                }],
            }
        }
        (Quantization::Mlx { bits, group_size }, _) => vec![Step::Convert {
            input: StepInput::Source,
            output: artifact_out,
            target: ConvertTarget::Mlx {
                quantize: Some(MlxQuant::Affine {
                    bits: *bits,
                    group_size: *group_size,
                }),
                dtype: artifact.dtype,
            },
        }],
        (Quantization::MlxRecipe { recipe, group_size }, _) => vec![Step::Convert {
            input: StepInput::Source,
            output: artifact_out,
            target: ConvertTarget::Mlx {
                quantize: Some(MlxQuant::Recipe {
                    recipe,
                    group_size: *group_size,
                }),
                dtype: artifact.dtype,
            },
        }],
        (Quantization::None, ArtifactFormat::Mlx) => vec![Step::Convert {
            input: StepInput::Source,
            output: artifact_out,
            target: ConvertTarget::Mlx {
                quantize: None,
                dtype: artifact.dtype,
            },
        }],
        (Quantization::None, _) => vec![Step::Convert {
            input: StepInput::Source,
            output: artifact_out,
            target: ConvertTarget::Safetensors {
                dtype: artifact.dtype,
            },
        }],
    }
}
