//! Every call into the operating system lives below this module.
//!
//! The rest of the crate sees a small vocabulary (open a named shared-memory object, map it, lock
//! a byte of it, sleep on a futex word, lock a robust mutex) and never calls `rustix` or `libc`
//! itself. Porting shmq to another system means writing one more file beside `linux.rs` that
//! offers the same functions.

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub(crate) use linux::*;

#[cfg(not(target_os = "linux"))]
compile_error!("shmq supports Linux only for now: see src/sys/mod.rs for what a port needs");
