//! Splitting work across the machine's cores with scoped threads (no nested parallelism: every
//! piece runs single-threaded code).

use std::mem::MaybeUninit;
use std::ops::Range;
use std::sync::OnceLock;

/// Threads the kernels use: [`KernelSettings::threads`](super::KernelSettings) if set, else the
/// available parallelism.
pub fn threads() -> usize {
    static THREADS: OnceLock<usize> = OnceLock::new();
    *THREADS.get_or_init(|| {
        super::settings::settings()
            .threads
            .filter(|&n| n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    })
}

/// Splits `n_items` items, and `out` (which holds `out.len() / n_items` values per item, possibly
/// none), into at most [`threads`] contiguous pieces and runs `f(items, out_piece)` on each in
/// parallel. Returns the results in item order.
pub(super) fn par_items<R: Send>(
    n_items: usize,
    out: &mut [f32],
    f: impl Fn(Range<usize>, &mut [f32]) -> R + Sync,
) -> Vec<R> {
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

/// A new output of `n_items` items of `item_len` values, split across the cores like
/// [`par_items`]: `f` gets the items of its piece one at a time from [`Items::next_zeroed`],
/// each zeroed just before it is handed out (while the kernel is about to write it, so the
/// zeroing happens in cache), and any item `f` did not take is zeroed when it returns. Returns
/// the output (with room for `extra` more values, so that a caller can append to it without a
/// copy) and the results in piece order.
///
/// This replaces `vec![0.0; n]` followed by [`par_items`]: that zeroed the whole output in one
/// serial pass through memory before any thread started (0.6-1 ms of a 17 ms convolution, a
/// tenth of a memory-bound depthwise or pooling pass).
#[expect(unsafe_code, reason = "an output written by several threads before it becomes a Vec's contents (set_len)")]
pub(crate) fn par_items_zeroed<R: Send>(
    n_items: usize,
    item_len: usize,
    extra: usize,
    f: impl Fn(&mut Items<'_>) -> R + Sync,
) -> (Vec<f32>, Vec<R>) {
    let len = n_items.checked_mul(item_len).expect("output size overflows usize");
    let mut out: Vec<f32> = Vec::with_capacity(len + extra);
    if n_items == 0 {
        return (out, Vec::new());
    }
    let t = threads().min(n_items);
    let per = n_items.div_ceil(t);
    let mut pieces = Vec::with_capacity(t);
    let mut rest = &mut out.spare_capacity_mut()[..len];
    let mut start = 0;
    while start < n_items {
        let end = (start + per).min(n_items);
        let (piece, tail) = rest.split_at_mut((end - start) * item_len);
        pieces.push(Items { rest: piece, item_len, items: start..end });
        rest = tail;
        start = end;
    }
    let run = |mut items: Items<'_>| {
        let r = f(&mut items);
        while items.next_zeroed().is_some() {}
        r
    };
    let results = if pieces.len() == 1 {
        pieces.into_iter().map(run).collect()
    } else {
        let run = &run;
        std::thread::scope(|scope| {
            let mut iter = pieces.into_iter();
            let first = iter.next().expect("at least two pieces");
            let handles: Vec<_> = iter.map(|items| scope.spawn(move || run(items))).collect();
            let mut results = vec![run(first)];
            results.extend(handles.into_iter().map(|h| h.join().expect("kernel thread panicked")));
            results
        })
    };
    // SAFETY: the pieces cover the first `len` values of the spare capacity, and every piece's
    // `run` handed out, and so zeroed, each of its items before returning (`next_zeroed` until
    // None). `f` cannot stop that: it gets `&mut Items` to an `Items` it cannot replace (private
    // fields, no Default or Clone), and the bound is higher-ranked in the items' lifetime, so
    // no item slice outlives its `f` call. The scope has joined every thread (a panic in one
    // propagates before this point, leaving `out` empty).
    unsafe { out.set_len(len) };
    (out, results)
}

/// The items of one thread's piece of a [`par_items_zeroed`] output.
pub(crate) struct Items<'a> {
    rest: &'a mut [MaybeUninit<f32>],
    item_len: usize,
    items: Range<usize>,
}

impl<'a> Items<'a> {
    /// The items not yet handed out (their indices in the whole output).
    pub(crate) fn remaining(&self) -> Range<usize> {
        self.items.clone()
    }

    /// The next item's index and values, zeroed.
    pub(crate) fn next_zeroed(&mut self) -> Option<(usize, &'a mut [f32])> {
        let i = self.items.next()?;
        let (item, rest) = std::mem::take(&mut self.rest).split_at_mut(self.item_len);
        self.rest = rest;
        Some((i, zeroed(item)))
    }
}

/// `v`, zeroed, as initialised values.
#[expect(
    unsafe_code,
    reason = "viewing a slice of MaybeUninit<f32> that has just been initialised as f32 (slice_assume_init_mut is unstable)"
)]
fn zeroed(v: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    v.fill(MaybeUninit::new(0.0));
    // SAFETY: every element was initialised by the fill above, and MaybeUninit<f32> has the
    // size, alignment and layout of f32.
    unsafe { &mut *(v as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// `out[i] = f(a[i], b[i])` (`b` at least as long as `a`), split across the cores: elementwise
/// passes are memory-bound, but one thread per core still helps on activation-sized slices.
pub(crate) fn par_map(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    // Items of 1-16 Ki values (at most 64 KiB, zeroed in cache just before they are written),
    // about four per thread on small slices; the values past the last whole item are appended
    // at the end.
    let item = a.len().div_ceil(4 * threads()).clamp(1 << 10, 16 << 10);
    let (items, tail) = (a.len() / item, a.len() % item);
    let f = &f;
    let (mut out, _) = par_items_zeroed(items, item, tail, |items| {
        while let Some((i, o)) = items.next_zeroed() {
            let (a, b) = (&a[i * item..][..item], &b[i * item..][..item]);
            o.iter_mut().zip(a).zip(b).for_each(|((o, &a), &b)| *o = f(a, b));
        }
    });
    let done = items * item;
    out.extend(a[done..].iter().zip(&b[done..]).map(|(&a, &b)| f(a, b)));
    out
}

#[cfg(test)]
mod tests {
    use super::par_items_zeroed;

    #[test]
    fn zeroed_output_hands_out_every_item_once_and_zeroes_the_ones_left() {
        // Each piece writes its first item only; the others must come back zeroed.
        let (out, firsts) = par_items_zeroed(7, 3, 5, |items| {
            let first = items.remaining().start;
            if let Some((i, v)) = items.next_zeroed() {
                assert_eq!(i, first);
                assert!(v.iter().all(|&x| x == 0.0));
                v.fill(i as f32 + 1.0);
            }
            first
        });
        assert_eq!(out.len(), 21);
        assert!(out.capacity() >= 26, "room for the 5 extra values");
        assert!(firsts.windows(2).all(|w| w[0] < w[1]), "results in piece order: {firsts:?}");
        for (i, item) in out.chunks_exact(3).enumerate() {
            let want = if firsts.contains(&i) { i as f32 + 1.0 } else { 0.0 };
            assert!(item.iter().all(|&x| x == want), "item {i}: {item:?}");
        }
        // No items, and items of no values.
        assert!(par_items_zeroed(0, 4, 0, |_| ()).0.is_empty());
        let (empty, runs) = par_items_zeroed(5, 0, 2, |items| std::iter::from_fn(|| items.next_zeroed()).count());
        assert!(empty.is_empty());
        assert_eq!(runs.iter().sum::<usize>(), 5);
    }
}
