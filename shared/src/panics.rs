//! Panics of third-party decoders, caught and reported as errors without the default hook's
//! message on stderr.
//!
//! Some decoders panic on damaged input instead of returning an error (the Parquet reader's
//! bit-unpacking assertions). Where such a call is guarded, its panic is the caller's error to
//! report — a clean message naming the file — and the default hook's `thread 'main' panicked at
//! …` line (and backtrace, with `RUST_BACKTRACE=1`) would only confuse the reader. Every other
//! panic is reported by the hook as before.

use std::any::Any;
use std::cell::Cell;
use std::panic::{AssertUnwindSafe, UnwindSafe};
use std::sync::Once;

thread_local! {
    /// Whether this thread is inside [`catch_quietly`] now.
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

static HOOK: Once = Once::new();

/// Runs `f`, catching a panic as [`std::panic::catch_unwind`] does, but without the panic hook's
/// report for a panic inside it. The first call wraps the hook in force then (once per process).
pub fn catch_quietly<T>(f: impl FnOnce() -> T + UnwindSafe) -> Result<T, Box<dyn Any + Send>> {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                previous(info);
            }
        }));
    });
    let was = QUIET.with(|q| q.replace(true));
    let result = std::panic::catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(was));
    result
}

/// The message a caught panic carried, if it was a string.
pub fn message(panic: &(dyn Any + Send)) -> Option<&str> {
    panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn a_guarded_panic_is_caught_without_the_hook_and_others_still_reach_it() {
        static REPORTED: AtomicUsize = AtomicUsize::new(0);
        // The hook in force before the first guarded call counts the panics it is shown.
        std::panic::set_hook(Box::new(|_| {
            REPORTED.fetch_add(1, Ordering::SeqCst);
        }));
        let caught = catch_quietly(|| -> u32 { panic!("bit-unpacking assertion") }).unwrap_err();
        assert_eq!(message(caught.as_ref()), Some("bit-unpacking assertion"));
        assert_eq!(REPORTED.load(Ordering::SeqCst), 0, "the hook reported it");
        assert_eq!(catch_quietly(|| 7).unwrap(), 7);
        // Outside a guarded call the hook still sees every panic.
        let unguarded = std::thread::spawn(|| panic!("a real bug")).join();
        assert!(unguarded.is_err());
        assert_eq!(REPORTED.load(Ordering::SeqCst), 1);
        let _ = std::panic::take_hook();
    }
}
