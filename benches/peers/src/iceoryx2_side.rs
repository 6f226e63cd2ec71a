//! iceoryx2's side of every cell: ipc publish-subscribe services of `[u8]` sized like shmq's
//! channels, the publisher writing in place (`loan_slice_uninit`) or copying
//! (`write_from_slice`, its copying send), the subscriber waiting on an Event listener
//! (default) or spinning on `receive` (busy).

use std::hint::spin_loop;

use iceoryx2::port::listener::Listener;
use iceoryx2::port::notifier::Notifier;
use iceoryx2::port::publisher::Publisher;
use iceoryx2::port::subscriber::Subscriber;
use iceoryx2::prelude::*;
use iceoryx2::sample::Sample;
use iceoryx2::service::port_factory::publish_subscribe::PortFactory;

use crate::cell::{Cell, Waiting, Write};
use crate::cleanup::{self, Names};
use crate::contender::{Measurement, StartChild};
use crate::drive::{self, READY};
use crate::error::{BoxResult, Context};
use crate::pattern;
use crate::plan::Plan;
use crate::process::report;

/// A publish-subscribe service of byte slices, as both contenders move bytes.
type Data = PortFactory<ipc::Service, [u8], ()>;
/// The publisher of a [`Data`] service.
type DataPublisher = Publisher<ipc::Service, [u8], ()>;
/// The subscriber of a [`Data`] service.
type DataSubscriber = Subscriber<ipc::Service, [u8], ()>;
/// A received sample of a [`Data`] service.
type DataSample = Sample<ipc::Service, [u8], ()>;

/// The configuration of run `run`'s private iceoryx2 domain: iceoryx2's defaults with a
/// file prefix of the run's own (see the cleanup module), so that everything it creates can
/// be told apart from other iceoryx2 users' files and removed at the end of the run.
fn domain(run: &str) -> BoxResult<Config> {
    let mut config = Config::default();
    config.global.prefix =
        FileName::new(cleanup::iceoryx2_prefix(run).as_bytes()).context("naming a domain")?;
    Ok(config)
}

/// The node of this process, in run `run`'s domain. Signal handling is off: the benchmark
/// ends its child itself, and iceoryx2's handler would only turn SIGTERM into a flag nobody
/// reads here.
fn node(run: &str) -> BoxResult<Node<ipc::Service>> {
    NodeBuilder::new()
        .config(&domain(run)?)
        .signal_handling_mode(SignalHandlingMode::Disabled)
        .create::<ipc::Service>()
        .context("creating an iceoryx2 node")
}

/// Names of the services of one direction: `<base>/<direction>/data` (the payloads) and
/// `<base>/<direction>/wake` (the events that wake a waiting subscriber).
fn service_name(base: &str, direction: &str, what: &str) -> BoxResult<ServiceName> {
    ServiceName::new(&format!("{base}/{direction}/{what}")).context("naming a service")
}

/// The direction of a stream or a ping (parent to child).
const FORWARD: &str = "fwd";
/// The direction of a pong (child to parent).
const BACKWARD: &str = "back";

/// The data service of one direction, sized like shmq's channel of the cell:
/// - `subscriber_max_buffer_size` = `plan.queue_depth`, shmq's ring capacity;
/// - `history_size(0)`: shmq keeps no history for late joiners either;
/// - `enable_safe_overflow(false)`: a full queue holds the publisher back (with its
///   `RetryUntilDelivered` back-pressure) instead of overwriting the oldest sample, as shmq's
///   full ring blocks the sender;
/// - one publisher, one subscriber, one borrowed sample (the receiver holds one message at a
///   time): iceoryx2 preallocates `subscribers * (buffer + borrowed) + history + loaned`
///   samples, so this sizes its data segment like shmq's arena of `queue_depth + 2` payloads;
/// - no `payload_alignment`: on a `[u8]` service it would pad every element.
fn data_service(
    node: &Node<ipc::Service>,
    name: &ServiceName,
    plan: &Plan,
    create: bool,
) -> BoxResult<Data> {
    let builder = node
        .service_builder(name)
        .publish_subscribe::<[u8]>()
        .subscriber_max_buffer_size(plan.queue_depth)
        .history_size(0)
        .enable_safe_overflow(false)
        .subscriber_max_borrowed_samples(1)
        .max_publishers(1)
        .max_subscribers(1)
        .max_nodes(2);
    if create {
        builder.create().context("creating an iceoryx2 service")
    } else {
        builder.open().context("opening an iceoryx2 service")
    }
}

/// The publisher of a data service:
/// - `initial_max_slice_len` = the payload length, so every chunk holds one payload exactly;
/// - `max_loaned_samples(1)`: the sender fills one sample at a time, as shmq's one loan;
/// - `RetryUntilDelivered`: blocking back-pressure (see [`data_service`]);
/// - static allocation: the data segment is made once and reused, as shmq's arena.
fn publisher(service: &Data, len: usize) -> BoxResult<DataPublisher> {
    service
        .publisher_builder()
        .initial_max_slice_len(len)
        .max_loaned_samples(1)
        .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
        .allocation_strategy(AllocationStrategy::Static)
        .create()
        .context("creating an iceoryx2 publisher")
}

/// The subscriber of a data service, its buffer as deep as the service allows (shmq's ring
/// capacity, see [`data_service`]).
fn subscriber(service: &Data, plan: &Plan) -> BoxResult<DataSubscriber> {
    service
        .subscriber_builder()
        .buffer_size(plan.queue_depth)
        .create()
        .context("creating an iceoryx2 subscriber")
}

/// The event service that wakes the subscriber of one direction (default waiting only).
fn wake_service(
    node: &Node<ipc::Service>,
    name: &ServiceName,
    create: bool,
) -> BoxResult<iceoryx2::service::port_factory::event::PortFactory<ipc::Service>> {
    let builder = node
        .service_builder(name)
        .event()
        .max_notifiers(1)
        .max_listeners(1);
    if create {
        builder
            .create()
            .context("creating an iceoryx2 event service")
    } else {
        builder.open().context("opening an iceoryx2 event service")
    }
}

/// The sending end of one direction: a publisher, and with default waiting a notifier that
/// wakes the subscriber after each send.
struct SendingEnd {
    publisher: DataPublisher,
    notifier: Option<Notifier<ipc::Service>>,
    _services: (
        Data,
        Option<iceoryx2::service::port_factory::event::PortFactory<ipc::Service>>,
    ),
}

/// The receiving end of one direction: a subscriber, and with default waiting the listener
/// it sleeps on when it finds nothing.
struct ReceivingEnd {
    subscriber: DataSubscriber,
    listener: Option<Listener<ipc::Service>>,
    _services: (
        Data,
        Option<iceoryx2::service::port_factory::event::PortFactory<ipc::Service>>,
    ),
}

/// Opens (or, with `create`, creates) the services of `direction` and the sending end.
fn sending_end(
    node: &Node<ipc::Service>,
    base: &str,
    direction: &str,
    cell: Cell,
    plan: &Plan,
    create: bool,
) -> BoxResult<SendingEnd> {
    let data = data_service(node, &service_name(base, direction, "data")?, plan, create)?;
    let publisher = publisher(&data, cell.payload())?;
    let (wake, notifier) = match cell.waiting() {
        Waiting::Busy => (None, None),
        Waiting::Default => {
            let wake = wake_service(node, &service_name(base, direction, "wake")?, create)?;
            let notifier = wake
                .notifier_builder()
                .create()
                .context("creating an iceoryx2 notifier")?;
            (Some(wake), Some(notifier))
        }
    };
    Ok(SendingEnd {
        publisher,
        notifier,
        _services: (data, wake),
    })
}

/// Opens (or, with `create`, creates) the services of `direction` and the receiving end.
fn receiving_end(
    node: &Node<ipc::Service>,
    base: &str,
    direction: &str,
    cell: Cell,
    plan: &Plan,
    create: bool,
) -> BoxResult<ReceivingEnd> {
    let data = data_service(node, &service_name(base, direction, "data")?, plan, create)?;
    let subscriber = subscriber(&data, plan)?;
    let (wake, listener) = match cell.waiting() {
        Waiting::Busy => (None, None),
        Waiting::Default => {
            let wake = wake_service(node, &service_name(base, direction, "wake")?, create)?;
            let listener = wake
                .listener_builder()
                .create()
                .context("creating an iceoryx2 listener")?;
            (Some(wake), Some(listener))
        }
    };
    Ok(ReceivingEnd {
        subscriber,
        listener,
        _services: (data, wake),
    })
}

impl SendingEnd {
    /// Publishes message `seq`: written in place in a loaned sample, or copied in from
    /// `private` (already stamped); then wakes the subscriber if it may sleep.
    fn send(&self, write: Write, seq: u64, len: usize, private: &[u8]) -> BoxResult<()> {
        let uninit = self
            .publisher
            .loan_slice_uninit(len)
            .context("iceoryx2 loan_slice_uninit")?;
        let sample = match write {
            Write::Loan => {
                let mut uninit = uninit;
                let bytes = uninit.payload_mut();
                // SAFETY: `bytes` is the loaned sample's payload, `bytes.len()` writable
                // elements of one byte each; write_bytes initialises every one of them.
                unsafe {
                    std::ptr::write_bytes(bytes.as_mut_ptr(), pattern::FILL_BYTE, bytes.len())
                };
                // SAFETY: every byte of the payload was initialised just above.
                let mut sample = unsafe { uninit.assume_init() };
                pattern::stamp(sample.payload_mut(), seq);
                sample
            }
            Write::CopyIn => uninit.write_from_slice(private),
        };
        sample.send().context("iceoryx2 send")?;
        if let Some(notifier) = &self.notifier {
            notifier.notify().context("iceoryx2 notify")?;
        }
        Ok(())
    }
}

impl ReceivingEnd {
    /// The next sample: `receive` until one comes, sleeping on the listener between tries
    /// (default) or spinning (busy). A notification that came before the wait is kept by the
    /// listener, so a sample published between an empty `receive` and the wait is not missed.
    fn receive(&self) -> BoxResult<DataSample> {
        loop {
            if let Some(sample) = self.subscriber.receive().context("iceoryx2 receive")? {
                return Ok(sample);
            }
            match &self.listener {
                Some(listener) => {
                    listener
                        .blocking_wait(|_| {})
                        .context("iceoryx2 blocking_wait")?;
                }
                None => spin_loop(),
            }
        }
    }
}

/// Parent side of `cell` for iceoryx2.
pub fn measure(
    cell: Cell,
    plan: &Plan,
    names: &Names,
    start_child: StartChild<'_>,
) -> BoxResult<Measurement> {
    let node = node(&names.run)?;
    let base = &names.measurement;
    let len = cell.payload();
    let write = cell.write();
    let forward = sending_end(&node, base, FORWARD, cell, plan, true)?;
    let mut private = vec![0u8; len];
    pattern::fill(&mut private, 0);
    match cell {
        Cell::Throughput { .. } | Cell::Rate { .. } => {
            let mut peer = start_child()?;
            let result = drive::drive_stream(&mut peer, plan, |seq| {
                if write == Write::CopyIn {
                    pattern::stamp(&mut private, seq);
                }
                forward.send(write, seq, len, &private)
            })?;
            peer.finish()?;
            Ok(Measurement::of_stream(cell, &result, plan))
        }
        Cell::Latency { .. } => {
            let backward = receiving_end(&node, base, BACKWARD, cell, plan, true)?;
            let mut peer = start_child()?;
            let one_way = drive::drive_ping_pong(&mut peer, plan, |seq| {
                pattern::stamp(&mut private, seq);
                forward.send(Write::CopyIn, seq, len, &private)?;
                let pong = backward.receive()?;
                pattern::verify(pong.payload(), seq, len)?;
                Ok(())
            })?;
            peer.finish()?;
            Ok(Measurement::Latency {
                one_way_ns: one_way,
            })
        }
    }
}

/// Child side of `cell` for iceoryx2.
pub fn serve(cell: Cell, plan: &Plan, names: &Names) -> BoxResult<()> {
    let node = node(&names.run)?;
    let base = &names.measurement;
    let len = cell.payload();
    let forward = receiving_end(&node, base, FORWARD, cell, plan, false)?;
    match cell {
        Cell::Throughput { .. } | Cell::Rate { .. } => {
            report(READY)?;
            drive::serve_stream(plan, |seq| {
                let sample = forward.receive()?;
                pattern::verify(sample.payload(), seq, len)?;
                Ok(())
            })
        }
        Cell::Latency { .. } => {
            let backward = sending_end(&node, base, BACKWARD, cell, plan, false)?;
            report(READY)?;
            drive::serve_ping_pong(plan, |seq| {
                let ping = forward.receive()?;
                pattern::verify(ping.payload(), seq, len)?;
                backward.send(Write::CopyIn, seq, len, ping.payload())
            })
        }
    }
}

/// Asks iceoryx2 to remove what dead nodes of run `run`'s domain left (a child that failed):
/// iceoryx2 cleans stale resources only when asked. Returns how many dead nodes it cleaned.
pub fn remove_dead_nodes(run: &str) -> usize {
    let Ok(config) = domain(run) else {
        return 0;
    };
    let mut cleaned = 0;
    let _ = Node::<ipc::Service>::list(&config, |state| {
        if let NodeState::Dead(view) = state {
            if view.try_remove_stale_resources().is_ok() {
                cleaned += 1;
            }
        }
        CallbackProgression::Continue
    });
    cleaned
}
