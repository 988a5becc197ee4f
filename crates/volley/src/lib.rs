//! Volley
