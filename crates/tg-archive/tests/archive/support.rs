use std::io::Write;

use tg_archive::ReadAt;

/// Member data: real bytes, or a run of zeros that is never materialised (for huge files).
#[derive(Clone)]
pub(crate) enum Data {
    Bytes(Vec<u8>),
    Zeros(u64),
}

impl Data {
    fn len(&self) -> u64 {
        match self {
            Data::Bytes(b) => b.len() as u64,
            Data::Zeros(n) => *n,
        }
    }
}

/// One member, with every field a hostile archive might want to lie about.
#[derive(Clone)]
pub(crate) struct Member {
    pub(crate) name: Vec<u8>,
    pub(crate) local_name: Option<Vec<u8>>,
    /// Bytes as stored in the archive (already compressed for method 8).
    pub(crate) data: Data,
    pub(crate) method: u16,
    pub(crate) local_method: Option<u16>,
    pub(crate) flags: u16,
    pub(crate) crc: u32,
    pub(crate) uncompressed_size: u64,
    pub(crate) local_sizes: Option<(u64, u64)>,
    pub(crate) external_attributes: u32,
    /// Where the central directory says the local header is (default: where it is written).
    pub(crate) local_offset_override: Option<u64>,
    /// Do not write this member's local header and data (pairs with `local_offset_override`).
    pub(crate) skip_local: bool,
    /// Bytes of padding in the local extra field, as PyTorch writes to align member data.
    pub(crate) local_padding: u16,
}

pub(crate) fn crc32(data: &[u8]) -> u32 {
    let mut c = flate2::Crc::new();
    c.update(data);
    c.sum()
}

pub(crate) fn deflate(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

impl Member {
    pub(crate) fn stored(name: &str, data: &[u8]) -> Member {
        Member {
            name: name.as_bytes().to_vec(),
            local_name: None,
            data: Data::Bytes(data.to_vec()),
            method: 0,
            local_method: None,
            flags: 0,
            crc: crc32(data),
            uncompressed_size: data.len() as u64,
            local_sizes: None,
            external_attributes: 0,
            local_offset_override: None,
            skip_local: false,
            local_padding: 0,
        }
    }

    pub(crate) fn deflated(name: &str, data: &[u8]) -> Member {
        let mut m = Member::stored(name, data);
        m.data = Data::Bytes(deflate(data));
        m.method = 8;
        m
    }

    /// A stored member of `n` zero bytes that is never held in memory.
    pub(crate) fn zeros(name: &str, n: u64) -> Member {
        let mut m = Member::stored(name, b"");
        m.data = Data::Zeros(n);
        m.uncompressed_size = n;
        m.crc = 0;
        m
    }
}

/// An archive as segments over a (possibly huge) zero-filled file.
pub(crate) struct Sparse {
    pub(crate) size: u64,
    pub(crate) segments: Vec<(u64, Vec<u8>)>,
    pub(crate) bytes_read: std::sync::atomic::AtomicU64,
}

impl Sparse {
    pub(crate) fn to_vec(&self) -> Vec<u8> {
        let mut out = vec![0u8; usize::try_from(self.size).unwrap()];
        for (off, bytes) in &self.segments {
            out[*off as usize..*off as usize + bytes.len()].copy_from_slice(bytes);
        }
        out
    }
}

impl ReadAt for Sparse {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let end = offset + buf.len() as u64;
        if end > self.size {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.bytes_read
            .fetch_add(buf.len() as u64, std::sync::atomic::Ordering::Relaxed);
        buf.fill(0);
        for (off, bytes) in &self.segments {
            let s_end = off + bytes.len() as u64;
            let lo = offset.max(*off);
            let hi = end.min(s_end);
            if lo < hi {
                buf[(lo - offset) as usize..(hi - offset) as usize]
                    .copy_from_slice(&bytes[(lo - off) as usize..(hi - off) as usize]);
            }
        }
        Ok(())
    }
}

#[derive(Default)]
pub(crate) struct ZipBuilder {
    pub(crate) members: Vec<Member>,
    pub(crate) leading: Vec<u8>,
    pub(crate) trailing: Vec<u8>,
    pub(crate) comment: Vec<u8>,
    pub zip64: bool,
    /// Bytes appended to the central directory but not counted in the EOCD entry count.
    pub(crate) hidden_cdir: Vec<u8>,
    /// Bytes between the central directory and the end records.
    pub(crate) gap_before_eocd: Vec<u8>,
}

fn u16le(v: &mut Vec<u8>, x: u16) {
    v.extend_from_slice(&x.to_le_bytes());
}
fn u32le(v: &mut Vec<u8>, x: u32) {
    v.extend_from_slice(&x.to_le_bytes());
}
fn u64le(v: &mut Vec<u8>, x: u64) {
    v.extend_from_slice(&x.to_le_bytes());
}

fn clamp32(x: u64, zip64: bool) -> u32 {
    if zip64 || x >= u64::from(u32::MAX) {
        u32::MAX
    } else {
        x as u32
    }
}

impl ZipBuilder {
    pub(crate) fn new(members: Vec<Member>) -> ZipBuilder {
        ZipBuilder {
            members,
            ..Default::default()
        }
    }

    pub(crate) fn build(&self) -> Vec<u8> {
        self.build_sparse().to_vec()
    }

    pub(crate) fn build_sparse(&self) -> Sparse {
        let mut segments = Vec::new();
        let mut pos = 0u64;
        let mut head = self.leading.clone();
        let mut offsets = Vec::new();
        for m in &self.members {
            if m.skip_local {
                offsets.push(m.local_offset_override.unwrap_or(0));
                continue;
            }
            let at = pos + head.len() as u64;
            offsets.push(m.local_offset_override.unwrap_or(at));
            let local_name = m.local_name.clone().unwrap_or_else(|| m.name.clone());
            let (lc, lu) = m.local_sizes.unwrap_or((m.data.len(), m.uncompressed_size));
            let mut extra = Vec::new();
            if self.zip64 {
                u16le(&mut extra, 1);
                u16le(&mut extra, 16);
                u64le(&mut extra, lu);
                u64le(&mut extra, lc);
            }
            if m.local_padding > 0 {
                u16le(&mut extra, 0x4246); // "FB", PyTorch's padding field
                u16le(&mut extra, m.local_padding);
                extra.resize(extra.len() + usize::from(m.local_padding), b'Z');
            }
            u32le(&mut head, 0x0403_4b50);
            u16le(&mut head, if self.zip64 { 45 } else { 20 });
            u16le(&mut head, m.flags);
            u16le(&mut head, m.local_method.unwrap_or(m.method));
            u16le(&mut head, 0);
            u16le(&mut head, 0);
            u32le(&mut head, m.crc);
            u32le(&mut head, clamp32(lc, self.zip64));
            u32le(&mut head, clamp32(lu, self.zip64));
            u16le(&mut head, local_name.len() as u16);
            u16le(&mut head, extra.len() as u16);
            head.extend_from_slice(&local_name);
            head.extend_from_slice(&extra);
            match &m.data {
                Data::Bytes(b) => head.extend_from_slice(b),
                Data::Zeros(n) => {
                    let len = head.len() as u64;
                    segments.push((pos, std::mem::take(&mut head)));
                    pos += len + n;
                }
            }
        }
        let mut tail = std::mem::take(&mut head);
        let cdir_ofs = pos + tail.len() as u64;
        let cdir_start = tail.len();
        for (m, &off) in self.members.iter().zip(&offsets) {
            let mut extra = Vec::new();
            if self.zip64 {
                u16le(&mut extra, 1);
                u16le(&mut extra, 24);
                u64le(&mut extra, m.uncompressed_size);
                u64le(&mut extra, m.data.len());
                u64le(&mut extra, off);
            }
            u32le(&mut tail, 0x0201_4b50);
            u16le(&mut tail, 0x031e);
            u16le(&mut tail, if self.zip64 { 45 } else { 20 });
            u16le(&mut tail, m.flags);
            u16le(&mut tail, m.method);
            u16le(&mut tail, 0);
            u16le(&mut tail, 0);
            u32le(&mut tail, m.crc);
            u32le(&mut tail, clamp32(m.data.len(), self.zip64));
            u32le(&mut tail, clamp32(m.uncompressed_size, self.zip64));
            u16le(&mut tail, m.name.len() as u16);
            u16le(&mut tail, extra.len() as u16);
            u16le(&mut tail, 0);
            u16le(&mut tail, 0);
            u16le(&mut tail, 0);
            u32le(&mut tail, m.external_attributes);
            u32le(&mut tail, clamp32(off, self.zip64));
            tail.extend_from_slice(&m.name);
            tail.extend_from_slice(&extra);
        }
        tail.extend_from_slice(&self.hidden_cdir);
        let cdir_size = (tail.len() - cdir_start) as u64;
        tail.extend_from_slice(&self.gap_before_eocd);
        let n = self.members.len() as u64;
        if self.zip64 {
            let eocd64 = pos + tail.len() as u64;
            u32le(&mut tail, 0x0606_4b50);
            u64le(&mut tail, 44);
            u16le(&mut tail, 45);
            u16le(&mut tail, 45);
            u32le(&mut tail, 0);
            u32le(&mut tail, 0);
            u64le(&mut tail, n);
            u64le(&mut tail, n);
            u64le(&mut tail, cdir_size);
            u64le(&mut tail, cdir_ofs);
            u32le(&mut tail, 0x0706_4b50);
            u32le(&mut tail, 0);
            u64le(&mut tail, eocd64);
            u32le(&mut tail, 1);
        }
        u32le(&mut tail, 0x0605_4b50);
        u16le(&mut tail, 0);
        u16le(&mut tail, 0);
        let n16 = if self.zip64 { u16::MAX } else { n as u16 };
        u16le(&mut tail, n16);
        u16le(&mut tail, n16);
        u32le(&mut tail, clamp32(cdir_size, self.zip64));
        u32le(&mut tail, clamp32(cdir_ofs, self.zip64));
        u16le(&mut tail, self.comment.len() as u16);
        tail.extend_from_slice(&self.comment);
        tail.extend_from_slice(&self.trailing);
        let size = pos + tail.len() as u64;
        segments.push((pos, tail));
        Sparse {
            size,
            segments,
            bytes_read: Default::default(),
        }
    }
}

/// A ustar header for `name` with `size` bytes of type `kind`.
pub(crate) fn tar_header(name: &[u8], size: u64, kind: u8) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name);
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = kind;
    h[257..265].copy_from_slice(b"ustar\x0000");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&c| u32::from(c)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

/// A tar of `(name, data)` regular files, with the two zero blocks at the end.
pub(crate) fn tar(members: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, data) in members {
        out.extend_from_slice(&tar_header(name, data.len() as u64, b'0'));
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// A protocol-2 pickle of the integer 1 (`\x80\x02K\x01.`).
pub(crate) const PICKLE: &[u8] = b"\x80\x02K\x01.";
