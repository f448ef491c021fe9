//! Run-time dispatch to AVX-512 code generation.
//!
//! The plane kernels are plain safe Rust written so that LLVM vectorises them. Compiled for the
//! baseline x86-64 target they get 128-bit SSE code; [`dispatch`] compiles the same body a second
//! time inside a `#[target_feature(enable = "avx512f,...")]` function and calls that one when the
//! CPU has AVX-512F (checked at run time, so the binary still runs on CPUs without it).

/// A kernel body, generic over whether fused multiply-add may be used (`f32::mul_add` is a
/// single instruction with the `fma` feature, but a slow library call without it).
pub(crate) trait Kernel {
    type Out;
    fn run<const FMA: bool>(self) -> Self::Out;
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512dq,avx2,fma")]
fn run_avx512<K: Kernel>(k: K) -> K::Out {
    k.run::<true>()
}

/// Whether the kernels take their AVX-512 paths on this CPU.
/// [`KernelSettings::avx512`](super::KernelSettings) off turns it off.
pub fn has_avx512() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            super::settings::settings().avx512
                && std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512vl")
                && std::arch::is_x86_feature_detected!("avx512dq")
                && std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// Runs `k`, compiled for AVX-512 when this CPU has it.
#[expect(unsafe_code, reason = "calling a #[target_feature] function needs the feature checked at run time")]
pub(crate) fn dispatch<K: Kernel>(k: K) -> K::Out {
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: `run_avx512` only requires the target features it enables, and has_avx512()
        // has just checked at run time that this CPU supports every one of them.
        return unsafe { run_avx512(k) };
    }
    k.run::<false>()
}
