//! The `select!` macro: crossbeam-channel's `select!` over shmq channels, written on top of
//! [`Select`](crate::Select).

/// Waits on several channel operations and runs the arm of the one that completes, like
/// crossbeam-channel's `select!`.
///
/// ```text
/// shmq::select! {
///     recv(rx) -> msg => body,           // msg: Result<Message, RecvError>
///     send(tx, bytes) -> res => body,    // res: Result<(), SendTimeoutError>; bytes: &[u8]
///     default => body,                   // optional: run if nothing is ready now
///     default(timeout) => body,          // or: run if nothing is ready within `timeout`
/// }
/// ```
///
/// Each handle expression is evaluated once, before waiting; the payload of a `send` arm only
/// if that arm is chosen. Without a `default` arm the macro blocks until an operation is ready.
/// The rules are [`Select`](crate::Select)'s: one operation completes, ready operations are
/// chosen at random, a disconnected channel is ready (its arm gets the `Disconnected` error),
/// and a chosen send copies its payload then, waiting for room if another sender took it, but
/// no longer than the select waited: with `default(timeout)` until the same deadline, with
/// `default` not at all (`res` is then `Err(SendTimeoutError::Timeout(()))`, see
/// [`SelectedOperation::send`](crate::SelectedOperation::send)).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let pid = std::process::id();
/// # let config = shmq::ChannelConfig::default().with_arena_bytes(1 << 20);
/// let (jobs_tx, jobs) = shmq::channel(&format!("doc-selm-jobs-{pid}"), config.clone())?;
/// let (control_tx, control) = shmq::channel(&format!("doc-selm-ctl-{pid}"), config)?;
/// jobs_tx.send(b"job 1")?;
/// control_tx.send(b"stop")?;
/// let mut done = 0;
/// loop {
///     shmq::select! {
///         recv(jobs) -> job => done += job?.len(),
///         recv(control) -> command => {
///             assert_eq!(&command?[..], b"stop");
///             break;
///         }
///         default(std::time::Duration::from_secs(5)) => panic!("nothing came"),
///     }
/// }
/// assert!(done == 0 || done == 5); // which arm came first is chosen at random
/// # Ok(()) }
/// ```
#[macro_export]
macro_rules! select {
    ($($tokens:tt)*) => {
        $crate::__shmq_select!(@parse () () $($tokens)*)
    };
}

/// The workings of [`select!`]: not part of the API.
#[doc(hidden)]
#[macro_export]
macro_rules! __shmq_select {
    // ----- parse: normalize each arm to [kind (handle) (extra completion args) (pat) (body)]
    (@parse ($($arms:tt)*) $default:tt recv($rx:expr) -> $p:pat => $body:block $($rest:tt)*) => {
        $crate::__shmq_select!(@parse ($($arms)* [recv ($rx) () ($p) ($body)]) $default $($rest)*)
    };
    (@parse ($($arms:tt)*) $default:tt recv($rx:expr) -> $p:pat => $body:expr, $($rest:tt)*) => {
        $crate::__shmq_select!(@parse ($($arms)* [recv ($rx) () ($p) ($body)]) $default $($rest)*)
    };
    (@parse ($($arms:tt)*) $default:tt recv($rx:expr) -> $p:pat => $body:expr) => {
        $crate::__shmq_select!(@parse ($($arms)* [recv ($rx) () ($p) ($body)]) $default)
    };
    (@parse ($($arms:tt)*) $default:tt
        send($tx:expr, $bytes:expr) -> $p:pat => $body:block $($rest:tt)*) => {
        $crate::__shmq_select!(
            @parse ($($arms)* [send ($tx) (, $bytes) ($p) ($body)]) $default $($rest)*)
    };
    (@parse ($($arms:tt)*) $default:tt
        send($tx:expr, $bytes:expr) -> $p:pat => $body:expr, $($rest:tt)*) => {
        $crate::__shmq_select!(
            @parse ($($arms)* [send ($tx) (, $bytes) ($p) ($body)]) $default $($rest)*)
    };
    (@parse ($($arms:tt)*) $default:tt send($tx:expr, $bytes:expr) -> $p:pat => $body:expr) => {
        $crate::__shmq_select!(@parse ($($arms)* [send ($tx) (, $bytes) ($p) ($body)]) $default)
    };
    (@parse $arms:tt () default => $body:block $($rest:tt)*) => {
        $crate::__shmq_select!(@parse $arms (now ($body)) $($rest)*)
    };
    (@parse $arms:tt () default => $body:expr, $($rest:tt)*) => {
        $crate::__shmq_select!(@parse $arms (now ($body)) $($rest)*)
    };
    (@parse $arms:tt () default => $body:expr) => {
        $crate::__shmq_select!(@parse $arms (now ($body)))
    };
    (@parse $arms:tt () default($timeout:expr) => $body:block $($rest:tt)*) => {
        $crate::__shmq_select!(@parse $arms (within ($timeout) ($body)) $($rest)*)
    };
    (@parse $arms:tt () default($timeout:expr) => $body:expr, $($rest:tt)*) => {
        $crate::__shmq_select!(@parse $arms (within ($timeout) ($body)) $($rest)*)
    };
    (@parse $arms:tt () default($timeout:expr) => $body:expr) => {
        $crate::__shmq_select!(@parse $arms (within ($timeout) ($body)))
    };
    // A comma after a block body.
    (@parse $arms:tt $default:tt , $($rest:tt)*) => {
        $crate::__shmq_select!(@parse $arms $default $($rest)*)
    };
    (@parse () $default:tt) => {
        ::core::compile_error!("shmq::select! needs at least one recv or send arm")
    };
    (@parse $arms:tt $default:tt) => {{
        let mut __shmq_sel = $crate::Select::new();
        $crate::__shmq_select!(@bind __shmq_sel () $default $arms)
    }};
    (@parse $arms:tt $default:tt $($unknown:tt)+) => {
        ::core::compile_error!(::core::concat!(
            "shmq::select!: expected `recv(rx) -> pat => body`, `send(tx, bytes) -> pat => body`, ",
            "`default => body` or `default(timeout) => body` (one default at most), found: ",
            ::core::stringify!($($unknown)+)
        ))
    };

    // ----- bind: each arm's handle and index get names of their own, evaluated once; the
    // names travel on as tokens so that the last step can use them.
    (@bind $sel:ident ($($bound:tt)*) $default:tt
        ([$kind:ident ($handle:expr) $extra:tt $p:tt $body:tt] $($rest:tt)*)) => {{
        let __shmq_handle = &$handle;
        let __shmq_index = $sel.$kind(__shmq_handle);
        $crate::__shmq_select!(@bind $sel
            ($($bound)* [$kind __shmq_handle __shmq_index $extra $p $body]) $default ($($rest)*))
    }};
    (@bind $sel:ident ($($bound:tt)*) () ()) => {{
        let __shmq_oper = $sel.select();
        $crate::__shmq_select!(@run __shmq_oper $($bound)*)
    }};
    (@bind $sel:ident ($($bound:tt)*) (now ($body:tt)) ()) => {
        match $sel.try_select() {
            Ok(__shmq_oper) => $crate::__shmq_select!(@run __shmq_oper $($bound)*),
            Err(_) => $body,
        }
    };
    (@bind $sel:ident ($($bound:tt)*) (within ($timeout:tt) ($body:tt)) ()) => {
        match $sel.select_timeout($timeout) {
            Ok(__shmq_oper) => $crate::__shmq_select!(@run __shmq_oper $($bound)*),
            Err(_) => $body,
        }
    };

    // ----- run: complete the chosen operation and evaluate its arm.
    (@run $oper:ident $([$kind:ident $handle:ident $index:ident ($($extra:tt)*) ($p:pat) ($body:tt)])*) => {
        $(
            if $oper.index() == $index {
                let $p = $oper.$kind($handle $($extra)*);
                $body
            } else
        )* {
            ::core::unreachable!("shmq::select!: the select chose an operation it was not given")
        }
    };
}
