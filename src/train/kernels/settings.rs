//! The kernels' settings: how many threads they use and which code paths they may take.
//!
//! They are installed once, at start-up, from the service's configuration ([`configure`]), before
//! any kernel runs; a kernel reads them where it decides ([`settings`]). One value for the whole
//! process on purpose: the thread count and the instruction set are facts about the machine the
//! process runs on, and a convolution must not change path between the forward pass and the
//! backward pass of one step.

use std::sync::OnceLock;

/// What the kernels may use; [`Default`] is everything this CPU offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelSettings {
    /// Threads per kernel call; `None`: the available parallelism.
    pub threads: Option<usize>,
    /// Take the AVX-512 paths where the CPU has AVX-512 (off: the portable path, to compare or
    /// to test it).
    pub avx512: bool,
    /// The direct convolution kernel (AVX-512); off: im2col + GEMM for every dense convolution.
    pub direct_conv: bool,
    /// Winograd F(2x2, 3x3) for 3x3 stride-1 convolutions (AVX-512); off: the direct kernel.
    pub winograd: bool,
    /// Size of an im2col tile in KiB (the GEMM path keeps it in L2 beside its packed panels).
    pub conv_tile_kib: usize,
}

impl Default for KernelSettings {
    fn default() -> Self {
        Self { threads: None, avx512: true, direct_conv: true, winograd: true, conv_tile_kib: 1024 }
    }
}

static SETTINGS: OnceLock<KernelSettings> = OnceLock::new();

/// Installs `settings` for every later kernel call. Only the first call, made before any kernel
/// ran, takes effect; a later one returns the settings already in force as the error.
pub fn configure(settings: KernelSettings) -> Result<(), KernelSettings> {
    SETTINGS.set(settings).map_err(|_| *SETTINGS.get().unwrap_or(&settings))
}

/// The settings in force ([`Default`] if none were installed).
pub(crate) fn settings() -> &'static KernelSettings {
    SETTINGS.get_or_init(KernelSettings::default)
}
