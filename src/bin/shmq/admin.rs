//! `shmq ls`, `shmq info`, `shmq rm` and `shmq gc`: see and clean what is in /dev/shm.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use shmq::{GcEntry, ParticipantInfo, SegmentInfo, SegmentState};

use crate::error::BoxResult;

/// A JSON string literal.
fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_opt_str(s: Option<&str>) -> String {
    s.map_or_else(|| "null".to_owned(), json_str)
}

fn participant_json(p: &ParticipantInfo) -> String {
    format!(
        "{{\"slot\":{},\"role\":{},\"pid\":{},\"alive\":{},\"attached_unix_ns\":{}}}",
        p.slot,
        json_opt_str(p.role.map(|r| r.as_str())),
        p.pid,
        p.alive,
        p.attached_unix_ns
    )
}

/// The state as `--json` gives it: one word, and the name a removed segment had.
fn state_json(state: &SegmentState) -> String {
    let word = match state {
        SegmentState::Ready => "ready",
        SegmentState::Removed { .. } => "removed",
        SegmentState::BeingCreated => "being-created",
        SegmentState::Unfinished => "unfinished",
        SegmentState::Refused => "refused",
        SegmentState::Unreadable => "unreadable",
        _ => "other",
    };
    let removed_name = match state {
        SegmentState::Removed { segment } => Some(segment.as_str()),
        _ => None,
    };
    format!(
        "\"state\":{},\"removed_name\":{}",
        json_str(word),
        json_opt_str(removed_name)
    )
}

/// What `shmq ls` and `shmq info` say about a segment that is not simply ready, if anything.
fn state_note(info: &SegmentInfo) -> Option<String> {
    match &info.state {
        // The problem line says why a refused or unreadable one could not be read.
        SegmentState::Ready | SegmentState::Refused | SegmentState::Unreadable => None,
        SegmentState::Removed { segment } if info.alive() > 0 => Some(format!(
            "removed, still in use: {segment} was removed while in use and {} live \
             participant(s) still use it",
            info.alive()
        )),
        SegmentState::Removed { segment } => Some(format!(
            "removed: {segment} was removed while in use; its participants are all dead \
             (shmq gc removes it)"
        )),
        other => Some(other.to_string()),
    }
}

/// The locks of a segment held right now, with their holders' pids.
fn lock_holders(info: &SegmentInfo) -> Vec<(&'static str, u32)> {
    let mut held = Vec::new();
    if let Some(pid) = info.membership_holder {
        held.push(("membership", pid));
    }
    if let Some(c) = &info.channel {
        if let Some(pid) = c.allocator_lock_holder {
            held.push(("allocator", pid));
        }
    }
    held
}

fn segment_json(info: &SegmentInfo, with_participants: bool) -> String {
    let mut out = format!(
        "{{\"name\":{},{},\"kind\":{},\"file_bytes\":{},\"creator_pid\":{},\"created_unix_ns\":{},\
         \"participant_capacity\":{},\"alive\":{},\"dead\":{}",
        json_str(&info.name),
        state_json(&info.state),
        json_opt_str(info.kind.map(|k| k.as_str())),
        info.file_bytes,
        info.creator_pid,
        info.created_unix_ns,
        info.participant_capacity,
        info.alive(),
        info.dead(),
    );
    if let Some(c) = &info.channel {
        let _ = write!(
            out,
            ",\"channel\":{{\"capacity\":{},\"queued\":{},\"messages_in_flight\":{},\
             \"bytes_in_flight\":{},\"arena_bytes\":{},\"arena_free_bytes\":{},\
             \"overflow_payloads\":{},\"sent_total\":{},\"done_total\":{},\
             \"tasks_done_total\":{},\"unfinished_tasks\":{},\"corrupt_skipped\":{}}}",
            c.capacity,
            c.queued,
            c.messages_in_flight,
            c.bytes_in_flight,
            c.arena_bytes,
            c.arena_free_bytes,
            c.overflow_payloads,
            c.sent_total,
            c.done_total,
            c.tasks_done_total,
            c.unfinished_tasks,
            c.corrupt_skipped
        );
    }
    let held: Vec<String> = lock_holders(info)
        .iter()
        .map(|(lock, pid)| format!("{{\"lock\":{},\"pid\":{pid}}}", json_str(lock)))
        .collect();
    let _ = write!(out, ",\"locks_held\":[{}]", held.join(","));
    if with_participants {
        let list: Vec<String> = info.participants.iter().map(participant_json).collect();
        let _ = write!(out, ",\"participants\":[{}]", list.join(","));
    }
    let _ = write!(
        out,
        ",\"problem\":{}}}",
        json_opt_str(info.problem.as_deref())
    );
    out
}

/// Bytes in a short human form (B, KiB, MiB, GiB).
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn age(unix_ns: u64) -> String {
    let created = UNIX_EPOCH + Duration::from_nanos(unix_ns);
    match SystemTime::now().duration_since(created) {
        Ok(d) if d.as_secs() >= 3600 => {
            format!("{}h{:02}m", d.as_secs() / 3600, d.as_secs() / 60 % 60)
        }
        Ok(d) if d.as_secs() >= 60 => format!("{}m{:02}s", d.as_secs() / 60, d.as_secs() % 60),
        Ok(d) => format!("{:.1}s", d.as_secs_f64()),
        Err(_) => "-".into(),
    }
}

/// `shmq ls`: one line per segment.
pub fn ls(json: bool) -> BoxResult<()> {
    let segments = shmq::list()?;
    if json {
        let items: Vec<String> = segments.iter().map(|s| segment_json(s, false)).collect();
        println!("[{}]", items.join(","));
        return Ok(());
    }
    if segments.is_empty() {
        println!("no shmq segments in /dev/shm");
        return Ok(());
    }
    println!(
        "{:<32} {:<9} {:>10} {:>5} {:>5} {:>9} {:>10} {:>8}",
        "NAME", "KIND", "SIZE", "ALIVE", "DEAD", "MESSAGES", "BYTES", "AGE"
    );
    for s in &segments {
        let kind = s.kind.map_or("?", |k| k.as_str());
        let (messages, bytes) = match &s.channel {
            Some(c) => (
                c.messages_in_flight.to_string(),
                human_bytes(c.bytes_in_flight),
            ),
            None => ("-".into(), "-".into()),
        };
        println!(
            "{:<32} {:<9} {:>10} {:>5} {:>5} {:>9} {:>10} {:>8}",
            s.name,
            kind,
            human_bytes(s.file_bytes),
            s.alive(),
            s.dead(),
            messages,
            bytes,
            if s.created_unix_ns == 0 {
                "-".into()
            } else {
                age(s.created_unix_ns)
            }
        );
        let note = state_note(s);
        if let Some(note) = &note {
            println!("    {note}");
        }
        if let Some(problem) = &s.problem {
            // An unfinished segment's problem is its state, already said.
            if !note.as_ref().is_some_and(|n| problem.ends_with(n.as_str())) {
                println!("    ! {problem}");
            }
        }
    }
    Ok(())
}

/// `shmq info NAME`: the header and every participant.
pub fn info(name: &str, json: bool) -> BoxResult<()> {
    let s = shmq::inspect(name)?;
    if json {
        println!("{}", segment_json(&s, true));
        return Ok(());
    }
    println!("segment       {}  (/dev/shm/shmq.{})", s.name, s.name);
    println!("kind          {}", s.kind.map_or("unknown", |k| k.as_str()));
    if let Some(note) = state_note(&s) {
        println!("state         {note}");
    }
    println!(
        "size          {} ({} bytes)",
        human_bytes(s.file_bytes),
        s.file_bytes
    );
    if let Some(problem) = &s.problem {
        println!("problem       {problem}");
        return Ok(());
    }
    println!(
        "created       {} ago by pid {}",
        age(s.created_unix_ns),
        s.creator_pid
    );
    println!(
        "participants  {} alive, {} dead, {} slots",
        s.alive(),
        s.dead(),
        s.participant_capacity
    );
    if let Some(c) = &s.channel {
        println!(
            "ring          {} of {} messages queued",
            c.queued, c.capacity
        );
        println!(
            "in flight     {} messages, {} (queued or held by receivers)",
            c.messages_in_flight,
            human_bytes(c.bytes_in_flight)
        );
        println!(
            "arena         {} free of {}",
            human_bytes(c.arena_free_bytes),
            human_bytes(c.arena_bytes)
        );
        println!(
            "overflow      {} payloads in their own segments",
            c.overflow_payloads
        );
        println!(
            "totals        {} sent, {} received and dropped",
            c.sent_total, c.done_total
        );
        println!(
            "tasks         {} unfinished, {} done (task_done, or left by the dead)",
            c.unfinished_tasks, c.tasks_done_total
        );
        if c.corrupt_skipped > 0 {
            println!("corrupt       {} descriptors skipped", c.corrupt_skipped);
        }
    }
    // Locks are held for microseconds: a holder seen here at all may be stopped (run again).
    let holders = lock_holders(&s);
    if !holders.is_empty() {
        let list: Vec<String> = holders
            .iter()
            .map(|(lock, pid)| format!("{lock} by pid {pid}"))
            .collect();
        println!(
            "locks held    {} (a holder that shows again and again is probably stopped)",
            list.join(", ")
        );
    }
    if !s.participants.is_empty() {
        println!();
        println!(
            "{:>5}  {:<9} {:>8}  {:<6} {:>9}",
            "SLOT", "ROLE", "PID", "STATE", "ATTACHED"
        );
        for p in &s.participants {
            println!(
                "{:>5}  {:<9} {:>8}  {:<6} {:>9}",
                p.slot,
                p.role.map_or("?", |r| r.as_str()),
                p.pid,
                if p.alive { "alive" } else { "dead" },
                age(p.attached_unix_ns)
            );
        }
    }
    Ok(())
}

/// `shmq rm NAME`: refuses while the segment is being created, and while a live participant
/// exists unless `force` (it then lives on under a tombstone for them).
pub fn rm(name: &str, force: bool, json: bool) -> BoxResult<()> {
    // A refusal says why (being created; live participants, and what --force would do).
    let removal = shmq::remove(name, force)?;
    let alive = removal.live_participants;
    if json {
        println!(
            "{{\"removed\":{},\"live_participants\":{alive},\"reclaimed\":{},\
             \"tombstone\":{},\"problem\":{}}}",
            json_str(name),
            removal.reclaimed,
            json_opt_str(removal.tombstone.as_deref()),
            json_opt_str(removal.problem.as_deref())
        );
        return Ok(());
    }
    match (&removal.tombstone, &removal.problem) {
        (Some(tombstone), _) => println!(
            "removed {name}; its {alive} live participant(s) keep using it as shmq.{tombstone} \
             until they are gone"
        ),
        (None, Some(problem)) => println!("removed {name} (not a shmq segment: {problem})"),
        (None, None) => println!(
            "removed {name} (0 live participants, {} dead reclaimed)",
            removal.reclaimed
        ),
    }
    Ok(())
}

fn gc_entry_json(entry: &GcEntry) -> String {
    format!(
        "{{\"name\":{},\"removed\":{},\"decision\":{},\"reason\":{}}}",
        json_str(&entry.name),
        entry.removed,
        json_str(entry.reason.code()),
        json_str(&entry.reason.to_string())
    )
}

/// `shmq gc`: removes what only dead processes used, and prints every decision with its reason.
pub fn gc(json: bool) -> BoxResult<()> {
    let entries = shmq::gc()?;
    let removed: Vec<&GcEntry> = entries.iter().filter(|e| e.removed).collect();
    if json {
        let names: Vec<String> = removed.iter().map(|e| json_str(&e.name)).collect();
        let all: Vec<String> = entries.iter().map(gc_entry_json).collect();
        println!(
            "{{\"removed\":[{}],\"entries\":[{}]}}",
            names.join(","),
            all.join(",")
        );
        return Ok(());
    }
    if entries.is_empty() {
        println!("no shmq objects in /dev/shm");
        return Ok(());
    }
    for entry in &entries {
        let verdict = if entry.removed { "removed" } else { "kept" };
        println!("{verdict:<8} {}: {}", entry.name, entry.reason);
    }
    println!(
        "{} removed, {} kept",
        removed.len(),
        entries.len() - removed.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_str("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
    }

    #[test]
    fn bytes_read_well() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
    }
}
