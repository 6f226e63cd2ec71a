//! Linux: POSIX shared memory under /dev/shm, open-file-description locks for liveness, futexes
//! for sleeping, and glibc's robust process-shared mutexes.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rustix::fs::{AtFlags, FallocateFlags, FileType, Mode, OFlags};
use rustix::mm::{MapFlags, ProtFlags};
use rustix::thread::futex;

/// Where the kernel exposes POSIX shared-memory objects as files.
pub(crate) const SHM_DIR: &str = "/dev/shm";

/// The path of the shared-memory object `os_name` in [`SHM_DIR`]. `os_name` must be one entry
/// of that directory: not empty, not `.` or `..`, without a `/`.
fn shm_path(os_name: &str) -> io::Result<String> {
    if os_name.is_empty() || os_name == "." || os_name == ".." || os_name.contains(['/', '\0']) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a shared-memory object name",
        ));
    }
    Ok(format!("{SHM_DIR}/{os_name}"))
}

/// Flags of every open of a shared-memory object: glibc's `shm_open` adds `O_NOFOLLOW` and
/// `O_CLOEXEC`, rustix's adds only `O_CLOEXEC`, so shmq opens the path itself. A symbolic link
/// planted in /dev/shm is refused (`ELOOP`, see [`is_symlink_refusal`]) instead of followed to
/// another object, and a child that `exec`s inherits no descriptor.
fn shm_flags() -> OFlags {
    OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// Creates the shared-memory object `os_name` (e.g. `shmq.frames`), failing if it exists.
/// Mode 0600: only the creating user may open it.
pub(crate) fn shm_create_exclusive(os_name: &str) -> io::Result<OwnedFd> {
    let flags = shm_flags() | OFlags::CREATE | OFlags::EXCL;
    Ok(rustix::fs::open(
        shm_path(os_name)?.as_str(),
        flags,
        Mode::RUSR | Mode::WUSR,
    )?)
}

/// Opens the existing shared-memory object `os_name` for reading and writing, never through a
/// symbolic link.
pub(crate) fn shm_open_existing(os_name: &str) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        shm_path(os_name)?.as_str(),
        shm_flags(),
        Mode::empty(),
    )?)
}

/// Whether `error`, from [`shm_open_existing`], says the name is a symbolic link (which it does
/// not follow).
pub(crate) fn is_symlink_refusal(error: &io::Error) -> bool {
    error.raw_os_error() == Some(libc::ELOOP)
}

/// Gives the object open as `fd` the further name `new_os_name` in [`SHM_DIR`] (a hard link),
/// failing with `AlreadyExists` if that name exists. It links the object behind the
/// descriptor, not whatever an old name refers to by now: through `/proc/self/fd` with
/// `AT_SYMLINK_FOLLOW`, which needs no privilege (linking a descriptor itself, `AT_EMPTY_PATH`,
/// needs `CAP_DAC_READ_SEARCH`). An object whose every name was removed cannot be linked
/// again (`NotFound`).
pub(crate) fn shm_link(fd: BorrowedFd<'_>, new_os_name: &str) -> io::Result<()> {
    let new_path = shm_path(new_os_name)?;
    let old_path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    Ok(rustix::fs::linkat(
        rustix::fs::CWD,
        old_path.as_str(),
        rustix::fs::CWD,
        new_path.as_str(),
        AtFlags::SYMLINK_FOLLOW,
    )?)
}

/// Opens a new description of the file behind `fd` (through /proc/self/fd), read-write and
/// close-on-exec. Locks taken through it are its own, independent of `fd`'s.
pub(crate) fn reopen(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    Ok(rustix::fs::open(
        path.as_str(),
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Removes the name `os_name`; mappings that exist stay valid until they are unmapped.
pub(crate) fn shm_unlink(os_name: &str) -> io::Result<()> {
    Ok(rustix::fs::unlink(shm_path(os_name)?.as_str())?)
}

/// Sizes the object to `len` bytes and makes tmpfs allocate every page now, so that a full
/// /dev/shm shows up here as `ENOSPC` rather than as SIGBUS on a later write.
pub(crate) fn reserve(fd: BorrowedFd<'_>, len: u64) -> io::Result<()> {
    rustix::fs::ftruncate(fd, len)?;
    if len > 0 {
        rustix::fs::fallocate(fd, FallocateFlags::empty(), 0, len)?;
    }
    Ok(())
}

/// What kind of file an open object is, as `fstat` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FileKind {
    /// A regular file: the only kind a shared-memory segment is.
    Regular,
    /// A directory.
    Directory,
    /// A symbolic link.
    Symlink,
    /// A named pipe.
    Fifo,
    /// A socket.
    Socket,
    /// A character device.
    CharDevice,
    /// A block device.
    BlockDevice,
    /// Anything else.
    Unknown,
}

impl FileInfo {
    /// Whether the object is a regular file.
    pub(crate) fn is_regular(&self) -> bool {
        self.kind == FileKind::Regular
    }
}

impl FileKind {
    /// The kind with its article, for messages: "a regular file", "a FIFO"...
    pub(crate) fn describe(self) -> &'static str {
        match self {
            FileKind::Regular => "a regular file",
            FileKind::Directory => "a directory",
            FileKind::Symlink => "a symbolic link",
            FileKind::Fifo => "a FIFO",
            FileKind::Socket => "a socket",
            FileKind::CharDevice => "a character device",
            FileKind::BlockDevice => "a block device",
            FileKind::Unknown => "a file of unknown type",
        }
    }
}

/// What `fstat` says about an open object.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FileInfo {
    /// What kind of file it is.
    pub(crate) kind: FileKind,
    /// Size in bytes.
    pub(crate) size: u64,
    /// Owning user id.
    pub(crate) uid: u32,
    /// Last modification time.
    pub(crate) modified: std::time::SystemTime,
}

/// `fstat` of an open object.
// The stat fields' integer types differ between targets; on some the conversions are identities.
#[allow(clippy::useless_conversion)]
pub(crate) fn file_info(fd: BorrowedFd<'_>) -> io::Result<FileInfo> {
    let st = rustix::fs::fstat(fd)?;
    let kind = match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => FileKind::Regular,
        FileType::Directory => FileKind::Directory,
        FileType::Symlink => FileKind::Symlink,
        FileType::Fifo => FileKind::Fifo,
        FileType::Socket => FileKind::Socket,
        FileType::CharacterDevice => FileKind::CharDevice,
        FileType::BlockDevice => FileKind::BlockDevice,
        _ => FileKind::Unknown,
    };
    Ok(FileInfo {
        kind,
        size: u64::try_from(st.st_size).unwrap_or(0),
        uid: st.st_uid,
        modified: std::time::UNIX_EPOCH
            + Duration::from_secs(u64::try_from(st.st_mtime).unwrap_or(0))
            + Duration::from_nanos(u64::try_from(st.st_mtime_nsec).unwrap_or(0)),
    })
}

/// Whether two descriptors refer to the same object (same device and inode).
pub(crate) fn same_object(a: BorrowedFd<'_>, b: BorrowedFd<'_>) -> io::Result<bool> {
    let (a, b) = (rustix::fs::fstat(a)?, rustix::fs::fstat(b)?);
    Ok(a.st_dev == b.st_dev && a.st_ino == b.st_ino)
}

/// Removes the name `os_name` only if it still refers to the object open as `fd`: once a name
/// was removed and reused for a new object, the old object's users must not unlink the new one.
/// Returns whether it unlinked. (A removal and re-creation between the check and the unlink, a
/// window of microseconds, is not caught: POSIX has no unlink-by-descriptor.)
pub(crate) fn shm_unlink_if_same(os_name: &str, fd: BorrowedFd<'_>) -> io::Result<bool> {
    let current = match shm_open_existing(os_name) {
        Ok(current) => current,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(false),
        Err(e) => return Err(e),
    };
    if !same_object(current.as_fd(), fd)? {
        return Ok(false);
    }
    match shm_unlink(os_name) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The effective user id of this process.
pub(crate) fn effective_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// The id of this process.
/// Kills this process with SIGKILL, as `kill -9` from outside would (for crash points).
#[cfg(feature = "crash-points")]
pub(crate) fn kill_self() -> ! {
    rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL)
        .expect("kill(2) of our own pid");
    // The kernel delivers it on the way back from the call; nothing of ours runs after.
    loop {
        std::thread::yield_now();
    }
}

pub(crate) fn process_id() -> u32 {
    rustix::process::getpid().as_raw_nonzero().get() as u32
}

/// Names of the entries of [`SHM_DIR`] that start with `prefix`.
pub(crate) fn list_shm_names(prefix: &str) -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(SHM_DIR)? {
        let entry = entry?;
        if let Some(name) = entry.file_name().to_str() {
            if name.starts_with(prefix) {
                names.push(name.to_owned());
            }
        }
    }
    names.sort();
    Ok(names)
}

/// Maps the first `len` bytes of `fd` shared and read-write (see [`Mapping::new`]).
///
/// [`Mapping::new`]: super::Mapping::new
pub(super) fn map_shared_raw(
    fd: BorrowedFd<'_>,
    len: usize,
    populate: bool,
) -> io::Result<NonNull<u8>> {
    if len == 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty mapping"));
    }
    let mut flags = MapFlags::SHARED;
    if populate {
        flags |= MapFlags::POPULATE;
    }
    // SAFETY: a fresh mapping at an address the kernel picks cannot alias any Rust object.
    let ptr = unsafe {
        rustix::mm::mmap(
            std::ptr::null_mut(),
            len,
            ProtFlags::READ | ProtFlags::WRITE,
            flags,
            fd,
            0,
        )?
    };
    NonNull::new(ptr.cast::<u8>()).ok_or_else(io::Error::last_os_error)
}

/// Unmaps what [`map_shared_raw`] mapped.
///
/// # Safety
/// `ptr` and `len` must come from one successful [`map_shared_raw`] call, and no reference into
/// the range may outlive this call.
pub(super) unsafe fn unmap_raw(ptr: NonNull<u8>, len: usize) {
    // SAFETY: the caller passes a range mmap returned, unused from now on. munmap of such a
    // range cannot fail (EINVAL would mean a range mmap never returned).
    let _ = unsafe { rustix::mm::munmap(ptr.as_ptr().cast(), len) };
}

/// Reads up to `buf.len()` bytes at `offset` of `fd` without mapping it, retrying after
/// signals. Returns how many bytes were read: fewer at the end of the file.
pub(crate) fn read_at(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match rustix::io::pread(fd, &mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(filled)
}

/// The error `pthread_mutex_lock` reports for a mutex that can never be taken again.
pub(crate) fn not_recoverable_error() -> io::Error {
    io::Error::from_raw_os_error(libc::ENOTRECOVERABLE)
}

fn ofd_lock_request(
    fd: BorrowedFd<'_>,
    cmd: libc::c_int,
    kind: libc::c_short,
    byte: u64,
) -> io::Result<libc::flock> {
    // SAFETY: flock is a plain C struct for which all-zero is a valid value.
    let mut request: libc::flock = unsafe { std::mem::zeroed() };
    request.l_type = kind;
    request.l_whence = libc::SEEK_SET as libc::c_short;
    request.l_start = byte as libc::off_t;
    request.l_len = 1;
    request.l_pid = 0; // required for OFD locks
    loop {
        // SAFETY: fd is a live descriptor and `request` a valid flock for the whole call.
        // rustix's fcntl_lock only locks whole files, so byte-range OFD locks go through libc.
        let rc = unsafe { libc::fcntl(fd.as_raw_fd(), cmd, &mut request as *mut libc::flock) };
        if rc == 0 {
            return Ok(request);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Takes an exclusive open-file-description lock on one byte of `fd`, without waiting.
/// Returns false if another open file description holds it. The kernel drops the lock when the
/// last descriptor of this description closes, which includes the death of the process.
pub(crate) fn try_lock_byte(fd: BorrowedFd<'_>, byte: u64) -> io::Result<bool> {
    match ofd_lock_request(fd, libc::F_OFD_SETLK, libc::F_WRLCK as libc::c_short, byte) {
        Ok(_) => Ok(true),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Like [`try_lock_byte`], retrying until `deadline`. Returns false if the deadline passed.
pub(crate) fn lock_byte_until(
    fd: BorrowedFd<'_>,
    byte: u64,
    deadline: Instant,
) -> io::Result<bool> {
    let mut pause = Duration::from_micros(20);
    loop {
        if try_lock_byte(fd, byte)? {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(2));
    }
}

/// Releases a lock taken with [`try_lock_byte`] through the same description.
pub(crate) fn unlock_byte(fd: BorrowedFd<'_>, byte: u64) -> io::Result<()> {
    ofd_lock_request(fd, libc::F_OFD_SETLK, libc::F_UNLCK as libc::c_short, byte).map(|_| ())
}

/// Whether an open file description other than `fd`'s holds a lock on `byte`.
pub(crate) fn byte_locked_elsewhere(fd: BorrowedFd<'_>, byte: u64) -> io::Result<bool> {
    let answer = ofd_lock_request(fd, libc::F_OFD_GETLK, libc::F_WRLCK as libc::c_short, byte)?;
    Ok(answer.l_type != libc::F_UNLCK as libc::c_short)
}

/// Sleeps while `*word == expected`, at most `timeout`. Returns on a wake-up, a timeout, a
/// signal or a changed word alike: callers re-check their condition.
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    let spec = timeout.map(|t| futex::Timespec {
        tv_sec: t.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: t.subsec_nanos() as _,
    });
    // Not FUTEX_PRIVATE: the word lives in memory shared between processes.
    let _ = futex::wait(word, futex::Flags::empty(), expected, spec.as_ref());
}

/// Wakes every process sleeping on `word`.
pub(crate) fn futex_wake_all(word: &AtomicU32) {
    let _ = futex::wake(word, futex::Flags::empty(), i32::MAX as u32);
}

/// Most futex words one [`futex_wait_any`] call sleeps on: the kernel's limit for
/// `futex_waitv` (`FUTEX_WAITV_MAX`).
pub(crate) const FUTEX_WAITV_MAX: usize = 128;

/// How a [`futex_wait_any`] call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WaitAny {
    /// Woken, or a word no longer held its expected value, or a signal, or the deadline:
    /// callers re-check what they wait for in every case.
    Returned,
    /// The kernel has no `futex_waitv` (Linux before 5.16, or a seccomp filter that refuses
    /// it): nothing slept.
    Unsupported,
}

/// Sleeps until one of `words` no longer holds its expected value, or until `deadline` (at
/// most [`FUTEX_WAITV_MAX`] words; more is a caller's bug, and is cut to that many). Each word
/// is a shared (not `FUTEX2_PRIVATE`) futex: it may live in memory mapped by other processes,
/// and a waker there must find this sleeper.
pub(crate) fn futex_wait_any(words: &[(&AtomicU32, u32)], deadline: Option<Instant>) -> WaitAny {
    let waits: Vec<futex::Wait> = words
        .iter()
        .take(FUTEX_WAITV_MAX)
        .map(|(word, expected)| {
            let mut wait = futex::Wait::new();
            wait.val = u64::from(*expected);
            wait.uaddr = futex::WaitPtr::new(word.as_ptr().cast());
            wait.flags = futex::WaitFlags::SIZE_U32;
            wait
        })
        .collect();
    // futex_waitv takes an absolute time on the clock it is given: CLOCK_MONOTONIC, which is
    // the clock `Instant` reads on Linux.
    let spec = deadline.map(|d| {
        let left = d.saturating_duration_since(Instant::now());
        let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        let nanos = now.tv_nsec as u64 + u64::from(left.subsec_nanos());
        futex::Timespec {
            tv_sec: now
                .tv_sec
                .saturating_add(left.as_secs().min(i64::MAX as u64 / 2) as i64)
                .saturating_add((nanos / 1_000_000_000) as i64),
            tv_nsec: (nanos % 1_000_000_000) as _,
        }
    });
    match futex::waitv(
        &waits,
        futex::WaitvFlags::empty(),
        spec.as_ref(),
        rustix::time::ClockId::Monotonic,
    ) {
        // ENOSYS: no such call; EPERM: a seccomp filter refuses it; EINVAL: a kernel that
        // knows the call but not these flags. Remembered, so a fallback costs no system call.
        Err(rustix::io::Errno::NOSYS | rustix::io::Errno::PERM | rustix::io::Errno::INVAL) => {
            WAITV_UNSUPPORTED.store(true, Ordering::Relaxed);
            WaitAny::Unsupported
        }
        // An index, EAGAIN (a word changed), ETIMEDOUT, EINTR: all mean "look again".
        Ok(_)
        | Err(rustix::io::Errno::AGAIN | rustix::io::Errno::TIMEDOUT | rustix::io::Errno::INTR) => {
            WaitAny::Returned
        }
        // Anything else (EFAULT, ENOMEM): this call did not sleep; the caller's one-word
        // fallback sleeps instead, so a lasting error cannot make it spin.
        Err(_) => WaitAny::Unsupported,
    }
}

/// Set once `futex_waitv` has been refused: later calls fall back without asking again.
static WAITV_UNSUPPORTED: AtomicBool = AtomicBool::new(false);

/// Whether [`futex_wait_any`] can sleep on several words here (false once the kernel has
/// refused `futex_waitv`). `SHMQ_NO_FUTEX_WAITV=1` in the environment forces the fallback, so
/// that tests can run it on a kernel that has the call.
pub(crate) fn futex_wait_any_supported() -> bool {
    static FORCED_OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let forced = *FORCED_OFF
        .get_or_init(|| std::env::var_os("SHMQ_NO_FUTEX_WAITV").is_some_and(|v| v == "1"));
    !forced && !WAITV_UNSUPPORTED.load(Ordering::Relaxed)
}

/// Size of the robust mutex object that [`robust_mutex_init`] places in shared memory.
pub(crate) const ROBUST_MUTEX_SIZE: usize = std::mem::size_of::<libc::pthread_mutex_t>();

/// How an attempt to take a robust mutex ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LockOutcome {
    /// The caller holds the mutex.
    Acquired,
    /// The caller holds the mutex, and its previous holder died while holding it: the data it
    /// guards may be half-updated. Call [`robust_mutex_mark_consistent`] once repaired.
    OwnerDied,
    /// Another thread holds it (try-lock) or the deadline passed.
    Busy,
    /// A holder died and nobody marked the mutex consistent: it can never be taken again.
    Unrecoverable,
}

extern "C" {
    // glibc >= 2.30; the libc crate does not declare it. Takes an absolute CLOCK_MONOTONIC time.
    fn pthread_mutex_clocklock(
        mutex: *mut libc::pthread_mutex_t,
        clock: libc::clockid_t,
        abstime: *const libc::timespec,
    ) -> libc::c_int;
}

/// Initialises a process-shared, robust, error-checking mutex at `mutex`.
///
/// Error-checking (`PTHREAD_MUTEX_ERRORCHECK`): a thread that locks a mutex it already holds
/// gets `EDEADLK` back, from the lock, try-lock and timed lock alike, instead of sleeping for
/// ever (a plain robust mutex deadlocks on `lock` and reports `EBUSY` or `ETIMEDOUT` on the
/// others, as if another thread held it). glibc runs every robust mutex type through the same
/// code, which compares the owner's thread id with the caller's in any case, so the check costs
/// nothing, and `EOWNERDEAD` recovery is the same for every type (checked on glibc 2.36: a
/// holder that exits, is SIGKILLed, or is a thread that ends holding it; docs/reliability.md).
///
/// # Safety
/// `mutex` must be valid for writes of [`ROBUST_MUTEX_SIZE`] bytes, suitably aligned, and no
/// process may be using a mutex there.
pub(crate) unsafe fn robust_mutex_init(mutex: *mut u8) -> io::Result<()> {
    // SAFETY: pthread_mutexattr_t is a plain C struct; pthread_mutexattr_init initialises it
    // before any other use.
    let mut attr: libc::pthread_mutexattr_t = unsafe { std::mem::zeroed() };
    // SAFETY: `attr` is a valid, writable attribute object on our stack.
    check(unsafe { libc::pthread_mutexattr_init(&mut attr) })?;
    let result = (|| {
        // SAFETY: `attr` was initialised above.
        check(unsafe {
            libc::pthread_mutexattr_setpshared(&mut attr, libc::PTHREAD_PROCESS_SHARED)
        })?;
        // SAFETY: as above.
        check(unsafe { libc::pthread_mutexattr_setrobust(&mut attr, libc::PTHREAD_MUTEX_ROBUST) })?;
        // SAFETY: as above.
        check(unsafe {
            libc::pthread_mutexattr_settype(&mut attr, libc::PTHREAD_MUTEX_ERRORCHECK)
        })?;
        // SAFETY: the caller guarantees `mutex` is writable, aligned and unused; `attr` is
        // initialised.
        check(unsafe { libc::pthread_mutex_init(mutex.cast(), &attr) })
    })();
    // SAFETY: `attr` was initialised above and is not used after this.
    let destroyed = check(unsafe { libc::pthread_mutexattr_destroy(&mut attr) });
    result.and(destroyed)
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

fn outcome(rc: libc::c_int) -> io::Result<LockOutcome> {
    match rc {
        0 => Ok(LockOutcome::Acquired),
        libc::EOWNERDEAD => Ok(LockOutcome::OwnerDied),
        libc::EBUSY | libc::ETIMEDOUT => Ok(LockOutcome::Busy),
        libc::ENOTRECOVERABLE => Ok(LockOutcome::Unrecoverable),
        other => Err(io::Error::from_raw_os_error(other)),
    }
}

/// Longest single sleep on a robust mutex; see [`robust_mutex_lock`].
const ROBUST_SLEEP_SLICE: Duration = Duration::from_millis(25);

/// An absolute CLOCK_MONOTONIC time `after` from now, as `pthread_mutex_clocklock` takes it.
fn monotonic_after(after: Duration) -> libc::timespec {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let total_ns = now.tv_nsec as u128 + after.subsec_nanos() as u128;
    libc::timespec {
        tv_sec: (now.tv_sec as u64)
            .saturating_add(after.as_secs())
            .saturating_add((total_ns / 1_000_000_000) as u64)
            .min(i64::MAX as u64) as libc::time_t,
        tv_nsec: (total_ns % 1_000_000_000) as _,
    }
}

/// Locks the robust mutex at `mutex`, waiting until `deadline` (forever with `None`).
///
/// A calling thread that already holds the mutex gets an error of kind
/// [`io::ErrorKind::Deadlock`] (`EDEADLK`) at once: see [`robust_mutex_init`].
///
/// It never sleeps in the kernel for more than 25 ms at a time. An unlock wakes one waiter; a
/// waiter killed after that wake-up and before it took the mutex takes the wake-up with it,
/// and the other waiters would sleep for ever on a mutex nobody holds (the kernel's robust-list
/// handling covers dying holders, not dying waiters). Waking up to retry bounds that stall.
///
/// # Safety
/// `mutex` must point to a mutex initialised by [`robust_mutex_init`] that stays mapped for the
/// whole call.
pub(crate) unsafe fn robust_mutex_lock(
    mutex: *mut u8,
    deadline: Option<Instant>,
) -> io::Result<LockOutcome> {
    loop {
        let slice_end = Instant::now() + ROBUST_SLEEP_SLICE;
        let until = deadline.map_or(slice_end, |d| d.min(slice_end));
        let abstime = monotonic_after(until.saturating_duration_since(Instant::now()));
        // SAFETY: the caller guarantees an initialised, mapped mutex; `abstime` lives on our
        // stack for the whole call.
        let rc = unsafe { pthread_mutex_clocklock(mutex.cast(), libc::CLOCK_MONOTONIC, &abstime) };
        let result = outcome(rc)?;
        let expired = deadline.is_some_and(|d| Instant::now() >= d);
        if result != LockOutcome::Busy || expired {
            return Ok(result);
        }
    }
}

/// Tries to lock the robust mutex at `mutex` without waiting. A calling thread that already
/// holds it gets an error of kind [`io::ErrorKind::Deadlock`], not [`LockOutcome::Busy`].
///
/// # Safety
/// As for [`robust_mutex_lock`].
pub(crate) unsafe fn robust_mutex_try_lock(mutex: *mut u8) -> io::Result<LockOutcome> {
    // SAFETY: the caller guarantees an initialised mutex that stays mapped for the call.
    outcome(unsafe { libc::pthread_mutex_trylock(mutex.cast()) })
}

/// Unlocks a robust mutex that the calling thread holds. An error (`EPERM`: the caller does
/// not hold it) means the mutex word was overwritten by someone else.
///
/// # Safety
/// As for [`robust_mutex_lock`], and the calling thread must hold the mutex.
pub(crate) unsafe fn robust_mutex_unlock(mutex: *mut u8) -> io::Result<()> {
    // SAFETY: the caller guarantees an initialised, mapped mutex that this thread holds.
    check(unsafe { libc::pthread_mutex_unlock(mutex.cast()) })
}

/// Declares the data behind a mutex taken with [`LockOutcome::OwnerDied`] repaired. An error
/// (`EINVAL`) means the mutex is not in the state `EOWNERDEAD` left it in.
///
/// # Safety
/// As for [`robust_mutex_unlock`].
pub(crate) unsafe fn robust_mutex_mark_consistent(mutex: *mut u8) -> io::Result<()> {
    // SAFETY: the caller guarantees an initialised, mapped mutex that this thread holds.
    check(unsafe { libc::pthread_mutex_consistent(mutex.cast()) })
}

/// Borrows a descriptor (helper so callers need not import `AsFd`).
pub(crate) fn borrow(fd: &OwnedFd) -> BorrowedFd<'_> {
    fd.as_fd()
}

/// Which thread holds a robust mutex, read from glibc's lock word (the first 32-bit word of
/// `pthread_mutex_t`): for robust mutexes glibc keeps the holder's kernel thread id there, with
/// the kernel's FUTEX_WAITERS and FUTEX_OWNER_DIED bits on top. Informative only (for error
/// messages and inspection); never used to decide anything.
pub(crate) fn robust_mutex_holder_tid(lock_word: u32) -> Option<u32> {
    const FUTEX_TID_MASK: u32 = 0x3fff_ffff;
    Some(lock_word & FUTEX_TID_MASK).filter(|&tid| tid != 0)
}

/// The process (thread group) that thread `tid` belongs to, if it still exists and /proc shows
/// it. Informative only: a thread id can be reused once its thread is gone.
pub(crate) fn process_of_thread(tid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Tgid:"))
        .and_then(|pid| pid.trim().parse().ok())
}

/// CLOCK_MONOTONIC_COARSE in nanoseconds: the time of the last timer tick (a few
/// milliseconds of resolution), read from the vDSO without a system call and cheaper than the
/// precise clock. For ages measured in tens of milliseconds.
#[inline]
pub(crate) fn coarse_clock_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    (t.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(t.tv_nsec as u64)
}

/// Asks the kernel to fill the page tables of `len` bytes at `ptr` for reading now, so that the
/// first reads take no page faults (MADV_POPULATE_READ, Linux 5.14). Best effort: an older
/// kernel's EINVAL only means the faults come later.
///
/// # Safety
/// `ptr..ptr + len` must lie inside one live mapping.
pub(crate) unsafe fn prefault_read(ptr: *mut u8, len: usize) {
    // SAFETY: the caller guarantees a live mapping; advice changes no memory contents.
    let _ = unsafe { rustix::mm::madvise(ptr.cast(), len, rustix::mm::Advice::LinuxPopulateRead) };
}

// ----- fork --------------------------------------------------------------------------------
//
// A liveness lock belongs to an open file description, and `fork` gives the child a descriptor
// of every description the parent has open. Left alone, a forked child would keep every
// participant of its parent alive (their locks held) for as long as it lives, even after the
// parent died. So every descriptor that holds a liveness lock is registered here, and a handler
// that runs in the child right after `fork` points each of them at /dev/null: the child lets go
// of the description (the lock stays the parent's), while the number stays open so that the
// child's copy of the handle can still close it without closing some other file that reused
// the number. The handler also bumps a fork generation, by which handles see that they were
// inherited.
//
// Opening a description and registering it must not be split by a fork (the child would keep an
// unregistered copy, and a lock the parent takes through it later would be held by the child
// too): `fork` waits in its prepare handler until no registration is under way.

/// Registered descriptors (as `fd + 1`, so that the all-zero static means empty).
const LIVENESS_FD_SLOTS: usize = 1 << 16;
static LIVENESS_FDS: [AtomicI32; LIVENESS_FD_SLOTS] =
    [const { AtomicI32::new(0) }; LIVENESS_FD_SLOTS];
/// One past the highest entry of `LIVENESS_FDS` ever used: the child's handler scans no further.
static LIVENESS_HIGH: AtomicUsize = AtomicUsize::new(0);
/// Registrations under way, and whether a fork waits for them to end.
static REGISTERING: AtomicU32 = AtomicU32::new(0);
static FORKING: AtomicU32 = AtomicU32::new(0);
/// How many `fork`s lie between the start of the program and this process.
static FORK_GENERATION: AtomicU64 = AtomicU64::new(0);
/// A descriptor of /dev/null opened before any fork, for the child's handler to duplicate
/// (opening a file there could fail for want of descriptors).
static DEV_NULL: AtomicI32 = AtomicI32::new(-1);
/// Installation of the handlers: 0 not yet (or failed: retried), 1 under way, 2 done.
static INSTALL: AtomicU32 = AtomicU32::new(0);

/// Runs in the forking thread before `fork`: waits for registrations under way to finish and
/// holds new ones back until the fork is done.
extern "C" fn before_fork() {
    FORKING.store(1, Ordering::SeqCst);
    while REGISTERING.load(Ordering::SeqCst) != 0 {
        std::hint::spin_loop();
    }
}

/// Runs in the parent after `fork`.
extern "C" fn after_fork_in_parent() {
    FORKING.store(0, Ordering::SeqCst);
}

/// Runs in the child after `fork`, with only the forking thread alive: calls only
/// async-signal-safe functions (atomics, dup3).
extern "C" fn after_fork_in_child() {
    FORK_GENERATION.fetch_add(1, Ordering::SeqCst);
    // Only the forking thread lives on: a registration or installation another thread had
    // under way at the fork will never finish here.
    REGISTERING.store(0, Ordering::SeqCst);
    let _ = INSTALL.compare_exchange(1, 0, Ordering::SeqCst, Ordering::SeqCst);
    let dev_null = DEV_NULL.load(Ordering::SeqCst);
    let high = LIVENESS_HIGH.load(Ordering::SeqCst);
    for entry in &LIVENESS_FDS[..high.min(LIVENESS_FD_SLOTS)] {
        let stored = entry.swap(0, Ordering::SeqCst);
        if stored > 0 && dev_null >= 0 {
            // SAFETY: dup3 is async-signal-safe; both numbers are open descriptors of this
            // process (a registered one is closed only after it is unregistered), and replacing
            // it drops only this process's reference to the parent's description.
            unsafe { libc::dup3(dev_null, stored - 1, libc::O_CLOEXEC) };
        }
    }
    FORKING.store(0, Ordering::SeqCst);
}

/// How many `fork`s separate this process from the one that started the program: a handle
/// that recorded another value was inherited through `fork`.
#[inline]
pub(crate) fn fork_generation() -> u64 {
    FORK_GENERATION.load(Ordering::Acquire)
}

/// Installs the fork handlers once. A failure (no descriptor left for /dev/null, no memory for
/// the handler) is reported and retried by the next call: a transient shortage must not disable
/// shmq for the rest of the process.
fn install_fork_handlers() -> io::Result<()> {
    loop {
        match INSTALL.compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => break,
            Err(2) => return Ok(()),
            Err(_) => std::thread::yield_now(), // another thread installs them right now
        }
    }
    let installed = (|| {
        let fd = rustix::fs::open(
            "/dev/null",
            rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        // SAFETY: the three handlers touch only atomics and call only dup3, as pthread_atfork
        // handlers of a multi-threaded program must.
        let rc = unsafe {
            libc::pthread_atfork(
                Some(before_fork),
                Some(after_fork_in_parent),
                Some(after_fork_in_child),
            )
        };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        use std::os::fd::IntoRawFd;
        DEV_NULL.store(fd.into_raw_fd(), Ordering::SeqCst);
        Ok(())
    })();
    INSTALL.store(if installed.is_ok() { 2 } else { 0 }, Ordering::SeqCst);
    installed
}

/// A descriptor whose open file description holds liveness locks (a participant's, or one
/// opened for one membership operation), registered so that a forked child lets go of it.
#[derive(Debug)]
pub(crate) struct LivenessFd {
    fd: OwnedFd,
}

impl LivenessFd {
    /// Opens a description with `open` and registers it, with no fork in between. Fails with
    /// `open`'s error, or with `failed` of why registering failed (the fork handlers cannot be
    /// installed, or 65,536 descriptors are registered already).
    pub(crate) fn open<E>(
        open: impl FnOnce() -> Result<OwnedFd, E>,
        failed: impl Fn(io::Error) -> E,
    ) -> Result<LivenessFd, E> {
        install_fork_handlers().map_err(&failed)?;
        loop {
            while FORKING.load(Ordering::SeqCst) != 0 {
                std::thread::yield_now();
            }
            REGISTERING.fetch_add(1, Ordering::SeqCst);
            if FORKING.load(Ordering::SeqCst) == 0 {
                break;
            }
            REGISTERING.fetch_sub(1, Ordering::SeqCst);
        }
        let registered = open().and_then(|fd| {
            let stored = fd.as_raw_fd() + 1;
            for (index, entry) in LIVENESS_FDS.iter().enumerate() {
                if entry
                    .compare_exchange(0, stored, Ordering::SeqCst, Ordering::Relaxed)
                    .is_ok()
                {
                    LIVENESS_HIGH.fetch_max(index + 1, Ordering::SeqCst);
                    return Ok(LivenessFd { fd });
                }
            }
            Err(failed(io::Error::other(
                "65,536 liveness descriptors are registered already",
            )))
        });
        REGISTERING.fetch_sub(1, Ordering::SeqCst);
        registered
    }

    /// The descriptor.
    pub(crate) fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for LivenessFd {
    fn drop(&mut self) {
        // Unregistered before it is closed (when `self.fd` drops after this), so that the
        // child of a concurrent fork never points a reused number at /dev/null. Holders
        // release their locks explicitly before this, so such a child's copy holds none.
        let stored = self.fd.as_raw_fd() + 1;
        let high = LIVENESS_HIGH.load(Ordering::SeqCst);
        for entry in &LIVENESS_FDS[..high.min(LIVENESS_FD_SLOTS)] {
            if entry
                .compare_exchange(stored, 0, Ordering::SeqCst, Ordering::Relaxed)
                .is_ok()
            {
                break;
            }
        }
    }
}
