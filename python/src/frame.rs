//! The wire format of one Python object in one channel message (private to the package,
//! versioned).
//!
//! ```text
//! offset  size  field
//!  0      4     magic b"SHQP"
//!  4      1     version (1)
//!  5      1     kind: what the frame holds, given meaning by shmq/_pickle.py (0 a pickle; 1, 2, 3
//!               a bare bytes, bytearray or memoryview; other values for other users)
//!  6      2     reserved, 0
//!  8      4     nbuf: out-of-band buffers
//! 12      4     reserved, 0
//! 16      8     pickle_len
//! 24      16 x nbuf   { u64 offset, u64 len } of each buffer, from the start of the message
//! 24 + 16 x nbuf      the pickle bytes
//! then each buffer, at a 64-byte aligned offset (4096 for buffers of 64 KiB or more, so that a
//! large array starts on its own page: the message itself starts on a page)
//! ```
//!
//! Integers are little-endian. A message is shared memory, so what [`parse`] reads from it is
//! untrusted: every field is copied out once, checked, and only the checked copy is used.
//!
//! This file is plain Rust (no Python): the crate's Rust tests would need libpython to link, so
//! the format is tested from Python (python/tests/test_frame.py), through the channel.

use std::fmt;

/// First bytes of every frame.
pub(crate) const MAGIC: [u8; 4] = *b"SHQP";
/// The layout version this build writes and reads.
pub(crate) const VERSION: u8 = 1;
/// Bytes before the buffer table.
pub(crate) const HEADER_LEN: usize = 24;
/// Bytes per buffer table entry.
pub(crate) const ENTRY_LEN: usize = 16;
/// Alignment of a small buffer (a cache line, and every numpy dtype's alignment).
const SMALL_ALIGN: usize = 64;
/// Alignment of a large buffer: a page.
const LARGE_ALIGN: usize = 4096;
/// Buffers of at least this many bytes are page-aligned.
const LARGE_BUFFER: usize = 64 << 10;
/// Frame kind: a pickle (with its out-of-band buffers).
pub(crate) const KIND_PICKLE: u8 = 0;
/// Frame kind: a bare `bytes`, the one buffer (received as `bytes`).
pub(crate) const KIND_BYTES: u8 = 1;
/// Frame kind: a bare `bytearray`, the one buffer (received as `bytearray`).
pub(crate) const KIND_BYTEARRAY: u8 = 2;
/// Frame kind: a bare one-dimensional byte `memoryview`, the one buffer (received as a
/// `memoryview` of the message, in place unless small).
pub(crate) const KIND_MEMORYVIEW: u8 = 3;
/// Most buffers one frame may carry (a sanity bound on what a corrupt header claims).
pub(crate) const MAX_BUFFERS: usize = 1 << 20;

/// Where each part of a frame lies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    /// Total bytes of the message.
    pub(crate) total: usize,
    /// Offset of the pickle bytes.
    pub(crate) pickle_offset: usize,
    /// Length of the pickle bytes.
    pub(crate) pickle_len: usize,
    /// `(offset, len)` of each out-of-band buffer.
    pub(crate) buffers: Vec<(usize, usize)>,
}

/// What is wrong with a frame (or with sizes that cannot make one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FrameError(pub(crate) String);

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn too_large() -> FrameError {
    FrameError("the object is too large for one message".to_owned())
}

/// Where a buffer of `len` bytes goes when the previous part ended at `end`.
fn align_for(end: usize, len: usize) -> Option<usize> {
    let align = if len >= LARGE_BUFFER {
        LARGE_ALIGN
    } else {
        SMALL_ALIGN
    };
    end.checked_next_multiple_of(align)
}

/// The layout of a frame with a pickle of `pickle_len` bytes and buffers of `buffer_lens`.
pub(crate) fn layout(pickle_len: usize, buffer_lens: &[usize]) -> Result<Layout, FrameError> {
    if buffer_lens.len() > MAX_BUFFERS {
        return Err(FrameError(format!(
            "{} out-of-band buffers in one object (at most {MAX_BUFFERS})",
            buffer_lens.len()
        )));
    }
    let pickle_offset = HEADER_LEN + ENTRY_LEN * buffer_lens.len();
    let mut end = pickle_offset
        .checked_add(pickle_len)
        .ok_or_else(too_large)?;
    let mut buffers = Vec::with_capacity(buffer_lens.len());
    for &len in buffer_lens {
        let offset = align_for(end, len).ok_or_else(too_large)?;
        end = offset.checked_add(len).ok_or_else(too_large)?;
        buffers.push((offset, len));
    }
    // Kept within what the header's u64 fields and Python's Py_ssize_t can express.
    if end > isize::MAX as usize {
        return Err(too_large());
    }
    Ok(Layout {
        total: end,
        pickle_offset,
        pickle_len,
        buffers,
    })
}

/// Writes the header and the buffer table of `layout` for a frame of `kind` at the start of
/// `dst`, which must hold at least `layout.pickle_offset` bytes.
pub(crate) fn write_header(dst: &mut [u8], kind: u8, layout: &Layout) {
    let header = &mut dst[..layout.pickle_offset];
    header[0..4].copy_from_slice(&MAGIC);
    header[4] = VERSION;
    header[5] = kind;
    header[6..8].fill(0);
    header[8..12].copy_from_slice(&(layout.buffers.len() as u32).to_le_bytes());
    header[12..16].fill(0);
    header[16..24].copy_from_slice(&(layout.pickle_len as u64).to_le_bytes());
    for (i, &(offset, len)) in layout.buffers.iter().enumerate() {
        let entry = &mut header[HEADER_LEN + ENTRY_LEN * i..HEADER_LEN + ENTRY_LEN * (i + 1)];
        entry[0..8].copy_from_slice(&(offset as u64).to_le_bytes());
        entry[8..16].copy_from_slice(&(len as u64).to_le_bytes());
    }
}

/// A checked frame: its kind and layout, every range inside the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Parsed {
    pub(crate) kind: u8,
    pub(crate) layout: Layout,
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// Reads and checks the frame at the start of `msg` (a whole message): the magic, the version,
/// and that the pickle and every buffer lie after the table and inside the message. Buffers
/// may not overlap the header, the table or the pickle; they are not checked against each other
/// (overlapping buffers are harmless to read).
pub(crate) fn parse(msg: &[u8]) -> Result<Parsed, FrameError> {
    let bad = |what: String| FrameError(format!("not a valid shmq frame: {what}"));
    if msg.len() < HEADER_LEN {
        return Err(bad(format!("{} bytes, shorter than a header", msg.len())));
    }
    // One copy of the fixed header; everything below reads the copy.
    let mut header = [0u8; HEADER_LEN];
    header.copy_from_slice(&msg[..HEADER_LEN]);
    if header[0..4] != MAGIC {
        return Err(bad(format!("magic {:02x?}", &header[0..4])));
    }
    if header[4] != VERSION {
        return Err(bad(format!(
            "layout version {} (this build reads {VERSION})",
            header[4]
        )));
    }
    let kind = header[5];
    let nbuf = read_u32(&header, 8) as usize;
    if nbuf > MAX_BUFFERS {
        return Err(bad(format!("{nbuf} buffers")));
    }
    let pickle_offset = HEADER_LEN + ENTRY_LEN * nbuf;
    if pickle_offset > msg.len() {
        return Err(bad(format!(
            "a table of {nbuf} buffers does not fit {} bytes",
            msg.len()
        )));
    }
    let pickle_len = usize::try_from(read_u64(&header, 16))
        .ok()
        .filter(|&len| len <= msg.len() - pickle_offset)
        .ok_or_else(|| bad("the pickle runs past the message".to_owned()))?;
    let table = msg[HEADER_LEN..pickle_offset].to_vec();
    let mut buffers = Vec::with_capacity(nbuf);
    let data_start = pickle_offset + pickle_len;
    for i in 0..nbuf {
        let offset = read_u64(&table, ENTRY_LEN * i);
        let len = read_u64(&table, ENTRY_LEN * i + 8);
        let inside = usize::try_from(offset).ok().zip(usize::try_from(len).ok());
        match inside {
            Some((offset, len))
                if offset >= data_start
                    && offset.checked_add(len).is_some_and(|end| end <= msg.len()) =>
            {
                buffers.push((offset, len))
            }
            _ => {
                return Err(bad(format!(
                    "buffer {i} at {offset} of {len} bytes is outside the message's data \
                     ({data_start}..{})",
                    msg.len()
                )))
            }
        }
    }
    Ok(Parsed {
        kind,
        layout: Layout {
            total: msg.len(),
            pickle_offset,
            pickle_len,
            buffers,
        },
    })
}
