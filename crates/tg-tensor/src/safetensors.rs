//! Reading and writing the safetensors format (`huggingface/safetensors`): an 8-byte
//! little-endian header length, a JSON header, then every tensor's bytes back to back.
//!
//! Writing streams: the header is computed first (every shape and dtype is known before a byte
//! of data is read), then each tensor is copied in chunks from its storage, so converting a
//! checkpoint larger than memory takes a few buffers of memory. The file appears under its
//! name only when complete (written beside it, then renamed).

use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;

use tg_archive::ReadAt;

use crate::checkpoint::{Checkpoint, Format, check_unique};
use crate::copy::{Copier, CopyError};
use crate::dtype::DType;
use crate::error::Error;
use crate::tensor::{Storage, Tensor};

/// The safetensors loaders' cap on the header (`MAX_HEADER_SIZE`).
pub const MAX_HEADER_SIZE: u64 = 100_000_000;
/// Metadata key with the format the transformers loader checks (`"pt"`).
pub const FORMAT_KEY: &str = "format";
/// Metadata key listing what could not be carried, as a JSON list of `{name, why}`.
pub const DROPPED_KEY: &str = "trainguard.dropped";
/// Bytes copied per read while writing.
const CHUNK: usize = 8 << 20;
/// The page size the data is laid out for.
const PAGE: u64 = 4096;

/// Keys this crate writes itself; checkpoint values with these names are not carried.
pub fn is_reserved_key(key: &str) -> bool {
    key == FORMAT_KEY || key.starts_with("trainguard.")
}

/// Writes `tensors` and the `metadata` (key, string) pairs as a safetensors file at `out`,
/// and returns the bytes of tensor data written. Nothing is left at `out` on error.
pub fn write(tensors: &[&Tensor], metadata: &[(String, String)], out: &Path) -> Result<u64, Error> {
    let mut header = String::from("{");
    header.push_str("\"__metadata__\":{");
    for (i, (k, v)) in metadata.iter().enumerate() {
        if i > 0 {
            header.push(',');
        }
        header.push_str(&json_str(k));
        header.push(':');
        header.push_str(&json_str(v));
    }
    header.push('}');
    // Data order: tensors whose size is a whole number of pages first, so that with a
    // page-aligned data start each of their copies lands on page boundaries (the kernel then
    // writes whole pages instead of splitting every page in two). Loaders read tensors by
    // offset; the order of the bytes is free (the reference `validate` only asks that the
    // offsets tile the data).
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by_key(|&i| !tensors[i].nbytes().is_multiple_of(PAGE));
    let mut offsets = vec![(0u64, 0u64); tensors.len()];
    let mut offset = 0u64;
    for &i in &order {
        let end = offset + tensors[i].nbytes();
        offsets[i] = (offset, end);
        offset = end;
    }
    for (t, (start, end)) in tensors.iter().zip(&offsets) {
        header.push(',');
        header.push_str(&json_str(t.name()));
        header.push_str(&format!(
            ":{{\"dtype\":\"{}\",\"shape\":{},\"data_offsets\":[{start},{end}]}}",
            t.dtype().safetensors_name(),
            serde_json::to_string(t.shape()).unwrap_or_default()
        ));
    }
    header.push('}');
    // Pad with spaces (JSON whitespace, as the reference writer pads to 8 bytes) so the data
    // starts on a page boundary: 8-byte aligned as loaders require, and page aligned for the
    // copies above and for loaders that map the file.
    let pad = (PAGE - (header.len() as u64 + 8) % PAGE) % PAGE;
    header.extend(std::iter::repeat_n(' ', pad as usize));
    if header.len() as u64 > MAX_HEADER_SIZE {
        return Err(Error::invalid(
            out,
            "safetensors header",
            "larger than 100 MB",
        ));
    }
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = output_temp(dir)?;
    let io = |e| Error::io(out, e);
    let mut file = tmp.as_file();
    let data_start = 8 + header.len() as u64;
    crate::copy::preallocate(file, data_start + offset).map_err(io)?;
    file.write_all(&(header.len() as u64).to_le_bytes())
        .map_err(io)?;
    file.write_all(header.as_bytes()).map_err(io)?;
    let mut buf = Vec::new();
    let mut copier = Copier::new();
    let mut written = 0u64;
    for t in order.iter().map(|&i| tensors[i]) {
        if let Some((src, start, len)) = t.file_region() {
            // Contiguous bytes of the checkpoint file: the kernel copies them, never this
            // process (see `copy`).
            let copied = copier
                .copy(src, start, len, file, data_start + written)
                .map_err(|e| match e {
                    CopyError::Read(e) => Error::io(t.checkpoint_path(), e),
                    CopyError::Write(e) => Error::io(out, e),
                })?;
            if copied != len {
                return Err(Error::invalid(
                    t.checkpoint_path(),
                    format!("tensor {}", t.name()),
                    format!("storage ended after {copied} of {len} bytes"),
                ));
            }
            written += len;
            continue;
        }
        if buf.is_empty() {
            buf = vec![0u8; CHUNK];
        }
        let mut r = t.reader();
        let mut left = t.nbytes();
        loop {
            let n = r.read(&mut buf)?;
            if n == 0 {
                break;
            }
            file.write_all(&buf[..n]).map_err(io)?;
            left -= n as u64;
        }
        debug_assert_eq!(left, 0);
        written += t.nbytes();
    }
    file.flush().map_err(io)?;
    tmp.persist(out).map_err(|e| Error::io(out, e.error))?;
    Ok(written)
}

/// A temporary file beside the output, created like an ordinary output file would be
/// (mode 0666 less the umask, not tempfile's 0600), renamed into place once complete.
pub(crate) fn output_temp(dir: &Path) -> Result<tempfile::NamedTempFile, Error> {
    use std::os::unix::fs::PermissionsExt as _;
    tempfile::Builder::new()
        .prefix(".trainguard-")
        .suffix(".tmp")
        .permissions(std::fs::Permissions::from_mode(0o666))
        .tempfile_in(dir)
        .map_err(|e| Error::io(dir, e))
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// Opens a safetensors file, validating the header the way the reference loader does
/// (`read_metadata` + `validate`): size caps, known dtypes, offsets that tile the data exactly.
pub(crate) fn open(path: &Path, src: Arc<dyn ReadAt + Send>) -> Result<Checkpoint, Error> {
    let bad = |why: String| Error::invalid(path, "safetensors header", why);
    let size = src.size();
    let mut n = [0u8; 8];
    src.read_exact_at(&mut n, 0)
        .map_err(|e| Error::io(path, e))?;
    let n = u64::from_le_bytes(n);
    if n > MAX_HEADER_SIZE || n.checked_add(8).is_none_or(|e| e > size) {
        return Err(bad(format!(
            "declares {n} bytes of header in a {size}-byte file"
        )));
    }
    let mut header = vec![0u8; n as usize];
    src.read_exact_at(&mut header, 8)
        .map_err(|e| Error::io(path, e))?;
    let json: serde_json::Value =
        serde_json::from_slice(&header).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    let serde_json::Value::Object(map) = json else {
        return Err(bad("not a JSON object".into()));
    };
    let data_start = 8 + n;
    let data_len = size - data_start;
    let shared_path = Arc::new(path.to_path_buf());
    let mut values = Vec::new();
    let mut dropped = Vec::new();
    let mut entries = Vec::new();
    for (name, info) in map {
        if name == "__metadata__" {
            let serde_json::Value::Object(meta) = info else {
                return Err(bad("__metadata__ is not an object".into()));
            };
            for (k, v) in meta {
                let serde_json::Value::String(v) = v else {
                    return Err(bad(format!("metadata {k} is not a string")));
                };
                if k == DROPPED_KEY {
                    if let Ok(list) = serde_json::from_str::<Vec<crate::Dropped>>(&v) {
                        dropped.extend(list);
                    }
                } else if !is_reserved_key(&k) {
                    values.push((k, v));
                }
            }
            continue;
        }
        let dtype = info
            .get("dtype")
            .and_then(|d| d.as_str())
            .ok_or_else(|| bad(format!("tensor {name} has no dtype")))?;
        let dtype = DType::from_safetensors_name(dtype)
            .ok_or_else(|| bad(format!("tensor {name} has unknown dtype {dtype}")))?;
        let shape: Vec<u64> = info
            .get("shape")
            .and_then(|s| serde_json::from_value(s.clone()).ok())
            .ok_or_else(|| bad(format!("tensor {name} has no valid shape")))?;
        let offs: [u64; 2] = info
            .get("data_offsets")
            .and_then(|s| serde_json::from_value(s.clone()).ok())
            .ok_or_else(|| bad(format!("tensor {name} has no valid data_offsets")))?;
        let nbytes = shape
            .iter()
            .try_fold(dtype.size() as u64, |a, &d| a.checked_mul(d))
            .ok_or_else(|| bad(format!("tensor {name}: size overflows")))?;
        if offs[1] < offs[0] || offs[1] - offs[0] != nbytes {
            return Err(bad(format!(
                "tensor {name}: data_offsets {offs:?} do not hold {nbytes} bytes"
            )));
        }
        entries.push((offs, name, dtype, shape));
    }
    entries.sort_by_key(|e| e.0);
    let mut at = 0;
    for (offs, name, ..) in &entries {
        if offs[0] != at {
            return Err(bad(format!(
                "tensor {name} does not start where the previous ends"
            )));
        }
        at = offs[1];
    }
    if at != data_len {
        return Err(bad(format!(
            "tensors hold {at} bytes but the file has {data_len} bytes of data"
        )));
    }
    let mut tensors = Vec::with_capacity(entries.len());
    for (offs, name, dtype, shape) in entries {
        let len = offs[1] - offs[0];
        let storage = Arc::new(Storage {
            src: Arc::clone(&src),
            base: data_start + offs[0],
            len,
            swap: 0,
            name: format!("bytes {}..{}", offs[0], offs[1]),
            path: Arc::clone(&shared_path),
        });
        let mut stride = vec![1u64; shape.len()];
        for i in (0..shape.len().saturating_sub(1)).rev() {
            stride[i] = stride[i + 1] * shape[i + 1];
        }
        tensors.push(Tensor::new(name, dtype, shape, stride, 0, storage)?);
    }
    check_unique(path, &tensors, &values)?;
    Ok(Checkpoint::from_parts(
        path.into(),
        Format::Safetensors,
        tensors,
        values,
        dropped,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(json: &str, data: usize) -> Vec<u8> {
        let mut f = (json.len() as u64).to_le_bytes().to_vec();
        f.extend_from_slice(json.as_bytes());
        f.extend(std::iter::repeat_n(0u8, data));
        f
    }

    fn open_bytes(bytes: Vec<u8>) -> Result<Checkpoint, Error> {
        open(Path::new("m.safetensors"), Arc::new(bytes))
    }

    #[test]
    fn headers_that_do_not_tile_the_data_are_refused() {
        let ok = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"__metadata__":{"format":"pt","step":"3"}}"#;
        let ck = open_bytes(header(ok, 8)).unwrap();
        assert_eq!(ck.tensors()[0].shape(), &[2]);
        assert_eq!(ck.values(), &[("step".to_string(), "3".to_string())]);
        for (json, data, why) in [
            (
                ok,
                12,
                "tensors hold 8 bytes but the file has 12 bytes of data",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
                8,
                "do not hold 12 bytes",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
                8,
                "does not start where the previous ends",
            ),
            (
                r#"{"a":{"dtype":"C64","shape":[1],"data_offsets":[0,8]}}"#,
                8,
                "unknown dtype C64",
            ),
            ("[1]", 0, "not a JSON object"),
        ] {
            let err = open_bytes(header(json, data)).unwrap_err().to_string();
            assert!(err.contains(why), "{err} lacks {why}");
        }
        let mut huge = u64::MAX.to_le_bytes().to_vec();
        huge.push(b'{');
        let err = open_bytes(huge).unwrap_err().to_string();
        assert!(err.contains("bytes of header"), "{err}");
    }

    #[test]
    fn written_files_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("in.safetensors");
        let data: Vec<u8> = (0u8..24).collect();
        let json = r#"{"w":{"dtype":"BF16","shape":[3,4],"data_offsets":[0,24]}}"#;
        let mut bytes = header(json, 0);
        bytes.extend_from_slice(&data);
        fs_err::write(&src, &bytes).unwrap();
        let ck = Checkpoint::open(&src).unwrap();
        let out = dir.path().join("out.safetensors");
        let meta = vec![("format".to_string(), "pt".to_string())];
        let n = write(&ck.tensors().iter().collect::<Vec<_>>(), &meta, &out).unwrap();
        assert_eq!(n, 24);
        let back = Checkpoint::open(&out).unwrap();
        assert_eq!(back.tensors()[0].dtype(), DType::BF16);
        let mut buf = vec![0u8; 64];
        let got = back.tensors()[0].reader().read(&mut buf).unwrap();
        assert_eq!(&buf[..got], data.as_slice());
        let raw = fs_err::read(&out).unwrap();
        let hlen = u64::from_le_bytes(raw[..8].try_into().unwrap()) as usize;
        assert_eq!((8 + hlen) % 8, 0, "data is 8-byte aligned");
    }
}
