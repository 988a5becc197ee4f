//! Small helpers.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Locks `m`, ignoring poisoning (our critical sections never leave broken invariants behind).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn read<T>(m: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn write<T>(m: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|e| e.into_inner())
}

/// A fresh random socket id: 20 URL-safe base64 characters (120 random bits), like Node's.
pub(crate) fn random_id() -> String {
    use base64::Engine as _;
    let bytes: [u8; 15] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Anything that names one or more rooms: `"room"`, `String`, `vec!["a", "b"]`, `["a", "b"]`, ….
pub trait IntoRooms {
    /// The room names.
    fn into_rooms(self) -> Vec<String>;
}

impl IntoRooms for &str {
    fn into_rooms(self) -> Vec<String> {
        vec![self.to_owned()]
    }
}

impl IntoRooms for String {
    fn into_rooms(self) -> Vec<String> {
        vec![self]
    }
}

impl IntoRooms for &String {
    fn into_rooms(self) -> Vec<String> {
        vec![self.clone()]
    }
}

impl IntoRooms for Vec<String> {
    fn into_rooms(self) -> Vec<String> {
        self
    }
}

impl IntoRooms for Vec<&str> {
    fn into_rooms(self) -> Vec<String> {
        self.into_iter().map(str::to_owned).collect()
    }
}

impl IntoRooms for &[&str] {
    fn into_rooms(self) -> Vec<String> {
        self.iter().map(|s| (*s).to_owned()).collect()
    }
}

impl<const N: usize> IntoRooms for [&str; N] {
    fn into_rooms(self) -> Vec<String> {
        self.iter().map(|s| (*s).to_owned()).collect()
    }
}
