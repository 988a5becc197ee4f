//! Redis adapters for [`volley_socketio`], wire-compatible with Node's Socket.IO cluster
//! packages, so that Volley servers and Node servers on one Redis form one cluster.
pub mod msgpack;
