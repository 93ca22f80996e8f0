//! A small blocking HTTP/1.1 client for the collector (what `trainguard run` and
//! `trainguard watch incidents` use): plain `http://` over `std::net`, one connection per request,
//! bounded response size, timeouts on connect, read and write.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use tg_watch::{Batch, Event, Incident};

/// Largest response read, in bytes.
const MAX_RESPONSE: usize = 64 * 1024 * 1024;

/// Why a request to the collector failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The URL is not `http://HOST:PORT[/PREFIX]`.
    #[error("invalid collector url {0:?}: expected http://HOST:PORT")]
    BadUrl(String),
    /// Connecting, sending or reading failed.
    #[error("collector {addr}: {source}")]
    Io {
        /// The collector address.
        addr: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The collector answered with an error status.
    #[error("collector answered {status}: {message}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The `error` field of its JSON body, or the body.
        message: String,
    },
    /// The response could not be understood.
    #[error("collector {addr} sent an invalid response: {reason}")]
    BadResponse {
        /// The collector address.
        addr: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// A collector at a base URL, optionally with a run token.
#[derive(Debug, Clone)]
pub struct Client {
    authority: String,
    prefix: String,
    token: Option<String>,
    timeout: Duration,
}

impl Client {
    /// A client for `http://HOST:PORT[/PREFIX]`.
    pub fn new(url: &str) -> Result<Self, ClientError> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| ClientError::BadUrl(url.to_string()))?;
        let (authority, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(ClientError::BadUrl(url.to_string()));
        }
        Ok(Client {
            authority: authority.to_string(),
            prefix: prefix.to_string(),
            token: None,
            timeout: Duration::from_secs(10),
        })
    }

    /// Send this bearer token with event batches.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Limit each connect, read and write to `timeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn io(&self, source: std::io::Error) -> ClientError {
        ClientError::Io {
            addr: self.authority.clone(),
            source,
        }
    }

    fn bad(&self, reason: impl Into<String>) -> ClientError {
        ClientError::BadResponse {
            addr: self.authority.clone(),
            reason: reason.into(),
        }
    }

    /// One request; returns the body of a 2xx response.
    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Vec<u8>, ClientError> {
        let addr = self
            .authority
            .to_socket_addrs()
            .map_err(|e| self.io(e))?
            .next()
            .ok_or_else(|| ClientError::BadUrl(self.authority.clone()))?;
        let mut stream = TcpStream::connect_timeout(&addr, self.timeout).map_err(|e| self.io(e))?;
        stream
            .set_read_timeout(Some(self.timeout))
            .map_err(|e| self.io(e))?;
        stream
            .set_write_timeout(Some(self.timeout))
            .map_err(|e| self.io(e))?;
        let mut head = format!(
            "{method} {}{path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\
             User-Agent: trainguard/{}\r\n",
            self.prefix,
            self.authority,
            env!("CARGO_PKG_VERSION")
        );
        if let Some(token) = &self.token {
            head.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        let body = body.unwrap_or_default();
        if method == "POST" {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).map_err(|e| self.io(e))?;
        stream.write_all(body).map_err(|e| self.io(e))?;
        let mut raw = Vec::new();
        stream
            .take(MAX_RESPONSE as u64 + 1)
            .read_to_end(&mut raw)
            .map_err(|e| self.io(e))?;
        if raw.len() > MAX_RESPONSE {
            return Err(self.bad("response larger than 64 MiB"));
        }
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| self.bad("no end of headers"))?;
        let head = String::from_utf8_lossy(&raw[..split]).to_string();
        let mut payload = raw[split + 4..].to_vec();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| self.bad("no status line"))?;
        let chunked = head.lines().any(|l| {
            l.split_once(':').is_some_and(|(k, v)| {
                k.trim().eq_ignore_ascii_case("transfer-encoding")
                    && v.trim().eq_ignore_ascii_case("chunked")
            })
        });
        if chunked {
            payload = dechunk(&payload).ok_or_else(|| self.bad("bad chunked encoding"))?;
        }
        if !(200..300).contains(&status) {
            let message = serde_json::from_slice::<serde_json::Value>(&payload)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                .unwrap_or_else(|| {
                    String::from_utf8_lossy(&payload)
                        .chars()
                        .take(500)
                        .collect()
                });
            return Err(ClientError::Status { status, message });
        }
        Ok(payload)
    }

    fn json<T: serde::de::DeserializeOwned>(&self, body: &[u8]) -> Result<T, ClientError> {
        serde_json::from_slice(body).map_err(|e| self.bad(e.to_string()))
    }

    /// Register `run`; returns its token.
    pub fn register(&self, run: &str) -> Result<String, ClientError> {
        let body = serde_json::json!({ "run": run }).to_string();
        let resp = self.request("POST", "/v1/runs", Some(body.as_bytes()))?;
        let value: serde_json::Value = self.json(&resp)?;
        value
            .get("token")
            .and_then(|t| t.as_str())
            .map(str::to_string)
            .ok_or_else(|| self.bad("no token in the registration answer"))
    }

    /// Send a batch of events of `run`; returns how many the collector stored.
    pub fn send(&self, run: &str, events: Vec<Event>) -> Result<u64, ClientError> {
        let body = serde_json::to_vec(&Batch { events }).map_err(|e| self.bad(e.to_string()))?;
        let resp = self.request("POST", &format!("/v1/runs/{run}/events"), Some(&body))?;
        let value: serde_json::Value = self.json(&resp)?;
        value
            .get("accepted")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| self.bad("no count in the answer"))
    }

    /// The runs the collector knows, newest first.
    pub fn runs(&self) -> Result<Vec<crate::RunSummary>, ClientError> {
        let resp = self.request("GET", "/v1/runs", None)?;
        self.json(&resp)
    }

    /// The incidents of `run`, oldest first.
    pub fn incidents(&self, run: &str) -> Result<Vec<Incident>, ClientError> {
        let resp = self.request("GET", &format!("/v1/runs/{run}/incidents"), None)?;
        self.json(&resp)
    }
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_chunks() {
        let c = Client::new("http://127.0.0.1:7411/base/").unwrap();
        assert_eq!(
            (c.authority.as_str(), c.prefix.as_str()),
            ("127.0.0.1:7411", "/base")
        );
        assert!(Client::new("https://x").is_err());
        assert!(Client::new("http://").is_err());
        assert_eq!(
            dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap(),
            b"abcde"
        );
        assert!(dechunk(b"5\r\nab").is_none());
    }
}
