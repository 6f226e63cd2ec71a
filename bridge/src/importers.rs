//! The exporter's table of live importers: who is there (liveliness), what each has confirmed
//! (credit), and so which of them may be sent the next message. Pure bookkeeping, no I/O, so that
//! the flow control is tested on its own.

use std::collections::BTreeMap;

use crate::wire::Credit;
use crate::Mode;

/// One live importer as the exporter sees it.
#[derive(Debug, Default)]
struct Importer {
    /// Its latest credit; `None` until the first one arrives (nothing is sent before).
    credit: Option<Credit>,
    /// Messages and bytes sent to it, on its own scale: what its credit will say it has landed
    /// once everything sent arrived.
    sent_messages: u64,
    sent_bytes: u64,
    /// Messages this exporter run sent to it (the `seq` of the last one).
    seq: u64,
}

impl Importer {
    fn unconfirmed(&self) -> (u64, u64) {
        match self.credit {
            None => (0, 0),
            Some(c) => (
                self.sent_messages.saturating_sub(c.landed_messages),
                self.sent_bytes.saturating_sub(c.landed_bytes),
            ),
        }
    }

    /// Whether a message of `len` bytes fits in its window now.
    fn has_room(&self, len: u64) -> bool {
        let Some(credit) = self.credit else {
            return false;
        };
        let (messages, bytes) = self.unconfirmed();
        messages < credit.window_messages
            && (messages == 0 || bytes.saturating_add(len) <= credit.window_bytes)
    }
}

/// The live importers, by Zenoh session id.
#[derive(Debug, Default)]
pub(crate) struct Importers {
    by_id: BTreeMap<String, Importer>,
    /// The importer `share` mode chose last: the next choice starts after it (round robin
    /// among those with room).
    last_shared: Option<String>,
    /// Messages unconfirmed by importers that went away, over the whole run.
    lost: u64,
}

/// What [`Importers::disconnect`] knew of an importer that is gone.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Gone {
    /// Messages this run sent it.
    pub(crate) sent: u64,
    /// How many of them it never confirmed: each landed just before it went, or is lost.
    pub(crate) unconfirmed: u64,
}

impl Importers {
    /// Counts importer `id` in (its liveliness token appeared). Whether it is new.
    pub(crate) fn connect(&mut self, id: &str) -> bool {
        if self.by_id.contains_key(id) {
            return false;
        }
        self.by_id.insert(id.to_owned(), Importer::default());
        true
    }

    /// Counts importer `id` out (its token went: it closed, was killed, or its host went
    /// silent for a lease).
    pub(crate) fn disconnect(&mut self, id: &str) -> Option<Gone> {
        let importer = self.by_id.remove(id)?;
        Some(Gone {
            sent: importer.seq,
            unconfirmed: importer.unconfirmed().0,
        })
    }

    /// Takes in a credit from importer `id`. Credits of importers that are not (or no longer)
    /// connected are ignored: the importer repeats its credit, so a credit that overtook the
    /// token is not lost for long. Whether this was its first credit.
    pub(crate) fn credit(&mut self, id: &str, credit: Credit) -> bool {
        let Some(importer) = self.by_id.get_mut(id) else {
            return false;
        };
        let first = importer.credit.is_none();
        // Nothing is in flight to an importer this run has not yet sent to, and an importer
        // cannot have landed more than it was sent (a credit that says so, from an earlier
        // exporter's messages or a confused peer, moves the count up instead of underflowing it).
        if first || credit.landed_messages > importer.sent_messages {
            importer.sent_messages = credit.landed_messages;
            importer.sent_bytes = credit.landed_bytes;
        }
        importer.sent_bytes = importer.sent_bytes.max(credit.landed_bytes);
        importer.credit = Some(credit);
        first
    }

    /// Whether no importer is connected.
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Who gets a message of `len` bytes now, if anyone may: in `Fanout`, every connected
    /// importer, and only once each has room; in `Share`, one importer with room, the next
    /// after the last one sent to. `None` while that is not possible (no importer, or no room).
    pub(crate) fn targets(&self, mode: Mode, len: u64) -> Option<Vec<String>> {
        match mode {
            Mode::Fanout => {
                let all_ready =
                    !self.by_id.is_empty() && self.by_id.values().all(|i| i.has_room(len));
                all_ready.then(|| self.by_id.keys().cloned().collect())
            }
            Mode::Share => {
                let after = self.last_shared.as_deref().unwrap_or("");
                let with_room = |(id, importer): &(&String, &Importer)| {
                    importer.has_room(len).then(|| (*id).clone())
                };
                let chosen = self
                    .by_id
                    .iter()
                    .filter(|(id, _)| id.as_str() > after)
                    .find_map(|entry| with_room(&entry))
                    .or_else(|| self.by_id.iter().find_map(|entry| with_room(&entry)))?;
                Some(vec![chosen])
            }
        }
    }

    /// Counts a message of `len` bytes sent to `id` (and `id` as the last one chosen); returns
    /// its `seq`, or `None` if `id` is gone.
    pub(crate) fn sent(&mut self, id: &str, len: u64) -> Option<u64> {
        let importer = self.by_id.get_mut(id)?;
        importer.sent_messages += 1;
        importer.sent_bytes += len;
        importer.seq += 1;
        self.last_shared = Some(id.to_owned());
        Some(importer.seq)
    }

    /// Adds `unconfirmed` messages of an importer that went away to [`losses`](Self::losses).
    pub(crate) fn count_loss(&mut self, unconfirmed: u64) {
        self.lost += unconfirmed;
    }

    /// Messages unconfirmed by importers that went away, over the whole run.
    pub(crate) fn losses(&self) -> u64 {
        self.lost
    }

    /// Messages sent to connected importers and not yet confirmed.
    pub(crate) fn unconfirmed(&self) -> u64 {
        self.by_id.values().map(|i| i.unconfirmed().0).sum()
    }

    /// The connected importers, with how many messages this run sent each.
    pub(crate) fn sent_counts(&self) -> Vec<(String, u64)> {
        self.by_id
            .iter()
            .map(|(id, importer)| (id.clone(), importer.seq))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credit(landed: u64, window_messages: u64, window_bytes: u64) -> Credit {
        Credit {
            landed_messages: landed,
            landed_bytes: landed * 100,
            window_messages,
            window_bytes,
        }
    }

    #[test]
    fn nothing_is_sent_before_an_importer_and_its_credit() {
        let mut importers = Importers::default();
        assert_eq!(importers.targets(Mode::Fanout, 1), None);
        assert_eq!(importers.targets(Mode::Share, 1), None);
        assert!(importers.connect("a"));
        assert!(!importers.connect("a"));
        assert_eq!(importers.targets(Mode::Share, 1), None, "no credit yet");
        assert!(!importers.credit("unknown", credit(0, 4, 1000)));
        assert!(importers.credit("a", credit(10, 4, 1000)));
        assert_eq!(importers.targets(Mode::Fanout, 1), Some(vec!["a".into()]));
    }

    #[test]
    fn the_window_bounds_messages_and_bytes_but_one_message_always_fits() {
        let mut importers = Importers::default();
        importers.connect("a");
        importers.credit("a", credit(0, 2, 1000));
        // One message larger than the whole byte window still goes, alone.
        assert!(importers.targets(Mode::Share, 5000).is_some());
        assert_eq!(importers.sent("a", 5000), Some(1));
        assert_eq!(importers.targets(Mode::Share, 1), None, "bytes window full");
        importers.credit(
            "a",
            Credit {
                landed_messages: 1,
                landed_bytes: 5000,
                window_messages: 2,
                window_bytes: 1000,
            },
        );
        for seq in 2..=3 {
            assert!(importers.targets(Mode::Share, 400).is_some());
            assert_eq!(importers.sent("a", 400), Some(seq));
        }
        assert_eq!(
            importers.targets(Mode::Share, 1),
            None,
            "2 messages unconfirmed"
        );
        assert_eq!(importers.unconfirmed(), 2);
        assert_eq!(
            importers.disconnect("a"),
            Some(Gone {
                sent: 3,
                unconfirmed: 2
            })
        );
        assert!(importers.is_empty());
        assert!(!importers.credit("a", credit(3, 2, 1000)), "gone is gone");
    }

    #[test]
    fn fanout_waits_for_the_slowest_and_share_takes_turns_among_those_with_room() {
        let mut importers = Importers::default();
        for id in ["a", "b", "c"] {
            importers.connect(id);
            importers.credit(id, credit(0, 1, 1000));
        }
        let all: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        assert_eq!(importers.targets(Mode::Fanout, 10), Some(all.clone()));
        for id in &all {
            importers.sent(id, 10);
        }
        importers.credit("a", credit(1, 1, 1000));
        assert_eq!(
            importers.targets(Mode::Fanout, 10),
            None,
            "b and c are full"
        );

        let mut importers = Importers::default();
        for id in ["a", "b", "c"] {
            importers.connect(id);
            importers.credit(id, credit(0, 1, 1000));
        }
        let mut order = Vec::new();
        while let Some(targets) = importers.targets(Mode::Share, 10) {
            assert_eq!(targets.len(), 1);
            importers.sent(&targets[0], 10);
            order.push(targets[0].clone());
        }
        assert_eq!(order, all, "each once, in turn, then none has room");
        importers.credit("b", credit(1, 1, 1000));
        assert_eq!(importers.targets(Mode::Share, 10), Some(vec!["b".into()]));
    }

    #[test]
    fn a_credit_that_claims_more_than_was_sent_cannot_underflow_the_count() {
        let mut importers = Importers::default();
        importers.connect("a");
        importers.credit("a", credit(5, 1, 1000));
        importers.credit("a", credit(1_000_000, 1, 1000));
        assert_eq!(importers.unconfirmed(), 0);
        assert!(importers.targets(Mode::Fanout, 1).is_some());
    }
}
