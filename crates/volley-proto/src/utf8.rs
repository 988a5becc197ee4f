//! Incremental UTF-8 validation that fails at the first invalid byte, across any split of the input.

/// Validates a byte stream as UTF-8 piece by piece.
///
/// Each [`feed`](Self::feed) reports an error as soon as the bytes seen so far cannot be the start
/// of valid UTF-8, even when a code point is split across pieces; [`is_complete`](Self::is_complete)
/// tells whether the stream may end here.
#[derive(Debug, Default, Clone)]
pub struct Utf8Validator {
    partial: [u8; 4],
    partial_len: u8,
}

/// Error from [`Utf8Validator::feed`]: the stream is not valid UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidUtf8;

fn sequence_len(lead: u8) -> usize {
    match lead {
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => 1,
    }
}

impl Utf8Validator {
    /// A validator at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Validates the next piece of the stream.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), InvalidUtf8> {
        if self.partial_len > 0 {
            let have = usize::from(self.partial_len);
            let want = sequence_len(self.partial[0]);
            let take = (want - have).min(data.len());
            self.partial[have..have + take].copy_from_slice(&data[..take]);
            let have = have + take;
            data = &data[take..];
            match simdutf8::compat::from_utf8(&self.partial[..have]) {
                Ok(_) => self.partial_len = 0,
                Err(e) if e.error_len().is_none() => {
                    // Still a valid prefix of a code point; `data` is exhausted.
                    self.partial_len = have as u8;
                    return Ok(());
                }
                Err(_) => return Err(InvalidUtf8),
            }
        }
        match simdutf8::compat::from_utf8(data) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_none() => {
                let tail = &data[e.valid_up_to()..];
                self.partial[..tail.len()].copy_from_slice(tail);
                self.partial_len = tail.len() as u8;
                Ok(())
            }
            Err(_) => Err(InvalidUtf8),
        }
    }

    /// Whether the stream may end here (no code point left unfinished).
    pub fn is_complete(&self) -> bool {
        self.partial_len == 0
    }

    /// Resets to the start of a new stream.
    pub fn reset(&mut self) {
        self.partial_len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_all_splits(input: &[u8]) {
        let expected = std::str::from_utf8(input).is_ok();
        for i in 0..=input.len() {
            for j in i..=input.len() {
                let mut v = Utf8Validator::new();
                let ok = v.feed(&input[..i]).is_ok()
                    && v.feed(&input[i..j]).is_ok()
                    && v.feed(&input[j..]).is_ok()
                    && v.is_complete();
                assert_eq!(ok, expected, "{input:?} split at {i},{j}");
            }
        }
    }

    #[test]
    fn agrees_with_std_on_every_three_way_split() {
        for s in [
            "".as_bytes(),
            "hello".as_bytes(),
            "κόσμε".as_bytes(),
            "Hello-µ@ßöäüàá-UTF-8!!".as_bytes(),
            "𝄞 music 🚀".as_bytes(),
            &[
                0xce, 0xba, 0xe1, 0xbd, 0xb9, 0xcf, 0x83, 0xce, 0xbc, 0xce, 0xb5, 0xed, 0xa0, 0x80,
            ],
            &[0xf4, 0x90, 0x80, 0x80],
            &[0xed, 0x9f, 0xbf],
            &[0xef, 0xbf, 0xbf],
            &[0xc0, 0xaf],
            &[0xf0, 0x9f, 0x98],
            &[0x80],
            &[0xfe],
        ] {
            check_all_splits(s);
        }
    }

    #[test]
    fn fails_at_the_first_impossible_byte() {
        // U+D800 (a surrogate) is invalid from its second byte on: 0xED 0xA0.
        let mut v = Utf8Validator::new();
        assert!(v.feed(b"ok \xed").is_ok());
        assert_eq!(v.feed(b"\xa0"), Err(InvalidUtf8));
        // Above U+10FFFF: 0xF4 0x90 is already impossible.
        let mut v = Utf8Validator::new();
        assert!(v.feed(b"\xf4").is_ok());
        assert_eq!(v.feed(b"\x90"), Err(InvalidUtf8));
    }
}
