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
    let name = path.to_string_lossy();
    resident_kib_by_file(None)
        .iter()
        .filter(|(file, _)| file.ends_with(name.as_ref()))
        .map(|(_, kib)| kib)
        .sum()
}

/// KiB resident of each file mapped into process `pid` (this one when `None`), by path, from
/// `/proc/PID/smaps`; empty when it cannot be read. For tests and benchmarks.
#[cfg(all(any(test, feature = "testkit"), target_os = "linux"))]
pub fn resident_kib_by_file(pid: Option<u32>) -> std::collections::BTreeMap<String, u64> {
    let proc = pid.map_or("self".to_string(), |pid| pid.to_string());
    let smaps = std::fs::read_to_string(format!("/proc/{proc}/smaps")).unwrap_or_default();
    let mut by_file = std::collections::BTreeMap::new();
    let mut file: Option<&str> = None;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            // A mapping's header: address, permissions, offset, device, inode, then the path of
            // a file mapping (the only field with a slash).
            file = line.find('/').map(|at| &line[at..]);
        } else if first == "Rss:" {
            if let (Some(path), Some(kib)) =
                (file, fields.next().and_then(|v| v.parse::<u64>().ok()))
            {
                *by_file.entry(path.to_string()).or_insert(0) += kib;
            }
        }
    }
    by_file
}
