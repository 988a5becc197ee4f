//! `wss://`: a TLS server and client with a self-signed CA, and the failures that must be errors.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::Pki;
use rcgen::KeyPair;
use tokio::time::timeout;
use volley::tls::{Roots, TlsError, client_config, insecure_client_config, server_config};
use volley::{ClientBuilder, Error, Message, Server};

async fn wss_echo_server(pki: &Pki) -> u16 {
    let tls = server_config(pki.path("cert.pem"), pki.path("key.pem")).expect("server config");
    let server = Server::bind("127.0.0.1:0").await.expect("bind").tls(tls);
    let port = server.local_addr().expect("addr").port();
    tokio::spawn(server.serve(|mut ws, _| async move {
        while let Some(Ok(m)) = ws.recv().await {
            if m.is_data() && ws.send(m).await.is_err() {
                break;
            }
        }
    }));
    port
}

/// A wss:// client of the server on `port`, trusting the CA certificate in `ca`.
async fn wss_client(port: u16, ca: PathBuf) -> volley::WebSocket<volley::MaybeTlsStream> {
    let roots = client_config(&Roots::Custom(vec![ca])).expect("client config");
    let (ws, _) = timeout(
        Duration::from_secs(10),
        ClientBuilder::new(format!("wss://localhost:{port}/"))
            .tls_config(roots)
            .connect(),
    )
    .await
    .expect("in time")
    .expect("wss connect");
    ws
}

/// Sends `message` and expects it back.
async fn echo(ws: &mut volley::WebSocket<volley::MaybeTlsStream>, message: Message) {
    ws.send(message.clone()).await.expect("send");
    let echoed = timeout(Duration::from_secs(10), ws.recv())
        .await
        .expect("in time");
    assert_eq!(echoed.expect("message").expect("ok"), message);
}

#[tokio::test]
async fn wss_echo_with_a_custom_ca() {
    let pki = Pki::new("echo");
    let port = wss_echo_server(&pki).await;
    let mut ws = wss_client(port, pki.path("ca.pem")).await;
    echo(&mut ws, Message::text("over tls")).await;
    echo(&mut ws, Message::binary(vec![7u8; 300_000])).await;
    ws.close(None).await.expect("close");
}

#[tokio::test]
async fn the_default_roots_reject_a_self_signed_server() {
    let pki = Pki::new("reject");
    let port = wss_echo_server(&pki).await;
    let result = timeout(
        Duration::from_secs(10),
        ClientBuilder::new(format!("wss://localhost:{port}/")).connect(),
    )
    .await
    .expect("in time");
    match result {
        Err(Error::Io(e)) => assert!(e.to_string().contains("certificate"), "{e}"),
        other => panic!("expected a certificate error, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn insecure_mode_skips_verification() {
    let pki = Pki::new("insecure");
    let port = wss_echo_server(&pki).await;
    let (mut ws, _) = ClientBuilder::new(format!("wss://localhost:{port}/"))
        .tls_config(insecure_client_config().expect("config"))
        .connect()
        .await
        .expect("connect");
    ws.send("hi").await.expect("send");
    assert_eq!(
        ws.recv().await.expect("message").expect("ok"),
        Message::text("hi")
    );
}

#[test]
fn bad_pem_files_are_errors_not_panics() {
    let pki = Pki::new("bad");
    std::fs::write(pki.path("junk.pem"), "not a pem file").expect("write");
    let missing = Path::new("/nonexistent/volley/cert.pem");
    assert!(matches!(
        server_config(missing, pki.path("key.pem")),
        Err(TlsError::Pem { .. })
    ));
    assert!(matches!(
        server_config(pki.path("junk.pem"), pki.path("key.pem")),
        Err(TlsError::Pem { .. })
    ));
    assert!(matches!(
        server_config(pki.path("cert.pem"), pki.path("junk.pem")),
        Err(TlsError::Pem { .. })
    ));
    // A key that does not match the certificate.
    std::fs::write(
        pki.path("other.pem"),
        KeyPair::generate().expect("key").serialize_pem(),
    )
    .expect("write");
    assert!(server_config(pki.path("cert.pem"), pki.path("other.pem")).is_err());
    assert!(matches!(
        client_config(&Roots::Custom(vec![pki.path("junk.pem")])),
        Err(TlsError::Pem { .. })
    ));
}

/// Python `websockets` (a real peer, installed by `scripts/install-peers`) runs its whole scenario
/// over `wss://` against a Volley TLS server, trusting only the test CA.
#[tokio::test]
async fn python_websockets_client_over_wss() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python = repo.join(".deps/py/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/install-peers",
        python.display()
    );
    let pki = Pki::new("python");
    let port = wss_echo_server(&pki).await;
    let output = timeout(
        Duration::from_secs(90),
        tokio::process::Command::new(python)
            .arg(repo.join("e2e/python/client.py"))
            .arg(format!("wss://localhost:{port}/"))
            .arg("--ca")
            .arg(pki.path("ca.pem"))
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("python client finished in time")
    .expect("spawn python");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("PASS close") && !stdout.contains("FAIL"),
        "python client over wss failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

#[path = "../examples/tls.rs"]
#[allow(dead_code)]
mod tls_example;

/// The `tls` example serves wss:// with the self-signed certificate it makes.
#[tokio::test]
async fn the_tls_example_serves_wss_with_its_self_signed_certificate() {
    let dir = std::env::temp_dir().join(format!("volley-tls-example-test-{}", std::process::id()));
    let (cert, key) = tls_example::self_signed(&dir).expect("self-signed certificate");
    let server = Server::bind("127.0.0.1:0").await.expect("bind");
    let port = server.local_addr().expect("addr").port();
    tokio::spawn(async move {
        tls_example::serve(server, &cert, &key)
            .await
            .map_err(|e| e.to_string())
    });
    let mut ws = wss_client(port, dir.join("cert.pem")).await;
    echo(&mut ws, Message::text("secure echo")).await;
    ws.close(None).await.expect("close");
    let _ = std::fs::remove_dir_all(&dir);
}
