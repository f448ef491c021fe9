//! Settings the training worker needs in its environment from the first instruction on: glibc's
//! allocator and candle's thread pool read them once, at start-up.
//!
//! - glibc serves every allocation over 32 MiB with a fresh `mmap` and unmaps it on free, so each
//!   large tensor of every step is page-faulted in again (about 50 ms for a 154 MB tensor here).
//!   `MALLOC_MMAP_THRESHOLD_` and `MALLOC_TRIM_THRESHOLD_` keep freed memory in the heap for
//!   reuse. That covers only the main thread's heap: a training job runs on a runtime worker
//!   thread, whose own arena cannot hold a block over 64 MiB and maps it afresh anyway, so
//!   `MALLOC_ARENA_MAX=1` sends every thread to the main heap. Together: 12-17 s -> 9 s per head
//!   epoch of the guide's run (docs/performance.md). The price is that the process keeps its
//!   peak heap.
//! - candle's elementwise ops hand work to a pool thread that then spins for 25,000 rounds
//!   before it parks, on a machine whose two cores the kernels' own threads are using: 7-9% of a
//!   MobileNetV2 step. 2,000 rounds keep back-to-back candle ops quick without that.
//!
//! [`reexec_with_tuned_env`](crate::process_env::reexec_with_tuned_env) re-runs the program with whichever of these are unset (a variable
//! already in the environment is left as it is; `TANUKI_TUNED_ENV=0` turns the re-run off).

use std::ffi::OsStr;

/// The variables and the values they get when unset.
pub const TUNED_ENV: [(&str, &str); 4] = [
    ("MALLOC_MMAP_THRESHOLD_", "2147483647"),
    ("MALLOC_TRIM_THRESHOLD_", "4294967295"),
    ("MALLOC_ARENA_MAX", "1"),
    ("CANDLE_BARRIER_POOL_SPIN_LIMIT", "2000"),
];

/// Set in the re-run process (so that it does not re-run again), or by the user: `0` to keep the
/// environment as it is.
const MARKER: &str = "TANUKI_TUNED_ENV";

/// The [`TUNED_ENV`] variables missing from the environment `get` describes, unless the marker
/// is set.
fn missing(get: impl Fn(&str) -> Option<std::ffi::OsString>) -> Vec<(&'static str, &'static str)> {
    if get(MARKER).is_some() {
        return Vec::new();
    }
    TUNED_ENV.into_iter().filter(|(k, _)| get(k).is_none()).collect()
}

/// Replaces this process with the same program and arguments, with the [`TUNED_ENV`] variables
/// that are unset added. Returns (doing nothing) when none is missing, when the marker is set,
/// or when the re-run cannot start (the reason goes to stderr; the process then runs untuned).
/// Call it first thing in `main`, before any thread or allocation that matters exists.
pub fn reexec_with_tuned_env() {
    let add = missing(|k| std::env::var_os(k));
    if add.is_empty() {
        return;
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        let exe = match std::env::current_exe() {
            Ok(exe) => exe,
            Err(e) => {
                return eprintln!("tanuki: running with the default allocator settings (no path to this program: {e})")
            }
        };
        let err = std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .envs(add.iter().map(|&(k, v)| (k, v)))
            .env(MARKER, OsStr::new("1"))
            .exec();
        eprintln!("tanuki: running with the default allocator settings (re-run failed: {err})");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unset_variables_are_added_and_the_marker_stops_it() {
        let all = missing(|_| None);
        assert_eq!(all.len(), TUNED_ENV.len());
        let some = missing(|k| (k == "MALLOC_ARENA_MAX").then(|| "4".into()));
        assert!(some.iter().all(|(k, _)| *k != "MALLOC_ARENA_MAX") && some.len() == TUNED_ENV.len() - 1);
        assert!(missing(|k| (k == MARKER).then(|| "0".into())).is_empty());
        assert!(missing(|k| (k == MARKER).then(|| "1".into())).is_empty());
    }
}
