//! The core's one source of randomness: SplitMix64 (Steele, Lea and Flood, 2014), written
//! out here so that its output is fixed by this crate, not by a dependency's release: the
//! same [`crate::Config::rng_seed`] gives the same election timeouts from the same inputs
//! (the generator's outputs are pinned by a test). It only spreads election timeouts; nothing depends on it being
//! unpredictable.

/// SplitMix64: a tiny, seedable generator.
#[derive(Clone, Debug)]
pub struct SplitMix(pub u64);

impl SplitMix {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..=max` (modulo reduction: the bias is about `max / 2^64`, below
    /// 2^-32 for the ranges the core draws, nanoseconds of a few seconds).
    pub fn up_to(&mut self, max: u64) -> u64 {
        match max.checked_add(1) {
            Some(n) => self.next_u64() % n,
            None => self.next_u64(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_outputs_are_pinned() {
        // The reference outputs of SplitMix64 seeded with 0 and 1234567.
        let mut zero = SplitMix(0);
        assert_eq!(
            [zero.next_u64(), zero.next_u64(), zero.next_u64()],
            [
                0xE220_A839_7B1D_CDAF,
                0x6E78_9E6A_A1B9_65F4,
                0x06C4_5D18_8009_454F
            ]
        );
        let mut seeded = SplitMix(1_234_567);
        assert_eq!(
            [seeded.next_u64(), seeded.next_u64(), seeded.next_u64()],
            [
                6_457_827_717_110_365_317,
                3_203_168_211_198_807_973,
                9_817_491_932_198_370_423
            ]
        );
        assert!(SplitMix(9).up_to(0) == 0 && SplitMix(9).up_to(u64::MAX) > 0);
    }
}
