//! The workspace's one stable hash: FNV-1a, 64 bits, written out here so its output is fixed
//! by this crate (std's `DefaultHasher` may change between releases). Used where a hash must
//! repeat across builds and machines: the simulation's trace hash, the daemon's per-node
//! jitter salt, the fuzz targets' key derivation. Not for anything an attacker chooses.

const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0100_0000_01b3;

/// FNV-1a, 64 bits, fed incrementally.
#[derive(Debug, Clone, Copy)]
pub struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Self(OFFSET_BASIS)
    }
}

impl Fnv1a {
    /// Feeds bytes.
    pub fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(PRIME);
        }
    }

    /// Feeds a number (its little-endian bytes).
    pub fn write_u64(&mut self, v: u64) {
        self.write(&v.to_le_bytes());
    }

    /// The hash so far.
    #[must_use]
    pub fn value(&self) -> u64 {
        self.0
    }
}

/// FNV-1a of `bytes`, in one call.
#[must_use]
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash = Fnv1a::default();
    hash.write(bytes);
    hash.value()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference FNV-1a 64 values: a change here changes every trace hash.
    #[test]
    fn the_outputs_are_pinned() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
        let mut split = Fnv1a::default();
        split.write(b"foo");
        split.write(b"bar");
        assert_eq!(split.value(), fnv1a(b"foobar"));
    }
}
