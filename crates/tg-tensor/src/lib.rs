//! Tensors reconstructed from a checkpoint without executing it; safetensors writing; tensor
//! diff.
//!
//! `torch.load` unpickles, and unpickling runs code. This crate gets the same tensors without
//! running anything: a checkpoint's pickle is interpreted by `tg-pickle`'s symbolic machine,
//! and only the rebuild functions that `torch.load(weights_only=True)` allows are given a
//! meaning ([`rebuild`](crate#how-tensors-are-rebuilt)): `_rebuild_tensor_v2(storage, offset,
//! size, stride, …)` becomes a strided view on the bytes of archive member `data/<key>`, read
//! straight from the file with positioned reads. Everything else stays a symbol and is
//! reported as something that cannot be carried, never called.
//!
//! The main design decision is to keep storages in the file: a [`Tensor`] is a dtype, a shape
//! and a strided view; its bytes are produced on demand by a [`TensorReader`] in row-major
//! order, chunk by chunk. So [`convert`] writes a safetensors header first (every shape and
//! dtype is known from the pickle) and then streams each tensor, and [`diff`] compares two
//! checkpoints element by element, both in bounded memory whatever the checkpoint size: an
//! 8 MiB copy buffer, plus the storage span of a strided view up to
//! [`DEFAULT_GATHER_BUDGET`] (larger views are gathered run by run with positioned reads).
//! The one exception is a storage member that was deflated (torch always stores them): it is
//! inflated in memory, within `tg-archive`'s per-member cap.
//!
//! # How tensors are rebuilt
//!
//! - `torch._utils._rebuild_tensor`, `_rebuild_tensor_v2`, `_rebuild_tensor_v3` (the dtype
//!   argument of v3 wins over the storage's), `_rebuild_parameter`,
//!   `_rebuild_parameter_with_state`, `torch.nn.parameter.Parameter`,
//!   `torch._tensor._rebuild_from_type_v2` (plain `Tensor`/`Parameter` only);
//! - persistent ids `('storage', torch.<T>Storage, key, location, numel)`; the element type comes
//!   from the storage class (`torch.storage.UntypedStorage` holds bytes), the first declaration
//!   of a key wins (torch caches storages by key), and a `byteorder` record of `big` swaps each
//!   element of the storage's type, as torch's loader does;
//! - `collections.OrderedDict`, dicts, lists, tuples and `torch.Size` as containers; nested
//!   containers holding tensors are flattened to `a.b.c` names, list items by index.
//!
//! Complex, quantized and other dtypes safetensors cannot hold, tensor subclasses, tensors with
//! Python attributes, and every other object are listed in [`Checkpoint::dropped`].

mod checkpoint;
pub mod convert;
mod copy;
pub mod diff;
mod dtype;
mod error;
mod flatten;
mod rebuild;
pub mod safetensors;
pub mod shards;
mod tensor;

pub use checkpoint::{Checkpoint, Format};
pub use dtype::DType;
pub use error::Error;
pub use flatten::{Dropped, ROOT_TENSOR_NAME};
pub use tensor::{DEFAULT_GATHER_BUDGET, Tensor, TensorReader};
