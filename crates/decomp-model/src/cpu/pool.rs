//! Recycled `f32` buffers for the training engine's activations and gradients.
//!
//! A training step allocates the same buffer sizes every step (each node's output per tile,
//! each gradient) and frees them by its end. Through the allocator every such buffer costs
//! its zeroing: a `vec![0.0; n]` is a `memset`, or a page fault and the kernel's page
//! clearing when the allocator has returned the pages (together about 18% of a ResNet-20
//! batch-128 step on one thread, `perf record`). Buffers the engine is done with go back
//! here ([`give`], [`give_tiles`]) and kernels that write every element take them back
//! ([`take`]) without zeroing; those that accumulate take them zeroed ([`take_zeroed`]).
//!
//! The pool keeps at most [`CAP_BYTES`] (beyond it, a given buffer is freed) and matches a
//! request with a buffer of at least its length and at most a quarter more capacity, so
//! that a buffer of an odd last batch does not pin a large one. Inference never gives
//! buffers back: there the pool stays empty and every `take` allocates.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// The most the pool keeps, in bytes.
pub(crate) const CAP_BYTES: usize = 512 << 20;

/// Free buffers by capacity (in values): a request takes the smallest that fits, without a
/// scan.
struct Pool {
    free: BTreeMap<usize, Vec<Vec<f32>>>,
    bytes: usize,
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    free: BTreeMap::new(),
    bytes: 0,
});

fn lock() -> std::sync::MutexGuard<'static, Pool> {
    // A panic while holding the lock leaves a consistent pool (every operation is one push,
    // pop, map insert or removal, or counter update): recover it.
    POOL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A recycled buffer with capacity for `len` values, if one fits.
fn recycled(len: usize) -> Option<Vec<f32>> {
    if len == 0 {
        return None;
    }
    let mut p = lock();
    let (&cap, list) = p.free.range_mut(len..=len + len / 4).next()?;
    let v = list.pop()?;
    if list.is_empty() {
        p.free.remove(&cap);
    }
    p.bytes -= 4 * v.capacity();
    Some(v)
}

/// A new buffer of `len` zeros (the pool had none that fits).
fn fresh(len: usize) -> Vec<f32> {
    #[cfg(test)]
    FRESH.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    vec![0.0; len]
}

/// `len` values whose contents are unspecified (a recycled buffer's old values, or zeros):
/// for kernels that write every element before reading any.
pub(crate) fn take(len: usize) -> Vec<f32> {
    match recycled(len) {
        Some(mut v) => {
            if v.len() >= len {
                v.truncate(len);
            } else {
                v.resize(len, 0.0);
            }
            // Unit tests poison recycled values, so that a kernel that reads one fails.
            #[cfg(test)]
            v.fill(f32::NAN);
            v
        }
        None => fresh(len),
    }
}

/// `len` zeros.
pub(crate) fn take_zeroed(len: usize) -> Vec<f32> {
    match recycled(len) {
        Some(mut v) => {
            v.clear();
            v.resize(len, 0.0);
            v
        }
        None => fresh(len),
    }
}

/// An empty buffer with capacity for at least `len` values (for kernels that append).
pub(crate) fn take_empty(len: usize) -> Vec<f32> {
    match recycled(len) {
        Some(mut v) => {
            v.clear();
            v
        }
        None => {
            #[cfg(test)]
            FRESH.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Vec::with_capacity(len)
        }
    }
}

thread_local! {
    /// Each thread's scratch buffer (im2col blocks, Winograd transforms), kept from call to
    /// call: a new one per parallel job cost its zeroing each time (`memset`, about 5% of a
    /// no-BatchNorm ResNet-20 step).
    static SCRATCH: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Runs `f` with this thread's scratch buffer, whose contents are unspecified (values of an
/// earlier call; growing it with `resize` zeroes only the new part). A call nested in `f` on
/// the same thread (a parallel job run while `f` waits) gets a buffer of its own.
pub(crate) fn with_scratch<R>(f: impl FnOnce(&mut Vec<f32>) -> R) -> R {
    let mut s = SCRATCH.take();
    // Unit tests poison the old values, so that a kernel that reads one fails.
    #[cfg(test)]
    s.fill(f32::NAN);
    let r = f(&mut s);
    SCRATCH.set(s);
    r
}

/// The first `len` values of a scratch buffer (contents unspecified), growing it when it is
/// shorter. Never shrinking it matters: `resize` to a smaller length and back zeroed the
/// difference again at every call, since layers of different widths share one thread's
/// scratch (1.2% of a no-BatchNorm ResNet-56 step in `memset`).
pub(crate) fn scratch_of(scratch: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if scratch.len() < len {
        scratch.resize(len, 0.0);
    }
    &mut scratch[..len]
}

/// Gives a buffer back (freed instead when the pool is full).
pub(crate) fn give(v: Vec<f32>) {
    let bytes = 4 * v.capacity();
    if bytes == 0 {
        return;
    }
    let mut p = lock();
    if p.bytes + bytes <= CAP_BYTES {
        p.bytes += bytes;
        p.free.entry(v.capacity()).or_default().push(v);
    }
}

/// Gives every tile's buffer back.
pub(crate) fn give_tiles(tiles: Vec<Vec<f32>>) {
    tiles.into_iter().for_each(give);
}

/// The buffers the pool holds, for tests: a training pass must give back no more buffers
/// than it took, or the pool fills up to [`CAP_BYTES`] with buffers that never come back.
#[cfg(test)]
pub(crate) fn held() -> usize {
    lock().free.values().map(Vec::len).sum()
}

/// Buffers the pool allocated because none fitted, for tests.
#[cfg(test)]
static FRESH: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// [`FRESH`]: a training pass after the first few should allocate none.
#[cfg(test)]
pub(crate) fn fresh_allocations() -> usize {
    FRESH.load(std::sync::atomic::Ordering::Relaxed)
}

/// Held by the unit tests that give buffers back, so that [`held`] counts one test's.
#[cfg(test)]
pub(crate) static TEST_LOCK: Mutex<()> = Mutex::new(());

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_by_size_and_zeroed_on_request() {
        let _serial = TEST_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        // Sizes no other test of this crate uses, so that parallel tests do not interfere.
        let (a, b) = (1_000_003, 2_000_029);
        give(vec![1.0; a]);
        let v = take(a - 10);
        assert_eq!(v.len(), a - 10);
        assert!(v.capacity() >= a, "the recycled buffer");
        assert!(
            v.iter().all(|x| x.is_nan()),
            "recycled values are poisoned in tests"
        );
        give(v);
        let z = take_zeroed(a);
        assert!(z.iter().all(|&x| x == 0.0));
        give(z);
        let e = take_empty(a - 5);
        assert!(e.is_empty() && e.capacity() >= a - 5);
        give(e);
        // Far smaller requests do not pin the large buffer.
        let small = take(1000);
        assert!(small.capacity() < a);
        // A buffer too small is not handed out.
        let big = take_zeroed(b);
        assert_eq!(big.len(), b);
        assert!(big.iter().all(|&x| x == 0.0));
    }
}
