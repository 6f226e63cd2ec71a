//! What the two bridges say to each other: the key expressions under a bridge's key, and the
//! little-endian headers that travel as Zenoh attachments (data) or payloads (credits).
//!
//! Everything decoded here came over the network from a peer we do not control: each decoder
//! checks the length and returns `None` for anything malformed, and the callers drop it.

use std::fmt;

/// The key expressions of one bridged channel, all below its key (`shmq/CHANNEL` by default).
///
/// - `KEY/importer/ID`: an importer's liveliness token (ID is its Zenoh session id);
/// - `KEY/exporter/ID`: the exporter's liveliness token;
/// - `KEY/data/ID`: the messages (and the final `End`) the exporter sends to importer ID;
/// - `KEY/credit/ID`: importer ID's credit, what it has landed and how much more it takes.
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    base: String,
}

impl Keys {
    /// The keys below `base`, which must be a plain key: no wildcard, no empty chunk.
    pub(crate) fn new(base: &str) -> Result<Keys, String> {
        let bad = base.is_empty()
            || base.starts_with('/')
            || base.ends_with('/')
            || base.contains("//")
            || base.contains(['*', '$', '?', '#', '@']);
        if bad {
            return Err(format!(
                "the key {base:?} must be a plain Zenoh key: chunks separated by single '/', \
                 without '*', '$', '?', '#' or '@'"
            ));
        }
        Ok(Keys {
            base: base.to_owned(),
        })
    }

    /// The base key.
    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    pub(crate) fn importer(&self, id: &str) -> String {
        format!("{}/importer/{id}", self.base)
    }

    pub(crate) fn importers(&self) -> String {
        format!("{}/importer/*", self.base)
    }

    pub(crate) fn exporter(&self, id: &str) -> String {
        format!("{}/exporter/{id}", self.base)
    }

    pub(crate) fn exporters(&self) -> String {
        format!("{}/exporter/*", self.base)
    }

    pub(crate) fn data(&self, id: &str) -> String {
        format!("{}/data/{id}", self.base)
    }

    pub(crate) fn credit(&self, id: &str) -> String {
        format!("{}/credit/{id}", self.base)
    }

    pub(crate) fn credits(&self) -> String {
        format!("{}/credit/*", self.base)
    }

    /// The ID at the end of `key` if it is `prefix(ID)`'s form (`KEY/<what>/ID`).
    pub(crate) fn id_in<'k>(&self, what: &str, key: &'k str) -> Option<&'k str> {
        let id = key
            .strip_prefix(self.base.as_str())?
            .strip_prefix('/')?
            .strip_prefix(what)?
            .strip_prefix('/')?;
        (!id.is_empty() && !id.contains('/')).then_some(id)
    }
}

/// The attachment of a sample on `KEY/data/ID`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Header {
    /// One message: the `seq`-th (from 1) that exporter run `run` sent to this importer.
    Message { run: u64, seq: u64 },
    /// Exporter run `run` is done: its local channel disconnected after it sent `sent` messages
    /// to this importer, every one of them confirmed.
    End { run: u64, sent: u64 },
}

const MESSAGE: u8 = 1;
const END: u8 = 2;
const HEADER_LEN: usize = 17;

impl Header {
    pub(crate) fn encode(self) -> Vec<u8> {
        let (tag, run, n) = match self {
            Header::Message { run, seq } => (MESSAGE, run, seq),
            Header::End { run, sent } => (END, run, sent),
        };
        let mut out = Vec::with_capacity(HEADER_LEN);
        out.push(tag);
        out.extend_from_slice(&run.to_le_bytes());
        out.extend_from_slice(&n.to_le_bytes());
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<Header> {
        if bytes.len() != HEADER_LEN {
            return None;
        }
        let run = u64::from_le_bytes(bytes[1..9].try_into().ok()?);
        let n = u64::from_le_bytes(bytes[9..17].try_into().ok()?);
        match bytes[0] {
            MESSAGE if n >= 1 => Some(Header::Message { run, seq: n }),
            END => Some(Header::End { run, sent: n }),
            _ => None,
        }
    }
}

/// An importer's credit: what it has landed in its local channel of exporter run `run`'s
/// messages, whether that run's stream ended there, and how much it takes beyond what it landed.
/// The exporter may have `window_messages` messages unconfirmed with it, and more than one only
/// while their bytes fit in `window_bytes` (one message of any size is always allowed, so
/// nothing is too large).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Credit {
    /// The exporter run the counts are about (the one it landed a message of last; 0 before
    /// any).
    pub run: u64,
    /// Messages of that run landed in the importer's local channel.
    pub landed_messages: u64,
    /// Their bytes.
    pub landed_bytes: u64,
    /// How many messages may be unconfirmed at once (at least 1).
    pub window_messages: u64,
    /// How many bytes may be unconfirmed at once, one message excepted.
    pub window_bytes: u64,
    /// Whether run `run` ended its stream and everything it sent landed: the exporter may go.
    pub ended: bool,
}

const CREDIT_LEN: usize = 41;

impl Credit {
    pub(crate) fn encode(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(CREDIT_LEN);
        for word in [
            self.run,
            self.landed_messages,
            self.landed_bytes,
            self.window_messages,
            self.window_bytes,
        ] {
            out.extend_from_slice(&word.to_le_bytes());
        }
        out.push(u8::from(self.ended));
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<Credit> {
        if bytes.len() != CREDIT_LEN {
            return None;
        }
        let word = |i: usize| u64::from_le_bytes(bytes[8 * i..8 * i + 8].try_into().unwrap());
        let credit = Credit {
            run: word(0),
            landed_messages: word(1),
            landed_bytes: word(2),
            window_messages: word(3),
            window_bytes: word(4),
            ended: match bytes[40] {
                0 => false,
                1 => true,
                _ => return None,
            },
        };
        (credit.window_messages >= 1).then_some(credit)
    }
}

impl fmt::Display for Credit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} landed of run {:016x}{}, window {} messages / {} bytes",
            self.landed_messages,
            self.run,
            if self.ended { " (ended)" } else { "" },
            self.window_messages,
            self.window_bytes
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_and_credits_survive_encoding_and_garbage_is_refused() {
        for header in [
            Header::Message { run: 7, seq: 1 },
            Header::Message {
                run: u64::MAX,
                seq: u64::MAX,
            },
            Header::End { run: 3, sent: 0 },
        ] {
            assert_eq!(Header::decode(&header.encode()), Some(header));
        }
        let credit = Credit {
            run: 9,
            ended: true,
            landed_messages: 5,
            landed_bytes: 1 << 40,
            window_messages: 64,
            window_bytes: 64 << 20,
        };
        assert_eq!(Credit::decode(&credit.encode()), Some(credit));

        assert_eq!(Header::decode(&[]), None);
        assert_eq!(Header::decode(&[9; HEADER_LEN]), None, "unknown tag");
        let mut seq_zero = Header::Message { run: 1, seq: 1 }.encode();
        seq_zero[9] = 0;
        assert_eq!(Header::decode(&seq_zero), None, "messages count from 1");
        assert_eq!(Header::decode(&[1; HEADER_LEN + 1]), None);
        assert_eq!(Credit::decode(&[0; CREDIT_LEN - 1]), None);
        let mut bad_flag = credit.encode();
        bad_flag[CREDIT_LEN - 1] = 2;
        assert_eq!(Credit::decode(&bad_flag), None, "ended is 0 or 1");
        let no_window = Credit {
            window_messages: 0,
            ..credit
        };
        assert_eq!(Credit::decode(&no_window.encode()), None);
    }

    #[test]
    fn keys_are_plain_and_ids_come_back_out() {
        let keys = Keys::new("shmq/jobs").unwrap();
        assert_eq!(keys.importer("abc"), "shmq/jobs/importer/abc");
        assert_eq!(
            keys.id_in("importer", "shmq/jobs/importer/abc"),
            Some("abc")
        );
        assert_eq!(keys.id_in("credit", "shmq/jobs/importer/abc"), None);
        assert_eq!(keys.id_in("importer", "shmq/jobs/importer/a/b"), None);
        assert_eq!(keys.id_in("importer", "shmq/jobsx/importer/a"), None);
        for bad in ["", "/a", "a/", "a//b", "a/*", "a/**", "a/$*b", "@a"] {
            assert!(Keys::new(bad).is_err(), "{bad:?} accepted");
        }
    }
}
