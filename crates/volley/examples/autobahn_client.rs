//! Runs every Autobahn|Testsuite `fuzzingserver` case against the Volley client, echoing each
//! message, then asks the suite to write its reports.
//!
//! `cargo run --release -p volley --example autobahn_client -- --url ws://127.0.0.1:9002 --agent volley [--deflate]`
//!
//! With `--deflate` every case connection offers permessage-deflate (the default
//! [`DeflateConfig`]), as sections 12 and 13 need.

use volley::{ClientBuilder, Config, DeflateConfig, Message};

async fn echo(url: &str, deflate: bool) -> volley::Result<()> {
    let config = Config::default()
        .max_message_size(64 << 20)
        .deflate(deflate.then(DeflateConfig::default));
    let (mut ws, _) = ClientBuilder::new(url).config(config).connect().await?;
    while let Some(message) = ws.recv().await {
        match message {
            Ok(m @ (Message::Text(_) | Message::Binary(_))) => {
                if ws.send(m).await.is_err() {
                    break;
                }
            }
            Ok(_) => {}
            Err(_) => {}
        }
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut url = "ws://127.0.0.1:9001".to_owned();
    let mut agent = "volley".to_owned();
    let mut deflate = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--url" => url = args.next().ok_or("--url needs a value")?,
            "--agent" => agent = args.next().ok_or("--agent needs a value")?,
            "--deflate" => deflate = true,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let url = url.trim_end_matches('/');

    let mut ws = volley::connect(&format!("{url}/getCaseCount")).await?;
    let count: u32 = match ws.recv().await {
        Some(Ok(Message::Text(t))) => t.trim().parse()?,
        other => return Err(format!("unexpected reply to getCaseCount: {other:?}").into()),
    };
    while ws.recv().await.is_some() {}
    eprintln!(
        "autobahn_client: running {count} cases as agent {agent}{}",
        if deflate {
            " with permessage-deflate"
        } else {
            ""
        }
    );

    for case in 1..=count {
        if let Err(e) = echo(&format!("{url}/runCase?case={case}&agent={agent}"), deflate).await {
            eprintln!("case {case}: {e}");
        }
    }

    let mut ws = volley::connect(&format!("{url}/updateReports?agent={agent}")).await?;
    while ws.recv().await.is_some() {}
    eprintln!("autobahn_client: reports updated");
    Ok(())
}
