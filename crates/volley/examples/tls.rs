//! A `wss://` server: TLS (rustls) in front of every route, here an echo served by callbacks.
//!
//! ```text
//! cargo run -p volley --features tls --example tls -- cert.pem key.pem 127.0.0.1:9443
//! cargo run -p volley --features tls --example tls     # a self-signed localhost certificate
//! volley connect --ca /tmp/volley-tls-example/cert.pem wss://localhost:9443/
//! ```
//!
//! Without a certificate and key it makes a self-signed certificate for `localhost` in a
//! temporary directory and prints how to connect with it. The same server can carry `https://`
//! routes (an [`Endpoint::service`](volley::Endpoint) with feature `hyper`) on the same port.

use std::path::{Path, PathBuf};

use volley::callback::{Callbacks, Conn};
use volley::{Endpoint, Message, Server};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cert, key, addr) = match args.as_slice() {
        [cert, key, rest @ ..] => (
            PathBuf::from(cert),
            PathBuf::from(key),
            rest.first().cloned(),
        ),
        _ => {
            let dir = std::env::temp_dir().join("volley-tls-example");
            let (cert, key) = self_signed(&dir)?;
            eprintln!(
                "tls: self-signed certificate for localhost in {}",
                dir.display()
            );
            (cert, key, None)
        }
    };
    let addr = addr.unwrap_or_else(|| "127.0.0.1:9443".into());
    let server = Server::bind(&addr).await?;
    let port = server.local_addr()?.port();
    eprintln!(
        "tls: listening on wss://localhost:{port}/ (try: volley connect --ca {} wss://localhost:{port}/)",
        cert.display()
    );
    serve(server, &cert, &key).await?;
    Ok(())
}

/// Serves an echo over TLS on `server` with the certificate chain and key in these PEM files.
pub(crate) async fn serve(
    server: Server,
    cert: &Path,
    key: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let tls = volley::tls::server_config(cert, key)?;
    server
        .tls(tls)
        .route("/*", Endpoint::callbacks(Echo))
        .run()
        .await?;
    Ok(())
}

struct Echo;

impl Callbacks for Echo {
    fn on_message(&self, conn: &mut Conn<'_>, message: Message) {
        let _ = conn.send(message);
    }
}

/// Writes a self-signed certificate for `localhost` and its key into `dir`; returns their paths.
pub(crate) fn self_signed(dir: &Path) -> Result<(PathBuf, PathBuf), Box<dyn std::error::Error>> {
    std::fs::create_dir_all(dir)?;
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, certified.cert.pem())?;
    std::fs::write(&key, certified.signing_key.serialize_pem())?;
    Ok((cert, key))
}
