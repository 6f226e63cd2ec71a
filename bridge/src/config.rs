//! The Zenoh configuration of a bridge: Zenoh's own (from a JSON5 file, or its defaults), the
//! endpoints of the command line, and the two settings the bridge's guarantees rest on.

use std::path::Path;

use zenoh::Config;

/// The largest message a bridge receives: Zenoh drops any fragmented message larger than
/// `transport/link/rx/max_message_size` (1 GiB by default). Raised to 1 TiB, which is no ceiling
/// a channel's message reaches on the machines shmq runs on.
pub const MAX_MESSAGE_BYTES: u64 = 1 << 40;

/// How long a blocking put waits for room in Zenoh's queue before Zenoh closes the link: an
/// hour, in microseconds (Zenoh's default is 5 s, which would close the link under a slow remote
/// and lose what is in flight). Zenoh documents -1 as "forever", but 1.10 adds it to an
/// `Instant` and panics, so the bridge says an hour, which no healthy link reaches: the
/// importers' windows keep Zenoh's queues short.
const BLOCK_BEFORE_CLOSE_MICROS: i64 = 3_600_000_000;

/// Where a bridge's Zenoh session listens and what it connects to.
#[derive(Clone, Debug, Default)]
pub struct Endpoints {
    /// Endpoints to listen on, in Zenoh's syntax (`tcp/127.0.0.1:7447`).
    pub listen: Vec<String>,
    /// Endpoints to connect to.
    pub connect: Vec<String>,
}

/// Builds the Zenoh configuration of a bridge.
///
/// - It starts from `file` (Zenoh's JSON5 or YAML configuration: TLS, access control, routers,
///   anything else), or from Zenoh's defaults in peer mode.
/// - `endpoints`, when any is given, replace the file's `listen` and `connect` endpoints and turn
///   multicast scouting off: a deterministic peer-to-peer link, no router, nothing else found.
/// - Two settings are always set, because the bridge's delivery rests on them:
///   `transport/link/tx/queue/congestion_control/block/wait_before_close` is an hour (a blocking
///   put waits for the link instead of closing it after 5 s), and
///   `transport/link/rx/max_message_size` is [`MAX_MESSAGE_BYTES`].
pub fn zenoh_config(file: Option<&Path>, endpoints: &Endpoints) -> zenoh::Result<Config> {
    let mut config = match file {
        Some(path) => Config::from_file(path)?,
        None => {
            let mut config = Config::default();
            config.insert_json5("mode", "\"peer\"")?;
            config
        }
    };
    let to_json = |list: &[String]| {
        let quoted: Vec<String> = list.iter().map(|e| format!("{e:?}")).collect();
        format!("[{}]", quoted.join(","))
    };
    if !endpoints.listen.is_empty() || !endpoints.connect.is_empty() {
        config.insert_json5("listen/endpoints", &to_json(&endpoints.listen))?;
        config.insert_json5("connect/endpoints", &to_json(&endpoints.connect))?;
        config.insert_json5("scouting/multicast/enabled", "false")?;
    }
    config.insert_json5(
        "transport/link/tx/queue/congestion_control/block/wait_before_close",
        &BLOCK_BEFORE_CLOSE_MICROS.to_string(),
    )?;
    config.insert_json5(
        "transport/link/rx/max_message_size",
        &MAX_MESSAGE_BYTES.to_string(),
    )?;
    Ok(config)
}
