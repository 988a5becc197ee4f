//! tokio-websockets echo server, written like the crate's own `examples/echo_server.rs`
//! (an unconstrained task per connection, `next()` then `send()`).
use futures_util::{SinkExt, StreamExt};
use tokio_websockets::{Config, Limits, ServerBuilder};

fn main() -> std::io::Result<()> {
    let port = volley_bench_peers::port_from_args();
    volley_bench_peers::runtime().block_on(async move {
        let listener = volley_bench_peers::listen(port).await?;
        loop {
            let (conn, _) = listener.accept().await?;
            let _ = conn.set_nodelay(true);
            tokio::spawn(tokio::task::unconstrained(async move {
                let Ok((_request, mut server)) = ServerBuilder::new()
                    .config(Config::default().frame_size(usize::MAX))
                    .limits(
                        Limits::default().max_payload_len(Some(volley_bench_peers::MAX_MESSAGE)),
                    )
                    .accept(conn)
                    .await
                else {
                    return;
                };
                while let Some(Ok(item)) = server.next().await {
                    if (item.is_text() || item.is_binary()) && server.send(item).await.is_err() {
                        return;
                    }
                }
            }));
        }
    })
}
