//! [`ChannelConfig`]: the size and limits of a new channel.

use crate::segment::DEFAULT_PARTICIPANTS;

/// Size and limits of a new channel. Build it with the `with_` methods, starting from
/// `default()`; read it back with the getters of the same names.
///
/// The setters take any value; [`channel`](crate::channel) checks them. A value outside the
/// documented range is [`Error::InvalidArgument`](crate::Error::InvalidArgument) (never clamped,
/// never a panic); an arena in range that /dev/shm cannot hold now is
/// [`Error::OutOfSpace`](crate::Error::OutOfSpace).
///
/// ```
/// let config = shmq::ChannelConfig::default().with_capacity(64).with_arena_bytes(256 << 20);
/// assert_eq!(config.capacity(), 64);
/// assert_eq!(config.arena_bytes(), 256 << 20);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelConfig {
    capacity: usize,
    arena_bytes: usize,
    max_participants: u32,
    disconnect: bool,
}

impl Default for ChannelConfig {
    /// 64 messages, a 64 MiB arena, 64 participants, reporting `Disconnected`.
    fn default() -> Self {
        ChannelConfig {
            capacity: 64,
            arena_bytes: 64 << 20,
            max_participants: DEFAULT_PARTICIPANTS,
            disconnect: true,
        }
    }
}

impl ChannelConfig {
    /// Messages the ring holds before `send` blocks (1 to 2^24).
    pub fn with_capacity(mut self, messages: usize) -> Self {
        self.capacity = messages;
        self
    }

    /// Bytes of payload the arena holds (rounded up to 4 KiB pages; 0 to 2^32 - 2 pages, about
    /// 16 TiB). Payloads larger than the arena travel in overflow segments of their own; `send`
    /// blocks while the arena has no room.
    ///
    /// The arena is reserved and faulted in when the channel is created, and mapped in full
    /// (prefaulted) by every `open`: this costs up to about a second per GiB, once. Create
    /// channels once and reuse them.
    pub fn with_arena_bytes(mut self, bytes: usize) -> Self {
        self.arena_bytes = bytes;
        self
    }

    /// Participant slots: open `Sender` and `Receiver` families at once, live or dead but not
    /// yet reclaimed (2 to 1024).
    pub fn with_max_participants(mut self, slots: u32) -> Self {
        self.max_participants = slots;
        self
    }

    /// Whether the channel reports `Disconnected` when one side has no live participant
    /// (default `true`).
    ///
    /// With `false`, a *persistent* channel, like a `multiprocessing.Queue`: a send with no
    /// receiver anywhere queues the message (blocking, timing out or failing with `Full` only
    /// when the ring or arena is full); a receive with no sender waits for one (blocking, or
    /// `Timeout`/`Empty`); `join` waits for receivers to come. No call ever fails with
    /// `Disconnected`, and [`Receiver::iter`](crate::Receiver::iter) ends only at an error.
    /// Everything else is unchanged: what dead participants held is reclaimed, and the segment
    /// is unlinked when its last participant detaches (messages still queued then are lost with
    /// it).
    ///
    /// The choice is recorded in the channel, and every handle opened on it follows it (see
    /// [`Sender::disconnects`](crate::Sender::disconnects)).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let name = format!("doc-persistent-{}", std::process::id());
    /// let config = shmq::ChannelConfig::default()
    ///     .with_arena_bytes(1 << 20)
    ///     .with_disconnect(false);
    /// let (tx, rx) = shmq::channel(&name, config)?;
    /// drop(rx); // no receiver anywhere now
    /// tx.send(b"kept for a receiver that opens later")?;
    /// let rx = tx.open_receiver()?;
    /// assert_eq!(&rx.recv()?[..], b"kept for a receiver that opens later");
    /// # Ok(()) }
    /// ```
    pub fn with_disconnect(mut self, disconnect: bool) -> Self {
        self.disconnect = disconnect;
        self
    }

    /// The configured capacity in messages.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The configured arena size in bytes (before rounding up to pages).
    pub fn arena_bytes(&self) -> usize {
        self.arena_bytes
    }

    /// The configured number of participant slots.
    pub fn max_participants(&self) -> u32 {
        self.max_participants
    }

    /// Whether the channel reports `Disconnected` (see [`with_disconnect`](Self::with_disconnect)).
    pub fn disconnect(&self) -> bool {
        self.disconnect
    }
}
