//! FNV-1a, 64 bits: the one stable hash every process agrees on.
//!
//! Three things rest on it and must never change between builds or
//! versions: which shard owns a free-form key ([`crate::Shard::of_key`]),
//! the state digest replicas compare (`state::keys::row_digest`), and the
//! request fingerprint a portal stores beside an idempotency key. Tiny,
//! dependency-free, and the same on every platform.

/// A running FNV-1a hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fnv1a(u64);

impl Fnv1a {
    /// The offset basis: the hash of nothing.
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    /// The 64-bit FNV prime.
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    /// A hash of nothing yet.
    pub const fn new() -> Self {
        Fnv1a(Self::OFFSET)
    }

    /// Hashes `bytes` into the running value.
    pub fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(Self::PRIME);
        }
    }

    /// The hash so far.
    pub const fn finish(self) -> u64 {
        self.0
    }

    /// The hash of `bytes` alone.
    pub fn of(bytes: &[u8]) -> u64 {
        let mut hash = Self::new();
        hash.write(bytes);
        hash.finish()
    }
}

impl Default for Fnv1a {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_published_fnv_1a_64_values() {
        assert_eq!(Fnv1a::of(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(Fnv1a::of(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(Fnv1a::of(b"foobar"), 0x8594_4171_f739_67e8);
        let mut split = Fnv1a::new();
        split.write(b"foo");
        split.write(b"bar");
        assert_eq!(split.finish(), Fnv1a::of(b"foobar"), "writes concatenate");
    }
}
