//! Crash points: places in the protocol where a test can have the process kill itself, to
//! check that what it leaves half-done is finished or undone by the survivors.
//!
//! Compiled in only with the `crash-points` feature (tests/crash_points.rs); without it,
//! [`crash_point!`](crate::crash_point) expands to nothing. With it,
//! `SHMQ_CRASH_AT=<point>#<n>` in the environment makes the `n`-th pass (counting from 1)
//! through the point named `<point>` send SIGKILL to the process: no unwinding, no
//! destructor, as a `kill -9` from outside would.

#[cfg(feature = "crash-points")]
mod armed {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    /// The point and pass number of `SHMQ_CRASH_AT`, read once.
    fn target() -> Option<&'static (String, u64)> {
        static TARGET: OnceLock<Option<(String, u64)>> = OnceLock::new();
        TARGET
            .get_or_init(|| {
                let value = std::env::var("SHMQ_CRASH_AT").ok()?;
                let (point, pass) = value.split_once('#')?;
                Some((point.to_owned(), pass.parse().ok()?))
            })
            .as_ref()
    }

    /// Passes through the armed point so far.
    static PASSES: AtomicU64 = AtomicU64::new(0);

    /// Kills the process if `point` is the armed point and this is its armed pass.
    pub fn reached(point: &str) {
        let Some((armed, pass)) = target() else {
            return;
        };
        if armed == point && PASSES.fetch_add(1, Ordering::SeqCst) + 1 == *pass {
            crate::sys::kill_self();
        }
    }
}

#[cfg(feature = "crash-points")]
pub use armed::reached;

/// Marks a crash point named by a string literal (see the module documentation).
#[macro_export]
#[doc(hidden)]
macro_rules! crash_point {
    ($point:literal) => {
        #[cfg(feature = "crash-points")]
        $crate::crash::reached($point);
    };
}
