//! Messages as the application sees them.

use bytes::Bytes;

use crate::close::CloseFrame;

/// Immutable bytes that are guaranteed to be valid UTF-8; cheap to clone (a [`Bytes`] inside).
///
/// It dereferences to `str`, at the cost of a validation pass each time (see
/// [`as_str`](Self::as_str)); its own [`len`](Self::len) and [`is_empty`](Self::is_empty) are free.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Utf8Bytes(Bytes);

impl Utf8Bytes {
    /// An empty string.
    pub const fn new() -> Self {
        Self(Bytes::new())
    }

    /// A string from a `'static` str, without copying.
    pub const fn from_static(s: &'static str) -> Self {
        Self(Bytes::from_static(s.as_bytes()))
    }

    /// Validates `bytes` as UTF-8.
    pub fn try_from_bytes(bytes: Bytes) -> Result<Self, std::str::Utf8Error> {
        if simdutf8::basic::from_utf8(&bytes).is_err() {
            // The standard library's validation says where and why.
            std::str::from_utf8(&bytes)?;
        }
        Ok(Self(bytes))
    }

    /// Wraps bytes already validated as UTF-8 by this crate.
    pub(crate) fn from_validated(bytes: Bytes) -> Self {
        debug_assert!(std::str::from_utf8(&bytes).is_ok());
        Self(bytes)
    }

    /// The text as a `&str`.
    ///
    /// Costs a validation pass over the bytes (SIMD, several GB/s: without `unsafe` a `&str`
    /// cannot be had from bytes otherwise); [`len`](Self::len), [`is_empty`](Self::is_empty)
    /// and [`as_bytes`](Self::as_bytes) are free.
    pub fn as_str(&self) -> &str {
        // The only constructors validate the bytes (or take a `str`), so this cannot fail;
        // fall back to an empty string rather than panic if that invariant were ever broken.
        simdutf8::basic::from_utf8(&self.0).unwrap_or_default()
    }

    /// The length in bytes (without validating again, unlike `str::len` through `Deref`).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the string is empty (without validating again).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The underlying bytes.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// Consumes the string, returning its bytes.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

impl std::ops::Deref for Utf8Bytes {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Debug for Utf8Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for Utf8Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<String> for Utf8Bytes {
    fn from(s: String) -> Self {
        Self(Bytes::from(s))
    }
}

impl From<&str> for Utf8Bytes {
    fn from(s: &str) -> Self {
        Self(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl PartialEq<str> for Utf8Bytes {
    fn eq(&self, other: &str) -> bool {
        self.0 == other.as_bytes()
    }
}

impl PartialEq<&str> for Utf8Bytes {
    fn eq(&self, other: &&str) -> bool {
        self.0 == other.as_bytes()
    }
}

/// A WebSocket message, or a control frame surfaced to the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text message: always valid UTF-8.
    Text(Utf8Bytes),
    /// A binary message.
    Binary(Bytes),
    /// A ping with its payload (at most 125 bytes). Received pings are answered automatically.
    Ping(Bytes),
    /// A pong with its payload (at most 125 bytes).
    Pong(Bytes),
    /// A close frame; `None` when it carried no status code.
    Close(Option<CloseFrame>),
}

impl Message {
    /// A text message.
    pub fn text(s: impl Into<Utf8Bytes>) -> Self {
        Self::Text(s.into())
    }

    /// A binary message.
    pub fn binary(b: impl Into<Bytes>) -> Self {
        Self::Binary(b.into())
    }

    /// Whether this is a text or binary message (not a control frame).
    pub fn is_data(&self) -> bool {
        matches!(self, Self::Text(_) | Self::Binary(_))
    }

    /// The payload bytes (for a close frame, the reason).
    pub fn payload(&self) -> &[u8] {
        match self {
            Self::Text(t) => t.as_bytes(),
            Self::Binary(b) | Self::Ping(b) | Self::Pong(b) => b,
            Self::Close(Some(frame)) => frame.reason.as_bytes(),
            Self::Close(None) => &[],
        }
    }
}

impl From<String> for Message {
    fn from(s: String) -> Self {
        Self::Text(s.into())
    }
}

impl From<&str> for Message {
    fn from(s: &str) -> Self {
        Self::Text(s.into())
    }
}

impl From<Vec<u8>> for Message {
    fn from(b: Vec<u8>) -> Self {
        Self::Binary(b.into())
    }
}

impl From<Bytes> for Message {
    fn from(b: Bytes) -> Self {
        Self::Binary(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_bytes_length_is_bytes_and_comparisons_are_bytewise() {
        let text = Utf8Bytes::from("héllo ✓");
        assert_eq!(text.len(), "héllo ✓".len());
        assert_eq!(text.len(), 10);
        assert!(!text.is_empty());
        assert!(Utf8Bytes::new().is_empty());
        assert_eq!(text.as_str(), "héllo ✓");
        assert!(text == *"héllo ✓");
        assert!(text == "héllo ✓");
        assert!(text != "héllo");
    }

    #[test]
    fn utf8_bytes_rejects_invalid_input_with_the_standard_error() {
        let mut long = vec![b'a'; 300];
        long.push(0xC3); // truncated two-byte sequence after 300 valid bytes
        let err = Utf8Bytes::try_from_bytes(Bytes::from(long)).unwrap_err();
        assert_eq!(err.valid_up_to(), 300);
        assert_eq!(err.error_len(), None);
        let err = Utf8Bytes::try_from_bytes(Bytes::from_static(b"ok\xFFok")).unwrap_err();
        assert_eq!((err.valid_up_to(), err.error_len()), (2, Some(1)));
        let long_ok = "✓".repeat(100);
        let ok = Utf8Bytes::try_from_bytes(Bytes::from(long_ok.clone())).unwrap();
        assert_eq!(ok.as_str(), long_ok);
    }
}
