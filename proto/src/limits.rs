//! Decode limits: the hard bounds every decode is checked against.

/// Bounds applied while decoding. Both sides may configure them; the broker announces its
/// values in [`crate::Welcome`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame accepted, counting the length prefix. Default 64 KiB.
    pub max_frame: usize,
    /// Longest key accepted. Default 1 KiB.
    pub max_key: usize,
}

impl Limits {
    /// Default maximum frame size (64 KiB).
    pub const DEFAULT_MAX_FRAME: usize = 64 * 1024;
    /// Default maximum key length (1 KiB).
    pub const DEFAULT_MAX_KEY: usize = 1024;
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame: Self::DEFAULT_MAX_FRAME,
            max_key: Self::DEFAULT_MAX_KEY,
        }
    }
}
