//! Packet codec (being written).
