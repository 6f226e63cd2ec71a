//! Typed messages (feature `serde`): any `serde` type as one message, encoded with
//! [postcard](https://docs.rs/postcard) straight into shared memory and decoded where it lies.
//!
//! [`Sender::send_value`] encodes a value and sends it; [`Message::value`] decodes one,
//! borrowing `&str` and `&[u8]` fields from the message's bytes instead of copying them. They
//! sit beside the `Pod` forms ([`Sender::send_slice`], [`Message::as_slice`]), which stay the
//! way to move large arrays: a `Vec<f32>` goes through serde one element at a time, a `&[f32]`
//! through `send_slice` in one copy.
//!
//! Why postcard, and not bincode or rkyv (measured in docs/performance.md, "Issue 15"):
//! postcard's encodings are the smallest of the three measured (varints, no padding), it
//! decodes fastest on every shape measured (a third faster than bincode 2 on 1 MiB of floats,
//! twice as fast on 10,000 records), it borrows `&str` and `&[u8]` from the input, and on
//! hostile input it never allocates more than the input could hold, where bincode 2 allocates
//! whatever length a string's prefix claims (1 GiB for a 12-byte message; its limit is a
//! compile-time constant, not the message's length). bincode's fixed-width layout encodes
//! fixed-width records faster (no varints to compute), but loses it again on decode; bincode
//! is also unmaintained now (its last release, 3.0.0, is a `compile_error!`). rkyv reads in
//! place with no decode step at all, but through its own derives and archived types, not
//! serde: it would be a second API beside this one, not an encoding of it.
//!
//! What goes on the wire is postcard's format alone, with no type tag: the receiver must ask for
//! the type the sender sent. A wrong type is reported when the bytes do not fit it (too few,
//! too many, an invalid tag or UTF-8), which is most of the time but not always: two types with
//! the same shape (`(u32, u32)` and `[u32; 2]`) decode each other's bytes.

use std::time::{Duration, Instant};

use postcard::ser_flavors::Size;
use serde::{Deserialize, Serialize};

use super::deadline_after;
use super::errors::{SendError, SendTimeoutError, TrySendError};
use super::layout::INLINE_MAX;
use super::message::{Loan, Message};
use super::sender::Sender;
use crate::error::Error;

impl Sender {
    /// Sends `value`, encoded with postcard, blocking while the channel is full.
    ///
    /// The encoding is written once, into shared memory: a value of up to 96 encoded bytes is
    /// encoded on the stack and travels in its ring slot; a larger one is measured first (one
    /// encoding pass that counts bytes), then encoded into a [`loan`](Self::loan) of exactly
    /// that size, with no heap buffer and no copy. Should the value encode to another length
    /// the second time (a `Serialize` impl that reads a `Mutex` another thread changes), it is
    /// encoded once more into a heap buffer and that is sent: never a torn encoding.
    ///
    /// Fails with `Failed(`[`Error::Encoding`]`)`, naming `T`, when the value cannot be
    /// encoded: its `Serialize` impl reports an error, or it is a sequence or map of unknown
    /// length, which postcard's length prefixes cannot express (a map with
    /// `#[serde(flatten)]` fields, an iterator serialized with `collect_seq` whose size hint is
    /// not exact). Nothing is sent then. Otherwise it fails as [`send`](Self::send) does.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let name = format!("doc-typed-{}", std::process::id());
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[derive(Serialize, Deserialize, Debug, PartialEq)]
    /// struct Job<'a> {
    ///     id: u64,
    ///     name: &'a str, // borrowed from the message on receipt: no copy
    ///     #[serde(with = "serde_bytes")] // one copy in, none out (not byte by byte)
    ///     blob: &'a [u8],
    /// }
    ///
    /// let (tx, rx) = shmq::channel(&name, shmq::ChannelConfig::default().with_arena_bytes(1 << 20))?;
    /// tx.send_value(&Job { id: 7, name: "resize", blob: &[1, 2, 3] })?;
    ///
    /// let msg = rx.recv()?;
    /// let job: Job = msg.value()?; // borrows `msg`
    /// assert_eq!(job, Job { id: 7, name: "resize", blob: &[1, 2, 3] });
    ///
    /// // The wrong type is an error that names it (here: bytes left over after an u64).
    /// let err = msg.value::<u64>().unwrap_err();
    /// assert!(err.to_string().contains("cannot decode u64"), "{err}");
    /// # Ok(()) }
    /// ```
    pub fn send_value<T: Serialize + ?Sized>(&self, value: &T) -> Result<(), SendError> {
        self.send_encoded(
            value,
            |bytes| self.send(bytes),
            |len| self.loan(len),
            |loan| loan.send().map_err(|e| e.map_loan()),
        )
    }

    /// Like [`send_value`](Self::send_value), if the channel has room now (ring slot and arena
    /// both): `Full` otherwise, with nothing sent.
    pub fn try_send_value<T: Serialize + ?Sized>(&self, value: &T) -> Result<(), TrySendError> {
        self.send_encoded(
            value,
            |bytes| self.try_send(bytes),
            |len| self.try_loan(len),
            |loan| loan.try_send().map_err(|e| e.map_loan()),
        )
    }

    /// Like [`send_value`](Self::send_value), waiting at most `timeout` for room.
    pub fn send_value_timeout<T: Serialize + ?Sized>(
        &self,
        value: &T,
        timeout: Duration,
    ) -> Result<(), SendTimeoutError> {
        match deadline_after(timeout) {
            Some(deadline) => self.send_value_deadline(value, deadline),
            None => self.send_value(value).map_err(Into::into),
        }
    }

    /// Like [`send_value`](Self::send_value), waiting until `deadline` at most for room (one
    /// deadline for the arena and the ring slot both).
    pub fn send_value_deadline<T: Serialize + ?Sized>(
        &self,
        value: &T,
        deadline: Instant,
    ) -> Result<(), SendTimeoutError> {
        self.send_encoded(
            value,
            |bytes| self.send_deadline(bytes, deadline),
            |len| self.loan_deadline(len, deadline),
            |loan| loan.send_deadline(deadline).map_err(|e| e.map_loan()),
        )
    }

    /// Encodes `value` and sends it with the given form of `send` (small encodings) or of
    /// `loan` and `Loan::send` (the others): one body for the four waiting forms.
    fn send_encoded<T, E>(
        &self,
        value: &T,
        send: impl FnOnce(&[u8]) -> Result<(), E>,
        loan: impl FnOnce(usize) -> Result<Loan, E>,
        publish: impl FnOnce(Loan) -> Result<(), E>,
    ) -> Result<(), E>
    where
        T: Serialize + ?Sized,
        E: From<Error>,
    {
        let failed = |len, e: postcard::Error| self.encode_error::<T>(len, e.to_string());
        // Small values: one pass into a ring slot's worth of stack. A larger value stops at the
        // first byte past 96 (postcard fails as soon as the buffer is full), so the attempt
        // costs at most 96 bytes of encoding.
        let mut small = [0u8; INLINE_MAX];
        match postcard::to_slice(value, &mut small) {
            Ok(bytes) => return send(bytes),
            Err(postcard::Error::SerializeBufferFull) => {}
            Err(e) => return Err(failed(None, e).into()),
        }
        // Measured, then encoded in place: the counting pass costs less than the heap buffer
        // and the copy it saves (5 times less for 1 MiB of floats; docs/performance.md,
        // "Issue 15").
        let len =
            postcard::serialize_with_flavor(value, Size::default()).map_err(|e| failed(None, e))?;
        let mut room = loan(len)?;
        match postcard::to_slice(value, &mut room[..]) {
            Ok(bytes) if bytes.len() == len => publish(room),
            // The value changed between the passes: give the loan back and send what it
            // encodes to now, whatever its length.
            Ok(_) | Err(postcard::Error::SerializeBufferFull) => {
                drop(room);
                let bytes = postcard::to_extend(value, Vec::with_capacity(len))
                    .map_err(|e| failed(None, e))?;
                send(&bytes)
            }
            Err(e) => Err(failed(Some(len), e).into()),
        }
    }

    fn encode_error<T: ?Sized>(&self, len: Option<usize>, what: String) -> Error {
        Error::Encoding {
            name: self.name().to_owned(),
            type_name: std::any::type_name::<T>(),
            op: "encode",
            len,
            what,
        }
    }
}

impl Message {
    /// Decodes the payload as a `T` sent with [`Sender::send_value`] (postcard's encoding),
    /// reading it in place: `&str`, `&[u8]` and `Cow<'a, str>` fields marked
    /// `#[serde(borrow)]` (serde borrows `&str` and `&[u8]` unasked) point into the message,
    /// with no copy, for as long as the message is borrowed.
    ///
    /// Every byte must belong to the value: bytes left over are an error, as are too few, an
    /// invalid enum tag or `bool`, or invalid UTF-8. The error is [`Error::Encoding`], naming
    /// `T`, the message's length and what postcard found; the message is still held, so it may
    /// be read again, as bytes or as another type.
    ///
    /// The bytes come from another process, so they are treated as untrusted: garbage is an
    /// error, never a panic, and nothing is allocated for more than the message holds
    /// (postcard checks a string's or byte string's claimed length against the bytes left
    /// before copying it, and hints a sequence's length to serde only when the bytes left
    /// could hold it; serde caps what it reserves ahead at 1 MiB). Two shapes still cost time
    /// rather than memory on hostile input: a sequence of an element that encodes to no bytes
    /// at all (`Vec<()>`) runs as many empty steps as its claimed length, and a recursive type
    /// (a `Box`ed tree) recurses as deep as the bytes nest, one stack frame per byte or so: keep
    /// such types out of messages from peers that may send garbage.
    ///
    /// A peer that breaks the protocol and writes the bytes while they are decoded (or while a
    /// borrowed `&str` points into them) breaks this as it breaks every read of a message: see
    /// the Soundness section of [`Message`].
    pub fn value<'a, T: Deserialize<'a>>(&'a self) -> Result<T, Error> {
        let bytes: &'a [u8] = self;
        let failed = |what: String| Error::Encoding {
            name: self.ep.chan.name().to_owned(),
            type_name: std::any::type_name::<T>(),
            op: "decode",
            len: Some(bytes.len()),
            what,
        };
        let (value, rest) =
            postcard::take_from_bytes::<T>(bytes).map_err(|e| failed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(failed(format!(
                "{} bytes left over after the value's {}",
                rest.len(),
                bytes.len() - rest.len()
            )));
        }
        Ok(value)
    }
}

/// Drops the loan that a failed `Loan::send` gives back: the typed sends hand back nothing
/// (the caller still has its value), like the copying sends.
trait MapLoan {
    type Unit;
    fn map_loan(self) -> Self::Unit;
}

impl MapLoan for SendError<Loan> {
    type Unit = SendError;
    fn map_loan(self) -> SendError {
        match self {
            SendError::Disconnected(_) => SendError::Disconnected(()),
            SendError::Failed(e, _) => SendError::Failed(e, ()),
        }
    }
}

impl MapLoan for TrySendError<Loan> {
    type Unit = TrySendError;
    fn map_loan(self) -> TrySendError {
        match self {
            TrySendError::Full(_, what) => TrySendError::Full((), what),
            TrySendError::Disconnected(_) => TrySendError::Disconnected(()),
            TrySendError::Failed(e, _) => TrySendError::Failed(e, ()),
        }
    }
}

impl MapLoan for SendTimeoutError<Loan> {
    type Unit = SendTimeoutError;
    fn map_loan(self) -> SendTimeoutError {
        match self {
            SendTimeoutError::Timeout(_) => SendTimeoutError::Timeout(()),
            SendTimeoutError::Disconnected(_) => SendTimeoutError::Disconnected(()),
            SendTimeoutError::Failed(e, _) => SendTimeoutError::Failed(e, ()),
        }
    }
}
