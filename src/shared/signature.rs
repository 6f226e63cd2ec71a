//! Element identity: what `open` compares to decide that a segment holds its `T`.
//!
//! The identity is the element size, the element alignment and the hash of a caller-chosen tag
//! (empty for plain `create`/`open`). Everything in it is fixed by the program's source, never by
//! the compiler: `std::any::type_name` is not stable across rustc versions, so comparing it
//! would make two programs built by different compilers refuse each other. Since `T: Pod`, any
//! bytes are a valid `T`, so accepting another type of the same size and alignment is
//! memory-safe; the tag is there for programs that want such types told apart.

use std::sync::atomic::Ordering;

use super::layout::{
    LayoutWords, L_ELEM_ALIGN, L_ELEM_SIZE, L_LEN, L_POISONED, L_TAG_HASH, L_TAG_LEN, L_TAG_TEXT,
    TAG_TEXT_BYTES,
};

/// 64-bit FNV-1a: a fixed hash, the same in every process and build.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// The identity of an element type, as this program sees it or as read from a segment.
#[derive(Clone, Copy)]
pub(super) struct Signature {
    size: u64,
    align: u64,
    tag_hash: u64,
    /// Length of the whole tag; only the first [`TAG_TEXT_BYTES`] are kept, for messages.
    tag_len: u32,
    tag_text: [u8; TAG_TEXT_BYTES],
}

impl Signature {
    /// The signature of `T` under `tag` (`""` for untagged).
    pub(super) fn of<T>(tag: &str) -> Signature {
        let full = tag.as_bytes();
        let mut tag_text = [0u8; TAG_TEXT_BYTES];
        let kept = full.len().min(TAG_TEXT_BYTES);
        tag_text[..kept].copy_from_slice(&full[..kept]);
        Signature {
            size: std::mem::size_of::<T>() as u64,
            align: std::mem::align_of::<T>() as u64,
            tag_hash: fnv1a64(full),
            tag_len: u32::try_from(full.len()).unwrap_or(u32::MAX),
            tag_text,
        }
    }

    /// Whether a segment with signature `stored` holds elements this signature may access.
    /// The tag text is only for messages: tags are compared by hash, whatever their length.
    pub(super) fn accepts(&self, stored: &Signature) -> bool {
        self.size == stored.size && self.align == stored.align && self.tag_hash == stored.tag_hash
    }

    /// E.g. `8 bytes, align 8, untagged` or `8 bytes, align 8, tag "prices"`; a tag longer than
    /// what is kept ends in `...`. Garbage tag bytes are shown escaped, never trusted as text.
    pub(super) fn describe(&self) -> String {
        let len = self.tag_len as usize;
        if len == 0 {
            return format!("{} bytes, align {}, untagged", self.size, self.align);
        }
        let kept = len.min(TAG_TEXT_BYTES);
        let mut text = String::from_utf8_lossy(&self.tag_text[..kept]).into_owned();
        if len > TAG_TEXT_BYTES {
            text.push_str("...");
        }
        format!("{} bytes, align {}, tag {text:?}", self.size, self.align)
    }

    /// Writes this signature and the element count `len` into a fresh segment's layout words,
    /// and clears the poisoned word.
    pub(super) fn write(&self, words: &LayoutWords<'_>, len: u64) {
        words.u64(L_ELEM_SIZE).store(self.size, Ordering::Relaxed);
        words.u64(L_ELEM_ALIGN).store(self.align, Ordering::Relaxed);
        words
            .u64(L_TAG_HASH)
            .store(self.tag_hash, Ordering::Relaxed);
        words.u64(L_LEN).store(len, Ordering::Relaxed);
        words.u32(L_POISONED).store(0, Ordering::Relaxed);
        words.u32(L_TAG_LEN).store(self.tag_len, Ordering::Relaxed);
        for (i, &b) in self.tag_text.iter().enumerate() {
            words.u8(L_TAG_TEXT + i).store(b, Ordering::Relaxed);
        }
    }

    /// Copies the stored signature and element count out of a segment, once: the caller checks
    /// and uses this copy, never the shared words again.
    pub(super) fn read(words: &LayoutWords<'_>) -> (Signature, u64) {
        let mut tag_text = [0u8; TAG_TEXT_BYTES];
        for (i, b) in tag_text.iter_mut().enumerate() {
            *b = words.u8(L_TAG_TEXT + i).load(Ordering::Relaxed);
        }
        let stored = Signature {
            size: words.u64(L_ELEM_SIZE).load(Ordering::Relaxed),
            align: words.u64(L_ELEM_ALIGN).load(Ordering::Relaxed),
            tag_hash: words.u64(L_TAG_HASH).load(Ordering::Relaxed),
            tag_len: words.u32(L_TAG_LEN).load(Ordering::Relaxed),
            tag_text,
        };
        (stored, words.u64(L_LEN).load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_reference_values() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn identity_is_size_alignment_and_tag() {
        let plain = Signature::of::<u64>("");
        assert!(plain.accepts(&Signature::of::<i64>("")));
        assert!(plain.accepts(&Signature::of::<f64>("")));
        assert!(!plain.accepts(&Signature::of::<u32>("")), "size");
        assert!(!plain.accepts(&Signature::of::<[u8; 8]>("")), "alignment");
        assert!(
            !plain.accepts(&Signature::of::<u64>("a")),
            "untagged vs tagged"
        );
        let a = Signature::of::<u64>("a");
        assert!(a.accepts(&Signature::of::<u64>("a")));
        assert!(!a.accepts(&Signature::of::<u64>("b")));
    }

    #[test]
    fn long_tags_compare_whole_and_describe_truncated() {
        let long_a = format!("{}a", "x".repeat(100));
        let long_b = format!("{}b", "x".repeat(100));
        let a = Signature::of::<u64>(&long_a);
        assert!(a.accepts(&Signature::of::<u64>(&long_a)));
        assert!(
            !a.accepts(&Signature::of::<u64>(&long_b)),
            "tags equal in their first 64 bytes still differ"
        );
        let shown = format!("8 bytes, align 8, tag \"{}...\"", "x".repeat(64));
        assert_eq!(a.describe(), shown);
    }

    #[test]
    fn describe_names_size_alignment_and_tag() {
        assert_eq!(
            Signature::of::<u64>("").describe(),
            "8 bytes, align 8, untagged"
        );
        assert_eq!(
            Signature::of::<u16>("prices").describe(),
            "2 bytes, align 2, tag \"prices\""
        );
        let mut garbage = Signature::of::<u64>("");
        garbage.tag_len = 3;
        garbage.tag_text[..3].copy_from_slice(&[0xff, b'\n', b'"']);
        assert_eq!(
            garbage.describe(),
            "8 bytes, align 8, tag \"\u{fffd}\\n\\\"\""
        );
    }
}
