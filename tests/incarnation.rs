//! `incarnation()`: which creation of a segment a handle is on, so that a handle re-opened by
//! name can be checked to be on the same segment, not a newer one of the same name.

mod common;

use common::channel::*;
use shmq::{Receiver, Segment, Sender, SharedArray, SharedValue};

#[test]
#[ignore = "entry point of child processes (see tests/common/mod.rs)"]
fn child_entry() {
    common::child_dispatch(|role, args| match role {
        "open_and_report" => {
            let tx = Sender::open(&args[0]).expect("open sender");
            let rx = Receiver::open(&args[0]).expect("open receiver");
            let second = tx.open_receiver().expect("open_receiver");
            common::signal_parent(&format!(
                "incarnations {} {} {}",
                tx.incarnation(),
                rx.incarnation(),
                second.incarnation()
            ));
        }
        other => panic!("unknown child role {other}"),
    });
}

#[test]
fn a_channel_opened_elsewhere_reports_its_creators_incarnation() {
    let name = common::unique_name("inc-chan");
    let (tx, rx) = shmq::channel(&name, config(2, 64 * KIB)).expect("create");
    let first = tx.incarnation();
    assert_eq!(rx.incarnation(), first);
    assert_eq!(
        shmq::inspect(&name).expect("inspect").created_unix_ns,
        first,
        "the incarnation is the header's creation stamp"
    );
    let mut kid = Kid::spawn("open_and_report", &[&name]);
    let line = kid.expect_prefix("incarnations ", false);
    kid.finish();
    assert_eq!(line, format!("incarnations {first} {first} {first}"));
    drop((tx, rx));
    assert_gone(&name);

    // The same name, created again: another incarnation, which its openers report.
    let (tx, rx) = shmq::channel(&name, config(2, 64 * KIB)).expect("create again");
    let second = tx.incarnation();
    assert_ne!(
        second, first,
        "two creations of one name share an incarnation"
    );
    assert_eq!(Sender::open(&name).expect("open").incarnation(), second);
    assert_eq!(rx.incarnation(), second);
    drop((tx, rx));
    assert_gone(&name);
}

#[test]
fn a_name_taken_over_by_a_newer_segment_reports_another_incarnation() {
    // What a handle re-opened by name must detect: the segment it knew was removed while in
    // use, and the name now belongs to a newer one.
    let name = common::unique_name("inc-seg");
    let old = Segment::create(&name, 4096).expect("create");
    let old_incarnation = old.incarnation();
    assert_eq!(
        Segment::open(&name).expect("open").incarnation(),
        old_incarnation
    );
    Segment::remove(&name).expect("remove while in use");
    let new = Segment::create(&name, 4096).expect("create under the same name");
    assert_ne!(new.incarnation(), old_incarnation);
    assert_eq!(
        Segment::open(&name).expect("open").incarnation(),
        new.incarnation(),
        "an open by name gets the newer segment"
    );
    assert_eq!(
        old.incarnation(),
        old_incarnation,
        "the old handle keeps its own"
    );
    drop((old, new));
    assert_gone(&name);
}

#[test]
fn shared_values_and_arrays_report_their_incarnation() {
    let name = common::unique_name("inc-value");
    let value = SharedValue::<u64>::create(&name, 7).expect("create value");
    let first = value.incarnation();
    assert_eq!(
        SharedValue::<u64>::open(&name).expect("open").incarnation(),
        first
    );
    drop(value);
    assert_gone(&name);
    let value = SharedValue::<u64>::create(&name, 7).expect("create value again");
    assert_ne!(value.incarnation(), first);
    drop(value);
    assert_gone(&name);

    let name = common::unique_name("inc-array");
    let array = SharedArray::<f64>::create(&name, 16, 0.5).expect("create array");
    let first = array.incarnation();
    assert_eq!(
        SharedArray::<f64>::open(&name).expect("open").incarnation(),
        first
    );
    drop(array);
    assert_gone(&name);
    let array = SharedArray::<f64>::from_slice(&name, &[1.0, 2.0]).expect("create again");
    assert_ne!(array.incarnation(), first);
    drop(array);
    assert_gone(&name);
}
