//! Byte-level primitives: a bounds-checked reader over one frame body and append helpers.
//!
//! Integers are little-endian; variable-length fields are `u32 length | bytes`.

use bytes::Bytes;

use crate::DecodeError;

/// Reads fields from one frame body; every read is bounds-checked.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Malformed(what));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }

    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    pub(crate) fn secret(&mut self) -> Result<crate::LeaseSecret, DecodeError> {
        let b = self.take(16, "lease secret")?;
        let mut out = [0u8; 16];
        out.copy_from_slice(b);
        Ok(crate::LeaseSecret(out))
    }

    pub(crate) fn bool(&mut self, what: &'static str) -> Result<bool, DecodeError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::Malformed(what)),
        }
    }

    /// A length-prefixed byte string no longer than `limit`; `too_long` builds the error.
    pub(crate) fn bytes(
        &mut self,
        limit: usize,
        what: &'static str,
        too_long: impl FnOnce(usize) -> DecodeError,
    ) -> Result<&'a [u8], DecodeError> {
        let len = self.u32(what)? as usize;
        if len > limit {
            return Err(too_long(len));
        }
        self.take(len, what)
    }

    /// A key: a length-prefixed byte string bounded by `max_key`, copied out of the frame
    /// (so a held key never pins the connection's read buffer).
    pub(crate) fn key(&mut self, max_key: usize) -> Result<Bytes, DecodeError> {
        let b = self.bytes(max_key, "key", |size| DecodeError::KeyTooLarge {
            size,
            limit: max_key,
        })?;
        Ok(Bytes::copy_from_slice(b))
    }

    /// An owner label: at most [`crate::MAX_OWNER_LABEL`] bytes of UTF-8 without control or
    /// bidi-override characters ([`crate::text`]; empty: none).
    pub(crate) fn owner_label(&mut self) -> Result<Bytes, DecodeError> {
        let b = self.bytes(crate::MAX_OWNER_LABEL, "owner label", |_| {
            DecodeError::Malformed("owner label longer than 128 bytes")
        })?;
        let Ok(text) = std::str::from_utf8(b) else {
            return Err(DecodeError::Malformed("owner label is not UTF-8"));
        };
        if let Some(problem) = crate::text::label_problem(text) {
            return Err(DecodeError::Malformed(problem));
        }
        Ok(Bytes::copy_from_slice(b))
    }

    /// A UTF-8 string bounded by the remaining frame.
    pub(crate) fn string(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let b = self.bytes(usize::MAX, what, |_| DecodeError::Malformed(what))?;
        String::from_utf8(b.to_vec()).map_err(|_| DecodeError::Malformed(what))
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Malformed("trailing bytes"))
        }
    }
}

pub(crate) fn put_u8(out: &mut Vec<u8>, v: u8) {
    out.push(v);
}

pub(crate) fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub(crate) fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub(crate) fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub(crate) fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_u32(out, u32::try_from(b.len()).unwrap_or(u32::MAX));
    out.extend_from_slice(b);
}
