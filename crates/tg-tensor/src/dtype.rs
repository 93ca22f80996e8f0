//! Element types: the ones safetensors can hold, and the torch names that map to them.

use std::fmt;

/// An element type safetensors can hold. Every one is stored little-endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[non_exhaustive]
pub enum DType {
    /// `torch.bool`, one byte per element (0 or 1).
    #[serde(rename = "BOOL")]
    Bool,
    /// `torch.uint8`.
    #[serde(rename = "U8")]
    U8,
    /// `torch.int8`.
    #[serde(rename = "I8")]
    I8,
    /// `torch.float8_e5m2`.
    #[serde(rename = "F8_E5M2")]
    F8E5M2,
    /// `torch.float8_e4m3fn`.
    #[serde(rename = "F8_E4M3")]
    F8E4M3,
    /// `torch.int16`.
    #[serde(rename = "I16")]
    I16,
    /// `torch.uint16`.
    #[serde(rename = "U16")]
    U16,
    /// `torch.float16`.
    #[serde(rename = "F16")]
    F16,
    /// `torch.bfloat16`.
    #[serde(rename = "BF16")]
    BF16,
    /// `torch.int32`.
    #[serde(rename = "I32")]
    I32,
    /// `torch.uint32`.
    #[serde(rename = "U32")]
    U32,
    /// `torch.float32`.
    #[serde(rename = "F32")]
    F32,
    /// `torch.int64`.
    #[serde(rename = "I64")]
    I64,
    /// `torch.uint64`.
    #[serde(rename = "U64")]
    U64,
    /// `torch.float64`.
    #[serde(rename = "F64")]
    F64,
}

const ALL: [DType; 15] = [
    DType::Bool,
    DType::U8,
    DType::I8,
    DType::F8E5M2,
    DType::F8E4M3,
    DType::I16,
    DType::U16,
    DType::F16,
    DType::BF16,
    DType::I32,
    DType::U32,
    DType::F32,
    DType::I64,
    DType::U64,
    DType::F64,
];

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::Bool | DType::U8 | DType::I8 | DType::F8E5M2 | DType::F8E4M3 => 1,
            DType::I16 | DType::U16 | DType::F16 | DType::BF16 => 2,
            DType::I32 | DType::U32 | DType::F32 => 4,
            DType::I64 | DType::U64 | DType::F64 => 8,
        }
    }

    /// The name in a safetensors header (`F32`, `BF16`, `F8_E4M3`, …).
    pub fn safetensors_name(self) -> &'static str {
        match self {
            DType::Bool => "BOOL",
            DType::U8 => "U8",
            DType::I8 => "I8",
            DType::F8E5M2 => "F8_E5M2",
            DType::F8E4M3 => "F8_E4M3",
            DType::I16 => "I16",
            DType::U16 => "U16",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::I32 => "I32",
            DType::U32 => "U32",
            DType::F32 => "F32",
            DType::I64 => "I64",
            DType::U64 => "U64",
            DType::F64 => "F64",
        }
    }

    /// The dtype of a safetensors header name.
    pub fn from_safetensors_name(name: &str) -> Option<DType> {
        ALL.into_iter().find(|d| d.safetensors_name() == name)
    }

    /// The torch name without the `torch.` prefix (`float32`, `float8_e4m3fn`, …).
    pub fn torch_name(self) -> &'static str {
        match self {
            DType::Bool => "bool",
            DType::U8 => "uint8",
            DType::I8 => "int8",
            DType::F8E5M2 => "float8_e5m2",
            DType::F8E4M3 => "float8_e4m3fn",
            DType::I16 => "int16",
            DType::U16 => "uint16",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            DType::I32 => "int32",
            DType::U32 => "uint32",
            DType::F32 => "float32",
            DType::I64 => "int64",
            DType::U64 => "uint64",
            DType::F64 => "float64",
        }
    }

    /// Whether values are floating point (sign flips and NaN counts apply).
    pub fn is_float(self) -> bool {
        matches!(
            self,
            DType::F8E5M2 | DType::F8E4M3 | DType::F16 | DType::BF16 | DType::F32 | DType::F64
        )
    }

    /// The value of one little-endian element as `f64` (exact for every type but 64-bit
    /// integers beyond 2^53). `bytes` holds exactly [`DType::size`] bytes.
    pub fn to_f64(self, b: &[u8]) -> f64 {
        let u16le = || u16::from_le_bytes([b[0], b[1]]);
        let arr4 = || [b[0], b[1], b[2], b[3]];
        let arr8 = || [b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]];
        match self {
            DType::Bool => f64::from(u8::from(b[0] != 0)),
            DType::U8 => f64::from(b[0]),
            DType::I8 => f64::from(b[0] as i8),
            DType::F8E5M2 => f16_to_f64(u16::from(b[0]) << 8),
            DType::F8E4M3 => f8e4m3fn_to_f64(b[0]),
            DType::I16 => f64::from(u16le() as i16),
            DType::U16 => f64::from(u16le()),
            DType::F16 => f16_to_f64(u16le()),
            DType::BF16 => f64::from(f32::from_bits(u32::from(u16le()) << 16)),
            DType::I32 => f64::from(i32::from_le_bytes(arr4())),
            DType::U32 => f64::from(u32::from_le_bytes(arr4())),
            DType::F32 => f64::from(f32::from_le_bytes(arr4())),
            DType::I64 => i64::from_le_bytes(arr8()) as f64,
            DType::U64 => u64::from_le_bytes(arr8()) as f64,
            DType::F64 => f64::from_le_bytes(arr8()),
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.safetensors_name())
    }
}

/// IEEE 754 binary16.
fn f16_to_f64(h: u16) -> f64 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((h >> 10) & 0x1f);
    let man = f64::from(h & 0x3ff);
    sign * match exp {
        0 => man * 2f64.powi(-24),
        31 if man == 0.0 => f64::INFINITY,
        31 => f64::NAN,
        _ => (1.0 + man / 1024.0) * 2f64.powi(exp - 15),
    }
}

/// OCP FP8 E4M3 "fn": no infinities, `S.1111.111` is NaN.
fn f8e4m3fn_to_f64(b: u8) -> f64 {
    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((b >> 3) & 0xf);
    let man = f64::from(b & 7);
    if exp == 15 && b & 7 == 7 {
        return f64::NAN;
    }
    sign * if exp == 0 {
        man / 8.0 * 2f64.powi(-6)
    } else {
        (1.0 + man / 8.0) * 2f64.powi(exp - 7)
    }
}

/// What a torch element type is, for a checkpoint: one safetensors can hold, or one it cannot
/// (complex, quantized, the `fnuz` float8 variants, sub-byte types) with its element size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TorchType {
    /// Carried by safetensors.
    Known(DType),
    /// Not representable in safetensors: the torch name and the element size.
    Other(&'static str, usize),
}

impl TorchType {
    pub(crate) fn size(self) -> usize {
        match self {
            TorchType::Known(d) => d.size(),
            TorchType::Other(_, s) => s,
        }
    }
}

/// Types safetensors cannot hold, as (torch dtype name, legacy storage class, element size).
const OTHERS: &[(&str, &str, usize)] = &[
    ("complex32", "ComplexHalfStorage", 4),
    ("complex64", "ComplexFloatStorage", 8),
    ("complex128", "ComplexDoubleStorage", 16),
    ("qint8", "QInt8Storage", 1),
    ("quint8", "QUInt8Storage", 1),
    ("qint32", "QInt32Storage", 4),
    ("quint4x2", "QUInt4x2Storage", 1),
    ("quint2x4", "QUInt2x4Storage", 1),
    ("float8_e4m3fnuz", "Float8_e4m3fnuzStorage", 1),
    ("float8_e5m2fnuz", "Float8_e5m2fnuzStorage", 1),
    ("bits1x8", "Bits1x8Storage", 1),
    ("bits2x4", "Bits2x4Storage", 1),
    ("bits4x2", "Bits4x2Storage", 1),
    ("bits8", "Bits8Storage", 1),
    ("bits16", "Bits16Storage", 2),
];

/// The element type of a `torch.<Name>Storage` class (`FloatStorage`, `BFloat16Storage`,
/// …), as `torch.save` names it in a storage's persistent id.
pub(crate) fn from_storage_class(name: &str) -> Option<TorchType> {
    let known = match name {
        "DoubleStorage" => DType::F64,
        "FloatStorage" => DType::F32,
        "HalfStorage" => DType::F16,
        "BFloat16Storage" => DType::BF16,
        "LongStorage" => DType::I64,
        "IntStorage" => DType::I32,
        "ShortStorage" => DType::I16,
        "CharStorage" => DType::I8,
        "ByteStorage" => DType::U8,
        "BoolStorage" => DType::Bool,
        "Float8_e5m2Storage" => DType::F8E5M2,
        "Float8_e4m3fnStorage" => DType::F8E4M3,
        // `torch.UntypedStorage` holds bytes (torch loads it with dtype uint8).
        "UntypedStorage" => DType::U8,
        _ => {
            return OTHERS
                .iter()
                .find(|(_, class, _)| *class == name)
                .map(|&(n, _, s)| TorchType::Other(n, s));
        }
    };
    Some(TorchType::Known(known))
}

/// The element type of a `torch.<dtype>` global (`torch.float32`, `torch.uint16`, …).
pub(crate) fn from_dtype_name(name: &str) -> Option<TorchType> {
    let alias = match name {
        "float" => "float32",
        "double" => "float64",
        "half" => "float16",
        "long" => "int64",
        "int" => "int32",
        "short" => "int16",
        "cfloat" => "complex64",
        "cdouble" => "complex128",
        other => other,
    };
    if let Some(d) = ALL.into_iter().find(|d| d.torch_name() == alias) {
        return Some(TorchType::Known(d));
    }
    OTHERS
        .iter()
        .find(|(n, _, _)| *n == alias)
        .map(|&(n, _, s)| TorchType::Other(n, s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for d in ALL {
            assert_eq!(DType::from_safetensors_name(d.safetensors_name()), Some(d));
            assert_eq!(from_dtype_name(d.torch_name()), Some(TorchType::Known(d)));
        }
        assert_eq!(
            from_storage_class("ComplexFloatStorage"),
            Some(TorchType::Other("complex64", 8))
        );
        assert_eq!(from_storage_class("os"), None);
    }

    #[test]
    fn small_floats_decode() {
        assert_eq!(DType::F16.to_f64(&0x3c00u16.to_le_bytes()), 1.0);
        assert_eq!(DType::F16.to_f64(&0xc000u16.to_le_bytes()), -2.0);
        assert_eq!(DType::F16.to_f64(&0x0001u16.to_le_bytes()), 2f64.powi(-24));
        assert!(DType::F16.to_f64(&0x7e00u16.to_le_bytes()).is_nan());
        assert_eq!(DType::BF16.to_f64(&0x3f80u16.to_le_bytes()), 1.0);
        // e5m2 1.0 = 0x3c, e4m3fn 1.0 = 0x38, 448 = 0x7e (the largest), 0x7f is NaN.
        assert_eq!(DType::F8E5M2.to_f64(&[0x3c]), 1.0);
        assert_eq!(DType::F8E5M2.to_f64(&[0x7c]), f64::INFINITY);
        assert_eq!(DType::F8E4M3.to_f64(&[0x38]), 1.0);
        assert_eq!(DType::F8E4M3.to_f64(&[0x7e]), 448.0);
        assert_eq!(DType::F8E4M3.to_f64(&[0xb8]), -1.0);
        assert_eq!(DType::F8E4M3.to_f64(&[0x01]), 2f64.powi(-9));
        assert!(DType::F8E4M3.to_f64(&[0x7f]).is_nan());
    }
}
