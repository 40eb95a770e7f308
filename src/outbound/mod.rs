//! HTTP requests to URLs an operator configured (OAuth token endpoints, webhooks): https (or http
//! to loopback), the SMTP host policy for every address the host resolves to, the connection
//! pinned to a checked address (no second lookup), no proxy, no redirects, bounded in time.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

pub mod policy;

use policy::{is_forbidden_address, resolve_checked, HostPolicy, HostRefused};

/// Checks `url` without resolving it: scheme, credentials, allow-list and literal addresses.
pub fn check_url(policy: &HostPolicy, url: &str) -> Result<(url::Url, String, u16), String> {
    let parsed = url::Url::parse(url).map_err(|_| "not a URL".to_string())?;
    let host = parsed
        .host_str()
        .ok_or_else(|| "the URL has no host".to_string())?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let loopback =
        host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    match parsed.scheme() {
        "https" => {}
        "http" if loopback => {}
        _ => return Err("the URL must be https (http only to a loopback address)".into()),
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("the URL must not carry credentials".into());
    }
    if !policy.host_allowed(&host) {
        return Err(HostRefused::NotAllowed { host }.to_string());
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        if is_forbidden_address(ip) {
            return Err(HostRefused::Forbidden { host, ip }.to_string());
        }
    }
    let port = parsed.port_or_known_default().unwrap_or(443);
    Ok((parsed, host, port))
}

/// Checks `url` and every address its host resolves to; a client that connects only to those.
pub async fn client_for(
    policy: &HostPolicy,
    url: &str,
    timeout: Duration,
) -> Result<(reqwest::Client, url::Url), String> {
    let (parsed, host, port) = check_url(policy, url)?;
    let addrs: Vec<SocketAddr> =
        match tokio::time::timeout(timeout, resolve_checked(policy, &host, port)).await {
            Err(_) => return Err(format!("{host} did not resolve within {} s", timeout.as_secs())),
            Ok(Err(e)) => return Err(format!("{host} could not be resolved: {e}")),
            Ok(Ok(Err(refused))) => return Err(refused.to_string()),
            Ok(Ok(Ok(addrs))) => addrs,
        };
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(timeout)
        .connect_timeout(timeout);
    if host.parse::<IpAddr>().is_err() {
        builder = builder.resolve_to_addrs(&host, &addrs);
    }
    let client = builder
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
    Ok((client, parsed))
}

/// Why a capped body could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// Larger than the limit (declared or as it arrived); the rest was never read.
    TooLarge { limit: usize },
    /// The connection failed while reading: the cause ([`cause`]).
    Failed(String),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TooLarge { limit } => write!(f, "the response is larger than {} KiB", limit / 1024),
            Self::Failed(cause) => write!(f, "reading the response failed: {cause}"),
        }
    }
}

/// A response body of at most `limit` bytes; a larger one is refused before it can take memory.
pub async fn read_capped(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, ReadError> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(ReadError::TooLarge { limit });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| ReadError::Failed(cause(&e)))? {
        if body.len() + chunk.len() > limit {
            return Err(ReadError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The innermost cause of a request error, without the URL reqwest puts in its own message.
pub fn cause(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        "timed out".to_string()
    } else {
        String::new()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text = s.to_string();
        source = s.source();
    }
    if text.is_empty() {
        "no answer".into()
    } else {
        text
    }
}
