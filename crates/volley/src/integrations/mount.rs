//! HTTP routes beside the WebSocket handler of a [`Server`](crate::Server) (feature `hyper`).
//!
//! [`Server::mount`](crate::Server::mount) hands connections whose first request path starts with
//! a prefix to a hyper service (HTTP/1.1 with upgrades), so that a Socket.IO or REST endpoint runs
//! on the same port as the WebSocket handler: `volley serve` mounts Socket.IO at `/socket.io/`.

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use ::hyper::body::Incoming;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The response body type of mounted services, boxed.
pub(crate) type HttpBody = BoxBody<Bytes, Box<dyn StdError + Send + Sync>>;

type ServiceFn = dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<HttpBody>> + Send>>
    + Send
    + Sync;

/// A mounted HTTP service and the path prefix it serves.
#[derive(Clone)]
pub(crate) struct Mount {
    prefix: Arc<str>,
    service: Arc<ServiceFn>,
}

impl std::fmt::Debug for Mount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mount")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Mount {
    pub(crate) fn new<F, Fut, B>(prefix: &str, service: F) -> Self
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<B>> + Send + 'static,
        B: ::hyper::body::Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        let service = move |request: Request<Incoming>| {
            let response = service(request);
            Box::pin(async move { response.await.map(|body| body.map_err(Into::into).boxed()) })
                as Pin<Box<dyn Future<Output = Response<HttpBody>> + Send>>
        };
        Self {
            prefix: prefix.into(),
            service: Arc::new(service),
        }
    }

    /// Whether this mount serves `path`.
    pub(crate) fn matches(&self, path: &str) -> bool {
        path.starts_with(&*self.prefix)
    }

    /// Serves the whole connection (every request on it, and upgrades) with hyper. `head` holds
    /// the bytes already read from `stream`.
    pub(crate) async fn serve<S>(&self, head: Vec<u8>, stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let service = self.service.clone();
        let io = ::hyper_util::rt::TokioIo::new(Rewind {
            head: Bytes::from(head),
            inner: stream,
        });
        let svc = ::hyper::service::service_fn(move |request| {
            let response = service(request);
            async move { Ok::<_, std::convert::Infallible>(response.await) }
        });
        if let Err(e) = ::hyper::server::conn::http1::Builder::new()
            .serve_connection(io, svc)
            .with_upgrades()
            .await
        {
            tracing::debug!("mounted HTTP connection ended: {e}");
        }
    }
}

/// The path of the HTTP request whose head starts `buf`, once its request line is complete.
pub(crate) fn request_path(buf: &[u8]) -> Option<&str> {
    let line_end = buf.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&buf[..line_end]).ok()?;
    let target = line.split(' ').nth(1)?;
    Some(target.split('?').next().unwrap_or(target))
}

/// A transport whose first bytes were already read: replays them, then reads the transport.
struct Rewind<S> {
    head: Bytes,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.head.is_empty() {
            let n = self.head.len().min(buf.remaining());
            let chunk = self.head.split_to(n);
            buf.put_slice(&chunk);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::request_path;

    #[test]
    fn request_path_needs_a_complete_request_line() {
        assert_eq!(
            request_path(b"GET /socket.io/?EIO=4 HTTP/1.1\r\nHost"),
            Some("/socket.io/")
        );
        assert_eq!(request_path(b"POST /a HTTP/1.1\r\n"), Some("/a"));
        assert_eq!(request_path(b"GET /socket.io/?EIO=4 HTT"), None);
        assert_eq!(request_path(b"\xff\xfe /x HTTP/1.1\r\n"), None);
    }
}
