//! Tensors as views on storage bytes that stay in the file, and a reader that materialises a
//! view in row-major order, chunk by chunk, in bounded memory.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tg_archive::ReadAt;

use crate::dtype::DType;
use crate::error::Error;

/// Where one storage's bytes are: `len` bytes at `base` in `src`, never loaded as a whole.
pub(crate) struct Storage {
    /// The file (or, for a compressed archive member, its inflated bytes).
    pub(crate) src: Arc<dyn ReadAt + Send>,
    /// Offset of the first byte in `src`.
    pub(crate) base: u64,
    /// Length in bytes.
    pub(crate) len: u64,
    /// Swap each group of this many bytes to get little-endian elements (0 or 1: none).
    pub(crate) swap: usize,
    /// The archive member or file region, for messages.
    pub(crate) name: String,
    /// The checkpoint file, for messages.
    pub(crate) path: Arc<PathBuf>,
}

impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Storage")
            .field("name", &self.name)
            .field("base", &self.base)
            .field("len", &self.len)
            .field("swap", &self.swap)
            .finish_non_exhaustive()
    }
}

/// One named tensor of a checkpoint: a dtype, a shape, and a strided view on a storage.
#[derive(Debug, Clone)]
pub struct Tensor {
    name: String,
    dtype: DType,
    shape: Vec<u64>,
    stride: Vec<u64>,
    /// First element, in elements of `dtype`.
    offset: u64,
    storage: Arc<Storage>,
}

/// Largest span of storage a strided (non-contiguous) view reads into memory at once; larger
/// views are gathered run by run with positioned reads.
pub const DEFAULT_GATHER_BUDGET: u64 = 256 << 20;

impl Tensor {
    /// A view, checked against its storage: every element it addresses must lie inside it.
    pub(crate) fn new(
        name: String,
        dtype: DType,
        shape: Vec<u64>,
        stride: Vec<u64>,
        offset: u64,
        storage: Arc<Storage>,
    ) -> Result<Tensor, Error> {
        let bad =
            |why: String| Error::invalid(storage.path.as_path(), format!("tensor {name}"), why);
        if shape.len() != stride.len() {
            return Err(bad(format!(
                "size has {} dimensions but stride has {}",
                shape.len(),
                stride.len()
            )));
        }
        if storage.swap > 1 && storage.swap != dtype.size() {
            return Err(bad(format!(
                "{} elements on a big-endian storage of {}-byte elements",
                dtype.torch_name(),
                storage.swap
            )));
        }
        let numel = shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| bad("element count overflows".into()))?;
        if numel > 0 {
            let mut last = offset;
            for (&d, &s) in shape.iter().zip(&stride) {
                last = (d - 1)
                    .checked_mul(s)
                    .and_then(|x| x.checked_add(last))
                    .ok_or_else(|| bad("view extent overflows".into()))?;
            }
            let end = last
                .checked_add(1)
                .and_then(|x| x.checked_mul(dtype.size() as u64))
                .ok_or_else(|| bad("view extent overflows".into()))?;
            if end > storage.len {
                return Err(bad(format!(
                    "the view reaches byte {end} of storage {} which holds {} bytes",
                    storage.name, storage.len
                )));
            }
        }
        Ok(Tensor {
            name,
            dtype,
            shape,
            stride,
            offset,
            storage,
        })
    }

    /// The flattened name (`encoder.layer.0.weight`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The shape.
    pub fn shape(&self) -> &[u64] {
        &self.shape
    }

    /// Number of elements.
    pub fn numel(&self) -> u64 {
        // Checked in `new`.
        self.shape.iter().product()
    }

    /// Bytes of the materialised tensor.
    pub fn nbytes(&self) -> u64 {
        self.numel() * self.dtype.size() as u64
    }

    /// The archive member or file region holding the storage.
    pub fn storage_name(&self) -> &str {
        &self.storage.name
    }

    /// Whether the view is row-major contiguous (one positioned read copies it).
    pub fn is_contiguous(&self) -> bool {
        self.run_len() == self.numel()
    }

    /// How many trailing dimensions form one contiguous row-major run, and its length.
    fn run_dims(&self) -> (usize, u64) {
        let mut run = 1u64;
        let mut dims = 0;
        for (&d, &s) in self.shape.iter().zip(&self.stride).rev() {
            if d != 1 && s != run {
                break;
            }
            run *= d;
            dims += 1;
        }
        (dims, run)
    }

    fn run_len(&self) -> u64 {
        self.run_dims().1
    }

    /// A reader of the row-major little-endian bytes of this tensor.
    pub fn reader(&self) -> TensorReader<'_> {
        self.reader_with_budget(DEFAULT_GATHER_BUDGET)
    }

    /// Like [`Tensor::reader`], with the most bytes a strided view may read at once.
    pub fn reader_with_budget(&self, gather_budget: u64) -> TensorReader<'_> {
        TensorReader {
            t: self,
            run: self.run_dims().1.max(1),
            outer: self.shape.len() - self.run_dims().0,
            next: 0,
            numel: self.numel(),
            span: None,
            gather_budget,
        }
    }

    fn path(&self) -> &Path {
        self.storage.path.as_path()
    }

    /// The checkpoint file holding this tensor, for messages.
    pub(crate) fn checkpoint_path(&self) -> &Path {
        self.path()
    }

    /// For a contiguous little-endian tensor whose bytes sit in the checkpoint file itself (a
    /// stored zip member, a legacy storage, a safetensors region): the file, the byte offset
    /// and the length, so the writer can let the kernel copy them.
    pub(crate) fn file_region(&self) -> Option<(&std::fs::File, u64, u64)> {
        if !self.is_contiguous() || self.storage.swap > 1 {
            return None;
        }
        let file = self.storage.src.as_file()?;
        let es = self.dtype.size() as u64;
        let start = self
            .storage
            .base
            .checked_add(self.offset.checked_mul(es)?)?;
        Some((file, start, self.nbytes()))
    }
}

/// Produces a tensor's elements in row-major order as little-endian bytes.
#[derive(Debug)]
pub struct TensorReader<'a> {
    t: &'a Tensor,
    run: u64,
    /// Dimensions outside the run.
    outer: usize,
    next: u64,
    numel: u64,
    /// A strided view's whole storage span, once read: (first byte, bytes).
    span: Option<(u64, Vec<u8>)>,
    gather_budget: u64,
}

impl TensorReader<'_> {
    /// Fills the start of `buf` with the next whole elements and returns how many bytes it
    /// wrote; `0` once every element was produced. `buf` must hold at least one element.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        let t = self.t;
        let es = t.dtype.size() as u64;
        let cap = buf.len() as u64 / es;
        if cap == 0 && self.next < self.numel {
            return Err(Error::invalid(
                t.path(),
                format!("tensor {}", t.name),
                "read buffer smaller than one element",
            ));
        }
        if !t.is_contiguous() && self.span.is_none() && self.next < self.numel {
            self.load_span()?;
        }
        let mut produced = 0u64;
        while produced < cap && self.next < self.numel {
            let run_index = self.next / self.run;
            let in_run = self.next % self.run;
            let n = (self.run - in_run).min(cap - produced);
            let first = self.run_start(run_index) + in_run;
            let dst = &mut buf[(produced * es) as usize..((produced + n) * es) as usize];
            self.fetch(first * es, dst)?;
            self.next += n;
            produced += n;
        }
        let bytes = (produced * es) as usize;
        if t.storage.swap > 1 {
            for el in buf[..bytes].chunks_exact_mut(t.storage.swap) {
                el.reverse();
            }
        }
        Ok(bytes)
    }

    /// Storage element index of the first element of run `r` (row-major over the outer dims).
    fn run_start(&self, mut r: u64) -> u64 {
        let t = self.t;
        let mut at = t.offset;
        for (&d, &s) in t.shape[..self.outer].iter().zip(&t.stride).rev() {
            at += (r % d) * s;
            r /= d;
        }
        at
    }

    /// Reads the view's storage span in one go when it fits the budget.
    fn load_span(&mut self) -> Result<(), Error> {
        let t = self.t;
        let es = t.dtype.size() as u64;
        let mut last = t.offset;
        for (&d, &s) in t.shape.iter().zip(&t.stride) {
            last += (d - 1) * s;
        }
        let (start, end) = (t.offset * es, (last + 1) * es);
        if end - start <= self.gather_budget {
            let mut bytes = vec![0u8; (end - start) as usize];
            read_storage(&t.storage, start, &mut bytes)?;
            self.span = Some((start, bytes));
        } else {
            self.span = Some((0, Vec::new()));
        }
        Ok(())
    }

    fn fetch(&self, byte_offset: u64, dst: &mut [u8]) -> Result<(), Error> {
        if let Some((start, bytes)) = &self.span
            && !bytes.is_empty()
        {
            let from = (byte_offset - start) as usize;
            dst.copy_from_slice(&bytes[from..from + dst.len()]);
            return Ok(());
        }
        read_storage(&self.t.storage, byte_offset, dst)
    }
}

fn read_storage(s: &Storage, offset: u64, dst: &mut [u8]) -> Result<(), Error> {
    s.src
        .read_exact_at(dst, s.base + offset)
        .map_err(|e| Error::io(s.path.as_path(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage(bytes: Vec<u8>, swap: usize) -> Arc<Storage> {
        Arc::new(Storage {
            len: bytes.len() as u64,
            src: Arc::new(bytes),
            base: 0,
            swap,
            name: "data/0".into(),
            path: Arc::new(PathBuf::from("t.pt")),
        })
    }

    /// Storage of `n` little-endian u16 elements 0..n.
    fn counting(n: u16) -> Arc<Storage> {
        storage((0..n).flat_map(u16::to_le_bytes).collect(), 0)
    }

    fn read_all(t: &Tensor, buf_elems: usize, budget: u64) -> Vec<u16> {
        let mut r = t.reader_with_budget(budget);
        let mut buf = vec![0u8; buf_elems * 2];
        let mut out = Vec::new();
        loop {
            let n = r.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            out.extend(
                buf[..n]
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]])),
            );
        }
        out
    }

    #[test]
    fn strided_views_read_in_row_major_order_whatever_the_chunk() {
        // A 3x4 matrix 0..12 transposed (4x3, strides (1, 4)), offset by one element.
        let t = Tensor::new(
            "t".into(),
            DType::U16,
            vec![4, 3],
            vec![1, 4],
            1,
            counting(13),
        )
        .unwrap();
        assert!(!t.is_contiguous());
        let want = vec![1, 5, 9, 2, 6, 10, 3, 7, 11, 4, 8, 12];
        for chunk in [1, 2, 5, 64] {
            // In memory (span gathered) and run by run (no budget).
            assert_eq!(read_all(&t, chunk, DEFAULT_GATHER_BUDGET), want);
            assert_eq!(read_all(&t, chunk, 0), want);
        }
        // Slicing with a step: x[::2, 1::2] of a 4x4 matrix, and a size-1 dimension.
        let t = Tensor::new(
            "s".into(),
            DType::U16,
            vec![2, 1, 2],
            vec![8, 99, 2],
            1,
            counting(16),
        )
        .unwrap();
        assert_eq!(read_all(&t, 3, 0), vec![1, 3, 9, 11]);
        // Contiguous rows of a row-major tensor form one run.
        let t = Tensor::new(
            "c".into(),
            DType::U16,
            vec![2, 3],
            vec![3, 1],
            4,
            counting(10),
        )
        .unwrap();
        assert!(t.is_contiguous());
        assert_eq!(read_all(&t, 4, 0), vec![4, 5, 6, 7, 8, 9]);
    }

    #[test]
    fn big_endian_storages_are_swapped() {
        let s = storage(vec![0x12, 0x34, 0xab, 0xcd], 2);
        let t = Tensor::new("b".into(), DType::U16, vec![2], vec![1], 0, s).unwrap();
        assert_eq!(read_all(&t, 1, 0), vec![0x1234, 0xabcd]);
    }

    #[test]
    fn views_outside_their_storage_are_refused() {
        let err = Tensor::new(
            "x".into(),
            DType::U16,
            vec![2, 3],
            vec![3, 1],
            5,
            counting(10),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "t.pt: tensor x: the view reaches byte 22 of storage data/0 which holds 20 bytes"
        );
        let err = Tensor::new(
            "y".into(),
            DType::U16,
            vec![u64::MAX, 2],
            vec![u64::MAX, 1],
            0,
            counting(10),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("overflows"), "{err}");
        // Empty tensors address nothing, whatever their offset.
        Tensor::new(
            "e".into(),
            DType::U16,
            vec![0, 3],
            vec![3, 1],
            99,
            counting(1),
        )
        .unwrap();
    }
}
