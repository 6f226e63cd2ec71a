//! Sizes too large for any segment, or for this machine now (issue 11, item 4): every one is
//! `InvalidArgument` (no segment can have it: beyond `i64::MAX`, the address space, or a
//! multiply that overflows) or `OutOfSpace` (the kernel cannot provide it now, including a
//! /dev/shm out of inodes), never a panic, a silent clamp or an `Io` error of the kernel's
//! making. Every case also checks that nothing was left behind in /dev/shm.

mod common;

use common::channel::{assert_gone, config, Kid, MIB};
use common::{shm_exists, unique_name};
use shmq::{
    ChannelConfig, Error, SendError, SendTimeoutError, SharedArray, SharedValue, TrySendError,
};

#[test]
#[ignore = "entry point of child processes (see tests/common/mod.rs)"]
fn child_entry() {
    common::child_dispatch(|role, _args| match role {
        "no_inodes" => no_inodes_child(),
        other => panic!("unknown child role {other}"),
    });
}

/// Whether /dev/shm has a size limit. A tmpfs without one would try to hand out a request
/// larger than memory page by page, so the `OutOfSpace` cases skip there.
fn dev_shm_is_limited() -> bool {
    // SAFETY: all-zero is a valid statvfs, and the path is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; statvfs only writes `st`.
    let rc = unsafe { libc::statvfs(c"/dev/shm".as_ptr(), &mut st) };
    assert_eq!(rc, 0, "statvfs /dev/shm");
    if st.f_blocks == 0 {
        eprintln!("/dev/shm has no size limit: skipping the OutOfSpace cases");
    }
    st.f_blocks != 0
}

fn is_invalid_argument(err: &Error) -> bool {
    matches!(err, Error::InvalidArgument { .. })
}

// ----- channel configuration ------------------------------------------------------------------

#[test]
fn arena_sizes_beyond_any_arena_are_invalid_argument() {
    let name = unique_name("sz-arena");
    for arena in [
        usize::MAX,              // rounding up to pages overflows
        usize::MAX - 4095,       // a multiple of 4096 whose page count overflows the allocator
        1 << 63,                 // beyond any file size
        (1 << 32) * 4096 + 4096, // one page more than the allocator can index
    ] {
        let err = shmq::channel(&name, config(4, arena)).expect_err("too large an arena");
        assert!(is_invalid_argument(&err), "arena {arena}: {err:?}");
        let text = err.to_string();
        assert!(
            text.contains("arena") && text.contains(&arena.to_string()),
            "the message names the arena and its size: {text}"
        );
        assert!(!shm_exists(&name), "arena {arena} left a segment");
    }
    // The other limits of a configuration, at their extremes.
    for cfg in [
        config(usize::MAX, MIB),
        ChannelConfig::default()
            .with_arena_bytes(MIB)
            .with_max_participants(u32::MAX),
    ] {
        let err = shmq::channel(&name, cfg.clone()).expect_err("out of range");
        assert!(is_invalid_argument(&err), "{cfg:?}: {err:?}");
        assert!(!shm_exists(&name), "{cfg:?} left a segment");
    }
}

#[test]
fn an_arena_larger_than_dev_shm_is_out_of_space() {
    if !dev_shm_is_limited() {
        return;
    }
    let name = unique_name("sz-arena-big");
    // 8 TiB: a valid arena (2^31 pages), more than any /dev/shm here.
    let arena = 1usize << 43;
    match shmq::channel(&name, config(4, arena)) {
        Err(Error::OutOfSpace { requested, .. }) => {
            assert!(requested >= arena as u64, "requested {requested}")
        }
        other => panic!("expected OutOfSpace, got {:?}", other.map(|_| ())),
    }
    assert_gone(&name);
}

// ----- loans ----------------------------------------------------------------------------------

#[test]
fn loans_beyond_any_segment_are_invalid_argument() {
    let name = unique_name("sz-loan");
    let (tx, rx) = shmq::channel(&name, config(4, MIB)).expect("create");
    for len in [1usize << 63, usize::MAX, usize::MAX - 4096] {
        match tx.loan(len) {
            Err(SendError::Failed(e, ())) => assert!(is_invalid_argument(&e), "{len}: {e:?}"),
            other => panic!("loan({len}): expected Failed(InvalidArgument), got {other:?}"),
        }
        match tx.try_loan(len) {
            Err(TrySendError::Failed(e, ())) => assert!(is_invalid_argument(&e), "{len}: {e:?}"),
            other => panic!("try_loan({len}): expected Failed(InvalidArgument), got {other:?}"),
        }
        match tx.loan_timeout(len, std::time::Duration::from_secs(1)) {
            Err(SendTimeoutError::Failed(e, ())) => {
                assert!(is_invalid_argument(&e), "{len}: {e:?}")
            }
            other => panic!("loan_timeout({len}): expected Failed(InvalidArgument), got {other:?}"),
        }
    }
    // Counts whose byte length overflows, or lands beyond any segment.
    let err = tx
        .loan_slice::<u64>(usize::MAX)
        .expect_err("overflowing count");
    assert!(
        matches!(err, SendError::Failed(ref e, ()) if is_invalid_argument(e)),
        "{err:?}"
    );
    let err = tx.loan_slice::<u64>(1 << 60).expect_err("2^63 bytes");
    assert!(
        matches!(err, SendError::Failed(ref e, ()) if is_invalid_argument(e)),
        "{err:?}"
    );
    let err = tx
        .try_loan_slice::<[u8; 4096]>(1 << 52)
        .expect_err("2^64 bytes");
    assert!(
        matches!(err, TrySendError::Failed(ref e, ()) if is_invalid_argument(e)),
        "{err:?}"
    );

    // The refusals took nothing: the channel works and no overflow segment is left.
    assert_eq!(common::channel::overflow_files(&name), Vec::<String>::new());
    let mut loan = tx.loan_slice::<u64>(4).expect("a small loan");
    loan.copy_from_slice(&[1, 2, 3, 4]);
    loan.send().expect("send");
    assert_eq!(
        rx.recv().expect("recv").as_slice::<u64>().expect("u64s"),
        &[1, 2, 3, 4]
    );
    drop((tx, rx));
    assert_gone(&name);
}

#[test]
fn a_loan_larger_than_dev_shm_is_out_of_space() {
    if !dev_shm_is_limited() {
        return;
    }
    let name = unique_name("sz-loan-big");
    let (tx, rx) = shmq::channel(&name, config(4, MIB)).expect("create");
    for len in [1usize << 50, (1 << 62) + 8] {
        match tx.try_loan(len) {
            Err(TrySendError::Failed(Error::OutOfSpace { requested, .. }, ())) => {
                assert!(requested >= len as u64, "requested {requested}")
            }
            other => panic!("try_loan({len}): expected OutOfSpace, got {other:?}"),
        }
    }
    assert_eq!(common::channel::overflow_files(&name), Vec::<String>::new());
    tx.send(&[7; 5000]).expect("the channel still works");
    assert_eq!(rx.recv().expect("recv").len(), 5000);
    drop((tx, rx));
    assert_gone(&name);
}

// ----- raw segments and shared arrays ---------------------------------------------------------

#[test]
fn segments_beyond_any_file_size_are_invalid_argument() {
    let name = unique_name("sz-seg");
    // With the header in front, all of these exceed i64::MAX, the largest file size.
    for len in [
        1usize << 63,
        i64::MAX as usize,
        i64::MAX as usize - 4096,
        usize::MAX,
    ] {
        let err = shmq::Segment::create(&name, len).expect_err("too large");
        assert!(is_invalid_argument(&err), "{len}: {err:?}");
        assert!(!shm_exists(&name), "{len} left a segment");
    }
    if dev_shm_is_limited() {
        let err = shmq::Segment::create(&name, 1 << 62).expect_err("larger than /dev/shm");
        assert!(matches!(err, Error::OutOfSpace { .. }), "{err:?}");
        assert!(!shm_exists(&name));
    }
}

#[test]
fn arrays_beyond_any_file_size_are_invalid_argument() {
    let name = unique_name("sz-array");
    // Elements that fit below isize::MAX on their own but not with the segment's header.
    for len in [isize::MAX as usize - 1000, i64::MAX as usize - 4096] {
        let err = SharedArray::<u8>::create(&name, len, 0).expect_err("too large");
        assert!(is_invalid_argument(&err), "{len}: {err:?}");
        assert!(!shm_exists(&name), "{len} left a segment");
    }
    for len in [usize::MAX, usize::MAX / 8 + 1, 1 << 60] {
        let err = SharedArray::<u64>::create(&name, len, 1).expect_err("too large");
        assert!(is_invalid_argument(&err), "{len}: {err:?}");
        assert!(!shm_exists(&name), "{len} left a segment");
    }
    if dev_shm_is_limited() {
        let err = SharedArray::<u64>::create(&name, 1 << 57, 0).expect_err("larger than /dev/shm");
        assert!(matches!(err, Error::OutOfSpace { .. }), "{err:?}");
        assert!(!shm_exists(&name));
    }
}

// ----- a /dev/shm out of inodes -----------------------------------------------------------------

/// Inodes of the small tmpfs the `no_inodes` child mounts on /dev/shm (its root takes one).
const TEST_INODES: usize = 6;

/// Mounts a fresh tmpfs with [`TEST_INODES`] inodes on /dev/shm, seen only by this process:
/// the mount lives in a mount namespace of its own, which goes away with the process. `Err`
/// says why it could not (not root, or no namespaces in this container).
fn private_dev_shm() -> Result<(), String> {
    let os = |what: &str| format!("{what}: {}", std::io::Error::last_os_error());
    // SAFETY: unshare takes no pointers; it gives this thread (the only one that creates
    // segments in this child) a mount namespace of its own.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return Err(os("unshare(CLONE_NEWNS)"));
    }
    // SAFETY: valid C strings and null pointers where mount(2) allows them. Private first, so
    // that the tmpfs below never propagates to the parent's namespace.
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(os("mount --make-rprivate /"));
    }
    let options = std::ffi::CString::new(format!("nr_inodes={TEST_INODES},size=16m")).unwrap();
    // SAFETY: as above; `options` outlives the call.
    let rc = unsafe {
        libc::mount(
            c"shmq-test".as_ptr(),
            c"/dev/shm".as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            options.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(os("mount tmpfs on /dev/shm"));
    }
    Ok(())
}

fn no_inodes_child() {
    if let Err(why) = private_dev_shm() {
        common::signal_parent(&format!("skip {why}"));
        return;
    }
    common::signal_parent("mounted");
    let (tx, rx) = shmq::channel("inodes", config(4, 0)).expect("a channel on the empty tmpfs");
    let mut raw = Vec::new();
    let full = loop {
        match shmq::Segment::create(&format!("filler-{}", raw.len()), 4096) {
            Ok(seg) => raw.push(seg),
            Err(e) => break e,
        }
        assert!(raw.len() <= TEST_INODES, "more files than inodes");
    };
    assert!(
        matches!(full, Error::OutOfSpace { .. }),
        "creating a file with no inode left: {full:?}"
    );
    assert!(full.to_string().contains("not enough space"), "{full}");
    // Every kind of creation reports it the same way: a value, a channel, and an overflow
    // payload (the arena is empty, so anything over 96 bytes needs a segment of its own).
    let err = SharedValue::<u64>::create("value", 1).expect_err("no inode");
    assert!(matches!(err, Error::OutOfSpace { .. }), "{err:?}");
    let err = shmq::channel("second", config(4, 0)).expect_err("no inode");
    assert!(matches!(err, Error::OutOfSpace { .. }), "{err:?}");
    match tx.try_send(&[5; 1000]) {
        Err(TrySendError::Failed(Error::OutOfSpace { .. }, ())) => {}
        other => panic!("an overflow payload with no inode left: {other:?}"),
    }
    // It is "not now", not "never": with one file gone, the same send goes through.
    raw.pop();
    tx.try_send(&[5; 1000]).expect("send once an inode is free");
    assert_eq!(&rx.recv().expect("recv")[..], &[5; 1000][..]);
    common::signal_parent("done");
}

#[test]
fn a_dev_shm_out_of_inodes_is_out_of_space() {
    let mut kid = Kid::spawn("no_inodes", &[]);
    // The first of the child's own lines (the test harness prints some of its own).
    let first = loop {
        let line = kid.expect_prefix("", false);
        if line == "mounted" || line.starts_with("skip ") {
            break line;
        }
    };
    if let Some(why) = first.strip_prefix("skip ") {
        eprintln!("cannot mount a private tmpfs ({why}): skipping the inode exhaustion case");
        kid.finish();
        return;
    }
    kid.expect("done");
    kid.finish();
}
