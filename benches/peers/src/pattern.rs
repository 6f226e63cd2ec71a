//! What every payload carries so that the receiver can tell a right message from a wrong,
//! stale or missing one: the sequence number in its first and last 8 bytes, and sampled words
//! whose values derive from the sequence number and their position.
//!
//! The sender writes every byte of the payload (a fill byte, then the stamped words), so a
//! loan measures writing the payload in place and a copy measures copying all of it. The
//! receiver reads every byte: the stamped words against their values, and everything else
//! against the fill byte (in 4 KiB blocks folded without a branch per byte, which the compiler
//! vectorises), as a consumer that uses all it gets.

use std::fmt;

/// Every byte that is not a stamped word.
pub const FILL_BYTE: u8 = 0xA5;

/// Words sampled between the head and the tail (fewer when the payload is too short).
const SAMPLED_WORDS: usize = 8;

/// Bytes of one stamped word.
const WORD: usize = 8;

/// The smallest payload that holds the head and tail stamps.
pub const MIN_PAYLOAD: usize = 2 * WORD;

/// Why a received payload is not the one expected.
#[derive(Debug)]
pub struct Mismatch {
    /// The sequence number the receiver expected.
    pub expected: u64,
    /// What was wrong.
    pub what: String,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "message {}: {}", self.expected, self.what)
    }
}

impl std::error::Error for Mismatch {}

/// The value of the sampled word at byte `offset` of message `seq`: mixed so that a word of
/// another message, or of another place, differs.
fn sample_value(seq: u64, offset: usize) -> u64 {
    (seq ^ 0x9E37_79B9_7F4A_7C15).wrapping_mul(offset as u64 | 1)
}

/// Byte offsets of the sampled words of a payload of `len` bytes: spread evenly between the
/// head and the tail stamps, 8-byte aligned, distinct.
fn sample_offsets(len: usize) -> impl Iterator<Item = usize> {
    let inner_words = (len / WORD).saturating_sub(2);
    let count = inner_words.min(SAMPLED_WORDS);
    (0..count).map(move |k| WORD + (k * inner_words / count) * WORD)
}

/// Writes `value` little-endian at byte `offset`.
fn put_word(buf: &mut [u8], offset: usize, value: u64) {
    buf[offset..offset + WORD].copy_from_slice(&value.to_le_bytes());
}

/// Reads the little-endian word at byte `offset`.
fn get_word(buf: &[u8], offset: usize) -> u64 {
    let mut word = [0u8; WORD];
    word.copy_from_slice(&buf[offset..offset + WORD]);
    u64::from_le_bytes(word)
}

/// Writes the stamped words of message `seq` (head, tail, samples), leaving the rest as it is.
/// Cheap: what a copying sender does to its prepared private buffer before each send.
pub fn stamp(buf: &mut [u8], seq: u64) {
    assert!(buf.len() >= MIN_PAYLOAD, "payload shorter than its stamps");
    let len = buf.len();
    put_word(buf, 0, seq);
    put_word(buf, len - WORD, seq);
    for offset in sample_offsets(len) {
        put_word(buf, offset, sample_value(seq, offset));
    }
}

/// Writes all of message `seq`: every byte the fill byte, then the stamped words. What a
/// sender does to a loaned buffer, and, once, to its private buffer.
pub fn fill(buf: &mut [u8], seq: u64) {
    buf.fill(FILL_BYTE);
    stamp(buf, seq);
}

/// Checks that `buf` is message `expected`, `len` bytes long.
pub fn verify(buf: &[u8], expected: u64, len: usize) -> Result<(), Mismatch> {
    let fail = |what: String| Mismatch { expected, what };
    if buf.len() != len {
        return Err(fail(format!("{} bytes, expected {len}", buf.len())));
    }
    let head = get_word(buf, 0);
    let tail = get_word(buf, len - WORD);
    if head != expected || tail != expected {
        return Err(fail(format!("head stamp {head}, tail stamp {tail}")));
    }
    let mut unstamped_from = WORD;
    for offset in sample_offsets(len) {
        let found = get_word(buf, offset);
        if found != sample_value(expected, offset) {
            return Err(fail(format!("sampled word at byte {offset} is {found:#x}")));
        }
        check_fill(buf, unstamped_from, offset).map_err(fail)?;
        unstamped_from = offset + WORD;
    }
    check_fill(buf, unstamped_from, len - WORD).map_err(fail)
}

/// Checks that bytes `from..to` of `buf` (none if `to <= from`) all hold the fill byte.
fn check_fill(buf: &[u8], from: usize, to: usize) -> Result<(), String> {
    if to <= from {
        return Ok(());
    }
    for (block, bytes) in buf[from..to].chunks(4096).enumerate() {
        // OR of the differences: no early exit inside a block, so the loop vectorises.
        let differs = bytes.iter().fold(0u8, |acc, &b| acc | (b ^ FILL_BYTE));
        if differs != 0 {
            return Err(format!(
                "a byte in {}..{} is not the fill byte",
                from + block * 4096,
                (from + (block + 1) * 4096).min(to)
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filled_payload_verifies_and_another_does_not() {
        for len in [16, 64, 4096, 65536] {
            let mut buf = vec![0u8; len];
            fill(&mut buf, 7);
            verify(&buf, 7, len).unwrap();
            assert!(verify(&buf, 8, len).is_err());
            stamp(&mut buf, 8);
            verify(&buf, 8, len).unwrap();
            // A byte that is neither a stamp nor the fill byte is caught wherever it is.
            for at in [9, len / 2 + 3, len - 9] {
                let mut bad = buf.clone();
                bad[at] ^= 1;
                assert!(verify(&bad, 8, len).is_err(), "byte {at} of {len}");
            }
        }
    }

    #[test]
    fn a_corrupted_sample_is_found() {
        let mut buf = vec![0u8; 4096];
        fill(&mut buf, 3);
        let offset = sample_offsets(4096).nth(3).unwrap();
        buf[offset] ^= 1;
        assert!(verify(&buf, 3, 4096).is_err());
    }
}
