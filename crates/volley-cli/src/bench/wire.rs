//! The lean WebSocket client wire the generators share: masked frames written from one buffer,
//! server frames parsed in place in another (no allocation per frame), unfragmented frames only.
//! What a frame means (pings, Engine.IO heartbeats, closes) is up to each generator.

use std::ops::Range;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The header of the server frame at the start of `buf`: `Some((header length, payload
/// length))`, or `None` while the header is incomplete. Whether the frame is masked is the
/// caller's to check (`buf[1] & 0x80`); a length beyond `usize` is `usize::MAX`.
pub(super) fn frame_header(buf: &[u8]) -> Option<(usize, usize)> {
    match *buf.get(1)? & 0x7f {
        126 if buf.len() >= 4 => Some((4, usize::from(u16::from_be_bytes([buf[2], buf[3]])))),
        127 if buf.len() >= 10 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            Some((
                10,
                usize::try_from(u64::from_be_bytes(b)).unwrap_or(usize::MAX),
            ))
        }
        126 | 127 => None,
        n => Some((2, usize::from(n))),
    }
}

/// A client's connection after its opening handshake.
pub(super) struct Wire {
    pub(super) stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    out: Vec<u8>,
    mask: [u8; 4],
    max_frame: usize,
}

impl Wire {
    /// Wraps `stream`; `leftover` is what the handshake read past the 101 response. Frames are
    /// masked with `mask` (all zeros: the payload goes out as it is, which is cheapest) and a
    /// server frame longer than `max_frame` is an error.
    pub(super) fn new(stream: TcpStream, leftover: &[u8], mask: [u8; 4], max_frame: usize) -> Self {
        let mut buf = vec![0; leftover.len().max(4096)];
        buf[..leftover.len()].copy_from_slice(leftover);
        Self {
            stream,
            buf,
            start: 0,
            end: leftover.len(),
            out: Vec::with_capacity(256),
            mask,
            max_frame,
        }
    }

    /// Queues a masked frame (FIN set) with `opcode` and `payload`.
    pub(super) fn push(&mut self, opcode: u8, payload: &[u8]) {
        let len = payload.len();
        self.out.push(0x80 | opcode);
        if len < 126 {
            self.out.push(0x80 | len as u8);
        } else if len <= usize::from(u16::MAX) {
            self.out.push(0x80 | 126);
            self.out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            self.out.push(0x80 | 127);
            self.out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        self.out.extend_from_slice(&self.mask);
        if self.mask == [0; 4] {
            self.out.extend_from_slice(payload);
        } else {
            let mask = self.mask;
            (self.out).extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        }
    }

    /// Queues the pong that answers the ping whose payload is at `ping` (at most 125 bytes of
    /// it).
    pub(super) fn pong(&mut self, ping: Range<usize>) {
        let end = ping.start + ping.len().min(125);
        let data = self.buf[ping.start..end].to_vec();
        self.push(0xA, &data);
    }

    /// Writes what is queued.
    pub(super) async fn flush(&mut self) -> Result<(), String> {
        if !self.out.is_empty() {
            let write = self.stream.write_all(&self.out);
            write.await.map_err(|e| format!("write: {e}"))?;
            self.out.clear();
        }
        Ok(())
    }

    /// The payload of a frame [`parse`](Self::parse) returned (valid until the next `fill`).
    pub(super) fn slice(&self, range: &Range<usize>) -> &[u8] {
        &self.buf[range.clone()]
    }

    /// The next complete frame in the buffer: its first byte and payload range.
    pub(super) fn parse(&mut self) -> Result<Option<(u8, Range<usize>)>, String> {
        let buf = &self.buf[self.start..self.end];
        if buf.len() >= 2 && buf[1] & 0x80 != 0 {
            return Err("the server sent a masked frame".into());
        }
        let Some((header, len)) = frame_header(buf) else {
            return Ok(None);
        };
        if len > self.max_frame {
            return Err(format!("the server sent a frame of {len} bytes"));
        }
        if buf.len() < header + len {
            return Ok(None);
        }
        let first = buf[0];
        let range = self.start + header..self.start + header + len;
        self.start += header + len;
        Ok(Some((first, range)))
    }

    /// Reads more bytes (moving a partial frame to the front first); an error at the end of the
    /// stream.
    pub(super) async fn fill(&mut self) -> Result<(), String> {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
            if self.end == self.buf.len() {
                let bigger = (self.buf.len() * 2).min(self.max_frame + 16);
                if bigger <= self.buf.len() {
                    return Err("a server frame does not fit the read buffer".into());
                }
                self.buf.resize(bigger, 0);
            }
        }
        match self.stream.read(&mut self.buf[self.end..]).await {
            Ok(0) => Err("the server closed the connection".into()),
            Ok(n) => {
                self.end += n;
                Ok(())
            }
            Err(e) => Err(format!("read: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server frame (unmasked) with `opcode` and `payload`.
    fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => out.push(n as u8),
            n if n <= 0xffff => {
                out.push(126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(payload);
        out
    }

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, server) = tokio::join!(client, listener.accept());
        (client.unwrap(), server.unwrap().0)
    }

    #[tokio::test]
    async fn frames_split_anywhere_parse_and_masked_frames_round_trip() {
        let (client, mut server) = pair().await;
        let big = vec![7u8; 70_000];
        let mut bytes = frame(0x1, b"hello");
        bytes.extend(frame(0x2, &big));
        bytes.extend(frame(0x9, b"ping"));
        // The first 3 bytes arrive with the handshake; the rest in small writes.
        let mut wire = Wire::new(client, &bytes[..3], [1, 2, 3, 4], 1 << 17);
        let rest = bytes[3..].to_vec();
        let writer = tokio::spawn(async move {
            for chunk in rest.chunks(1000) {
                server.write_all(chunk).await.unwrap();
            }
            server
        });
        let mut got = Vec::new();
        while got.len() < 3 {
            match wire.parse().unwrap() {
                Some((first, range)) => got.push((first, wire.slice(&range).to_vec())),
                None => wire.fill().await.unwrap(),
            }
        }
        assert_eq!(got[0], (0x81, b"hello".to_vec()));
        assert_eq!(got[1], (0x82, big));
        assert_eq!(got[2], (0x89, b"ping".to_vec()));
        let mut server = writer.await.unwrap();
        // A masked frame the server unmasks back to the payload.
        wire.push(0x1, b"abcdef");
        wire.flush().await.unwrap();
        let mut head = [0u8; 12];
        server.read_exact(&mut head).await.unwrap();
        assert_eq!(&head[..2], &[0x81, 0x86]);
        let unmasked: Vec<u8> = (head[6..].iter().enumerate())
            .map(|(i, b)| b ^ head[2 + i % 4])
            .collect();
        assert_eq!(unmasked, b"abcdef");
    }

    #[test]
    fn headers_of_every_length_form() {
        assert_eq!(frame_header(&[0x81]), None);
        assert_eq!(frame_header(&[0x81, 5]), Some((2, 5)));
        assert_eq!(frame_header(&[0x81, 126, 1]), None);
        assert_eq!(frame_header(&[0x81, 126, 1, 0]), Some((4, 256)));
        assert_eq!(frame_header(&[0x82, 127, 0, 0, 0, 0, 0, 1, 0]), None);
        assert_eq!(
            frame_header(&[0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
            Some((10, 65_536))
        );
        assert_eq!(frame_header(&[0x81, 0x85]), Some((2, 5)));
    }

    #[tokio::test]
    async fn oversized_and_masked_server_frames_are_errors() {
        let (client, _server) = pair().await;
        let mut wire = Wire::new(client, &frame(0x1, &[0; 200]), [0; 4], 100);
        assert!(wire.parse().unwrap_err().contains("200 bytes"));
        let (client, _server) = pair().await;
        let mut wire = Wire::new(client, &[0x81, 0x81, 0, 0, 0, 0, b'x'], [0; 4], 100);
        assert!(wire.parse().unwrap_err().contains("masked"));
    }
}
