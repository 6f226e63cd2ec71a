//! The length-prefixed framing of the pipe and socket contenders: Python's
//! `Connection.send_bytes` / `recv_bytes` (4-byte big-endian length, then the payload), so the
//! byte-stream contenders pay what a Python program using `multiprocessing` pays.

use std::io::{self, Read, Write};

/// Python's `Connection` concatenates header and payload up to this size (one write); above
/// it, it writes them separately (two writes).
pub(super) const CONCAT_MAX: usize = 16384;

/// Writes one frame; `scratch` is a reused buffer for the concatenated small frames.
pub(super) fn write_frame(
    w: &mut dyn Write,
    payload: &[u8],
    scratch: &mut Vec<u8>,
) -> io::Result<()> {
    let len = u32::try_from(payload.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame over 4 GiB"))?;
    if payload.len() <= CONCAT_MAX {
        scratch.clear();
        scratch.extend_from_slice(&len.to_be_bytes());
        scratch.extend_from_slice(payload);
        w.write_all(scratch)
    } else {
        w.write_all(&len.to_be_bytes())?;
        w.write_all(payload)
    }
}

/// Reads one frame into `buf` (grown only if a frame is larger than ever before). `None` at a
/// clean end of stream.
pub(super) fn read_frame<'a>(
    r: &mut dyn Read,
    buf: &'a mut Vec<u8>,
) -> io::Result<Option<&'a [u8]>> {
    let mut header = [0u8; 4];
    let first = loop {
        match r.read(&mut header) {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    };
    if first == 0 {
        return Ok(None);
    }
    r.read_exact(&mut header[first..])?;
    let len = u32::from_be_bytes(header) as usize;
    if len > buf.len() {
        buf.resize(len, 0);
    }
    r.read_exact(&mut buf[..len])?;
    Ok(Some(&buf[..len]))
}
