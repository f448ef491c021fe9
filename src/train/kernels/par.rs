//! Splitting work across the machine's cores with scoped threads (no nested parallelism: every
//! piece runs single-threaded code).

use std::ops::Range;
use std::sync::OnceLock;

/// Threads the kernels use: `TANUKI_KERNEL_THREADS` if set, else the available parallelism.
pub fn threads() -> usize {
    static THREADS: OnceLock<usize> = OnceLock::new();
    *THREADS.get_or_init(|| {
        std::env::var("TANUKI_KERNEL_THREADS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n: &usize| n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    })
}

/// Splits `n_items` items, and `out` (which holds `out.len() / n_items` values per item, possibly
/// none), into at most [`threads`] contiguous pieces and runs `f(items, out_piece)` on each in
/// parallel. Returns the results in item order.
pub(super) fn par_items<R: Send>(n_items: usize, out: &mut [f32], f: impl Fn(Range<usize>, &mut [f32]) -> R + Sync) -> Vec<R> {
    if n_items == 0 {
        return Vec::new();
    }
    let item_len = out.len() / n_items;
    assert_eq!(item_len * n_items, out.len(), "output is not a whole number of items");
    let t = threads().min(n_items);
    let per = n_items.div_ceil(t);
    let mut pieces = Vec::with_capacity(t);
    let mut rest = out;
    let mut start = 0;
    while start < n_items {
        let end = (start + per).min(n_items);
        let (piece, tail) = rest.split_at_mut((end - start) * item_len);
        pieces.push((start..end, piece));
        rest = tail;
        start = end;
    }
    if pieces.len() == 1 {
        return pieces.into_iter().map(|(r, s)| f(r, s)).collect();
    }
    let f = &f;
    std::thread::scope(|scope| {
        let mut iter = pieces.into_iter();
        let (r0, s0) = iter.next().expect("at least two pieces");
        let handles: Vec<_> = iter.map(|(r, s)| scope.spawn(move || f(r, s))).collect();
        let mut results = vec![f(r0, s0)];
        results.extend(handles.into_iter().map(|h| h.join().expect("kernel thread panicked")));
        results
    })
}

/// `out[i] = f(a[i], b[i])` (`b` at least as long as `a`), split across the cores: elementwise
/// passes are memory-bound, but one thread per core still helps on activation-sized slices.
pub(crate) fn par_map(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    let mut out = vec![0f32; a.len()];
    let per = a.len().div_ceil(threads()).max(1);
    let f = &f;
    std::thread::scope(|s| {
        for ((o, a), b) in out.chunks_mut(per).zip(a.chunks(per)).zip(b.chunks(per)) {
            s.spawn(move || o.iter_mut().zip(a).zip(b).for_each(|((o, &a), &b)| *o = f(a, b)));
        }
    });
    out
}
