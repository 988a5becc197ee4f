//! A client and a server wired together in memory: handshake, many messages both ways, pings,
//! and a clean close, with the bytes delivered in arbitrary pieces.

mod common;

use bytes::Bytes;
use common::{Rng, drain_transmit, events};
use http::HeaderMap;
use volley_proto::handshake::{ClientHandshake, HeaderLimits, UpgradeRequest};
use volley_proto::{CloseCode, CloseFrame, Connection, Message, ProtocolConfig, Role, State};

/// Moves every pending byte from `from` to `to`, in random-sized reads, collecting `to`'s events.
fn pump(from: &mut Connection, to: &mut Connection, rng: &mut Rng, got: &mut Vec<Message>) {
    let bytes = drain_transmit(from);
    let mut rest = bytes.as_slice();
    while !rest.is_empty() {
        let n = (1 + rng.below(4096)).min(rest.len());
        to.handle_read(&rest[..n]).expect("no protocol error");
        got.extend(events(to));
        rest = &rest[n..];
    }
}

/// Runs the opening handshake in memory; returns the bytes the server received after the request.
fn handshake(early_frames: &[u8]) -> Vec<u8> {
    let uri = "ws://localhost:9001/echo?x=1".parse().unwrap();
    let hs = ClientHandshake::new(&uri, &["chat".into()], &HeaderMap::new()).unwrap();
    let mut wire = hs.request().to_vec();
    wire.extend_from_slice(early_frames);
    let (req, used) = UpgradeRequest::parse(&wire, &HeaderLimits::default())
        .unwrap()
        .unwrap();
    assert_eq!(req.request().uri().path(), "/echo");
    assert_eq!(req.protocols(), ["chat"]);
    let resp = req.accept(Some("chat"), &HeaderMap::new());
    let (up, len) = hs
        .parse_response(&resp, &HeaderLimits::default())
        .unwrap()
        .unwrap();
    assert_eq!(len, resp.len());
    assert_eq!(up.protocol.as_deref(), Some("chat"));
    wire[used..].to_vec()
}

fn random_message(rng: &mut Rng, i: usize) -> Message {
    let len = match rng.below(10) {
        0 => 0,
        1..=5 => rng.below(126),
        6..=8 => rng.below(70_000),
        _ => 200_000 + rng.below(100_000),
    };
    if rng.below(2) == 0 {
        let alphabet = ["a", "é", "€", "𝄞", " ", "z"];
        let mut s = format!("#{i} ");
        while s.len() < len {
            s.push_str(alphabet[rng.below(alphabet.len())]);
        }
        Message::text(s)
    } else {
        Message::binary(rng.bytes(len))
    }
}

fn run_pair(client_config: ProtocolConfig, server_config: ProtocolConfig, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut client = Connection::new(Role::Client, client_config);
    let mut server = Connection::new(Role::Server, server_config);

    // The client sends a message right behind its request, in the same write.
    client.send(Message::text("early")).unwrap();
    let early = handshake(&drain_transmit(&mut client));
    server.handle_read(&early).unwrap();
    assert_eq!(events(&mut server), [Message::text("early")]);

    let mut to_server = Vec::new();
    let mut to_client = Vec::new();
    let mut got_by_server = Vec::new();
    let mut got_by_client = Vec::new();
    for i in 0..200 {
        let m = random_message(&mut rng, i);
        if rng.below(2) == 0 {
            client.send(m.clone()).unwrap();
            to_server.push(m);
        } else {
            server.send(m.clone()).unwrap();
            to_client.push(m);
        }
        if rng.below(10) == 0 {
            let len = rng.below(126);
            let payload = Bytes::from(rng.bytes(len));
            client.send(Message::Ping(payload.clone())).unwrap();
            to_server.push(Message::Ping(payload));
        }
        // Deliver sometimes, so that several messages pile up in one transmit.
        if rng.below(3) == 0 {
            pump(&mut client, &mut server, &mut rng, &mut got_by_server);
            pump(&mut server, &mut client, &mut rng, &mut got_by_client);
        }
    }
    pump(&mut client, &mut server, &mut rng, &mut got_by_server);
    pump(&mut server, &mut client, &mut rng, &mut got_by_client);

    assert_eq!(got_by_server.len(), to_server.len());
    for (i, (got, sent)) in got_by_server.iter().zip(&to_server).enumerate() {
        assert!(got == sent, "server message {i} differs");
    }
    // The client also received one pong per ping, in order, among the server's messages.
    let pings: Vec<&Message> = to_server
        .iter()
        .filter(|m| matches!(m, Message::Ping(_)))
        .collect();
    let (pongs, data): (Vec<Message>, Vec<Message>) = got_by_client
        .into_iter()
        .partition(|m| matches!(m, Message::Pong(_)));
    assert_eq!(pongs.len(), pings.len());
    for (pong, ping) in pongs.iter().zip(pings) {
        assert_eq!(pong.payload(), ping.payload());
    }
    assert_eq!(data.len(), to_client.len());
    for (i, (got, sent)) in data.iter().zip(&to_client).enumerate() {
        assert!(got == sent, "client message {i} differs");
    }

    // Clean close, initiated by the client.
    client
        .close(Some(CloseFrame::new(CloseCode::NORMAL, "bye")))
        .unwrap();
    assert_eq!(client.state(), State::CloseSent);
    let mut got = Vec::new();
    pump(&mut client, &mut server, &mut rng, &mut got);
    assert_eq!(
        got,
        [Message::Close(Some(CloseFrame::new(
            CloseCode::NORMAL,
            "bye"
        )))]
    );
    assert_eq!(server.state(), State::Closed);
    let mut got = Vec::new();
    pump(&mut server, &mut client, &mut rng, &mut got);
    // The server echoes the close frame, reason included.
    assert_eq!(
        got,
        [Message::Close(Some(CloseFrame::new(
            CloseCode::NORMAL,
            "bye"
        )))]
    );
    assert_eq!(client.state(), State::Closed);
    assert_eq!(drain_transmit(&mut client), b"");
    assert_eq!(drain_transmit(&mut server), b"");
}

#[test]
fn pair_exchanges_messages_and_closes_cleanly() {
    run_pair(ProtocolConfig::default(), ProtocolConfig::default(), 1);
}

#[test]
fn pair_with_fragmentation_on_both_sides() {
    run_pair(
        ProtocolConfig::default().fragment_size(Some(1000)),
        ProtocolConfig::default().fragment_size(Some(4096)),
        2,
    );
}

#[test]
fn pair_with_tiny_fragments_and_frame_limits() {
    let config = ProtocolConfig::default()
        .fragment_size(Some(777))
        .max_frame_size(Some(1000));
    run_pair(config.clone(), config, 3);
}

#[test]
fn server_initiated_close() {
    let mut rng = Rng::new(4);
    let mut client = Connection::new(Role::Client, ProtocolConfig::default());
    let mut server = Connection::new(Role::Server, ProtocolConfig::default());
    server.send(Message::text("last words")).unwrap();
    server
        .close(Some(CloseFrame::new(CloseCode::GOING_AWAY, "restart")))
        .unwrap();
    // The client sends data before it sees the close; the server still delivers it.
    client.send(Message::binary(vec![1, 2, 3])).unwrap();
    let mut got = Vec::new();
    pump(&mut client, &mut server, &mut rng, &mut got);
    assert_eq!(got, [Message::binary(vec![1, 2, 3])]);
    let mut got = Vec::new();
    pump(&mut server, &mut client, &mut rng, &mut got);
    assert_eq!(
        got,
        [
            Message::text("last words"),
            Message::Close(Some(CloseFrame::new(CloseCode::GOING_AWAY, "restart"))),
        ]
    );
    assert_eq!(client.state(), State::Closed);
    let mut got = Vec::new();
    pump(&mut client, &mut server, &mut rng, &mut got);
    assert_eq!(
        got,
        [Message::Close(Some(CloseFrame::new(
            CloseCode::GOING_AWAY,
            "restart"
        )))]
    );
    assert_eq!(server.state(), State::Closed);
}

#[test]
fn simultaneous_close() {
    let mut rng = Rng::new(5);
    let mut client = Connection::new(Role::Client, ProtocolConfig::default());
    let mut server = Connection::new(Role::Server, ProtocolConfig::default());
    client.close(None).unwrap();
    server
        .close(Some(CloseFrame::new(CloseCode::NORMAL, "")))
        .unwrap();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    pump(&mut client, &mut server, &mut rng, &mut a);
    pump(&mut server, &mut client, &mut rng, &mut b);
    assert_eq!(a, [Message::Close(None)]);
    assert_eq!(
        b,
        [Message::Close(Some(CloseFrame::new(CloseCode::NORMAL, "")))]
    );
    assert_eq!(
        (client.state(), server.state()),
        (State::Closed, State::Closed)
    );
    assert_eq!(drain_transmit(&mut client), b"");
    assert_eq!(drain_transmit(&mut server), b"");
}
