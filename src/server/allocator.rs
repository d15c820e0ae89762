//! The global allocator: mimalloc, not glibc's malloc.
//!
//! The async workers allocate what the store's writer frees (each write's
//! transaction), and glibc serves that from its slow path (`_int_malloc`,
//! `malloc_consolidate`), a large share of a durable create's CPU (the CPU a
//! call of `cargo bench --bench service`). It is built without huge pages
//! (the crate's `no_thp`): with them an idle server holds several times the
//! memory.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

unsafe extern "C" {
    /// Returns the memory the allocator holds free to the operating system,
    /// and takes back what other threads freed of this thread's blocks.
    fn mi_collect(force: bool);
}

/// Hands the memory that is free in the allocator back to the operating
/// system (the store calls it once a closed database's memory is freed).
pub fn release_free_memory() {
    // SAFETY: mi_collect takes no pointers and only returns free memory.
    unsafe { mi_collect(true) }
}

#[cfg(test)]
mod tests {
    /// Allocations come from mimalloc, the allocator `release_free_memory`
    /// asks to return memory.
    #[test]
    fn memory_comes_from_mimalloc() {
        unsafe extern "C" {
            fn mi_is_in_heap_region(p: *const std::ffi::c_void) -> bool;
        }
        let boxed = Box::new([0u8; 64]);
        // SAFETY: mi_is_in_heap_region only compares the address.
        assert!(unsafe { mi_is_in_heap_region(boxed.as_ptr().cast()) });
        super::release_free_memory();
    }
}
