//! Embeds the page's files (`assets/`, every regular file directly in it) in the binary: writes
//! `$OUT_DIR/assets.rs`, a list of `(name, bytes)` with `include_bytes!`, sorted by name.

use std::fmt::Write as _;
use std::path::Path;

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets");
    println!("cargo::rerun-if-changed={}", dir.display());
    let mut files: Vec<(String, String)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            // Served names: plain file names only (no hidden files, nothing to escape).
            let plain = !name.starts_with('.')
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
            if plain && path.is_file() {
                files.push((name.to_owned(), path.display().to_string()));
            }
        }
    }
    files.sort();
    let mut out = String::from(
        "/// The files of `assets/`, by name.\npub(crate) static ASSETS: &[(&str, &[u8])] = &[\n",
    );
    for (name, path) in &files {
        let _ = writeln!(out, "    ({name:?}, include_bytes!({path:?})),");
    }
    out.push_str("];\n");
    let out_dir = std::env::var("OUT_DIR").expect("OUT_DIR");
    std::fs::write(Path::new(&out_dir).join("assets.rs"), out).expect("write assets.rs");
}
