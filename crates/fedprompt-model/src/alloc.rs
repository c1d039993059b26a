//! Allocator settings for processes that run the model.
//!
//! A training or inference step allocates and frees the same large activation buffers (tens of
//! MiB each) at every layer. glibc's `malloc` serves such sizes with a fresh `mmap` and returns
//! them with `munmap` on free, so every step pays the kernel for page faults and for zeroing
//! pages it then overwrites (in a bf16 XLM-R-base inference step this was about 12% of the
//! process's time in the kernel). [`keep_freed_memory`] makes `malloc` serve every size from
//! its heap and keep freed memory for reuse: the process's peak memory is the same (the buffers
//! were live at the same time anyway), and later steps reuse pages already mapped.

/// Tells glibc's `malloc` to serve large blocks from its heap instead of `mmap`, and not to
/// return freed memory to the system, for the rest of this process. Call it once, first thing
/// in `main`, before threads start. `FEDPROMPT_MALLOC_DEFAULTS=1` leaves glibc's defaults (for
/// comparisons). Does nothing on other C libraries. Returns whether the settings were applied.
pub fn keep_freed_memory() -> bool {
    if std::env::var_os("FEDPROMPT_MALLOC_DEFAULTS").is_some_and(|v| v != "0") {
        return false;
    }
    apply()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn apply() -> bool {
    // SAFETY: mallopt only changes the allocator's parameters; it is documented as safe to
    // call at any time and is called here before other threads allocate.
    unsafe {
        // Blocks below 1 GiB come from the heap (and are reused after free), not from mmap.
        let heap = libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30) == 1;
        // Keep up to 1 GiB of free memory at the top of the heap instead of trimming it, and
        // grow the heap 64 MiB at a time (fewer brk calls).
        let keep = libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30) == 1;
        let pad = libc::mallopt(libc::M_TOP_PAD, 64 << 20) == 1;
        heap && keep && pad
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn apply() -> bool {
    false
}

#[cfg(test)]
mod tests {
    /// glibc accepts every setting (a value it refused would leave its defaults silently).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn glibc_takes_the_settings() {
        assert!(super::apply());
        // Large blocks still allocate, free and reallocate under the new settings.
        for _ in 0..3 {
            let v = vec![1u8; 64 << 20];
            assert_eq!(v[(64 << 20) - 1], 1);
        }
    }
}
