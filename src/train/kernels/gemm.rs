//! A safe, bounds-checked wrapper over the `gemm` crate's single-threaded f32 GEMM.

use gemm::Parallelism;

/// A read-only matrix view: element `(i, j)` is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub(super) struct Mat<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

fn span(rows: usize, cols: usize, rs: usize, cs: usize) -> usize {
    (rows - 1) * rs + (cols - 1) * cs + 1
}

/// `dst (m x n, row stride dst_rs, column stride 1) [+]= lhs (m x k) * rhs (k x n)`, on the calling
/// thread only. Accumulates into `dst` when `accumulate`, overwrites it otherwise.
///
/// # Panics
/// If any view reaches past the end of its slice.
#[allow(clippy::too_many_arguments)]
#[expect(unsafe_code, reason = "the gemm crate's only entry point is an unsafe fn over raw pointers")]
pub(super) fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    lhs: Mat<'_>,
    rhs: Mat<'_>,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(span(m, n, dst_rs, 1) <= dst.len(), "gemm: dst view out of bounds");
    assert!(dst_rs >= n, "gemm: dst rows overlap");
    if k == 0 {
        if !accumulate {
            for row in dst.chunks_mut(dst_rs).take(m) {
                row[..n].fill(0.0);
            }
        }
        return;
    }
    assert!(span(m, k, lhs.rs, lhs.cs) <= lhs.data.len(), "gemm: lhs view out of bounds");
    assert!(span(k, n, rhs.rs, rhs.cs) <= rhs.data.len(), "gemm: rhs view out of bounds");
    // SAFETY: every element gemm reads or writes lies inside its slice (checked just above with
    // the same dimensions and strides, all non-negative); `dst` is borrowed mutably, so it aliases
    // neither input, and distinct (row, col) pairs of dst are distinct elements (dst_rs >= n).
    // Parallelism::None: gemm runs on this thread only and keeps no pointer after returning.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}
