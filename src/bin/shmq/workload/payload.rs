//! What the workloads send: payload sizes and the counter pattern the consumer checks.

use super::BoxResult;

/// The size of the small messages of the latency and rate workloads.
pub const SMALL_MESSAGE: usize = 64;
/// Most messages one `send_many` or `recv_many` call of the runs contender moves.
pub const RUN: usize = 64;

/// The largest payload a transfer moves: the pipe and socket framing carries a 32-bit length,
/// and payloads are whole u64 words (4 GiB less 8 bytes).
pub const MAX_PAYLOAD: usize = u32::MAX as usize & !7;

/// `len` copies of `value` in a new buffer, or an error when the memory cannot be had: a
/// failed allocation would otherwise abort the process without a word about the size asked.
pub(super) fn try_buffer<T: Clone>(len: usize, value: T) -> BoxResult<Vec<T>> {
    let mut buf = Vec::new();
    buf.try_reserve_exact(len).map_err(|e| {
        format!(
            "cannot allocate a buffer of {len} x {} bytes: {e}",
            std::mem::size_of::<T>()
        )
    })?;
    buf.resize(len, value);
    Ok(buf)
}

/// A payload size as people write it: "4KiB", "64MiB", "64B".
pub fn size_label(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{}GiB", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{}MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{}KiB", b >> 10),
        b => format!("{b}B"),
    }
}

/// Reads every byte: the wrapping sum of the payload as native u64 words.
pub(super) fn checksum(bytes: &[u8]) -> u64 {
    let mut words = bytes.chunks_exact(8);
    let mut sum = (&mut words).fold(0u64, |s, w| {
        s.wrapping_add(u64::from_ne_bytes(w.try_into().unwrap_or([0; 8])))
    });
    for &b in words.remainder() {
        sum = sum.wrapping_add(b as u64);
    }
    sum
}

/// Writes the counter pattern `base, base + 1, ...` (every byte of the slice).
pub(super) fn fill_pattern(words: &mut [u64], base: u64) {
    for (i, w) in words.iter_mut().enumerate() {
        *w = base.wrapping_add(i as u64);
    }
}

/// The checksum of a counter pattern of `words` words starting at `base`.
pub(super) fn pattern_sum(words: u64, base: u64) -> u64 {
    let triangle = ((words as u128 * words.saturating_sub(1) as u128) / 2) as u64;
    words.wrapping_mul(base).wrapping_add(triangle)
}
