//! The bridge between two "hosts": real `shmq-bridge` processes, two Zenoh peers on loopback
//! (no router, multicast scouting off), and this test process as the local producer on host A
//! and the local consumer on host B. Kills are SIGKILL.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{free_endpoint, leftovers, open_receiver, send, unique_name, Bridge, Pattern};
use shmq::{ChannelConfig, RecvTimeoutError, TryRecvError};

const MIB: usize = 1 << 20;
const LONG: Duration = Duration::from_secs(120);
const SHORT: Duration = Duration::from_secs(30);

/// A small deterministic generator for message sizes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// `count` sizes from 0 B to 16 MiB, spread evenly over the powers of two (so most are small
/// and some are large), with the two extremes always in.
fn mixed_sizes(count: usize) -> Vec<usize> {
    let mut rng = Rng(0x5eed_0fb4_1d6e);
    (0..count)
        .map(|i| match i {
            0 => 0,
            1 => 16 * MIB,
            _ => {
                let bits = rng.next() % 25; // up to 2^24 = 16 MiB
                (rng.next() % (1 << bits)) as usize
            }
        })
        .collect()
}

fn a_channel(capacity: usize) -> ChannelConfig {
    ChannelConfig::default()
        .with_capacity(capacity)
        .with_arena_bytes(64 * MIB)
}

/// Receives from `rx` until the stream ends: `last` arrived (a persistent channel has no other
/// end), or the channel disconnected. Returns the indices in arrival order, each message
/// checked byte for byte (its length is free: the caller knows the sizes).
fn receive_stream(rx: &shmq::Receiver, pattern: &Pattern, last: Option<u64>) -> Vec<u64> {
    let mut got = Vec::new();
    loop {
        match rx.recv_timeout(LONG) {
            Ok(message) => {
                let index = Pattern::index_of(&message).expect("stream messages have an index");
                assert!(pattern.is(index, &message), "message {index} corrupted");
                got.push(index);
                if Some(index) == last {
                    return got;
                }
            }
            Err(RecvTimeoutError::Disconnected) => return got,
            Err(e) => panic!("receive after {} messages: {e}", got.len()),
        }
    }
}

/// The `N` in a log line `... importer gone; N of the ...`.
fn unconfirmed_in(log: &str) -> u64 {
    let line = log
        .lines()
        .find(|l| l.contains("importer gone; "))
        .expect("an importer-gone line");
    let after = line.split("importer gone; ").nth(1).unwrap();
    after.split(' ').next().unwrap().parse().expect("a count")
}

#[test]
fn mixed_sizes_and_one_of_256_mib_cross_intact_and_in_order() {
    let (on_a, on_b) = (unique_name("a"), unique_name("b"));
    let key = format!("shmq/{on_a}");
    let endpoint = free_endpoint();
    let mut sizes = mixed_sizes(1000);
    sizes.push(256 * MIB);
    let pattern = Pattern::new(256 * MIB);
    {
        // Our idle receiver keeps host A's channel connected whatever the bridge does.
        let (tx, _idle) = shmq::channel(&on_a, a_channel(64)).expect("channel on A");
        let mut exporter = Bridge::start(
            "exporter",
            &["export", &on_a, "--key", &key, "--listen", &endpoint],
        );
        let mut importer = Bridge::start(
            "importer",
            &[
                "import",
                &on_b,
                "--key",
                &key,
                "--connect",
                &endpoint,
                "--create",
                "--capacity",
                "64",
                "--arena-bytes",
                "67108864",
                "--until-end",
            ],
        );
        let rx = open_receiver(&on_b, SHORT);
        let mut lengths = Vec::new();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                for (index, &len) in sizes.iter().enumerate() {
                    send(&tx, &pattern, index as u64, len);
                }
                drop(tx); // the end of the stream: the exporter drains and ends it
            });
            loop {
                match rx.recv_timeout(LONG) {
                    Ok(message) => {
                        let index = lengths.len() as u64;
                        assert_eq!(
                            message.len(),
                            sizes[lengths.len()],
                            "message {index}'s size"
                        );
                        assert!(
                            pattern.is(index, &message),
                            "message {index} corrupted or out of order"
                        );
                        lengths.push(message.len());
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                    Err(e) => panic!("receive after {} messages: {e}", lengths.len()),
                }
            }
        });
        assert_eq!(lengths, sizes, "every message, in order");
        assert!(
            exporter.wait_exit(SHORT).success(),
            "the exporter exits 0 once drained"
        );
        assert!(
            importer.wait_exit(SHORT).success(),
            "the importer exits 0 at the end"
        );
        assert_eq!(exporter.count("every message confirmed"), 1);
        assert_eq!(
            importer.count("1001 of its 1001 messages to this importer landed"),
            1
        );
    }
    assert_eq!(leftovers(&[&on_a, &on_b]), Vec::<String>::new());
}

#[test]
fn share_mode_gives_each_message_to_exactly_one_importer() {
    let on_a = unique_name("a");
    let on_b = [unique_name("b1"), unique_name("b2")];
    let key = format!("shmq/{on_a}");
    let endpoint = free_endpoint();
    let count = 400u64;
    let pattern = Pattern::new(64 << 10);
    {
        let (tx, _idle) = shmq::channel(&on_a, a_channel(64)).expect("channel on A");
        let mut exporter = Bridge::start(
            "exporter",
            &[
                "export", &on_a, "--key", &key, "--listen", &endpoint, "--mode", "share",
            ],
        );
        let mut importers: Vec<Bridge> = on_b
            .iter()
            .map(|b| {
                Bridge::start(
                    b,
                    &[
                        "import",
                        b,
                        "--key",
                        &key,
                        "--connect",
                        &endpoint,
                        "--create",
                        "--until-end",
                    ],
                )
            })
            .collect();
        let receivers: Vec<_> = on_b.iter().map(|b| open_receiver(b, SHORT)).collect();
        // Both importers present and granting credit before the first message, so both get some.
        exporter.wait_for("first credit", 2, SHORT);
        let got: Vec<Vec<u64>> = std::thread::scope(|scope| {
            let consumers: Vec<_> = receivers
                .iter()
                .map(|rx| scope.spawn(|| receive_stream(rx, &pattern, None)))
                .collect();
            for index in 0..count {
                send(
                    &tx,
                    &pattern,
                    index,
                    8 + (index as usize * 997) % (64 << 10),
                );
            }
            drop(tx);
            consumers.into_iter().map(|c| c.join().unwrap()).collect()
        });
        for (stream, b) in got.iter().zip(&on_b) {
            assert!(!stream.is_empty(), "importer {b} got no message");
            assert!(
                stream.windows(2).all(|w| w[0] < w[1]),
                "{b}'s messages in order"
            );
        }
        let all: BTreeSet<u64> = got.iter().flatten().copied().collect();
        assert_eq!(
            got[0].len() + got[1].len(),
            count as usize,
            "no message twice"
        );
        assert_eq!(all, (0..count).collect(), "every message once");
        assert!(exporter.wait_exit(SHORT).success());
        for importer in &mut importers {
            assert!(importer.wait_exit(SHORT).success());
        }
    }
    assert_eq!(
        leftovers(&[&on_a, &on_b[0], &on_b[1]]),
        Vec::<String>::new()
    );
}

#[test]
fn share_mode_sends_a_host_only_what_it_has_room_for() {
    // Host B1's channel holds 4 messages and nobody reads it; its window is 4: it gets at most
    // 8 of the 300 messages, and host B2 every other one, while B1 is stuck.
    let on_a = unique_name("a");
    let (stuck, busy) = (unique_name("stuck"), unique_name("busy"));
    let key = format!("shmq/{on_a}");
    let endpoint = free_endpoint();
    let count = 300u64;
    let pattern = Pattern::new(4096);
    {
        let (tx, _idle) = shmq::channel(&on_a, a_channel(64)).expect("channel on A");
        let mut exporter = Bridge::start(
            "exporter",
            &[
                "export", &on_a, "--key", &key, "--listen", &endpoint, "--mode", "share",
            ],
        );
        let mut stuck_importer = Bridge::start(
            "stuck",
            &[
                "import",
                &stuck,
                "--key",
                &key,
                "--connect",
                &endpoint,
                "--create",
                "--capacity",
                "4",
                "--window-messages",
                "4",
                "--until-end",
            ],
        );
        let mut busy_importer = Bridge::start(
            "busy",
            &[
                "import",
                &busy,
                "--key",
                &key,
                "--connect",
                &endpoint,
                "--create",
                "--until-end",
            ],
        );
        let stuck_rx = open_receiver(&stuck, SHORT);
        let busy_rx = open_receiver(&busy, SHORT);
        exporter.wait_for("first credit", 2, SHORT);
        let busy_got = AtomicU64::new(0);
        let (busy_stream, stuck_stream) = std::thread::scope(|scope| {
            let busy_consumer = scope.spawn(|| {
                let mut got = Vec::new();
                loop {
                    match busy_rx.recv_timeout(LONG) {
                        Ok(message) => {
                            got.push(Pattern::index_of(&message).unwrap());
                            busy_got.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(RecvTimeoutError::Disconnected) => return got,
                        Err(e) => panic!("busy host: {e}"),
                    }
                }
            });
            for index in 0..count {
                send(&tx, &pattern, index, 4096);
            }
            drop(tx);
            // Everything not stuck on B1 reaches B2 while B1 still reads nothing (and if B1 was
            // sent more than its room, B2 never gets that far).
            let deadline = std::time::Instant::now() + LONG;
            while busy_got.load(Ordering::Relaxed) + 8 < count {
                let stuck_so_far = count - busy_got.load(Ordering::Relaxed);
                assert!(
                    std::time::Instant::now() < deadline,
                    "B2 got only {} of {count}: the stuck host holds {stuck_so_far}",
                    count - stuck_so_far
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            assert_eq!(stuck_rx.len(), 4, "the stuck host's channel is full");
            let stuck_stream = receive_stream(&stuck_rx, &pattern, None);
            (busy_consumer.join().unwrap(), stuck_stream)
        });
        assert!(
            stuck_stream.len() <= 8,
            "the stuck host got {}",
            stuck_stream.len()
        );
        let all: BTreeSet<u64> = busy_stream.iter().chain(&stuck_stream).copied().collect();
        assert_eq!(busy_stream.len() + stuck_stream.len(), count as usize);
        assert_eq!(all, (0..count).collect());
        assert!(exporter.wait_exit(SHORT).success());
        assert!(stuck_importer.wait_exit(SHORT).success());
        assert!(busy_importer.wait_exit(SHORT).success());
    }
    assert_eq!(leftovers(&[&on_a, &stuck, &busy]), Vec::<String>::new());
}

/// Checks a stream that lost what one killed bridge held: in order, nothing twice, everything
/// up to `last` but at most `lost_at_most` messages.
fn assert_resumed(got: &[u64], last: u64, lost_at_most: u64) -> u64 {
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "in order, nothing twice"
    );
    assert_eq!(got.last(), Some(&last), "the stream went on to its end");
    let lost = last + 1 - got.len() as u64;
    assert!(
        lost <= lost_at_most,
        "{lost} messages lost (at most {lost_at_most})"
    );
    lost
}

#[test]
fn an_exporter_killed_mid_stream_is_reported_and_restarted() {
    let (on_a, on_b) = (unique_name("a"), unique_name("b"));
    let key = format!("shmq/{on_a}");
    let endpoint = free_endpoint();
    let (count, kill_at) = (3000u64, 500usize);
    let window = 8;
    let pattern = Pattern::new(4096);
    {
        let (tx, idle) = shmq::channel(&on_a, a_channel(64)).expect("channel on A");
        // Host B's channel is persistent, so a bridge that dies does not disconnect it.
        let (_, rx) =
            shmq::channel(&on_b, a_channel(64).with_disconnect(false)).expect("channel on B");
        let export_args = ["export", &on_a, "--key", &key, "--listen", &endpoint];
        let mut exporter = Bridge::start("exporter", &export_args);
        let mut importer = Bridge::start(
            "importer",
            &[
                "import",
                &on_b,
                "--key",
                &key,
                "--connect",
                &endpoint,
                "--create",
                "--window-messages",
                &window.to_string(),
                "--until-end",
            ],
        );
        let got = std::thread::scope(|scope| {
            scope.spawn(|| {
                for index in 0..count {
                    send(&tx, &pattern, index, 64 + (index as usize * 31) % 4000);
                }
                drop(tx);
            });
            let mut got = Vec::new();
            while got.len() < kill_at {
                got.push(receive_one(&rx, &pattern));
            }
            exporter.kill();
            importer.wait_for("exporter gone without ending its stream", 1, SHORT);
            assert!(importer.is_running(), "the importer survives the exporter");
            // Host A's channel is healthy without the killed bridge: the restarted exporter
            // takes the rest of the stream from it.
            exporter = Bridge::start("exporter again", &export_args);
            importer.wait_for("exporter connected", 2, SHORT);
            got.extend(receive_stream(&rx, &pattern, Some(count - 1)));
            got
        });
        let lost = assert_resumed(&got, count - 1, window + 1);
        eprintln!("{lost} messages lost with the killed exporter");
        assert!(
            importer.wait_exit(SHORT).success(),
            "the importer ends with the second stream"
        );
        assert!(exporter.wait_exit(SHORT).success());
        assert!(importer.log().contains("1 exporters lost"));
        // The killed exporter was reclaimed like any dead participant.
        let participants = shmq::inspect(&on_a).expect("inspect A").participants;
        assert!(
            participants.iter().all(|p| p.alive),
            "dead participants left: {participants:?}"
        );
        assert!(matches!(idle.try_recv(), Err(TryRecvError::Disconnected)));
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    }
    assert_eq!(leftovers(&[&on_a, &on_b]), Vec::<String>::new());
}

/// One message from `rx`, checked: its index.
fn receive_one(rx: &shmq::Receiver, pattern: &Pattern) -> u64 {
    let message = rx.recv_timeout(LONG).expect("a message");
    let index = Pattern::index_of(&message).expect("an index");
    assert!(pattern.is(index, &message), "message {index} corrupted");
    index
}

#[test]
fn an_importer_killed_mid_stream_is_reported_and_restarted() {
    let (on_a, on_b) = (unique_name("a"), unique_name("b"));
    let key = format!("shmq/{on_a}");
    let endpoint = free_endpoint();
    let (count, kill_at) = (3000u64, 500usize);
    let window = 8u64;
    let pattern = Pattern::new(4096);
    {
        let (tx, _idle) = shmq::channel(&on_a, a_channel(64)).expect("channel on A");
        let (_, rx) =
            shmq::channel(&on_b, a_channel(64).with_disconnect(false)).expect("channel on B");
        let mut exporter = Bridge::start(
            "exporter",
            &["export", &on_a, "--key", &key, "--listen", &endpoint],
        );
        let window_arg = window.to_string();
        let import_args = [
            "import",
            &on_b,
            "--key",
            &key,
            "--connect",
            &endpoint,
            "--window-messages",
            &window_arg,
            "--until-end",
        ];
        let mut importer = Bridge::start("importer", &import_args);
        let got = std::thread::scope(|scope| {
            scope.spawn(|| {
                for index in 0..count {
                    send(&tx, &pattern, index, 64 + (index as usize * 31) % 4000);
                }
                drop(tx);
            });
            let mut got = Vec::new();
            while got.len() < kill_at {
                got.push(receive_one(&rx, &pattern));
            }
            importer.kill();
            exporter.wait_for("importer gone; ", 1, SHORT);
            assert!(exporter.is_running(), "the exporter survives the importer");
            importer = Bridge::start("importer again", &import_args);
            exporter.wait_for("importer connected", 2, SHORT);
            got.extend(receive_stream(&rx, &pattern, Some(count - 1)));
            got
        });
        let unconfirmed = unconfirmed_in(&exporter.log());
        assert!(
            unconfirmed <= window,
            "{unconfirmed} unconfirmed: more than the window"
        );
        let lost = assert_resumed(&got, count - 1, unconfirmed);
        eprintln!("{lost} messages lost with the killed importer ({unconfirmed} unconfirmed)");
        assert!(exporter.wait_exit(SHORT).success());
        assert!(importer.wait_exit(SHORT).success());
    }
    assert_eq!(leftovers(&[&on_a, &on_b]), Vec::<String>::new());
}

/// Runs `openssl ARGS` in `dir`; panics if it fails.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let status = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run openssl (the TLS test makes its certificates with it)");
    assert!(status.success(), "openssl {args:?} failed");
}

/// Known to fail with Zenoh 1.10.2 (docs/guide.md, "Security"): the TLS link is made (the
/// certificates are accepted), then drops and is made again every few milliseconds under load
/// (Zenoh's debug log: "TX task failed: handshake not complete"), and what is in flight each
/// time is lost; the bridges report it. Kept to reproduce it, and to turn on once Zenoh's TLS
/// link holds: `cargo test -p shmq-zenoh --test bridge -- --ignored tls`.
#[test]
#[ignore = "Zenoh 1.10.2's TLS link drops under load: see the comment"]
fn the_guides_tls_configuration_carries_messages_over_tls() {
    // A CA and one certificate for "localhost", made here; the configuration is the guide's.
    let dir = std::env::temp_dir().join(unique_name("tls"));
    std::fs::create_dir_all(&dir).unwrap();
    openssl(
        &dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=test-ca",
            "-keyout",
            "ca-key.pem",
            "-out",
            "ca.pem",
        ],
    );
    openssl(
        &dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "host-key.pem",
            "-out",
            "host.csr",
        ],
    );
    std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:localhost\n").unwrap();
    openssl(
        &dir,
        &[
            "x509",
            "-req",
            "-in",
            "host.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca-key.pem",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "host-cert.pem",
        ],
    );
    let config = dir.join("bridge-tls.json5");
    let pem = |name: &str| dir.join(name).display().to_string();
    std::fs::write(
        &config,
        format!(
            r#"{{
  mode: "peer",
  transport: {{ link: {{ tls: {{
    root_ca_certificate: "{ca}",
    listen_private_key: "{key}", listen_certificate: "{cert}",
    connect_private_key: "{key}", connect_certificate: "{cert}",
    enable_mtls: true,
  }} }} }},
}}"#,
            ca = pem("ca.pem"),
            key = pem("host-key.pem"),
            cert = pem("host-cert.pem"),
        ),
    )
    .unwrap();
    let config = config.display().to_string();

    let (on_a, on_b) = (unique_name("a"), unique_name("b"));
    let key = format!("shmq/{on_a}");
    let port = free_endpoint().rsplit(':').next().unwrap().to_owned();
    let (listen, connect) = (
        format!("tls/127.0.0.1:{port}"),
        format!("tls/localhost:{port}"),
    );
    let count = 100u64;
    let pattern = Pattern::new(1 << 20);
    {
        let (tx, _idle) = shmq::channel(&on_a, a_channel(64)).expect("channel on A");
        let mut exporter = Bridge::start(
            "tls exporter",
            &[
                "export", &on_a, "--key", &key, "--config", &config, "--listen", &listen,
            ],
        );
        let mut importer = Bridge::start(
            "tls importer",
            &[
                "import",
                &on_b,
                "--key",
                &key,
                "--config",
                &config,
                "--connect",
                &connect,
                "--create",
                "--until-end",
            ],
        );
        let rx = open_receiver(&on_b, SHORT);
        for index in 0..count {
            send(
                &tx,
                &pattern,
                index,
                8 + (index as usize * 7919) % (1 << 20),
            );
        }
        drop(tx);
        let got = receive_stream(&rx, &pattern, None);
        assert_eq!(got, (0..count).collect::<Vec<_>>());
        assert!(exporter.wait_exit(SHORT).success());
        assert!(importer.wait_exit(SHORT).success());
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(leftovers(&[&on_a, &on_b]), Vec::<String>::new());
}
