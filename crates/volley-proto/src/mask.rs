//! Payload masking (RFC 6455 §5.3), with SIMD paths chosen at run time.
//!
//! [`apply_mask`] is what the rest of Volley calls. On x86_64 it uses AVX-512 (64 bytes per step)
//! on CPUs where 512-bit instructions run at full speed (see [`Implementation::selected`]), AVX2
//! (32 bytes per step) when the CPU has it, SSE2 (16 bytes per step, always present on x86_64)
//! otherwise, and a scalar word-at-a-time loop for short buffers, for the tail of the SIMD loops
//! (loads and stores are unaligned, so there is no head to peel), and on other architectures. The
//! CPU check runs once; its result is cached in an atomic.
//!
//! [`Implementation`] exposes each path on its own so that tests and benchmarks can compare them.
//!
//! This is the only module of the workspace that contains `unsafe` code: the SIMD intrinsics.
//! Every `unsafe` block states why it is sound.
#![allow(unsafe_code)]

use std::fmt;

/// Buffers shorter than this are masked by the (inlined) scalar loop even when SIMD is available:
/// at 20 bytes the SIMD paths were no faster in `benches/micro.rs` (`mask/20B`, within noise),
/// while from 1 KiB on AVX2 was about twice as fast as the scalar loop.
const SIMD_MIN_LEN: usize = 32;

/// XORs `buf` with the masking `key`, starting at byte `offset` of the key stream.
///
/// Masking is its own inverse, so this both masks and unmasks. `offset` lets a payload that
/// arrives in pieces be unmasked piece by piece. Uses the fastest [`Implementation`] the CPU
/// supports ([`Implementation::selected`]).
#[inline]
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], offset: usize) {
    let key = rotate(key, offset);
    if buf.len() < SIMD_MIN_LEN {
        scalar(buf, key);
        return;
    }
    #[cfg(target_arch = "x86_64")]
    {
        x86::dispatch(buf, key);
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        scalar(buf, key);
    }
}

/// One way of masking a buffer; every variant computes the same bytes.
///
/// All variants exist on every architecture; [`is_available`](Self::is_available) tells which
/// ones this CPU can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Implementation {
    /// Portable: eight bytes at a time as a `u64`, then four as a `u32`, then byte by byte.
    /// Always available.
    Scalar,
    /// x86_64 SSE2, 16 bytes per step (part of the x86_64 baseline).
    Sse2,
    /// x86_64 AVX2, 32 bytes per step, when the CPU supports it.
    Avx2,
    /// x86_64 AVX-512 (the foundation instructions, AVX-512F), 64 bytes per step, when the CPU
    /// supports it.
    Avx512,
}

/// Error from [`Implementation::apply`]: this CPU cannot run the requested implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unavailable(pub Implementation);

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "masking implementation {:?} is not available on this CPU",
            self.0
        )
    }
}

impl std::error::Error for Unavailable {}

impl Implementation {
    /// Every implementation, available or not.
    pub const ALL: [Self; 4] = [Self::Scalar, Self::Sse2, Self::Avx2, Self::Avx512];

    /// Whether this CPU can run the implementation.
    pub fn is_available(self) -> bool {
        match self {
            Self::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Self::Sse2 => true,
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => x86::level() >= x86::Level::Avx2,
            #[cfg(target_arch = "x86_64")]
            Self::Avx512 => x86::level() >= x86::Level::Avx512,
            #[cfg(not(target_arch = "x86_64"))]
            Self::Sse2 | Self::Avx2 | Self::Avx512 => false,
        }
    }

    /// The implementations this CPU can run, scalar first.
    pub fn available() -> impl Iterator<Item = Self> {
        Self::ALL.into_iter().filter(|i| i.is_available())
    }

    /// The implementation [`apply_mask`] uses for buffers of at least 32 bytes (shorter ones
    /// always take the scalar path): the widest available, except that AVX-512 is chosen only on
    /// CPUs that also have AVX-512 VBMI (Intel from Ice Lake on, AMD from Zen 4 on). The
    /// Skylake-era server parts that have AVX-512F without it lower the core's clock for a
    /// while after 512-bit instructions, which costs the rest of the server more than 64-byte
    /// steps save; there AVX2 is chosen.
    pub fn selected() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            match x86::level() {
                x86::Level::Sse2 => Self::Sse2,
                x86::Level::Avx2 | x86::Level::Avx512 => Self::Avx2,
                x86::Level::Avx512Fast => Self::Avx512,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            Self::Scalar
        }
    }

    /// Masks `buf` like [`apply_mask`], but with this implementation at every length.
    ///
    /// Fails, leaving `buf` untouched, if the CPU cannot run it.
    pub fn apply(self, buf: &mut [u8], key: [u8; 4], offset: usize) -> Result<(), Unavailable> {
        let key = rotate(key, offset);
        match self {
            Self::Scalar => scalar(buf, key),
            #[cfg(target_arch = "x86_64")]
            Self::Sse2 => x86::sse2(buf, key),
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => {
                if x86::level() < x86::Level::Avx2 {
                    return Err(Unavailable(self));
                }
                // SAFETY: AVX2 support was just checked at run time.
                unsafe { x86::avx2(buf, key) }
            }
            #[cfg(target_arch = "x86_64")]
            Self::Avx512 => {
                if x86::level() < x86::Level::Avx512 {
                    return Err(Unavailable(self));
                }
                // SAFETY: AVX-512F support (which implies AVX2) was just checked at run time.
                unsafe { x86::avx512(buf, key) }
            }
            #[cfg(not(target_arch = "x86_64"))]
            Self::Sse2 | Self::Avx2 | Self::Avx512 => return Err(Unavailable(self)),
        }
        Ok(())
    }
}

/// The key as seen from byte `offset` of the key stream.
#[inline]
fn rotate(key: [u8; 4], offset: usize) -> [u8; 4] {
    // `[u8; 4]::rotate_left` is a general slice rotation (an out-of-line call); as a
    // little-endian word, rotating the bytes left by one is rotating the word right by 8 bits.
    let shift = 8 * (offset % 4) as u32;
    u32::from_le_bytes(key).rotate_right(shift).to_le_bytes()
}

/// The portable loop: `u64` words, then single bytes. `key` is already rotated to the start of
/// `buf`.
#[inline]
fn scalar(buf: &mut [u8], key: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    // Whole words consumed a multiple of 4 bytes, so the key phase is unchanged here.
    let rest = chunks.into_remainder();
    // Fewer than 8 bytes are left: a 4-byte word if there are at least 4, then 0 to 3 bytes.
    let (half, tail) = rest.split_at_mut(rest.len() & 4);
    if let Ok(half) = <&mut [u8; 4]>::try_from(half) {
        *half = (u32::from_ne_bytes(*half) ^ u32::from_ne_bytes(key)).to_ne_bytes();
    }
    for (byte, k) in tail.iter_mut().zip(key) {
        *byte ^= k;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{
        __m128i, __m256i, __m512i, _mm_loadu_si128, _mm_storeu_si128, _mm_xor_si128,
        _mm256_loadu_si256, _mm256_storeu_si256, _mm256_xor_si256, _mm512_loadu_si512,
        _mm512_set1_epi32, _mm512_storeu_si512, _mm512_xor_si512,
    };
    use std::sync::atomic::{AtomicU8, Ordering};

    /// What the CPU offers for masking, widest last.
    #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
    #[repr(u8)]
    pub(super) enum Level {
        /// The x86_64 baseline.
        Sse2 = 1,
        Avx2 = 2,
        /// AVX-512F, on a CPU without AVX-512 VBMI: 512-bit instructions may lower its clock.
        Avx512 = 3,
        /// AVX-512F and VBMI.
        Avx512Fast = 4,
    }

    /// Not detected yet.
    const UNKNOWN: u8 = 0;

    /// The cached result of the CPU check.
    static LEVEL: AtomicU8 = AtomicU8::new(UNKNOWN);

    /// What the CPU offers, detected once and cached. (A race only repeats the detection, which
    /// always gives the same answer, so relaxed ordering is enough.)
    #[inline]
    pub(super) fn level() -> Level {
        match LEVEL.load(Ordering::Relaxed) {
            1 => Level::Sse2,
            2 => Level::Avx2,
            3 => Level::Avx512,
            4 => Level::Avx512Fast,
            _ => detect(),
        }
    }

    #[cold]
    fn detect() -> Level {
        let level = if std::is_x86_feature_detected!("avx512f") {
            if std::is_x86_feature_detected!("avx512vbmi") {
                Level::Avx512Fast
            } else {
                Level::Avx512
            }
        } else if std::is_x86_feature_detected!("avx2") {
            Level::Avx2
        } else {
            Level::Sse2
        };
        LEVEL.store(level as u8, Ordering::Relaxed);
        level
    }

    /// `apply_mask`'s choice for buffers of at least `SIMD_MIN_LEN` bytes (see
    /// `Implementation::selected`).
    #[inline]
    pub(super) fn dispatch(buf: &mut [u8], key: [u8; 4]) {
        match level() {
            // SAFETY: `level` checked at run time that the CPU supports AVX-512F.
            Level::Avx512Fast => unsafe { avx512(buf, key) },
            // SAFETY: `level` checked at run time that the CPU supports AVX2 (AVX-512F
            // implies it).
            Level::Avx2 | Level::Avx512 => unsafe { avx2(buf, key) },
            Level::Sse2 => sse2(buf, key),
        }
    }

    /// SSE2: 16 bytes per step with unaligned loads and stores, the rest by the scalar loop.
    ///
    /// SSE2 is part of the x86_64 baseline (`target_feature = "sse2"` is always enabled there),
    /// so this needs no run-time check and is a safe function.
    #[inline]
    pub(super) fn sse2(buf: &mut [u8], key: [u8; 4]) {
        let words = [u32::from_ne_bytes(key); 4];
        // SAFETY: `words` is 16 readable bytes; `_mm_loadu_si128` allows any alignment. SSE2 is
        // enabled on every x86_64 target.
        let pattern = unsafe { _mm_loadu_si128(words.as_ptr().cast::<__m128i>()) };
        let mut chunks = buf.chunks_exact_mut(16);
        for chunk in &mut chunks {
            let p = chunk.as_mut_ptr().cast::<__m128i>();
            // SAFETY: `chunk` is exactly 16 bytes long, valid for reads and writes and borrowed
            // mutably, so `p` points at 16 bytes we may read and write. `_mm_loadu_si128` and
            // `_mm_storeu_si128` allow any alignment. SSE2 is enabled on every x86_64 target.
            unsafe {
                let v = _mm_loadu_si128(p);
                _mm_storeu_si128(p, _mm_xor_si128(v, pattern));
            }
        }
        // 16 is a multiple of 4: the key phase at the tail is the same as at the start.
        super::scalar(chunks.into_remainder(), key);
    }

    /// AVX2: 64 bytes per step (two 32-byte vectors), then one 32-byte step, then SSE2 and the
    /// scalar loop for the rest. Unaligned loads and stores throughout.
    ///
    /// # Safety
    ///
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn avx2(buf: &mut [u8], key: [u8; 4]) {
        let words = [u32::from_ne_bytes(key); 8];
        // SAFETY: `words` is 32 readable bytes; `_mm256_loadu_si256` allows any alignment. The
        // caller guarantees AVX2 support, and this function is compiled with AVX2 enabled.
        let pattern = unsafe { _mm256_loadu_si256(words.as_ptr().cast::<__m256i>()) };
        let mut pairs = buf.chunks_exact_mut(64);
        for chunk in &mut pairs {
            let p = chunk.as_mut_ptr().cast::<__m256i>();
            // SAFETY: `chunk` is exactly 64 bytes long, valid for reads and writes and borrowed
            // mutably, so `p` and `p.add(1)` (32 bytes further) each point at 32 bytes inside it.
            // `_mm256_loadu_si256`/`_mm256_storeu_si256` allow any alignment. The caller
            // guarantees AVX2 support, and this function is compiled with AVX2 enabled.
            unsafe {
                let a = _mm256_loadu_si256(p);
                let b = _mm256_loadu_si256(p.add(1));
                _mm256_storeu_si256(p, _mm256_xor_si256(a, pattern));
                _mm256_storeu_si256(p.add(1), _mm256_xor_si256(b, pattern));
            }
        }
        let rest = pairs.into_remainder();
        let mut chunks = rest.chunks_exact_mut(32);
        for chunk in &mut chunks {
            let p = chunk.as_mut_ptr().cast::<__m256i>();
            // SAFETY: as above, with `chunk` exactly 32 bytes long.
            unsafe {
                let v = _mm256_loadu_si256(p);
                _mm256_storeu_si256(p, _mm256_xor_si256(v, pattern));
            }
        }
        // 64 and 32 are multiples of 4: the key phase at the tail is the same as at the start.
        sse2(chunks.into_remainder(), key);
    }

    /// AVX-512: 64 bytes per step (one 512-bit vector), then AVX2, SSE2 and the scalar loop for
    /// the rest (under 64 bytes). Unaligned loads and stores throughout.
    ///
    /// # Safety
    ///
    /// The CPU must support AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn avx512(buf: &mut [u8], key: [u8; 4]) {
        let pattern = _mm512_set1_epi32(i32::from_ne_bytes(key));
        let mut chunks = buf.chunks_exact_mut(64);
        for chunk in &mut chunks {
            let p = chunk.as_mut_ptr().cast::<__m512i>();
            // SAFETY: `chunk` is exactly 64 bytes long, valid for reads and writes and borrowed
            // mutably, so `p` points at 64 bytes we may read and write.
            // `_mm512_loadu_si512`/`_mm512_storeu_si512` allow any alignment. The caller
            // guarantees AVX-512F support, and this function is compiled with it enabled.
            unsafe {
                let v = _mm512_loadu_si512(p);
                _mm512_storeu_si512(p, _mm512_xor_si512(v, pattern));
            }
        }
        // 64 is a multiple of 4: the key phase at the tail is the same as at the start.
        // SAFETY: AVX-512F implies AVX2 (this function is compiled with both enabled), and the
        // caller guarantees AVX-512F support.
        unsafe { avx2(chunks.into_remainder(), key) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(buf: &mut [u8], key: [u8; 4], offset: usize) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b ^= key[(i + offset) % 4];
        }
    }

    /// Lengths, offsets and misalignments to try exhaustively; smaller under miri, which is
    /// thousands of times slower.
    #[cfg(not(miri))]
    const SIZES: (usize, usize, usize) = (300, 8, 32);
    #[cfg(miri)]
    const SIZES: (usize, usize, usize) = (80, 5, 5);

    /// Every available implementation, and `apply_mask` itself, against the byte loop.
    fn check_all(data: &[u8], key: [u8; 4], offset: usize) {
        let mut expected = data.to_vec();
        naive(&mut expected, key, offset);
        let mut got = data.to_vec();
        apply_mask(&mut got, key, offset);
        assert_eq!(
            got,
            expected,
            "apply_mask len {} offset {offset}",
            data.len()
        );
        for imp in Implementation::available() {
            let mut got = data.to_vec();
            imp.apply(&mut got, key, offset).unwrap();
            assert_eq!(got, expected, "{imp:?} len {} offset {offset}", data.len());
        }
    }

    #[test]
    fn every_implementation_matches_bytewise_masking_at_every_length_offset_and_alignment() {
        let (max_len, offsets, shifts) = SIZES;
        let key = [0x12, 0x34, 0x56, 0x78];
        let backing: Vec<u8> = (0..max_len + shifts).map(|i| (i * 7 + 3) as u8).collect();
        // `None` stands for `apply_mask` itself.
        let imps = std::iter::once(None).chain(Implementation::available().map(Some));
        for imp in imps {
            // The bytes around the masked window must stay untouched.
            for shift in 0..shifts {
                for len in 0..=max_len {
                    for offset in 0..offsets {
                        let mut buf = backing.clone();
                        let mut expected = backing.clone();
                        naive(&mut expected[shift..shift + len], key, offset);
                        let window = &mut buf[shift..shift + len];
                        match imp {
                            None => apply_mask(window, key, offset),
                            Some(imp) => imp.apply(window, key, offset).unwrap(),
                        }
                        assert_eq!(
                            buf, expected,
                            "{imp:?} shift {shift} len {len} off {offset}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn scalar_and_sse2_are_always_available_on_x86_64() {
        assert!(Implementation::Scalar.is_available());
        assert_eq!(
            Implementation::Sse2.is_available(),
            cfg!(target_arch = "x86_64")
        );
        assert!(Implementation::available().any(|i| i == Implementation::selected()));
        #[cfg(not(miri))]
        if cfg!(target_arch = "x86_64") {
            assert_eq!(
                Implementation::Avx2.is_available(),
                std::is_x86_feature_detected!("avx2")
            );
            assert_eq!(
                Implementation::Avx512.is_available(),
                std::is_x86_feature_detected!("avx512f")
            );
        }
    }

    /// AVX-512 only where it runs at full speed (with VBMI); AVX2 otherwise when present.
    #[test]
    fn the_widest_full_speed_implementation_is_selected() {
        #[cfg(target_arch = "x86_64")]
        {
            let expected = if std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512vbmi")
            {
                Implementation::Avx512
            } else if std::is_x86_feature_detected!("avx2") {
                Implementation::Avx2
            } else {
                Implementation::Sse2
            };
            assert_eq!(Implementation::selected(), expected);
        }
        #[cfg(not(target_arch = "x86_64"))]
        assert_eq!(Implementation::selected(), Implementation::Scalar);
    }

    /// Miri sees only the CPU features enabled at compile time: `scripts/miri` runs these tests a
    /// second time with `-C target-feature=+avx2`, and this makes sure that run covers AVX2.
    #[cfg(all(
        miri,
        target_arch = "x86_64",
        target_feature = "avx2",
        not(target_feature = "avx512f")
    ))]
    #[test]
    fn avx2_path_runs_under_miri_when_enabled_at_compile_time() {
        assert!(Implementation::Avx2.is_available());
        assert_eq!(Implementation::selected(), Implementation::Avx2);
    }

    /// And a third time with AVX-512F and VBMI enabled, which this makes sure covers AVX-512.
    #[cfg(all(
        miri,
        target_arch = "x86_64",
        target_feature = "avx512f",
        target_feature = "avx512vbmi"
    ))]
    #[test]
    fn avx512_path_runs_under_miri_when_enabled_at_compile_time() {
        assert!(Implementation::Avx512.is_available());
        assert_eq!(Implementation::selected(), Implementation::Avx512);
    }

    #[test]
    fn random_large_buffers_match() {
        // xorshift: reproducible without a dependency.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let (rounds, max) = if cfg!(miri) { (3, 600) } else { (60, 200_000) };
        for _ in 0..rounds {
            let len = (next() % max) as usize;
            let shift = (next() % 64) as usize;
            let offset = (next() % 16) as usize;
            let key = (next() as u32).to_ne_bytes();
            let data: Vec<u8> = (0..len + shift).map(|_| next() as u8).collect();
            check_all(&data[shift..], key, offset);
        }
    }

    #[test]
    fn pieces_unmask_like_the_whole() {
        let key = [1, 2, 3, 4];
        let data: Vec<u8> = (0..=255).collect();
        let mut whole = data.clone();
        apply_mask(&mut whole, key, 0);
        for split in [1, 13, 33, 100, 200] {
            let mut pieces = data.clone();
            let (a, b) = pieces.split_at_mut(split);
            apply_mask(a, key, 0);
            apply_mask(b, key, split);
            assert_eq!(whole, pieces, "split at {split}");
        }
    }

    #[test]
    fn masking_twice_restores_the_input() {
        let data: Vec<u8> = (0..1000).map(|i| (i % 251) as u8).collect();
        let mut buf = data.clone();
        apply_mask(&mut buf, [0xde, 0xad, 0xbe, 0xef], 3);
        assert_ne!(buf, data);
        apply_mask(&mut buf, [0xde, 0xad, 0xbe, 0xef], 3);
        assert_eq!(buf, data);
    }
}
