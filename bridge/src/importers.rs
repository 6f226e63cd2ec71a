//! The exporter's table of live importers: who is there (liveliness), what each has confirmed
//! (credit), and so which of them may be sent the next message. Pure bookkeeping, no I/O, so that
//! the flow control is tested on its own.

use std::collections::BTreeMap;

use crate::wire::Credit;
use crate::Mode;

/// One live importer as the exporter sees it.
#[derive(Debug, Default)]
struct Importer {
    /// Its window, from its latest credit; `None` until the first one arrives (nothing is sent
    /// before).
    window: Option<(u64, u64)>,
    /// Messages and bytes sent to it, on the scale of its credits for this exporter run: what
    /// they will say it has landed once everything sent arrived.
    sent_messages: u64,
    sent_bytes: u64,
    /// What its credits for this run say it has landed (never more than was sent).
    confirmed_messages: u64,
    confirmed_bytes: u64,
    /// Whether its credit acknowledged this run's end of stream.
    ended: bool,
    /// Messages this exporter run sent to it (the `seq` of the last one).
    seq: u64,
}

impl Importer {
    fn unconfirmed(&self) -> (u64, u64) {
        (
            self.sent_messages.saturating_sub(self.confirmed_messages),
            self.sent_bytes.saturating_sub(self.confirmed_bytes),
        )
    }

    /// Whether a message of `len` bytes fits in its window now.
    fn has_room(&self, len: u64) -> bool {
        let Some((window_messages, window_bytes)) = self.window else {
            return false;
        };
        let (messages, bytes) = self.unconfirmed();
        messages < window_messages && (messages == 0 || bytes.saturating_add(len) <= window_bytes)
    }
}

/// The live importers of one exporter run, by importer id.
#[derive(Debug)]
pub(crate) struct Importers {
    /// The exporter run: only credits for it confirm anything.
    run: u64,
    by_id: BTreeMap<String, Importer>,
    /// The last `seq` sent to importers that went away: one that comes back (its link broke and
    /// healed) goes on numbering from there, so it tells what it missed from a repeat.
    past_seqs: BTreeMap<String, u64>,
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
    /// No importer yet, for exporter run `run`.
    pub(crate) fn new(run: u64) -> Importers {
        Importers {
            run,
            by_id: BTreeMap::new(),
            past_seqs: BTreeMap::new(),
            last_shared: None,
            lost: 0,
        }
    }

    /// Counts importer `id` in (its liveliness token appeared). Whether it is new.
    pub(crate) fn connect(&mut self, id: &str) -> bool {
        if self.by_id.contains_key(id) {
            return false;
        }
        let seq = self.past_seqs.remove(id).unwrap_or(0);
        self.by_id.insert(
            id.to_owned(),
            Importer {
                seq,
                ..Importer::default()
            },
        );
        true
    }

    /// Counts importer `id` out (its token went: it closed, was killed, or its host went
    /// silent for a lease).
    pub(crate) fn disconnect(&mut self, id: &str) -> Option<Gone> {
        let importer = self.by_id.remove(id)?;
        self.past_seqs.insert(id.to_owned(), importer.seq);
        Some(Gone {
            sent: importer.seq,
            unconfirmed: importer.unconfirmed().0,
        })
    }

    /// Takes in a credit from importer `id`. Credits of importers that are not (or no longer)
    /// connected are ignored: the importer repeats its credit, so a credit that overtook the
    /// token is not lost for long. Whether this was its first credit.
    ///
    /// A credit counts for this run only if it is about this run: an importer still landing
    /// what an earlier (killed) exporter sent it has landed nothing of ours yet. The first one
    /// sets the baseline (an importer whose link broke and healed has landed some of ours
    /// before), and no credit confirms more than was sent (a confused or hostile peer moves
    /// the count up to what was sent, never past it).
    pub(crate) fn credit(&mut self, id: &str, credit: Credit) -> bool {
        let Some(importer) = self.by_id.get_mut(id) else {
            return false;
        };
        let first = importer.window.is_none();
        importer.window = Some((credit.window_messages, credit.window_bytes));
        if credit.run != self.run {
            return first;
        }
        if first {
            importer.sent_messages = credit.landed_messages;
            importer.sent_bytes = credit.landed_bytes;
        }
        importer.confirmed_messages = credit
            .landed_messages
            .clamp(importer.confirmed_messages, importer.sent_messages);
        importer.confirmed_bytes = credit
            .landed_bytes
            .clamp(importer.confirmed_bytes, importer.sent_bytes);
        importer.ended |= credit.ended;
        first
    }

    /// Whether every connected importer acknowledged this run's end of stream.
    pub(crate) fn all_ended(&self) -> bool {
        self.by_id.values().all(|i| i.ended)
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
        importer.sent_messages = importer.sent_messages.saturating_add(1);
        importer.sent_bytes = importer.sent_bytes.saturating_add(len);
        importer.seq = importer.seq.saturating_add(1);
        self.last_shared = Some(id.to_owned());
        Some(importer.seq)
    }

    /// Adds `unconfirmed` messages of an importer that went away to [`losses`](Self::losses).
    pub(crate) fn count_loss(&mut self, unconfirmed: u64) {
        self.lost = self.lost.saturating_add(unconfirmed);
    }

    /// Messages unconfirmed by importers that went away, over the whole run.
    pub(crate) fn losses(&self) -> u64 {
        self.lost
    }

    /// Messages sent to connected importers and not yet confirmed.
    pub(crate) fn unconfirmed(&self) -> u64 {
        self.by_id
            .values()
            .fold(0, |sum, i| sum.saturating_add(i.unconfirmed().0))
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

    const RUN: u64 = 7;

    fn credit(landed: u64, window_messages: u64, window_bytes: u64) -> Credit {
        Credit {
            run: RUN,
            ended: false,
            landed_messages: landed,
            landed_bytes: landed * 100,
            window_messages,
            window_bytes,
        }
    }

    #[test]
    fn nothing_is_sent_before_an_importer_and_its_credit() {
        let mut importers = Importers::new(RUN);
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
        let mut importers = Importers::new(RUN);
        importers.connect("a");
        importers.credit("a", credit(0, 2, 1000));
        // One message larger than the whole byte window still goes, alone.
        assert!(importers.targets(Mode::Share, 5000).is_some());
        assert_eq!(importers.sent("a", 5000), Some(1));
        assert_eq!(importers.targets(Mode::Share, 1), None, "bytes window full");
        importers.credit(
            "a",
            Credit {
                landed_bytes: 5000,
                ..credit(1, 2, 1000)
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
        let mut importers = Importers::new(RUN);
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

        let mut importers = Importers::new(RUN);
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
        let mut importers = Importers::new(RUN);
        importers.connect("a");
        importers.credit("a", credit(5, 1, 1000));
        importers.credit("a", credit(1_000_000, 1, 1000));
        assert_eq!(importers.unconfirmed(), 0);
        assert!(importers.targets(Mode::Fanout, 1).is_some());
    }

    #[test]
    fn credits_of_another_run_confirm_nothing_and_a_returning_importer_numbers_on() {
        let mut importers = Importers::new(RUN);
        importers.connect("a");
        // Still landing an earlier exporter's 50 messages: none of ours.
        let earlier = Credit {
            run: RUN + 1,
            ..credit(50, 2, 1000)
        };
        assert!(importers.credit("a", earlier));
        for seq in 1..=2 {
            assert_eq!(importers.sent("a", 10), Some(seq));
        }
        importers.credit(
            "a",
            Credit {
                run: RUN + 1,
                ..credit(51, 2, 1000)
            },
        );
        assert_eq!(
            importers.unconfirmed(),
            2,
            "the earlier run's landings are not ours"
        );
        assert_eq!(importers.targets(Mode::Share, 10), None);
        importers.credit("a", credit(1, 2, 1000));
        assert_eq!(importers.unconfirmed(), 1);
        assert!(!importers.all_ended());
        importers.credit(
            "a",
            Credit {
                ended: true,
                ..credit(2, 2, 1000)
            },
        );
        assert!(importers.all_ended());

        // Its link breaks and heals: numbering goes on, and its first credit is the baseline.
        assert_eq!(importers.disconnect("a").map(|g| g.sent), Some(2));
        importers.connect("a");
        importers.credit("a", credit(2, 2, 1000));
        assert_eq!(importers.sent("a", 10), Some(3));
        assert_eq!(importers.unconfirmed(), 1);
    }
}
