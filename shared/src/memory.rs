//! Memory the process hands back to the system.
//!
//! glibc keeps memory that was allocated and freed in small pieces (decoded files, staging
//! buffers) in its per-thread arenas and returns little of it by itself; after a large load the
//! resident size stays at the load's peak. Long-running servers call [`return_freed_memory`]
//! after such work. This module must not decide when: its callers do.

/// Returns the allocator's free pages to the system (glibc's `malloc_trim(0)`, which releases the
/// free pages inside every arena, not only at their tops). Takes the arenas' locks while it
/// walks them — a few milliseconds after a large load — so call it off latency-critical threads.
/// Does nothing where the C library is not glibc.
pub fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` walks glibc's own arenas under their locks; no pointer of ours is
    // involved.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// KiB of the file at `path` resident in this process's mappings (from `/proc/self/smaps`): for
/// tests (this crate's, and with feature `testkit` other crates').
#[cfg(all(any(test, feature = "testkit"), target_os = "linux"))]
pub fn resident_kib(path: &std::path::Path) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let name = path.to_string_lossy();
    let mut inside = false;
    let mut total = 0;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            inside = line.ends_with(name.as_ref());
        } else if inside && first == "Rss:" {
            total += line
                .split_whitespace()
                .nth(1)
                .unwrap()
                .parse::<u64>()
                .unwrap();
        }
    }
    total
}
