//! A key as the table stores it: up to [`INLINE`] bytes inline in the entry (no allocation, the
//! common case for lock names), longer keys in one boxed slice of exactly their length.
//!
//! The table hands keys out as [`Key`] (`Bytes`) in grants and events; those are copies made
//! when needed, so a held lock never keeps a request's buffer (or a shared `Bytes` header) alive.

use std::fmt;
use std::ops::Deref;

use super::types::Key;

/// Longest key stored inline (the enum is then 24 bytes, the size of the boxed form plus a tag).
pub const INLINE: usize = 22;

#[derive(Clone, PartialEq, Eq)]
pub enum StoredKey {
    Inline { len: u8, bytes: [u8; INLINE] },
    Boxed(Box<[u8]>),
}

impl Default for StoredKey {
    fn default() -> Self {
        StoredKey::Inline {
            len: 0,
            bytes: [0; INLINE],
        }
    }
}

impl StoredKey {
    pub fn new(key: &[u8]) -> Self {
        match u8::try_from(key.len()) {
            Ok(len) if key.len() <= INLINE => {
                let mut bytes = [0; INLINE];
                bytes[..key.len()].copy_from_slice(key);
                StoredKey::Inline { len, bytes }
            }
            _ => StoredKey::Boxed(key.into()),
        }
    }

    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            StoredKey::Inline { len, bytes } => &bytes[..usize::from(*len).min(INLINE)],
            StoredKey::Boxed(b) => b,
        }
    }

    /// A `Key` with the same bytes, for a grant or an event.
    #[inline]
    pub fn to_key(&self) -> Key {
        Key::copy_from_slice(self.as_bytes())
    }
}

// Ordered by bytes (consistent with the derived equality: the inline form is zero-padded and
// a length has one form), so the ordered key index can be searched by `&[u8]`.
impl Ord for StoredKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl PartialOrd for StoredKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl std::borrow::Borrow<[u8]> for StoredKey {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl Deref for StoredKey {
    type Target = [u8];

    #[inline]
    fn deref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&Key::copy_from_slice(self.as_bytes()), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_keys_are_inline_and_long_ones_boxed_with_the_same_bytes() {
        assert_eq!(std::mem::size_of::<StoredKey>(), 24);
        for len in [0, 1, INLINE - 1, INLINE, INLINE + 1, 300] {
            let key: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let k = StoredKey::new(&key);
            assert_eq!(k.as_bytes(), &key[..]);
            assert_eq!(&k.to_key()[..], &key[..]);
            assert_eq!(matches!(k, StoredKey::Inline { .. }), len <= INLINE);
        }
    }
}
