//! Seed derivation: every random stream of a job (weight init, shuffling, augmentation, dropout)
//! gets its own generator seeded from `(job seed, stream, phase, epoch, batch)`.
//!
//! Deriving instead of drawing from one shared generator means a batch's randomness does not
//! depend on what ran before it: not on thread timing (prefetching), nor on where a resumed run
//! started. candle's global RNG is never used.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Which random stream a seed is for; part of the derived seed so streams never coincide.
#[derive(Debug, Clone, Copy)]
pub enum Stream {
    Init = 1,
    Shuffle = 2,
    Augment = 3,
    Dropout = 4,
    Split = 5,
}

/// SplitMix64's finaliser: a cheap bijective mix with good avalanche.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A seed for `stream` at the given coordinates (use 0 for coordinates that don't apply).
pub fn derive(seed: u64, stream: Stream, phase: usize, epoch: u32, batch: usize) -> u64 {
    let mut h = mix(seed);
    for part in [stream as u64, phase as u64, epoch as u64, batch as u64] {
        h = mix(h ^ part);
    }
    h
}

/// A generator for `stream` at the given coordinates.
pub fn rng(seed: u64, stream: Stream, phase: usize, epoch: u32, batch: usize) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(derive(seed, stream, phase, epoch, batch))
}
