//! SharedValue and SharedArray across real processes: exact counts under contention, data
//! written by one process and read by another, a holder killed with SIGKILL, timeouts,
//! re-locking from the holding thread, element identity (size, alignment and tag, in one
//! process and across two), bad names and garbage layout words.

mod common;

use std::process::Child;
use std::time::Duration;

use shmq::{Error, LockError, SharedArray, SharedValue};

/// Generous bound for anything a child does; only there so a bug fails instead of hanging.
const CHILD_TIMEOUT: Duration = Duration::from_secs(120);

#[test]
#[ignore = "entry point of child processes (see tests/common/mod.rs)"]
fn child_entry() {
    common::child_dispatch(|role, args| match role {
        "inc" => {
            let value = SharedValue::<u64>::open(&args[0]).expect("open counter");
            let count: u64 = args[1].parse().expect("count");
            common::signal_parent("ready");
            for _ in 0..count {
                *value.lock().expect("lock counter") += 1;
            }
        }
        "hold_value" => {
            let value = SharedValue::<u64>::open(&args[0]).expect("open value");
            let mut guard = value.lock().expect("lock value");
            *guard = 999; // a half-done update the parent must see
            common::signal_parent("locked");
            sleep_until_killed();
        }
        "hold_array" => {
            let array = SharedArray::<u32>::open(&args[0]).expect("open array");
            let mut guard = array.lock().expect("lock array");
            let half = guard.len() / 2;
            guard[..half].fill(7); // a half-done update
            common::signal_parent("locked");
            sleep_until_killed();
        }
        "array_rw" => {
            let array = SharedArray::<f64>::open(&args[0]).expect("open array");
            let len: usize = args[1].parse().expect("len");
            assert_eq!(array.len(), len);
            let seen = array.to_vec().expect("to_vec");
            for (i, x) in seen.iter().enumerate() {
                assert_eq!(*x, i as f64 * 0.5, "element {i} as written by the parent");
            }
            let mut guard = array.lock().expect("lock array");
            for (i, x) in guard.iter_mut().enumerate() {
                *x = i as f64 * 2.0 + 1.0;
            }
        }
        "expect_owner_died" => {
            let value = SharedValue::<u64>::open(&args[0]).expect("open value");
            match value.lock() {
                Err(LockError::OwnerDied(dead)) => drop(dead.into_inner()),
                other => panic!("expected OwnerDied, got {:?}", other.map(|g| *g)),
            }
            assert!(matches!(value.load(), Err(Error::OwnerDied { .. })));
        }
        "expect_incompatible" => {
            // args: name, then how to open it (see `open_value_as`).
            let err = open_value_as(&args[0], &args[1]).expect_err("a mismatched open");
            expect_incompatible(err, "element type", &["bytes, align", "8 bytes, align 8"]);
        }
        "die-in-thread" => {
            // A thread that ends holding the lock is a dead owner. (Forgetting the guard leaks
            // this process's handle on the segment: the process exits right after.)
            let value = SharedValue::<u64>::open(&args[0]).expect("open value");
            std::thread::scope(|s| {
                s.spawn(|| std::mem::forget(value.lock().expect("lock in a thread")));
            });
            std::mem::forget(value);
        }
        "relock" => {
            // Another process re-locks from its holding thread: an error there too.
            let value = SharedValue::<u64>::open(&args[0]).expect("open value");
            let mut guard = match value.lock() {
                Ok(guard) => guard,
                Err(LockError::OwnerDied(dead)) => dead.into_inner(),
                Err(e) => panic!("lock: {e}"),
            };
            assert!(matches!(value.lock(), Err(LockError::WouldDeadlock { .. })));
            assert!(matches!(
                value.try_lock(),
                Err(LockError::WouldDeadlock { .. })
            ));
            *guard += 1;
            guard.mark_consistent();
        }
        "open_as_u64" => {
            // A value created as a `Meters` (same size and alignment, no tag) opens as u64.
            let value = SharedValue::<u64>::open(&args[0]).expect("open as u64");
            let expected: u64 = args[1].parse().expect("expected");
            let mut guard = value.lock().expect("lock");
            assert_eq!(*guard, expected);
            *guard += 1;
        }
        other => panic!("unknown child role {other}"),
    });
}

/// A `u64` by another name: the same size and alignment, a distinct Rust type (with a distinct
/// `type_name`).
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(transparent)]
struct Meters(u64);

/// Opens the value segment `name` as `how` says: `<type>` or `<type>:<tag>` with `<type>` one
/// of `u64`, `u32`, `bytes8` (`[u8; 8]`), `meters`.
fn open_value_as(name: &str, how: &str) -> shmq::Result<()> {
    let (ty, tag) = how.split_once(':').unwrap_or((how, ""));
    match ty {
        "u64" => SharedValue::<u64>::open_tagged(name, tag).map(drop),
        "u32" => SharedValue::<u32>::open_tagged(name, tag).map(drop),
        "bytes8" => SharedValue::<[u8; 8]>::open_tagged(name, tag).map(drop),
        "meters" => SharedValue::<Meters>::open_tagged(name, tag).map(drop),
        other => panic!("unknown type {other}"),
    }
}

fn sleep_until_killed() -> ! {
    // Bounded, so a parent that died without killing us leaves no process behind for long.
    std::thread::sleep(CHILD_TIMEOUT);
    std::process::exit(3)
}

/// A child that is killed (SIGKILL) and reaped when dropped, so a failing test leaves none.
struct ChildGuard(Child);

impl ChildGuard {
    fn spawn(role: &str, args: &[&str]) -> ChildGuard {
        ChildGuard(common::spawn_child(role, args))
    }

    fn wait_success(mut self) {
        let status = common::wait_exit(&mut self.0, CHILD_TIMEOUT);
        assert!(status.success(), "child failed: {status}");
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            common::kill9(&mut self.0);
        }
    }
}

/// Starts a child that locks `name` (role `hold_value` or `hold_array`) and keeps the lock.
fn holder(role: &str, name: &str) -> ChildGuard {
    let mut child = ChildGuard::spawn(role, &[name]);
    common::wait_for_line(&mut child.0, "locked", CHILD_TIMEOUT);
    child
}

fn assert_gone(name: &str) {
    assert!(!common::shm_exists(name), "segment {name} was left behind");
}

#[test]
fn four_processes_increment_exactly() {
    let name = common::unique_name("sv-inc");
    let counter = SharedValue::<u64>::create(&name, 0).expect("create");
    // Hold the lock until all four run, so that they really contend.
    let gate = counter.lock().expect("lock");
    let children: Vec<ChildGuard> = (0..4)
        .map(|_| {
            let mut child = ChildGuard::spawn("inc", &[&name, "50000"]);
            common::wait_for_line(&mut child.0, "ready", CHILD_TIMEOUT);
            child
        })
        .collect();
    drop(gate);
    for child in children {
        child.wait_success();
    }
    assert_eq!(counter.load().expect("load"), 200_000);
    drop(counter);
    assert_gone(&name);
}

#[test]
fn threads_of_one_process_increment_exactly() {
    fn send_sync<S: Send + Sync>() {}
    send_sync::<SharedValue<u64>>();
    send_sync::<SharedArray<f64>>();

    let name = common::unique_name("sv-threads");
    let counter = SharedValue::<u64>::create(&name, 0).expect("create");
    std::thread::scope(|s| {
        for _ in 0..4 {
            let counter = &counter;
            s.spawn(move || {
                for _ in 0..10_000 {
                    *counter.lock().expect("lock") += 1;
                }
            });
        }
        let clone = counter.clone();
        s.spawn(move || {
            for _ in 0..10_000 {
                *clone.lock().expect("lock") += 1;
            }
        });
    });
    assert_eq!(counter.load().expect("load"), 50_000);
    drop(counter);
    assert_gone(&name);
}

#[test]
fn array_written_by_one_process_is_read_by_another() {
    let name = common::unique_name("sa-rw");
    let len = 100_000;
    let values: Vec<f64> = (0..len).map(|i| i as f64 * 0.5).collect();
    let array = SharedArray::<f64>::from_slice(&name, &values).expect("from_slice");
    assert_eq!(array.len(), len);
    ChildGuard::spawn("array_rw", &[&name, &len.to_string()]).wait_success();
    let back = array.to_vec().expect("to_vec");
    assert_eq!(back.len(), len);
    for (i, x) in back.iter().enumerate() {
        assert_eq!(
            *x,
            i as f64 * 2.0 + 1.0,
            "element {i} as written by the child"
        );
    }
    drop(array);
    assert_gone(&name);
}

#[test]
fn killed_holder_is_reported_and_repairable() {
    let name = common::unique_name("sv-dead");
    let value = SharedValue::<u64>::create(&name, 10).expect("create");
    let mut child = holder("hold_value", &name);
    common::kill9(&mut child.0);

    let mut guard = match value.lock() {
        Err(LockError::OwnerDied(dead)) => {
            assert_eq!(dead.name(), name);
            assert!(dead.to_string().contains("died"), "{dead}");
            dead.into_inner()
        }
        other => panic!("expected OwnerDied, got {:?}", other.map(|g| *g)),
    };
    assert_eq!(*guard, 999, "the dead holder's half-done update is visible");
    *guard = 11; // repair
    guard.mark_consistent();
    drop(guard);

    for _ in 0..3 {
        let mut guard = value.lock().expect("plain Ok after repair");
        *guard += 1;
    }
    assert_eq!(value.load().expect("load"), 14);
    assert_eq!(*value.try_lock().expect("try_lock after repair"), 14);
    drop(value);
    assert_gone(&name);
}

#[test]
fn killed_holder_of_an_array_is_reported_and_repairable() {
    let name = common::unique_name("sa-dead");
    let array = SharedArray::<u32>::create(&name, 1000, 1).expect("create");
    let mut child = holder("hold_array", &name);
    common::kill9(&mut child.0);

    let mut guard = array
        .lock_timeout(Duration::from_secs(60))
        .err()
        .and_then(LockError::into_guard)
        .expect("OwnerDied with the guard");
    assert_eq!(guard[0], 7);
    assert_eq!(guard[999], 1);
    guard.fill(2); // repair
    guard.mark_consistent();
    drop(guard);
    assert_eq!(array.to_vec().expect("to_vec"), vec![2; 1000]);
    drop(array);
    assert_gone(&name);
}

#[test]
fn dropping_an_owner_died_guard_without_repair_keeps_reporting_it() {
    let name = common::unique_name("sv-poison");
    let value = SharedValue::<u64>::create(&name, 5).expect("create");
    let mut child = holder("hold_value", &name);
    common::kill9(&mut child.0);

    // Not repaired: the lock is released, the segment stays poisoned.
    let dead = value.lock().expect_err("owner died");
    assert!(matches!(dead, LockError::OwnerDied(_)));
    drop(dead);
    for _ in 0..2 {
        assert!(matches!(value.lock(), Err(LockError::OwnerDied(_))));
    }
    assert!(matches!(value.try_lock(), Err(LockError::OwnerDied(_))));
    assert!(matches!(
        value.lock_timeout(Duration::from_secs(60)),
        Err(LockError::OwnerDied(_))
    ));
    // The convenience calls report it instead of using or overwriting the data.
    assert!(matches!(value.load(), Err(Error::OwnerDied { .. })));
    assert!(matches!(value.store(1), Err(Error::OwnerDied { .. })));
    fn bump(value: &SharedValue<u64>) -> shmq::Result<()> {
        *value.lock()? += 1;
        Ok(())
    }
    let err = bump(&value).expect_err("poisoned");
    assert!(
        matches!(&err, Error::OwnerDied { name: n } if *n == name),
        "{err:?}"
    );
    assert!(err.to_string().contains(&name), "{err}");

    // Another process sees the poison too.
    ChildGuard::spawn("expect_owner_died", &[&name]).wait_success();

    // Repair it once; everything is plain Ok again, here and elsewhere.
    let mut guard = value
        .lock()
        .err()
        .and_then(LockError::into_guard)
        .expect("guard");
    assert_eq!(*guard, 999);
    *guard = 5;
    guard.mark_consistent();
    drop(guard);
    assert_eq!(value.load().expect("load after repair"), 5);
    value.store(6).expect("store after repair");
    ChildGuard::spawn("inc", &[&name, "10"]).wait_success();
    assert_eq!(value.load().expect("load"), 16);
    drop(value);
    assert_gone(&name);
}

#[test]
fn lock_timeout_times_out_while_another_process_holds_the_lock() {
    let name = common::unique_name("sv-timeout");
    let value = SharedValue::<u64>::create(&name, 0).expect("create");
    let mut child = holder("hold_value", &name);
    match value.lock_timeout(Duration::from_millis(50)) {
        Err(LockError::Timeout { name: n, waited }) => {
            assert_eq!(n, name);
            assert_eq!(waited, Duration::from_millis(50));
        }
        other => panic!("expected Timeout, got {:?}", other.map(|g| *g)),
    }
    let err = Error::from(value.lock_timeout(Duration::ZERO).expect_err("held"));
    assert!(
        matches!(&err, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::TimedOut),
        "{err:?}"
    );

    // Once the holder is gone, a timed lock gets the lock (reporting the death).
    common::kill9(&mut child.0);
    let mut guard = value
        .lock_timeout(Duration::from_secs(60))
        .err()
        .and_then(LockError::into_guard)
        .expect("OwnerDied with the guard");
    guard.mark_consistent();
    drop(guard);
    assert!(value.lock_timeout(Duration::from_millis(50)).is_ok());
    drop(value);
    assert_gone(&name);
}

#[test]
fn try_lock_would_block_while_another_process_holds_the_lock() {
    let name = common::unique_name("sa-try");
    let array = SharedArray::<u32>::create(&name, 16, 0).expect("create");
    let mut child = holder("hold_array", &name);
    for _ in 0..3 {
        match array.try_lock() {
            Err(LockError::WouldBlock { name: n }) => assert_eq!(n, name),
            other => panic!("expected WouldBlock, got {:?}", other.map(|g| g.to_vec())),
        }
    }
    let err = array.try_lock().expect_err("held");
    assert!(err.to_string().contains("held by another"), "{err}");
    let err = Error::from(err);
    assert!(
        matches!(&err, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::WouldBlock),
        "{err:?}"
    );

    common::kill9(&mut child.0);
    let mut guard = array
        .try_lock()
        .err()
        .and_then(LockError::into_guard)
        .expect("guard");
    guard.fill(0);
    guard.mark_consistent();
    drop(guard);
    assert!(array.try_lock().is_ok());
    drop(array);
    assert_gone(&name);
}

fn expect_incompatible(err: Error, what: &str, mentions: &[&str]) {
    let text = err.to_string();
    match &err {
        Error::Incompatible { what: w, .. } => assert_eq!(*w, what, "{text}"),
        other => panic!("expected Incompatible, got {other:?}"),
    }
    for m in mentions {
        assert!(text.contains(m), "{text:?} does not mention {m:?}");
    }
}

#[test]
fn opening_with_the_wrong_type_is_incompatible() {
    let value_name = common::unique_name("sv-type");
    let array_name = common::unique_name("sa-type");
    let raw_name = common::unique_name("raw-type");
    let value = SharedValue::<u64>::create(&value_name, 1).expect("create value");
    let array = SharedArray::<f64>::create(&array_name, 8, 0.0).expect("create array");
    let raw = shmq::Segment::create(&raw_name, 64).expect("create raw");

    let err = SharedValue::<u32>::open(&value_name).expect_err("u32 on u64 (size)");
    expect_incompatible(err, "element type", &["u32", "4 bytes", "8 bytes"]);
    let err = SharedValue::<[u8; 8]>::open(&value_name).expect_err("[u8; 8] on u64 (alignment)");
    expect_incompatible(
        err,
        "element type",
        &["[u8; 8]", "8 bytes, align 1", "8 bytes, align 8"],
    );
    let err = SharedArray::<f32>::open(&array_name).expect_err("f32 on f64");
    expect_incompatible(err, "element type", &["f32", "4 bytes", "8 bytes"]);
    let err = SharedValue::<f64>::open(&array_name).expect_err("value open of an array");
    expect_incompatible(err, "kind", &["array", "value", "SharedValue<f64>"]);
    let err = SharedArray::<u64>::open(&value_name).expect_err("array open of a value");
    expect_incompatible(err, "kind", &["array", "value", "SharedArray<u64>"]);
    let err = SharedValue::<u64>::open(&raw_name).expect_err("value open of a raw segment");
    expect_incompatible(err, "kind", &["raw", "value"]);

    // The right types still open, and the failed opens left nothing attached behind.
    assert_eq!(
        SharedValue::<u64>::open(&value_name)
            .unwrap()
            .load()
            .unwrap(),
        1
    );
    assert_eq!(SharedArray::<f64>::open(&array_name).unwrap().len(), 8);
    drop((value, array, raw));
    assert_gone(&value_name);
    assert_gone(&array_name);
    assert_gone(&raw_name);
}

#[test]
fn tags_must_match() {
    let tagged = common::unique_name("sv-tag");
    let untagged = common::unique_name("sv-untag");
    let value = SharedValue::<u64>::create_tagged(&tagged, 1, "a").expect("create tagged");
    let plain = SharedValue::<u64>::create(&untagged, 2).expect("create untagged");

    assert_eq!(
        SharedValue::<u64>::open_tagged(&tagged, "a")
            .expect("same tag")
            .load()
            .unwrap(),
        1
    );
    let err = SharedValue::<u64>::open_tagged(&tagged, "b").expect_err("tag b on tag a");
    expect_incompatible(err, "element type", &["tag \"b\"", "tag \"a\""]);
    let err = SharedValue::<u64>::open(&tagged).expect_err("untagged open of a tagged value");
    expect_incompatible(err, "element type", &["untagged", "tag \"a\""]);
    let err = SharedValue::<u64>::open_tagged(&untagged, "a").expect_err("tagged on untagged");
    expect_incompatible(err, "element type", &["tag \"a\"", "untagged"]);
    // The empty tag is no tag.
    assert_eq!(
        SharedValue::<u64>::open_tagged(&untagged, "")
            .unwrap()
            .load()
            .unwrap(),
        2
    );
    // A tag is compared in addition to size and alignment, not instead of them.
    let err = SharedValue::<u32>::open_tagged(&tagged, "a").expect_err("u32 under the same tag");
    expect_incompatible(err, "element type", &["4 bytes", "8 bytes"]);
    assert_eq!(
        SharedValue::<Meters>::open_tagged(&tagged, "a")
            .unwrap()
            .load()
            .unwrap(),
        Meters(1)
    );

    // Arrays, from both tagged constructors.
    let grid_name = common::unique_name("sa-tag");
    let grid = SharedArray::<f64>::create_tagged(&grid_name, 4, 0.5, "grid").expect("create");
    assert_eq!(
        SharedArray::<f64>::open_tagged(&grid_name, "grid")
            .expect("same tag")
            .to_vec()
            .unwrap(),
        vec![0.5; 4]
    );
    let err = SharedArray::<f64>::open(&grid_name).expect_err("untagged open");
    expect_incompatible(err, "element type", &["untagged", "tag \"grid\""]);
    let err = SharedArray::<f64>::open_tagged(&grid_name, "mesh").expect_err("other tag");
    expect_incompatible(err, "element type", &["tag \"mesh\"", "tag \"grid\""]);
    let list_name = common::unique_name("sa-tag-slice");
    let list = SharedArray::<u32>::from_slice_tagged(&list_name, &[1, 2, 3], "list").unwrap();
    assert_eq!(
        SharedArray::<u32>::open_tagged(&list_name, "list")
            .unwrap()
            .to_vec()
            .unwrap(),
        [1, 2, 3]
    );
    let err = SharedArray::<u32>::open_tagged(&list_name, "lists").expect_err("other tag");
    expect_incompatible(err, "element type", &["tag \"lists\"", "tag \"list\""]);

    // Long tags are compared whole; messages show their first 64 bytes.
    let long_name = common::unique_name("sv-longtag");
    let long_a = format!("{}-a", "t".repeat(100));
    let long_b = format!("{}-b", "t".repeat(100));
    let long = SharedValue::<u64>::create_tagged(&long_name, 3, &long_a).expect("create");
    assert_eq!(
        SharedValue::<u64>::open_tagged(&long_name, &long_a)
            .unwrap()
            .load()
            .unwrap(),
        3
    );
    let err = SharedValue::<u64>::open_tagged(&long_name, &long_b).expect_err("differs late");
    let shown = format!("tag \"{}...\"", "t".repeat(64));
    expect_incompatible(err, "element type", &[&shown]);

    drop((value, plain, grid, list, long));
    for name in [&tagged, &untagged, &grid_name, &list_name, &long_name] {
        assert_gone(name);
    }
}

#[test]
fn equal_size_and_alignment_without_a_tag_are_interchangeable() {
    // Identity is size and alignment (and tag), not the Rust type: Meters and u64 have
    // different type names and are still the same element to shmq.
    let name = common::unique_name("sv-same-shape");
    let meters = SharedValue::<Meters>::create(&name, Meters(40)).expect("create");
    let as_u64 = SharedValue::<u64>::open(&name).expect("u64 opens a Meters value");
    assert_eq!(as_u64.load().unwrap(), 40);
    as_u64.store(41).unwrap();
    assert_eq!(meters.load().unwrap(), Meters(41));
    // Any Pod type of the same size and alignment: memory-safe, the bits are reinterpreted.
    assert_eq!(SharedValue::<i64>::open(&name).unwrap().load().unwrap(), 41);
    assert_eq!(
        SharedValue::<f64>::open(&name).unwrap().load().unwrap(),
        f64::from_bits(41)
    );
    // And from another process.
    ChildGuard::spawn("open_as_u64", &[&name, "41"]).wait_success();
    assert_eq!(meters.load().unwrap(), Meters(42));

    let array_name = common::unique_name("sa-same-shape");
    let array = SharedArray::<u64>::from_slice(&array_name, &[7, 8]).expect("create");
    let as_meters = SharedArray::<Meters>::open(&array_name).expect("Meters opens u64s");
    assert_eq!(as_meters.to_vec().unwrap(), [Meters(7), Meters(8)]);
    drop((meters, as_u64, array, as_meters));
    assert_gone(&name);
    assert_gone(&array_name);
}

#[test]
fn a_child_process_is_refused_a_mismatched_element_type() {
    let tagged = common::unique_name("sv-child-tag");
    let untagged = common::unique_name("sv-child-untag");
    let value = SharedValue::<u64>::create_tagged(&tagged, 5, "a").expect("create tagged");
    let plain = SharedValue::<u64>::create(&untagged, 6).expect("create untagged");
    for (name, how) in [
        (&tagged, "u32:a"),    // size
        (&tagged, "bytes8:a"), // alignment
        (&tagged, "u64:b"),    // tag
        (&tagged, "u64"),      // untagged open of a tagged segment
        (&untagged, "u64:a"),  // tagged open of an untagged segment
        (&untagged, "u32"),    // size, untagged
    ] {
        ChildGuard::spawn("expect_incompatible", &[name, how]).wait_success();
    }
    // The matching opens work, here and in a child, and the refused ones left nobody attached.
    open_value_as(&tagged, "meters:a").expect("same size, alignment and tag");
    open_value_as(&untagged, "meters").expect("same size and alignment, untagged");
    ChildGuard::spawn("open_as_u64", &[&untagged, "6"]).wait_success();
    assert_eq!(plain.load().unwrap(), 7);
    assert_eq!(value.load().unwrap(), 5);
    drop((value, plain));
    assert_gone(&tagged);
    assert_gone(&untagged);
}

#[test]
fn bad_names_are_invalid() {
    let long = "x".repeat(shmq::MAX_NAME_LEN + 1);
    for bad in [
        "",
        "a/b",
        "with space",
        "../etc",
        "caf\u{e9}",
        long.as_str(),
    ] {
        let is_invalid = |r: shmq::Result<()>| matches!(r, Err(Error::InvalidName { .. }));
        assert!(
            is_invalid(SharedValue::<u64>::create(bad, 0).map(drop)),
            "{bad:?}"
        );
        assert!(
            is_invalid(SharedValue::<u64>::open(bad).map(drop)),
            "{bad:?}"
        );
        assert!(
            is_invalid(SharedArray::<u8>::create(bad, 4, 0).map(drop)),
            "{bad:?}"
        );
        assert!(
            is_invalid(SharedArray::<u8>::from_slice(bad, &[1]).map(drop)),
            "{bad:?}"
        );
        assert!(
            is_invalid(SharedArray::<u8>::open(bad).map(drop)),
            "{bad:?}"
        );
    }
}

#[test]
fn existing_and_missing_names() {
    let name = common::unique_name("sv-exists");
    let value = SharedValue::<u64>::create(&name, 0).expect("create");
    assert!(matches!(
        SharedValue::<u64>::create(&name, 0),
        Err(Error::AlreadyExists { .. })
    ));
    assert!(matches!(
        SharedArray::<u64>::create(&name, 3, 0),
        Err(Error::AlreadyExists { .. })
    ));
    drop(value);
    assert_gone(&name);
    assert!(matches!(
        SharedValue::<u64>::open(&name),
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        SharedArray::<u64>::open(&name),
        Err(Error::NotFound { .. })
    ));
}

#[test]
fn empty_and_oversized_arrays() {
    let name = common::unique_name("sa-empty");
    let empty = SharedArray::<f64>::create(&name, 0, 1.0).expect("an empty array is allowed");
    assert!(empty.is_empty());
    assert_eq!(empty.to_vec().expect("to_vec"), Vec::<f64>::new());
    assert!(empty.lock().expect("lock").is_empty());
    let other = SharedArray::<f64>::open(&name).expect("open empty");
    assert_eq!(other.len(), 0);
    drop((empty, other));
    assert_gone(&name);

    let name = common::unique_name("sa-huge");
    for len in [usize::MAX, usize::MAX / 8, isize::MAX as usize / 8 + 1] {
        let err = SharedArray::<u64>::create(&name, len, 0).expect_err("too large");
        assert!(
            matches!(err, Error::InvalidArgument { .. }),
            "{len}: {err:?}"
        );
        assert_gone(&name);
    }
}

/// Offsets of the layout words (see the module documentation of src/shared/mod.rs), relative to the
/// start of the data area, which lies 256 bytes before the elements of an 8-byte-aligned type.
mod layout {
    pub const TO_ELEMENTS: usize = 256;
    pub const ELEM_SIZE: usize = 0;
    pub const TAG_HASH: usize = 16;
    pub const LEN: usize = 24;
    pub const TAG_LEN: usize = 36;
    pub const TAG_TEXT: usize = 40;
}

/// Writes `word` at `offset` of the data area whose elements start at `elements`.
///
/// # Safety
/// `elements` must be the element pointer of a live handle of an 8-byte-aligned type, and no
/// other process may be using the segment.
unsafe fn poke_u64(elements: *mut u8, offset: usize, word: u64) {
    // SAFETY: the caller guarantees `elements` is 256 bytes past the start of a live, page
    // aligned data area, whose first 128 bytes hold 8-byte-aligned layout words that nobody else
    // accesses; `offset` is one of those words.
    elements
        .sub(layout::TO_ELEMENTS)
        .add(offset)
        .cast::<u64>()
        .write_volatile(word);
}

#[test]
fn garbage_layout_words_are_errors_not_panics() {
    let name = common::unique_name("sv-garbage");
    let value = SharedValue::<u64>::create(&name, 3).expect("create");
    let elements = value.as_ptr().cast::<u8>();

    // SAFETY: `elements` belongs to the live handle `value` of a u64; only this test uses the
    // segment; every poke below targets a layout word inside its data area.
    unsafe { poke_u64(elements, layout::LEN, 2) };
    let err = SharedValue::<u64>::open(&name).expect_err("a value with 2 elements");
    assert!(matches!(err, Error::Corrupted { .. }), "{err:?}");

    // SAFETY: as above.
    unsafe {
        poke_u64(elements, layout::LEN, 1);
        poke_u64(elements, layout::ELEM_SIZE, u64::MAX);
        poke_u64(elements, layout::TAG_HASH, 0x1234_5678);
        poke_u64(elements, layout::TAG_TEXT, u64::MAX); // invalid UTF-8
        elements
            .sub(layout::TO_ELEMENTS)
            .add(layout::TAG_LEN)
            .cast::<u32>()
            .write_volatile(u32::MAX);
    }
    let err = SharedValue::<u64>::open(&name).expect_err("garbage identity words");
    assert!(matches!(err, Error::Incompatible { .. }), "{err:?}");
    assert!(err.to_string().contains("..."), "{err}");

    // The handle that checked the layout at creation keeps working on its checked copy.
    assert_eq!(value.load().expect("load"), 3);
    drop(value);
    assert_gone(&name);

    let name = common::unique_name("sa-garbage");
    let array = SharedArray::<u64>::create(&name, 10, 4).expect("create");
    let elements = array.as_ptr().cast::<u8>();
    for len in [11, u64::MAX, u64::MAX / 8 + 1, 1 << 61] {
        // SAFETY: `elements` belongs to the live handle `array` of u64s; only this test uses
        // the segment.
        unsafe { poke_u64(elements, layout::LEN, len) };
        let err = SharedArray::<u64>::open(&name).expect_err("a length that does not fit");
        assert!(matches!(err, Error::Corrupted { .. }), "{len}: {err:?}");
    }
    // SAFETY: as above.
    unsafe { poke_u64(elements, layout::LEN, 3) };
    let shorter = SharedArray::<u64>::open(&name).expect("a length that fits is accepted");
    assert_eq!(shorter.to_vec().expect("to_vec"), vec![4; 3]);
    assert_eq!(array.len(), 10);
    drop((array, shorter));
    assert_gone(&name);
}

#[test]
fn a_guard_keeps_the_segment_until_it_is_dropped() {
    let name = common::unique_name("sv-guard");
    let value = SharedValue::<u64>::create(&name, 1).expect("create");
    let mut guard = value.lock().expect("lock");
    drop(value);
    *guard += 1;
    assert_eq!(*guard, 2);
    assert!(common::shm_exists(&name));
    drop(guard);
    assert_gone(&name);
}

#[test]
fn question_mark_converts_lock_errors() {
    fn boxed(name: &str) -> Result<u64, Box<dyn std::error::Error>> {
        let hits = SharedValue::<u64>::create(name, 0)?;
        *hits.lock()? += 1;
        let grid = SharedArray::<f64>::create(&format!("{name}-grid"), 4, 0.0)?;
        {
            let mut g = grid.lock()?;
            g[3] = 1.5;
            g.fill(0.5);
        }
        let copy: Vec<f64> = grid.to_vec()?;
        assert_eq!(copy, vec![0.5; 4]);
        let _ = hits.try_lock()?;
        let _ = hits.lock_timeout(Duration::from_millis(50))?;
        Ok(hits.load()?)
    }
    fn plain(name: &str) -> shmq::Result<u64> {
        let hits = SharedValue::<u64>::create(name, 0)?;
        *hits.lock()? += 2;
        hits.store(hits.load()? + 1)?;
        Ok(*hits.try_lock()?)
    }
    let name = common::unique_name("sv-qm");
    assert_eq!(boxed(&name).expect("boxed"), 1);
    assert_gone(&name);
    assert_gone(&format!("{name}-grid"));
    assert_eq!(plain(&name).expect("plain"), 3);
    assert_gone(&name);
}

// ----- re-locking from the holding thread (issue 11, item 9) ----------------------------------

/// Runs `f` on a thread of its own and fails if it has not returned within a minute, so that a
/// re-lock that deadlocks fails the test instead of hanging the run.
fn finishes<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(value) => value,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("did not return within 60 s: the re-lock deadlocked")
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            panic!("the test's thread panicked (its message is above)")
        }
    }
}

fn would_deadlock<G>(result: shmq::LockResult<G>, name: &str) -> bool {
    matches!(result, Err(LockError::WouldDeadlock { name: ref n }) if n == name)
}

#[test]
fn relocking_from_the_holding_thread_is_an_error_not_a_deadlock() {
    let name = common::unique_name("sv-relock");
    finishes({
        let name = name.clone();
        move || {
            let value = SharedValue::<u64>::create(&name, 1).expect("create");
            let clone = value.clone();
            let other = SharedValue::<u64>::open(&name).expect("a second handle, mapped apart");
            let mut guard = value.lock().expect("lock");
            // Every form, through this handle, a clone, and a handle of its own mapping.
            for handle in [&value, &clone, &other] {
                assert!(would_deadlock(handle.try_lock(), &name));
                assert!(would_deadlock(
                    handle.lock_timeout(Duration::from_secs(60)),
                    &name
                ));
                assert!(would_deadlock(handle.lock(), &name));
            }
            let err = value.lock().expect_err("re-lock");
            assert!(err.to_string().contains("already holds"), "{err}");
            assert!(
                err.into_guard().is_none(),
                "a re-lock hands out no second guard"
            );
            // The conveniences that lock inside report it as an Error.
            for err in [value.load().unwrap_err(), other.store(5).unwrap_err()] {
                assert!(
                    matches!(&err, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::Deadlock),
                    "{err:?}"
                );
            }
            // Another thread is simply blocked, as before: WouldBlock, not WouldDeadlock.
            std::thread::scope(|s| {
                s.spawn(|| {
                    assert!(matches!(
                        clone.try_lock(),
                        Err(LockError::WouldBlock { .. })
                    ));
                });
            });
            // The guard held all along still works, and the lock is free once it is dropped.
            *guard += 1;
            assert_eq!(*guard, 2);
            drop(guard);
            assert_eq!(other.load().expect("load after the guard is dropped"), 2);
            *other.lock().expect("lock again") += 1;
            assert_eq!(value.load().expect("load"), 3);

            let array = SharedArray::<u32>::create(&format!("{name}-a"), 8, 0).expect("array");
            let mut guard = array.lock().expect("lock the array");
            assert!(would_deadlock(array.try_lock(), &format!("{name}-a")));
            assert!(would_deadlock(array.lock(), &format!("{name}-a")));
            assert!(array.to_vec().is_err());
            guard[7] = 9;
            drop(guard);
            assert_eq!(array.to_vec().expect("to_vec")[7], 9);
        }
    });
    assert_gone(&name);
    assert_gone(&format!("{name}-a"));
}

#[test]
fn the_error_checking_lock_still_recovers_from_a_killed_holder() {
    let name = common::unique_name("sv-relock-dead");
    let value = SharedValue::<u64>::create(&name, 10).expect("create");
    let mut child = holder("hold_value", &name);
    common::kill9(&mut child.0);
    let value = finishes(move || {
        let mut guard = match value.lock() {
            Err(LockError::OwnerDied(dead)) => dead.into_inner(),
            other => panic!("expected OwnerDied, got {:?}", other.map(|g| *g)),
        };
        assert_eq!(*guard, 999, "the killed holder's half-done update");
        // Taken from a dead owner, the lock is ours like any other: re-locking is reported.
        assert!(matches!(
            value.try_lock(),
            Err(LockError::WouldDeadlock { .. })
        ));
        assert!(matches!(value.lock(), Err(LockError::WouldDeadlock { .. })));
        *guard = 20;
        guard.mark_consistent();
        drop(guard);
        assert_eq!(value.load().expect("plain Ok after repair"), 20);

        value
    });
    // A thread (of another process) that ends holding the lock is a dead owner too.
    ChildGuard::spawn("die-in-thread", &[&name]).wait_success();
    let value = finishes(move || {
        let mut guard = value
            .lock()
            .err()
            .and_then(LockError::into_guard)
            .expect("OwnerDied after a thread ended holding the lock");
        guard.mark_consistent();
        drop(guard);
        value
    });
    // Another process re-locks from its holding thread and is told so too.
    ChildGuard::spawn("relock", &[&name]).wait_success();
    assert_eq!(value.load().expect("load"), 21);
    drop(value);
    assert_gone(&name);
}
