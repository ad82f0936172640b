//! mimalloc's options, for the programs that use it as their global allocator.

/// Makes mimalloc keep the pages it frees instead of returning them to the kernel after its
/// default second (`purge_delay` -1): a training step frees and reallocates hundreds of MB of
/// activations, and pages returned in between come back as page faults the kernel zeroes
/// (1,975 to 7,741 faults in 15 ResNet-56 steps of `train_probe`, varying with timing). For
/// the programs that use mimalloc as their global allocator (`decomp`, the probes), called
/// first in `main`; their peak memory is unchanged, it is only held until they exit.
/// With it, 688 faults in 11 steps (startup included). Measured (`train_probe --depth 56
/// --augment`, batch 128, two threads, alternating with the variable
/// `MIMALLOC_PURGE_DELAY=-1` that sets the same option): faster in 7 of 8 pairs, mean 233 ->
/// 238 images/s; with the call built in, 3 more pairs 248/223/231 against 232/233/231: a
/// gain of about 2%, inside this machine's run-to-run noise, and fewer slow outliers.
pub fn keep_freed_pages() {
    #[allow(unsafe_code)]
    // SAFETY: `mi_option_set` takes two integers and stores one option of the C library (an
    // atomic store), valid in any thread at any time.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1)
    }
}

/// `mi_option_purge_delay` in `mi_option_e` of mimalloc v3, the version libmimalloc-sys builds
/// by default (15 in v2 too; libmimalloc-sys names only some options).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

#[cfg(test)]
mod tests {
    use super::*;

    /// The option number is mimalloc's `purge_delay`: its default in mimalloc v3 is 1000 (ms)
    /// unless the environment sets it, and after the call it reads -1.
    #[test]
    fn keep_freed_pages_sets_purge_delay() {
        #[allow(unsafe_code)]
        // SAFETY: reads one integer option of the C library (an atomic load).
        let get = || unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        // mimalloc reads its variables at start-up (the legacy name too).
        if ["MIMALLOC_PURGE_DELAY", "MIMALLOC_RESET_DELAY"]
            .iter()
            .all(|v| std::env::var_os(v).is_none())
        {
            assert_eq!(get(), 1000, "mimalloc v3's purge_delay default");
        }
        keep_freed_pages();
        assert_eq!(get(), -1);
    }
}
