//! Checkpoint → safetensors, without executing the checkpoint.

use std::path::{Path, PathBuf};

use crate::checkpoint::Checkpoint;
use crate::error::Error;
use crate::flatten::Dropped;
use crate::safetensors::{self, DROPPED_KEY, FORMAT_KEY, is_reserved_key};

/// What one conversion wrote.
#[derive(Debug, Clone, serde::Serialize)]
#[non_exhaustive]
pub struct Converted {
    /// The checkpoint read.
    pub input: PathBuf,
    /// The safetensors file written.
    pub output: PathBuf,
    /// The flattened names of the tensors written, in file order.
    pub tensors: Vec<String>,
    /// Bytes of tensor data written.
    pub bytes: u64,
    /// Non-tensor values carried in `__metadata__` (as JSON text).
    pub values: usize,
    /// What could not be carried; also listed under `trainguard.dropped` in the metadata.
    pub dropped: Vec<Dropped>,
}

/// Converts the checkpoint at `input` (PyTorch zip or legacy, or safetensors) into a
/// safetensors file at `output`. Nothing is written at `output` if anything fails.
pub fn convert_file(input: &Path, output: &Path) -> Result<Converted, Error> {
    let ck = Checkpoint::open(input)?;
    write_checkpoint(&ck, output)
}

/// Writes an opened checkpoint as safetensors: tensors in checkpoint order, each materialised
/// contiguously (views and tensors that shared a storage are copied apart); `__metadata__`
/// holds `format: pt` (which transformers checks), every non-tensor value under its flattened
/// name as JSON text, and `trainguard.dropped` listing what could not be carried.
pub fn write_checkpoint(ck: &Checkpoint, output: &Path) -> Result<Converted, Error> {
    let mut dropped = ck.dropped().to_vec();
    let mut metadata = vec![(FORMAT_KEY.to_string(), "pt".to_string())];
    for (k, v) in ck.values() {
        if is_reserved_key(k) {
            dropped.push(Dropped {
                name: k.clone(),
                why: format!("a value named like a reserved metadata key ({v})"),
            });
        } else {
            metadata.push((k.clone(), v.clone()));
        }
    }
    if !dropped.is_empty() {
        metadata.push((
            DROPPED_KEY.to_string(),
            serde_json::to_string(&dropped).unwrap_or_default(),
        ));
    }
    let tensors: Vec<_> = ck.tensors().iter().collect();
    let bytes = safetensors::write(&tensors, &metadata, output)?;
    Ok(Converted {
        input: ck.path().to_path_buf(),
        output: output.to_path_buf(),
        tensors: tensors.iter().map(|t| t.name().to_string()).collect(),
        bytes,
        values: ck.values().len(),
        dropped,
    })
}
