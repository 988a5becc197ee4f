//! Micro-benchmarks of the protocol core, in bytes per second next to a `memcpy` of the same size.
//!
//! `cargo bench -p volley-proto --bench micro` (about three minutes); add a filter such as
//! `-- mask/` to run one family. Groups:
//!
//! - `mask/<size>`: every masking implementation this CPU runs, and `apply_mask`'s choice.
//! - `encode/<size>`: a frame built with `FrameHeader::encode` plus the payload (masked for a
//!   client), and the same through `Connection::send` + `poll_transmit`.
//! - `decode/<shape>`: client frames fed to a server `Connection` (`handle_read`, then every
//!   `poll_event`): many 20-byte text frames, many 1 KiB text frames, one 1 MiB binary frame,
//!   and that frame in 16 KiB reads.
//! - `utf8/<text>/<size>`: `Utf8Validator::feed` on the whole text and in 4000-byte pieces (so
//!   that pieces split code points), next to `simdutf8::basic` and `std::str::from_utf8`.

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{BatchSize, BenchmarkGroup, Criterion, Throughput, measurement::WallTime};
use volley_proto::frame::{FrameHeader, OpCode};
use volley_proto::mask::{Implementation, apply_mask};
use volley_proto::utf8::Utf8Validator;
use volley_proto::{Connection, Message, ProtocolConfig, Role};

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn label(size: usize) -> String {
    match size {
        s if s >= 1 << 20 && s % (1 << 20) == 0 => format!("{}MiB", s >> 20),
        s if s >= 1 << 10 && s % (1 << 10) == 0 => format!("{}KiB", s >> 10),
        s => format!("{s}B"),
    }
}

/// `copy_from_slice` of `size` bytes: the reference every group is read against.
///
/// Source and destination sit in one allocation with `dst - src ≡ 2048 (mod 4096)`. With two
/// separate `Vec`s the allocator on this machine put them 16 bytes apart modulo 4 KiB, and glibc's
/// `memcpy` (`rep movsb` on this AMD EPYC) then ran at ~0.5 GB/s for 4 KiB–64 KiB copies: a 4K
/// aliasing stall that says nothing about memory bandwidth.
fn memcpy(group: &mut BenchmarkGroup<'_, WallTime>, size: usize) {
    let dst_start = size.next_multiple_of(4096) + 2048;
    let mut both = vec![0x5au8; dst_start + size];
    let (src, rest) = both.split_at_mut(dst_start);
    let src = &src[..size];
    let dst = &mut rest[..size];
    group.bench_function("memcpy", |b| {
        b.iter(|| {
            dst.copy_from_slice(black_box(src));
            black_box(&mut *dst);
        })
    });
}

fn mask(c: &mut Criterion) {
    for size in [20, 1 << 10, 16 << 10, 1 << 20] {
        let mut group = c.benchmark_group(format!("mask/{}", label(size)));
        group.throughput(Throughput::Bytes(size as u64));
        memcpy(&mut group, size);
        let mut buf = vec![0xa5u8; size];
        for imp in Implementation::available() {
            group.bench_function(format!("{imp:?}").to_lowercase(), |b| {
                b.iter(|| {
                    imp.apply(black_box(&mut buf), KEY, 1)
                        .expect("only available implementations are benchmarked")
                })
            });
        }
        group.bench_function("apply_mask", |b| {
            b.iter(|| apply_mask(black_box(&mut buf), KEY, 1))
        });
        group.finish();
    }
}

fn encode(c: &mut Criterion) {
    for size in [20, 1 << 10, 16 << 10] {
        let mut group = c.benchmark_group(format!("encode/{}", label(size)));
        group.throughput(Throughput::Bytes(size as u64));
        memcpy(&mut group, size);
        let mut out: Vec<u8> = Vec::with_capacity(size + 14);
        // Place the payload 2 KiB away from the output modulo 4 KiB: see `memcpy` for the
        // aliasing stall that an unlucky placement causes.
        let backing = vec![0x42u8; size + 4096];
        let want = (out.as_ptr() as usize).wrapping_sub(2048) % 4096;
        let skip = (want + 4096 - backing.as_ptr() as usize % 4096) % 4096;
        let payload = &backing[skip..skip + size];
        for (name, mask) in [("server_frame", None), ("client_frame", Some(KEY))] {
            group.bench_function(name, |b| {
                b.iter(|| {
                    out.clear();
                    let header = FrameHeader {
                        fin: true,
                        rsv: 0,
                        opcode: OpCode::Binary,
                        mask,
                        payload_len: size as u64,
                    };
                    header.encode(&mut out);
                    let start = out.len();
                    out.extend_from_slice(black_box(payload));
                    if let Some(key) = mask {
                        apply_mask(&mut out[start..], key, 0);
                    }
                    black_box(&out);
                })
            });
        }
        let payload = Bytes::copy_from_slice(payload);
        for (name, role) in [("server_send", Role::Server), ("client_send", Role::Client)] {
            let mut conn = Connection::new(role, ProtocolConfig::default());
            group.bench_function(name, |b| {
                b.iter(|| {
                    conn.send(Message::Binary(payload.clone()))
                        .expect("an open connection accepts a message");
                    while let Some(bytes) = conn.poll_transmit() {
                        black_box(bytes);
                    }
                })
            });
        }
        group.finish();
    }
}

/// The bytes a client sends for `messages`.
fn client_wire(messages: impl IntoIterator<Item = Message>) -> Vec<u8> {
    let mut client = Connection::new(
        Role::Client,
        ProtocolConfig::default().max_message_size(16 << 20),
    );
    let mut wire = Vec::new();
    for m in messages {
        client
            .send(m)
            .expect("an open connection accepts a message");
        while let Some(bytes) = client.poll_transmit() {
            wire.extend_from_slice(&bytes);
        }
    }
    wire
}

fn decode(c: &mut Criterion) {
    let text = |n: usize| Message::text("x".repeat(n));
    let shapes: [(&str, Vec<u8>, usize, usize); 4] = [
        (
            "1000x20B_text",
            client_wire((0..1000).map(|_| text(20))),
            usize::MAX,
            1000,
        ),
        (
            "100x1KiB_text",
            client_wire((0..100).map(|_| text(1 << 10))),
            usize::MAX,
            100,
        ),
        (
            "1x1MiB_binary",
            client_wire([Message::binary(vec![7u8; 1 << 20])]),
            usize::MAX,
            1,
        ),
        (
            "1x1MiB_binary_16KiB_reads",
            client_wire([Message::binary(vec![7u8; 1 << 20])]),
            16 << 10,
            1,
        ),
    ];
    let mut group = c.benchmark_group("decode");
    for (name, wire, read_size, messages) in shapes {
        group.throughput(Throughput::Bytes(wire.len() as u64));
        group.bench_function(name, |b| {
            b.iter_batched_ref(
                || {
                    Connection::new(
                        Role::Server,
                        ProtocolConfig::default().max_message_size(16 << 20),
                    )
                },
                |server| {
                    let mut got = 0;
                    for piece in wire.chunks(read_size) {
                        server.handle_read(piece).expect("valid client frames");
                        while let Some(m) = server.poll_event() {
                            black_box(m);
                            got += 1;
                        }
                    }
                    assert_eq!(got, messages);
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

/// Text of about `size` bytes (cut at a character boundary): ASCII, or a mix of 2-, 3- and 4-byte
/// characters with ASCII spaces.
fn sample_text(size: usize, multibyte: bool) -> Vec<u8> {
    let unit = if multibyte {
        "κόσμε 日本語 𝄞🚀 "
    } else {
        "the quick brown fox "
    };
    let mut s = unit.repeat(size / unit.len() + 1);
    let mut cut = size;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
    s.into_bytes()
}

fn utf8(c: &mut Criterion) {
    for (kind, multibyte) in [("ascii", false), ("multibyte", true)] {
        for size in [1 << 10, 16 << 10, 1 << 20] {
            let text = sample_text(size, multibyte);
            let mut group = c.benchmark_group(format!("utf8/{kind}/{}", label(size)));
            group.throughput(Throughput::Bytes(text.len() as u64));
            memcpy(&mut group, text.len());
            group.bench_function("validator_whole", |b| {
                b.iter(|| {
                    let mut v = Utf8Validator::new();
                    v.feed(black_box(&text)).expect("valid text");
                    assert!(v.is_complete());
                })
            });
            group.bench_function("validator_4000B_pieces", |b| {
                b.iter(|| {
                    let mut v = Utf8Validator::new();
                    for piece in black_box(&text).chunks(4000) {
                        v.feed(piece).expect("valid text");
                    }
                    assert!(v.is_complete());
                })
            });
            group.bench_function("simdutf8_basic", |b| {
                b.iter(|| simdutf8::basic::from_utf8(black_box(&text)).is_ok())
            });
            group.bench_function("std", |b| {
                b.iter(|| std::str::from_utf8(black_box(&text)).is_ok())
            });
            group.finish();
        }
    }
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(400))
        .measurement_time(Duration::from_millis(1500))
        .sample_size(30)
        .configure_from_args()
}

fn main() {
    let mut c = config();
    mask(&mut c);
    encode(&mut c);
    decode(&mut c);
    utf8(&mut c);
    c.final_summary();
}
