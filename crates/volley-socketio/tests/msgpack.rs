//! The msgpack parser's wire format against Node's own `socket.io-msgpack-parser` (pinned in
//! `e2e/`, installed by `scripts/install-peers`): the packets Volley's server writes are
//! byte for byte those Node's server writes, and the packets Node's client writes decode as
//! they should. (Whole conversations with `socket.io-client` on that parser are in
//! `tests/interop.rs`, module `node_msgpack`.)

use std::path::PathBuf;
use std::process::Command;

use bytes::Bytes;
use serde_json::{Value, json};
use volley_socketio::Payload;
use volley_socketio::packet::{
    Packet, PacketErrorKind, PacketType, decode_msgpack, encode_msgpack,
};

fn e2e() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../e2e")
}

/// Runs `script` with Node in `e2e/` and returns its output lines.
fn node(script: &str) -> Vec<String> {
    assert!(
        e2e().join("node_modules/socket.io-msgpack-parser").exists(),
        "e2e/node_modules/socket.io-msgpack-parser is missing: run scripts/install-peers"
    );
    let out = Command::new("node")
        .arg("-e")
        .arg(script)
        .current_dir(e2e())
        .output()
        .expect("run node");
    assert!(
        out.status.success(),
        "node failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(str::to_owned)
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn packet(kind: PacketType, nsp: &str, id: Option<u64>, data: Option<Value>) -> Packet {
    Packet {
        kind,
        nsp: nsp.into(),
        id,
        data,
        attachments: Vec::new(),
    }
}

#[test]
fn server_packets_are_byte_for_byte_nodes() {
    // Each packet as Node's socket.io server builds it (its key order and its `undefined`s),
    // through Node's encoder; and the same packet as Volley's server builds it.
    let node_hex = node(
        r#"
        const { Encoder } = require("socket.io-msgpack-parser");
        const e = new Encoder();
        for (const p of [
          { type: 0, data: { sid: "abc", pid: undefined }, nsp: "/" },
          { type: 0, data: { sid: "abc", pid: "p1" }, nsp: "/chat" },
          { type: 1, nsp: "/chat" },
          { type: 2, data: ["ev", 1, "two", { three: [3.5, null, true, -200, 70000] }], nsp: "/" },
          { type: 2, data: ["bin", Buffer.from([1, 2, 3]), { nested: Buffer.alloc(0) }], id: 7, nsp: "/" },
          { id: 9, type: 3, data: [Buffer.from("x"), -5, "é"], nsp: "/custom" },
          { id: 10, type: 3, data: [], nsp: "/" },
          { type: 4, nsp: "/nope", data: { message: "Invalid namespace" } },
          { type: 4, data: { message: "not authorized", data: undefined }, nsp: "/" },
          { type: 4, data: { message: "not authorized", data: { code: 401 } }, nsp: "/" },
        ]) console.log(e.encode(p)[0].toString("hex"));
        "#,
    );
    let ours = [
        packet(PacketType::Connect, "/", None, Some(json!({"sid": "abc"}))),
        packet(
            PacketType::Connect,
            "/chat",
            None,
            Some(json!({"sid": "abc", "pid": "p1"})),
        ),
        packet(PacketType::Disconnect, "/chat", None, None),
        packet(
            PacketType::Event,
            "/",
            None,
            Some(json!(["ev", 1, "two", {"three": [3.5, null, true, -200, 70000]}])),
        ),
        Packet {
            attachments: vec![Bytes::from_static(&[1, 2, 3]), Bytes::new()],
            ..packet(
                PacketType::BinaryEvent,
                "/",
                Some(7),
                Some(json!(["bin", Payload::placeholder(0), {"nested": Payload::placeholder(1)}])),
            )
        },
        Packet {
            attachments: vec![Bytes::from_static(b"x")],
            ..packet(
                PacketType::BinaryAck,
                "/custom",
                Some(9),
                Some(json!([Payload::placeholder(0), -5, "é"])),
            )
        },
        packet(PacketType::Ack, "/", Some(10), Some(json!([]))),
        packet(
            PacketType::ConnectError,
            "/nope",
            None,
            Some(json!({"message": "Invalid namespace"})),
        ),
        packet(
            PacketType::ConnectError,
            "/",
            None,
            Some(json!({"message": "not authorized"})),
        ),
        packet(
            PacketType::ConnectError,
            "/",
            None,
            Some(json!({"message": "not authorized", "data": {"code": 401}})),
        ),
    ];
    assert_eq!(node_hex.len(), ours.len());
    for (p, want) in ours.iter().zip(&node_hex) {
        assert_eq!(&hex(&encode_msgpack(p)), want, "{p:?}");
    }
}

#[test]
fn client_packets_decode() {
    // As socket.io-client builds them (with its `options` field), through Node's encoder.
    let lines = node(
        r#"
        const { Encoder } = require("socket.io-msgpack-parser");
        const e = new Encoder();
        for (const p of [
          { type: 0, nsp: "/", data: undefined },
          { type: 0, nsp: "/custom", data: { token: "t", n: 1.5 } },
          { type: 2, data: ["ev", Buffer.from([5]), { deep: [new Uint8Array([6, 7]).buffer] }], options: { compress: true }, id: 3, nsp: "/" },
          { type: 3, data: ["answer", null], id: 4, nsp: "/" },
          { type: 1, nsp: "/custom" },
        ]) console.log(e.encode(p)[0].toString("hex"));
        "#,
    );
    let decoded: Vec<Packet> = lines
        .iter()
        .map(|l| decode_msgpack(&unhex(l)).expect(l))
        .collect();
    assert_eq!(decoded[0], packet(PacketType::Connect, "/", None, None));
    assert_eq!(
        decoded[1],
        packet(
            PacketType::Connect,
            "/custom",
            None,
            Some(json!({"token": "t", "n": 1.5}))
        )
    );
    assert_eq!(decoded[2].kind, PacketType::BinaryEvent);
    assert_eq!(decoded[2].id, Some(3));
    assert_eq!(
        decoded[2].data,
        Some(json!(["ev", Payload::placeholder(0), {"deep": [Payload::placeholder(1)]}]))
    );
    assert_eq!(
        decoded[2].attachments,
        vec![Bytes::from_static(&[5]), Bytes::from_static(&[6, 7])]
    );
    assert_eq!(
        decoded[3],
        packet(PacketType::Ack, "/", Some(4), Some(json!(["answer", null])))
    );
    assert_eq!(
        decoded[4],
        packet(PacketType::Disconnect, "/custom", None, None)
    );
}

#[test]
fn invalid_packets_are_refused_as_nodes_decoder_refuses_them() {
    // Each of these makes Node's Decoder#add throw; the hex comes from Node's encoder.
    let lines = node(
        r#"
        const { Encoder, Decoder } = require("socket.io-msgpack-parser");
        const e = new Encoder();
        for (const p of [
          { type: 5, data: ["ev"], nsp: "/" },
          { type: "2", data: ["ev"], nsp: "/" },
          { type: 2, data: ["ev"] },
          { type: 2, data: ["ev"], nsp: 1 },
          { type: 2, data: "ev", nsp: "/" },
          { type: 2, nsp: "/" },
          { type: 0, data: "auth", nsp: "/" },
          { type: 1, data: {}, nsp: "/" },
          { type: 4, data: 1, nsp: "/" },
          { type: 2, data: ["ev"], id: "1", nsp: "/" },
          { type: 2, data: ["ev"], id: 1.5, nsp: "/" },
          [2, ["ev"], "/"],
        ]) {
          const bytes = e.encode(p)[0];
          let threw = false;
          try { new Decoder().add(bytes); } catch (err) { threw = true; }
          console.log(`${threw} ${bytes.toString("hex")}`);
        }
        "#,
    );
    assert_eq!(lines.len(), 12);
    for line in &lines {
        let (threw, hex) = line.split_once(' ').unwrap();
        assert_eq!(threw, "true", "Node accepts {hex}: the case tests nothing");
        let err = decode_msgpack(&unhex(hex)).expect_err(hex);
        assert!(
            matches!(
                err.kind(),
                PacketErrorKind::InvalidMsgpack | PacketErrorKind::InvalidId
            ),
            "{hex}: {err}"
        );
    }
    // Not msgpack at all, or truncated: an error, never a panic.
    for bad in [&b""[..], b"\x82\xa4type", b"2[\"ev\"]", b"\xc1"] {
        assert!(decode_msgpack(bad).is_err());
    }
}
