//! tokio-tungstenite echo server, written like the crate's own `examples/echo-server.rs`:
//! split the stream and `forward` the data messages to the sink (which feeds every message that
//! is ready and flushes once the stream has nothing more buffered).
use futures_util::{future, StreamExt, TryStreamExt};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

fn main() -> std::io::Result<()> {
    let port = volley_bench_peers::port_from_args();
    volley_bench_peers::runtime().block_on(async move {
        let listener = volley_bench_peers::listen(port).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let config = WebSocketConfig::default()
                    .max_message_size(Some(volley_bench_peers::MAX_MESSAGE))
                    .max_frame_size(Some(volley_bench_peers::MAX_MESSAGE));
                let Ok(ws) =
                    tokio_tungstenite::accept_async_with_config(stream, Some(config)).await
                else {
                    return;
                };
                let (write, read) = ws.split();
                let _ = read
                    .try_filter(|msg| future::ready(msg.is_text() || msg.is_binary()))
                    .forward(write)
                    .await;
            });
        }
    })
}
