//! Every call into the operating system, and the one place where an address in shared memory
//! becomes a reference to an atomic word.
//!
//! The rest of the crate sees a small vocabulary and never calls `rustix` or `libc` itself:
//!
//! - [`linux`]: open (never through a symbolic link), size, stat, read, link and unlink a named
//!   shared-memory object; lock a byte of it (liveness); sleep and wake on a futex word; lock a robust process-shared mutex; map an
//!   object. OS errors come back as [`std::io::Error`]s whose [`kind`](std::io::Error::kind)
//!   callers match on (errno values stay in here).
//! - [`mapping`]: [`Mapping`], a mapped object, and its checked atomic views
//!   ([`Mapping::atomic`], [`Window::atomic_in`] for a part of a mapping kept beside its owner),
//!   which check bounds and alignment before they make the reference.
//!   (Payload bytes are reached as slices by `Message`, `Loan` and the shared-value guards,
//!   whose `# Soundness` sections say why that is sound.)
//!
//! Porting shmq to another system means writing one more file beside `linux.rs` that offers the
//! same functions; `mapping.rs` is portable.

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub(crate) use linux::*;

mod mapping;
pub(crate) use mapping::{Mapping, SharedAtomic, Window};

#[cfg(not(target_os = "linux"))]
compile_error!("shmq supports Linux only for now: see src/sys/mod.rs for what a port needs");
