//! Opening a checkpoint: PyTorch zip, PyTorch legacy (multi-pickle) or safetensors, detected from
//! the bytes, never from the extension.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tg_archive::{METHOD_STORED, ReadAt, ZipArchive};
use tg_pickle::{Analysis, End, NoHook, Options, Value};

use crate::error::Error;
use crate::flatten::{self, Dropped};
use crate::rebuild::{self, StorageDecl};
use crate::safetensors;
use crate::tensor::{Storage, Tensor};

/// The container a checkpoint was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Format {
    /// `torch.save` since 1.6: a zip with `data.pkl` and `data/<key>` storages.
    TorchZip,
    /// `torch.save(..., _use_new_zipfile_serialization=False)`: pickles followed by storages.
    TorchLegacy,
    /// A safetensors file.
    Safetensors,
}

impl Format {
    /// A short name (`torch-zip`, `torch-legacy`, `safetensors`).
    pub fn as_str(self) -> &'static str {
        match self {
            Format::TorchZip => "torch-zip",
            Format::TorchLegacy => "torch-legacy",
            Format::Safetensors => "safetensors",
        }
    }
}

/// The tensors and values of one checkpoint file, read without executing anything. Storage
/// bytes stay in the file until a [`Tensor::reader`] asks for them.
#[derive(Debug)]
pub struct Checkpoint {
    path: PathBuf,
    format: Format,
    tensors: Vec<Tensor>,
    values: Vec<(String, String)>,
    dropped: Vec<Dropped>,
}

/// Legacy magic number (`torch.serialization.MAGIC_NUMBER`), as pickled: a LONG1 of 10 bytes.
const LEGACY_MAGIC: u128 = 0x1950a86a20f9469cfc6c;
/// Legacy protocol version (`PROTOCOL_VERSION`).
const LEGACY_PROTOCOL: i64 = 1001;
/// Largest pickle read from a checkpoint.
const MAX_PICKLE_BYTES: u64 = 1 << 30;

impl Checkpoint {
    /// Opens `path` and reconstructs every tensor and value in it.
    pub fn open(path: &Path) -> Result<Checkpoint, Error> {
        let file = tg_archive::SizedFile::open(path).map_err(|e| Error::io(path, e))?;
        let size = file.size();
        let mut head = [0u8; 9];
        let n = head.len().min(size as usize);
        file.read_exact_at(&mut head[..n], 0)
            .map_err(|e| Error::io(path, e))?;
        let head = &head[..n];
        let src: Arc<dyn ReadAt + Send> = Arc::new(file);
        if head.starts_with(b"PK\x03\x04") {
            return open_zip(path, src);
        }
        if head.len() == 9 && head[8] == b'{' {
            return safetensors::open(path, src);
        }
        if head.first() == Some(&0x80) {
            return open_legacy(path, src);
        }
        let mut ustar = [0u8; 5];
        if size > 262 && src.read_exact_at(&mut ustar, 257).is_ok() && &ustar == b"ustar" {
            return Err(Error::UnsupportedFormat {
                path: path.into(),
                why: "a tar checkpoint (torch < 0.1.10) is not supported".into(),
            });
        }
        Err(Error::UnsupportedFormat {
            path: path.into(),
            why: "not a PyTorch checkpoint or a safetensors file".into(),
        })
    }

    pub(crate) fn from_parts(
        path: PathBuf,
        format: Format,
        tensors: Vec<Tensor>,
        values: Vec<(String, String)>,
        dropped: Vec<Dropped>,
    ) -> Checkpoint {
        Checkpoint {
            path,
            format,
            tensors,
            values,
            dropped,
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The container format.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Every tensor, in checkpoint order, with its flattened name.
    pub fn tensors(&self) -> &[Tensor] {
        &self.tensors
    }

    /// Every non-tensor value with its flattened name, as JSON text (step counters,
    /// hyper-parameters; the metadata of a safetensors file).
    pub fn values(&self) -> &[(String, String)] {
        &self.values
    }

    /// What could not be carried (complex tensors, arbitrary objects, bytes, sets…).
    pub fn dropped(&self) -> &[Dropped] {
        &self.dropped
    }
}

fn options() -> Options {
    Options {
        complete: true,
        ..Options::default()
    }
}

fn stopped(path: &Path, stream: &str, a: &Analysis) -> Result<tg_pickle::Id, Error> {
    match &a.end {
        End::Stop { value, .. } => Ok(*value),
        End::Error { offset, message } => Err(Error::Pickle {
            path: path.into(),
            stream: stream.into(),
            why: format!("{message} at offset {offset}"),
        }),
        End::NeedMore => Err(Error::Pickle {
            path: path.into(),
            stream: stream.into(),
            why: "truncated".into(),
        }),
        End::Limit { offset, which } => Err(Error::Pickle {
            path: path.into(),
            stream: stream.into(),
            why: format!("limit on {which} reached at offset {offset}"),
        }),
    }
}

/// Turns the evaluated tree into tensors over `storages` (by key).
fn assemble(
    path: &Path,
    format: Format,
    root: rebuild::Node,
    storages: &BTreeMap<String, Arc<Storage>>,
) -> Result<Checkpoint, Error> {
    let flat = flatten::flatten(root);
    let mut tensors = Vec::with_capacity(flat.tensors.len());
    for (name, spec) in flat.tensors {
        let storage = storages.get(&spec.storage).ok_or_else(|| {
            Error::invalid(
                path,
                format!("tensor {name}"),
                format!("storage {} is missing", spec.storage),
            )
        })?;
        tensors.push(Tensor::new(
            name,
            spec.dtype,
            spec.shape,
            spec.stride,
            spec.offset,
            Arc::clone(storage),
        )?);
    }
    check_unique(path, &tensors, &flat.values)?;
    Ok(Checkpoint {
        path: path.into(),
        format,
        tensors,
        values: flat.values,
        dropped: flat.dropped,
    })
}

pub(crate) fn check_unique(
    path: &Path,
    tensors: &[Tensor],
    values: &[(String, String)],
) -> Result<(), Error> {
    let mut seen = std::collections::HashSet::new();
    for name in tensors
        .iter()
        .map(Tensor::name)
        .chain(values.iter().map(|(n, _)| n.as_str()))
    {
        if !seen.insert(name) {
            return Err(Error::DuplicateName {
                path: path.into(),
                name: name.into(),
            });
        }
    }
    Ok(())
}

fn storage_bytes(decl: &StorageDecl, path: &Path, key: &str) -> Result<u64, Error> {
    decl.numel
        .checked_mul(decl.dtype.size() as u64)
        .ok_or_else(|| Error::invalid(path, format!("storage {key}"), "size overflows"))
}

fn open_zip(path: &Path, src: Arc<dyn ReadAt + Send>) -> Result<Checkpoint, Error> {
    let zip =
        ZipArchive::open(&*src, tg_archive::Limits::default()).map_err(|e| Error::Archive {
            path: path.into(),
            source: e,
        })?;
    if zip.is_hostile() {
        return Err(Error::UnsupportedFormat {
            path: path.into(),
            why: "the archive is ambiguous (duplicate, overlapping or mismatched members)".into(),
        });
    }
    let archive_err = |e| Error::Archive {
        path: path.into(),
        source: e,
    };
    if zip.torch_record("constants.pkl").is_some() {
        return Err(Error::UnsupportedFormat {
            path: path.into(),
            why: "a TorchScript archive (torch.jit.save) is not a state dict".into(),
        });
    }
    let Some(pkl) = zip.torch_record("data.pkl") else {
        return Err(Error::UnsupportedFormat {
            path: path.into(),
            why: "a zip without <name>/data.pkl is not a PyTorch checkpoint".into(),
        });
    };
    let swap_wanted = match zip.torch_record("byteorder") {
        None => false,
        Some(e) => match zip.read_prefix(e, 16).map_err(archive_err)?.as_slice() {
            b"little" => false,
            b"big" => true,
            other => {
                return Err(Error::invalid(
                    path,
                    "byteorder record",
                    format!("unknown byte order {:?}", String::from_utf8_lossy(other)),
                ));
            }
        },
    };
    let bytes = zip.read(pkl).map_err(archive_err)?;
    let a = tg_pickle::analyze(&bytes, 0, &options(), &mut NoHook);
    let root = stopped(path, &pkl.name, &a)?;
    let rebuilt = rebuild::rebuild(&a.arena, &bytes, root, path, false)?;
    let shared_path = Arc::new(path.to_path_buf());
    let mut storages = BTreeMap::new();
    for (key, decl) in &rebuilt.storages {
        let nbytes = storage_bytes(decl, path, key)?;
        let Some(entry) = zip.torch_record(&format!("data/{key}")) else {
            return Err(Error::invalid(
                path,
                format!("storage {key}"),
                "no data/{key} member",
            ));
        };
        if entry.uncompressed_size != nbytes {
            return Err(Error::invalid(
                path,
                format!("storage {key}"),
                format!(
                    "member {} holds {} bytes but the pickle declares {nbytes}",
                    entry.name, entry.uncompressed_size
                ),
            ));
        }
        if entry.refused_by_miniz() || !entry.metadata_ok() {
            return Err(Error::invalid(
                path,
                format!("storage {key}"),
                format!("member {} cannot be read by torch", entry.name),
            ));
        }
        let (member_src, base): (Arc<dyn ReadAt + Send>, u64) = if entry.method == METHOD_STORED {
            let end = entry.data_offset.checked_add(nbytes);
            if entry.data_offset == 0 || end.is_none_or(|e| e > src.size()) {
                return Err(Error::invalid(
                    path,
                    format!("storage {key}"),
                    format!("member {} runs past the end of the file", entry.name),
                ));
            }
            (Arc::clone(&src), entry.data_offset)
        } else {
            (Arc::new(zip.read(entry).map_err(archive_err)?), 0)
        };
        let swap = if swap_wanted { decl.dtype.size() } else { 0 };
        storages.insert(
            key.clone(),
            Arc::new(Storage {
                src: member_src,
                base,
                len: nbytes,
                swap,
                name: entry.name.clone(),
                path: Arc::clone(&shared_path),
            }),
        );
    }
    assemble(path, Format::TorchZip, rebuilt.root, &storages)
}

/// `torch.serialization._legacy_load`: magic, protocol version and `sys_info` pickles, the
/// object pickle, the pickled list of storage keys, then for each key in that order an 8-byte
/// little-endian element count and the raw elements (always little-endian: torch swaps on
/// big-endian hosts when writing).
fn open_legacy(path: &Path, src: Arc<dyn ReadAt + Send>) -> Result<Checkpoint, Error> {
    let size = src.size();
    // The pickles sit at the start; grow the window until the key list has been read.
    let mut window = size.min(1 << 20);
    let (buf, root_analysis, root, keys_end, keys) = loop {
        let mut buf = vec![0u8; window as usize];
        src.read_exact_at(&mut buf, 0)
            .map_err(|e| Error::io(path, e))?;
        let complete = window == size;
        let opts = Options {
            complete,
            ..Options::default()
        };
        match legacy_streams(path, &buf, &opts) {
            Ok(Some(parsed)) => break (buf, parsed.0, parsed.1, parsed.2, parsed.3),
            Ok(None) if !complete && window < MAX_PICKLE_BYTES => {
                window = (window * 4).min(size).min(MAX_PICKLE_BYTES);
            }
            Ok(None) => {
                return Err(Error::Pickle {
                    path: path.into(),
                    stream: "legacy header".into(),
                    why: "truncated or larger than the limit".into(),
                });
            }
            Err(e) => return Err(e),
        }
    };
    let rebuilt = rebuild::rebuild(&root_analysis.arena, &buf, root, path, true)?;
    drop(buf);
    let shared_path = Arc::new(path.to_path_buf());
    let mut storages = BTreeMap::new();
    let mut at = keys_end;
    for key in keys {
        let decl = rebuilt.storages.get(&key).ok_or_else(|| {
            Error::invalid(
                path,
                format!("storage {key}"),
                "listed but never used by the pickle",
            )
        })?;
        let mut n = [0u8; 8];
        src.read_exact_at(&mut n, at)
            .map_err(|e| Error::io(path, e))?;
        let numel = u64::from_le_bytes(n);
        if numel != decl.numel {
            return Err(Error::invalid(
                path,
                format!("storage {key}"),
                format!(
                    "the file holds {numel} elements but the pickle declares {}",
                    decl.numel
                ),
            ));
        }
        let nbytes = storage_bytes(decl, path, &key)?;
        let base = at + 8;
        let end = base
            .checked_add(nbytes)
            .filter(|&e| e <= size)
            .ok_or_else(|| {
                Error::invalid(
                    path,
                    format!("storage {key}"),
                    "runs past the end of the file",
                )
            })?;
        if storages.contains_key(&key) {
            return Err(Error::invalid(
                path,
                format!("storage {key}"),
                "listed twice",
            ));
        }
        storages.insert(
            key.clone(),
            Arc::new(Storage {
                src: Arc::clone(&src),
                base,
                len: nbytes,
                swap: 0,
                name: format!("storage {key} at offset {base}"),
                path: Arc::clone(&shared_path),
            }),
        );
        at = end;
    }
    for key in rebuilt.storages.keys() {
        if !storages.contains_key(key) {
            return Err(Error::invalid(
                path,
                format!("storage {key}"),
                "not in the file's storage list",
            ));
        }
    }
    assemble(path, Format::TorchLegacy, rebuilt.root, &storages)
}

type LegacyParsed = (Analysis, tg_pickle::Id, u64, Vec<String>);

/// Parses the five legacy pickles; `Ok(None)` when the buffer ends too early.
fn legacy_streams(path: &Path, buf: &[u8], opts: &Options) -> Result<Option<LegacyParsed>, Error> {
    let mut at = 0usize;
    let next = |what: &str, at: &mut usize| -> Result<Option<Analysis>, Error> {
        let a = tg_pickle::analyze(buf, *at, opts, &mut NoHook);
        if matches!(a.end, End::NeedMore) {
            return Ok(None);
        }
        stopped(path, what, &a)?;
        *at = a.consumed as usize;
        Ok(Some(a))
    };
    let Some(magic) = next("magic number", &mut at)? else {
        return Ok(None);
    };
    let magic_ok = matches!(&magic.end, End::Stop { value, .. } if match magic.arena.get(*value) {
        Value::BigInt(b) if b.len() <= 16 => {
            let mut le = [0u8; 16];
            le[..b.len()].copy_from_slice(b);
            u128::from_le_bytes(le) == LEGACY_MAGIC
        }
        _ => false,
    });
    if !magic_ok {
        return Err(Error::UnsupportedFormat {
            path: path.into(),
            why: "a pickle that is not a PyTorch checkpoint (no torch magic number)".into(),
        });
    }
    let Some(proto) = next("protocol version", &mut at)? else {
        return Ok(None);
    };
    if !matches!(&proto.end, End::Stop { value, .. } if proto.arena.as_int(*value) == Some(LEGACY_PROTOCOL))
    {
        return Err(Error::UnsupportedFormat {
            path: path.into(),
            why: "unknown legacy protocol version".into(),
        });
    }
    if next("sys_info", &mut at)?.is_none() {
        return Ok(None);
    }
    let Some(main) = next("object pickle", &mut at)? else {
        return Ok(None);
    };
    let Some(keys) = next("storage keys", &mut at)? else {
        return Ok(None);
    };
    let root = stopped(path, "object pickle", &main)?;
    let list = stopped(path, "storage keys", &keys)?;
    let Value::List(items) = keys.arena.get(list) else {
        return Err(Error::invalid(path, "storage keys", "not a list"));
    };
    let mut names = Vec::with_capacity(items.len());
    for &k in items {
        match keys.arena.get(k) {
            Value::Str(s) => names.push(s.clone()),
            Value::Int(i) => names.push(i.to_string()),
            _ => {
                return Err(Error::invalid(
                    path,
                    "storage keys",
                    "a key is not a string",
                ));
            }
        }
    }
    Ok(Some((main, root, at as u64, names)))
}
