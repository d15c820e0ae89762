pub mod api;
pub mod auth;
pub mod cli;
pub mod coalesce;
pub mod error;
pub mod generations;
pub mod import;
pub mod logs;
pub mod observe;
pub mod pb;
pub mod registry;
pub mod server;
pub mod store;

/// mimalloc, not glibc's malloc. The async workers allocate what the
/// store's writer frees (each write's transaction), and glibc served them from
/// its slow path (`_int_malloc`, `malloc_consolidate`): a fifth of a durable
/// create's CPU. With mimalloc a create costs about a quarter less CPU; a
/// party-filtered List page some 15 % more (docs/benchmarks.md, eleventh
/// session).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(test)]
mod tests {
    /// The global allocator is mimalloc (the store's `release_freed_memory`
    /// asks it, not glibc, to return memory).
    #[test]
    fn memory_comes_from_mimalloc() {
        unsafe extern "C" {
            fn mi_is_in_heap_region(p: *const std::ffi::c_void) -> bool;
        }
        let boxed = Box::new([0u8; 64]);
        // SAFETY: mi_is_in_heap_region only compares the address.
        assert!(unsafe { mi_is_in_heap_region(boxed.as_ptr().cast()) });
    }
}
