//! Sets of static strings hashed at compile time, and the FNV-1a hash they use (also the
//! policy's map hasher): lookups on the scanner's hot paths without SipHash or a set built at
//! start-up.

/// A set of static strings hashed at compile time: FNV-1a over the bytes, open addressing with
/// linear probing in `N` slots (a power of two, at least twice the keys). Lookups hash nothing
/// but the probe and build nothing at run time; [`StrSet::contains_hashed`] takes a hash
/// computed incrementally, so every dotted prefix of a name costs one pass over it.
pub(crate) struct StrSet<const N: usize> {
    /// The strings, in the order given.
    pub(crate) keys: &'static [&'static str],
    /// 1 + the index of the key in `keys`; 0 for an empty slot.
    slots: [u16; N],
}

/// FNV-1a's offset basis.
pub(crate) const FNV_SEED: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a over `bytes`, continuing from `h`.
#[inline]
pub(crate) const fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    let mut i = 0;
    while i < bytes.len() {
        h = fnv_byte(h, bytes[i]);
        i += 1;
    }
    h
}

/// One FNV-1a step.
#[inline]
pub(crate) const fn fnv_byte(h: u64, b: u8) -> u64 {
    (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
}

const fn bytes_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

impl<const N: usize> StrSet<N> {
    /// The set of `keys`; of a repeated key the last index is kept.
    pub(crate) const fn new(keys: &'static [&'static str]) -> Self {
        assert!(N.is_power_of_two() && keys.len() * 2 <= N && N <= u16::MAX as usize);
        let mut slots = [0u16; N];
        let mut i = 0;
        while i < keys.len() {
            let key = keys[i].as_bytes();
            let mut s = Self::slot(fnv(FNV_SEED, key));
            loop {
                if slots[s] == 0 || bytes_eq(keys[slots[s] as usize - 1].as_bytes(), key) {
                    slots[s] = i as u16 + 1;
                    break;
                }
                s = (s + 1) & (N - 1);
            }
            i += 1;
        }
        StrSet { keys, slots }
    }

    #[inline]
    const fn slot(h: u64) -> usize {
        ((h ^ (h >> 29)) as usize) & (N - 1)
    }

    /// Whether `s` is in the set.
    #[inline]
    pub(crate) fn contains(&self, s: &str) -> bool {
        self.index(s.as_bytes()).is_some()
    }

    /// The index in `keys` of `key`.
    #[inline]
    pub(crate) fn index(&self, key: &[u8]) -> Option<usize> {
        self.index_hashed(fnv(FNV_SEED, key), key)
    }

    /// Whether `key`, whose [`fnv`] hash from [`FNV_SEED`] is `h`, is in the set.
    #[inline]
    pub(crate) fn contains_hashed(&self, h: u64, key: &[u8]) -> bool {
        self.index_hashed(h, key).is_some()
    }

    fn index_hashed(&self, h: u64, key: &[u8]) -> Option<usize> {
        let mut s = Self::slot(h);
        loop {
            let k = self.slots[s];
            if k == 0 {
                return None;
            }
            let i = usize::from(k) - 1;
            if self.keys[i].as_bytes() == key {
                return Some(i);
            }
            s = (s + 1) & (N - 1);
        }
    }
}
