//! HTTP services as route endpoints (feature `hyper`): the boxed service type, and serving a
//! connection with hyper once its first request showed a service route.

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

/// An HTTP service, boxed: what [`Endpoint::service`](crate::Endpoint::service) holds.
#[derive(Clone)]
pub(crate) struct Service {
    call: Arc<ServiceFn>,
}

impl Service {
    pub(crate) fn new<F, Fut, B>(service: F) -> Self
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<B>> + Send + 'static,
        B: ::hyper::body::Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        let call = move |request: Request<Incoming>| {
            let response = service(request);
            Box::pin(async move { response.await.map(|body| body.map_err(Into::into).boxed()) })
                as Pin<Box<dyn Future<Output = Response<HttpBody>> + Send>>
        };
        Self {
            call: Arc::new(call),
        }
    }

    /// Answers one request.
    pub(crate) fn call(
        &self,
        request: Request<Incoming>,
    ) -> Pin<Box<dyn Future<Output = Response<HttpBody>> + Send>> {
        (self.call)(request)
    }
}

/// Serves a whole connection (every request on it, and upgrades) with hyper, each request
/// answered by `answer`. `head` holds the bytes already read from `stream`. Once `stop`
/// completes, the connection finishes the request in progress and closes (no keep-alive).
///
/// Every request head must arrive within `head_timeout`, counted from when the connection
/// starts waiting for it: a peer that sends half a head and goes silent, or an idle keep-alive
/// connection, is closed then instead of being held forever.
pub(crate) async fn serve_connection<S, F, Fut>(
    head: Vec<u8>,
    stream: S,
    answer: F,
    stop: impl Future<Output = ()>,
    head_timeout: std::time::Duration,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<HttpBody>> + Send + 'static,
{
    let io = ::hyper_util::rt::TokioIo::new(Rewind {
        head: Bytes::from(head),
        inner: stream,
    });
    let svc = ::hyper::service::service_fn(move |request| {
        let response = answer(request);
        async move { Ok::<_, std::convert::Infallible>(response.await) }
    });
    let conn = ::hyper::server::conn::http1::Builder::new()
        .timer(::hyper_util::rt::TokioTimer::new())
        .header_read_timeout(head_timeout)
        .serve_connection(io, svc)
        .with_upgrades();
    tokio::pin!(conn, stop);
    let ended = tokio::select! {
        ended = conn.as_mut() => ended,
        () = stop => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = ended {
        tracing::debug!("HTTP connection ended: {e}");
    }
}

/// A plain-text response.
pub(crate) fn text_response(status: http::StatusCode, body: String) -> Response<HttpBody> {
    let mut response = boxed(Response::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A response with a string body, its body boxed.
pub(crate) fn boxed(response: Response<String>) -> Response<HttpBody> {
    response.map(|body| {
        http_body_util::Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed()
    })
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
            if self.head.is_empty() {
                // An empty slice would keep the whole head's allocation alive as long as the
                // connection (an upgraded one lives long).
                self.head = Bytes::new();
            }
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
