//! Redis adapters for [`volley_socketio`], wire-compatible with Node's Socket.IO cluster
//! packages, so that Volley servers and Node servers on one Redis form one cluster:
//!
//! - [`RedisAdapter`]: the classic protocol of `@socket.io/redis-adapter` 8.x
//!   (`createAdapter`), which `@socket.io/redis-emitter` also speaks;
//! - [`ShardedRedisAdapter`]: its sharded protocol (`createShardedAdapter`: Redis 7 sharded
//!   pub/sub, Node's `ClusterAdapter` messages, a channel per public room);
//! - [`RedisStreamsAdapter`]: the protocol of `@socket.io/redis-streams-adapter` 0.3 (a Redis
//!   stream), with connection state recovery across servers;
//! - [`msgpack`]: MessagePack as `notepack.io` writes it (binary data as `bin`); it is
//!   [`volley_socketio::msgpack`], which the msgpack parser also uses.
//!
//! ```no_run
//! use volley_redis::{Redis, RedisConfig};
//! use volley_socketio::SocketIo;
//! use volley_socketio_redis::{RedisAdapter, RedisAdapterConfig};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let redis = Redis::connect(RedisConfig::new("redis://127.0.0.1:6379"))?;
//! let io = SocketIo::builder()
//!     .adapter(RedisAdapter::factory(redis, RedisAdapterConfig::default()))
//!     .build();
//! io.init_adapters().await?; // subscribed: the other servers' broadcasts arrive from now on
//! io.serve(tokio::net::TcpListener::bind("127.0.0.1:3000").await?).await?;
//! # Ok(()) }
//! ```
mod classic;
mod cluster;
mod sharded;
mod streams;
mod wire;

pub use volley_socketio::msgpack;

pub use classic::{RedisAdapter, RedisAdapterConfig};
pub use sharded::{ShardedRedisAdapter, ShardedRedisAdapterConfig, SubscriptionMode};
pub use streams::{RedisStreamsAdapter, RedisStreamsAdapterConfig};
