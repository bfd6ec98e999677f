//! Handing freed memory back to the system between the phases of a long operation.
//!
//! glibc's allocator raises its mmap threshold to the size of the largest block freed (up to
//! 32 MiB) and its trim threshold to twice that: after an index object or a chunk list of a
//! few megabytes is freed, later blocks of that size come from the heap, and what is freed
//! there stays resident. Measured on a prune of a 4 GiB database: 134 MiB of anonymous memory
//! at the peak, 121 MiB with the thresholds fixed (benches/REPORT.md, section 9). Fixing them
//! for the whole process costs an mmap and page faults per large buffer on the snapshot path,
//! so the operations that hold large tables call [`release_free`] where a phase's temporaries
//! are gone instead.

/// Return the allocator's free memory to the system (glibc's `malloc_trim`: the free pages of
/// every arena). A no-op elsewhere.
pub fn release_free() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it takes no pointer.
    unsafe {
        libc::malloc_trim(0);
    }
}
