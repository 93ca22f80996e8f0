//! The incident webhook: POST each incident's JSON to `http://HOST:PORT/PATH`, with a bounded
//! number of attempts and a timeout on each, so a dead receiver never stalls ingestion.
//! Plain HTTP only (a receiver on the same host or a trusted network; TLS is not in this build).

use std::time::Duration;

use tg_watch::Incident;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::error::Error;

/// Attempts per incident.
pub const ATTEMPTS: u32 = 4;
/// Delay before the second attempt; doubled for each later one.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// Limit on connecting, sending and reading the status line of one attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where to send incidents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    authority: String,
    path: String,
}

impl Target {
    pub(crate) fn parse(url: &str) -> Result<Self, Error> {
        let bad = || Error::BadWebhook(url.to_string());
        let rest = url.strip_prefix("http://").ok_or_else(bad)?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty()
            || authority.contains('@')
            || path.bytes().any(|b| b.is_ascii_control() || b == b' ')
        {
            return Err(bad());
        }
        let authority = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        Ok(Target {
            authority,
            path: path.to_string(),
        })
    }
}

async fn attempt(target: &Target, body: &[u8]) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect(&target.authority).await?;
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\nUser-Agent: trainguard/{}\r\n\r\n",
        target.path,
        target.authority,
        body.len(),
        env!("CARGO_PKG_VERSION")
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while !buf.windows(2).any(|w| w == b"\r\n") && buf.len() < 4096 {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    line.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no HTTP status line"))
}

/// Deliver one incident; true when a 2xx came back within [`ATTEMPTS`] attempts.
pub(crate) async fn deliver(target: &Target, incident: &Incident) -> bool {
    let Ok(body) = serde_json::to_vec(incident) else {
        return false;
    };
    let mut backoff = FIRST_BACKOFF;
    for n in 0..ATTEMPTS {
        if n > 0 {
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
        if let Ok(Ok(status)) = tokio::time::timeout(ATTEMPT_TIMEOUT, attempt(target, &body)).await
            && (200..300).contains(&status)
        {
            return true;
        }
    }
    false
}

/// The sender task: one incident at a time, in order.
pub(crate) async fn run(
    target: Target,
    mut rx: mpsc::Receiver<Incident>,
    mut outcome: impl FnMut(bool) + Send + 'static,
) {
    while let Some(incident) = rx.recv().await {
        let ok = deliver(&target, &incident).await;
        outcome(ok);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        let t = Target::parse("http://127.0.0.1:9000/hook").unwrap();
        assert_eq!(
            (t.authority.as_str(), t.path.as_str()),
            ("127.0.0.1:9000", "/hook")
        );
        let t = Target::parse("http://alerts.internal").unwrap();
        assert_eq!(
            (t.authority.as_str(), t.path.as_str()),
            ("alerts.internal:80", "/")
        );
        assert!(Target::parse("https://x/").is_err());
        assert!(Target::parse("http://user@x/").is_err());
        assert!(Target::parse("http:///x").is_err());
    }
}
