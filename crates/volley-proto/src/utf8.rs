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

/// Where the code point that `data` may leave unfinished starts: the index of a lead byte in the
/// last three bytes whose sequence is longer than what follows it, or `data.len()`.
fn unfinished_tail_start(data: &[u8]) -> usize {
    let len = data.len();
    for back in 1..=len.min(3) {
        let at = len - back;
        let byte = data[at];
        if byte & 0xC0 != 0x80 {
            // Not a continuation byte: this is where the last code point starts.
            return if sequence_len(byte) > back { at } else { len };
        }
    }
    len
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
        // The bulk goes through `simdutf8::basic` (the fastest check, which only says yes or no),
        // up to the start of a code point that the piece leaves unfinished; only those last
        // few bytes need `compat`'s finer answer (invalid, or a valid prefix).
        let split = unfinished_tail_start(data);
        let (bulk, tail) = data.split_at(split);
        if simdutf8::basic::from_utf8(bulk).is_err() {
            // `bulk` ends where a code point starts (or at the end of `data`), so an error in it
            // is an error of the stream, whatever follows.
            return Err(InvalidUtf8);
        }
        if tail.is_empty() {
            return Ok(());
        }
        match simdutf8::compat::from_utf8(tail) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_none() && e.valid_up_to() == 0 => {
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
        // The same impossible starts at the end of one larger piece fail that piece.
        for bad in [
            &b"\xed\xa0"[..],
            b"\xf4\x90",
            b"\xe0\x80",
            b"\xf0\x80",
            b"\xf0\x90\xc0",
        ] {
            let mut piece = "κόσμε ".repeat(20).into_bytes();
            piece.extend_from_slice(bad);
            assert_eq!(
                Utf8Validator::new().feed(&piece),
                Err(InvalidUtf8),
                "{bad:x?}"
            );
        }
        // A valid unfinished code point at the end of a large piece is kept for the next one.
        let mut v = Utf8Validator::new();
        let mut piece = "κόσμε ".repeat(20).into_bytes();
        piece.extend_from_slice(b"\xf0\x9f\x9a");
        assert!(v.feed(&piece).is_ok());
        assert!(!v.is_complete());
        assert!(v.feed(b"\x80 done").is_ok());
        assert!(v.is_complete());
    }

    /// Whether `bytes` can still be the start of valid UTF-8.
    fn is_valid_prefix(bytes: &[u8]) -> bool {
        match std::str::from_utf8(bytes) {
            Ok(_) => true,
            Err(e) => e.error_len().is_none(),
        }
    }

    /// A reproducible byte soup that is mostly UTF-8, with the odd invalid byte.
    fn soup(seed: u64, len: usize) -> Vec<u8> {
        let mut state = seed | 1;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let pieces: [&[u8]; 10] = [
            b"a",
            b" ",
            "\u{e9}".as_bytes(),
            "\u{3ba}".as_bytes(),
            "\u{65e5}".as_bytes(),
            "\u{1d11e}".as_bytes(),
            "\u{1f680}".as_bytes(),
            "\u{ffff}".as_bytes(),
            "\u{10ffff}".as_bytes(),
            b"xyz",
        ];
        let bad: [&[u8]; 6] = [
            b"\xed\xa0\x80",
            b"\xc0\xaf",
            b"\xf4\x90",
            b"\x80",
            b"\xff",
            b"\xe0\x80",
        ];
        let mut out = Vec::with_capacity(len + 4);
        while out.len() < len {
            let r = next();
            if r % 400 == 0 {
                out.extend_from_slice(bad[(r >> 16) as usize % bad.len()]);
            } else {
                out.extend_from_slice(pieces[(r >> 16) as usize % pieces.len()]);
            }
        }
        out
    }

    #[test]
    fn fails_exactly_at_the_first_impossible_byte_when_fed_byte_by_byte() {
        for seed in 0..40 {
            let input = soup(seed, 600);
            let first_bad = (0..input.len()).find(|&i| !is_valid_prefix(&input[..=i]));
            let mut v = Utf8Validator::new();
            let failed_at = input.iter().position(|b| v.feed(&[*b]).is_err());
            assert_eq!(failed_at, first_bad, "seed {seed}");
        }
    }

    #[test]
    fn random_pieces_agree_with_std_and_fail_in_the_piece_with_the_first_bad_byte() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for seed in 0..200 {
            let input = soup(seed, (next() % 70_000) as usize);
            let first_bad = (0..input.len()).find(|&i| !is_valid_prefix(&input[..=i]));
            if seed % 2 == 0 {
                assert_eq!(
                    Utf8Validator::new().feed(&input).is_ok(),
                    first_bad.is_none()
                );
            }
            let mut v = Utf8Validator::new();
            let mut at = 0;
            let mut failed_in = None;
            while at < input.len() {
                let end = (at + 1 + (next() % 5000) as usize).min(input.len());
                if v.feed(&input[at..end]).is_err() {
                    failed_in = Some(at..end);
                    break;
                }
                at = end;
            }
            match (first_bad, failed_in) {
                (None, None) => {
                    assert_eq!(
                        v.is_complete(),
                        std::str::from_utf8(&input).is_ok(),
                        "seed {seed}"
                    )
                }
                (Some(bad), Some(piece)) => {
                    assert!(piece.contains(&bad), "seed {seed}: {bad} not in {piece:?}")
                }
                (bad, piece) => panic!("seed {seed}: first bad byte {bad:?}, failed in {piece:?}"),
            }
        }
    }
}
