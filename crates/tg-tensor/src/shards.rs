//! Sharded checkpoints as the hub lays them out: `pytorch_model-0000k-of-0000n.bin` with
//! `pytorch_model.bin.index.json`, converted to `model-0000k-of-0000n.safetensors` with
//! `model.safetensors.index.json` (what transformers reads), one shard at a time.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::checkpoint::Checkpoint;
use crate::convert::{self, Converted};
use crate::error::Error;

/// The index of a PyTorch sharded checkpoint.
pub const TORCH_INDEX: &str = "pytorch_model.bin.index.json";
/// A PyTorch checkpoint that is not sharded.
pub const TORCH_SINGLE: &str = "pytorch_model.bin";
/// The index of a safetensors sharded checkpoint.
pub const SAFETENSORS_INDEX: &str = "model.safetensors.index.json";
/// A safetensors checkpoint that is not sharded.
pub const SAFETENSORS_SINGLE: &str = "model.safetensors";
/// Largest index file read.
const MAX_INDEX_BYTES: u64 = 256 << 20;

/// One shard to convert.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Shard {
    /// The PyTorch shard.
    pub source: PathBuf,
    /// The safetensors file name it becomes.
    pub output_name: String,
    /// The tensors the index says it holds.
    pub listed: BTreeSet<String>,
}

/// What converting a directory will read and write.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Plan {
    /// The directory.
    pub dir: PathBuf,
    /// The shards, in index order.
    pub shards: Vec<Shard>,
    /// The index's `metadata` object, when there is an index.
    index_metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

/// What converting a directory wrote.
#[derive(Debug, Clone, serde::Serialize)]
#[non_exhaustive]
pub struct DirConverted {
    /// One entry per shard.
    pub shards: Vec<Converted>,
    /// The index written, when the input was sharded.
    pub index: Option<PathBuf>,
    /// Bytes of tensor data in all shards.
    pub total_size: u64,
}

struct Index {
    metadata: Option<serde_json::Map<String, serde_json::Value>>,
    weight_map: Vec<(String, String)>,
}

fn read_index(path: &Path) -> Result<Index, Error> {
    let bad = |why: String| Error::Index {
        path: path.into(),
        why,
    };
    let size = fs_err::metadata(path)
        .map_err(|e| Error::io(path, e))?
        .len();
    if size > MAX_INDEX_BYTES {
        return Err(bad(format!(
            "{size} bytes, more than the {MAX_INDEX_BYTES}-byte limit"
        )));
    }
    let text = fs_err::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    let Some(map) = json.get("weight_map").and_then(|m| m.as_object()) else {
        return Err(bad("no weight_map object".into()));
    };
    let mut weight_map = Vec::with_capacity(map.len());
    for (name, file) in map {
        let Some(file) = file.as_str() else {
            return Err(bad(format!("weight_map entry {name} is not a file name")));
        };
        if file.is_empty() || file.contains(['/', '\\', '\0']) || file == "." || file == ".." {
            return Err(bad(format!(
                "weight_map entry {name} names {file:?}, not a file in the directory"
            )));
        }
        weight_map.push((name.clone(), file.to_string()));
    }
    Ok(Index {
        metadata: json.get("metadata").and_then(|m| m.as_object()).cloned(),
        weight_map,
    })
}

/// `pytorch_model-00001-of-00002.bin` → `model-00001-of-00002.safetensors`.
fn output_name(file: &str) -> String {
    let stem = file.strip_suffix(".bin").unwrap_or(file);
    let stem = match stem.strip_prefix("pytorch_model") {
        Some(rest) => format!("model{rest}"),
        None => stem.to_string(),
    };
    format!("{stem}.safetensors")
}

/// Finds what to convert in `dir`: the shards of `pytorch_model.bin.index.json`, or a single
/// `pytorch_model.bin`.
pub fn plan(dir: &Path) -> Result<Plan, Error> {
    let index_path = dir.join(TORCH_INDEX);
    if index_path.is_file() {
        let index = read_index(&index_path)?;
        let mut files: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (name, file) in index.weight_map {
            files.entry(file).or_default().insert(name);
        }
        let mut shards = Vec::with_capacity(files.len());
        let mut outputs = BTreeSet::new();
        for (file, listed) in files {
            let source = dir.join(&file);
            if !source.is_file() {
                return Err(Error::Index {
                    path: index_path,
                    why: format!("shard {file} is missing"),
                });
            }
            let output_name = output_name(&file);
            if !outputs.insert(output_name.clone()) {
                return Err(Error::Index {
                    path: index_path,
                    why: format!("two shards would both become {output_name}"),
                });
            }
            shards.push(Shard {
                source,
                output_name,
                listed,
            });
        }
        return Ok(Plan {
            dir: dir.into(),
            shards,
            index_metadata: Some(index.metadata.unwrap_or_default()),
        });
    }
    let single = dir.join(TORCH_SINGLE);
    if single.is_file() {
        return Ok(Plan {
            dir: dir.into(),
            shards: vec![Shard {
                source: single,
                output_name: SAFETENSORS_SINGLE.into(),
                listed: BTreeSet::new(),
            }],
            index_metadata: None,
        });
    }
    Err(Error::Index {
        path: dir.into(),
        why: format!("no {TORCH_INDEX} or {TORCH_SINGLE} in the directory"),
    })
}

impl Plan {
    /// Converts every shard into `out_dir` (created if needed), one at a time, then writes
    /// `model.safetensors.index.json` when the input had an index.
    pub fn convert(&self, out_dir: &Path) -> Result<DirConverted, Error> {
        fs_err::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
        let mut shards = Vec::with_capacity(self.shards.len());
        let mut weight_map = BTreeMap::new();
        let mut total_size = 0u64;
        for shard in &self.shards {
            let ck = Checkpoint::open(&shard.source)?;
            let names: BTreeSet<&str> = ck.tensors().iter().map(|t| t.name()).collect();
            if let Some(missing) = shard.listed.iter().find(|n| !names.contains(n.as_str())) {
                return Err(Error::Index {
                    path: self.dir.join(TORCH_INDEX),
                    why: format!(
                        "tensor {missing} is listed in {} but not found there",
                        shard.source.display()
                    ),
                });
            }
            for t in ck.tensors() {
                if weight_map
                    .insert(t.name().to_string(), shard.output_name.clone())
                    .is_some()
                {
                    return Err(Error::DuplicateName {
                        path: shard.source.clone(),
                        name: t.name().to_string(),
                    });
                }
            }
            let done = convert::write_checkpoint(&ck, &out_dir.join(&shard.output_name))?;
            total_size += done.bytes;
            shards.push(done);
        }
        let index = match &self.index_metadata {
            None => None,
            Some(meta) => {
                let mut meta = meta.clone();
                meta.insert("total_size".into(), total_size.into());
                let json = serde_json::json!({ "metadata": meta, "weight_map": weight_map });
                let path = out_dir.join(SAFETENSORS_INDEX);
                let mut tmp =
                    tempfile::NamedTempFile::new_in(out_dir).map_err(|e| Error::io(out_dir, e))?;
                let text = serde_json::to_string_pretty(&json).unwrap_or_default();
                tmp.write_all(text.as_bytes())
                    .and_then(|()| tmp.write_all(b"\n"))
                    .map_err(|e| Error::io(&path, e))?;
                tmp.persist(&path).map_err(|e| Error::io(&path, e.error))?;
                Some(path)
            }
        };
        Ok(DirConverted {
            shards,
            index,
            total_size,
        })
    }
}

/// Opens every checkpoint of a model directory: the shards of `model.safetensors.index.json`
/// or `pytorch_model.bin.index.json`, else `model.safetensors` or `pytorch_model.bin`.
pub fn open_dir(dir: &Path) -> Result<Vec<Checkpoint>, Error> {
    for index in [SAFETENSORS_INDEX, TORCH_INDEX] {
        let path = dir.join(index);
        if path.is_file() {
            let idx = read_index(&path)?;
            let files: BTreeSet<String> = idx.weight_map.into_iter().map(|(_, f)| f).collect();
            return files
                .iter()
                .map(|f| Checkpoint::open(&dir.join(f)))
                .collect();
        }
    }
    for single in [SAFETENSORS_SINGLE, TORCH_SINGLE] {
        let path = dir.join(single);
        if path.is_file() {
            return Ok(vec![Checkpoint::open(&path)?]);
        }
    }
    Err(Error::Index {
        path: dir.into(),
        why: format!(
            "no {SAFETENSORS_INDEX}, {TORCH_INDEX}, {SAFETENSORS_SINGLE} or {TORCH_SINGLE} in the directory"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_names_follow_the_hub() {
        assert_eq!(
            output_name("pytorch_model-00001-of-00002.bin"),
            "model-00001-of-00002.safetensors"
        );
        assert_eq!(output_name("pytorch_model.bin"), "model.safetensors");
        assert_eq!(output_name("weights.pt"), "weights.pt.safetensors");
    }
}
