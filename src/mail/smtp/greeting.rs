//! Reading the server's greeting ourselves, before lettre takes the socket: a silent server, one
//! that hangs up, or one that speaks TLS is told apart from one that merely refuses.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Why no usable greeting arrived.
#[derive(Debug)]
pub enum GreetingFailure {
    /// Nothing at all within the timeout.
    Silent,
    /// The server hung up first.
    Closed,
    /// The first bytes were a TLS record: the port expects a handshake.
    TlsData,
    /// Reading failed.
    Io(std::io::Error),
    /// The greeting started but did not complete within the timeout.
    Incomplete,
    /// A complete greeting other than 220.
    Refused { code: Option<u16>, text: String },
}

/// Waits for a 220 greeting; returns its bytes (to replay to lettre). With `nudge`, a server
/// that stays silent for a while is sent one EHLO line: a TLS server answers with an alert or
/// hangs up, an SMTP server that is merely slow ignores it or answers in SMTP (that answer is
/// dropped). Never on port 25, where servers may penalise clients that talk first (postscreen's
/// pregreet test).
pub async fn read_greeting(
    tcp: &mut TcpStream,
    port: u16,
    limit: Duration,
    nudge: bool,
) -> Result<Vec<u8>, GreetingFailure> {
    let deadline = tokio::time::Instant::now() + limit;
    let nudge_after = Duration::from_millis(1500).min(limit / 2);
    let may_nudge = nudge && port != 25;
    let mut peek = [0u8; 1];
    let first = tokio::time::timeout(if may_nudge { nudge_after } else { limit }, tcp.peek(&mut peek)).await;
    let nudged = first.is_err() && may_nudge;
    if nudged {
        let _ = tcp.write_all(b"EHLO mailroom-probe\r\n").await;
    }
    match tokio::time::timeout_at(deadline, tcp.peek(&mut peek)).await {
        Err(_) => return Err(GreetingFailure::Silent),
        Ok(Ok(0)) => return Err(GreetingFailure::Closed),
        Ok(Err(e)) => return Err(GreetingFailure::Io(e)),
        Ok(Ok(_)) => {}
    }
    if matches!(peek[0], 0x14..=0x17) {
        return Err(GreetingFailure::TlsData);
    }
    let bytes = match tokio::time::timeout_at(deadline, read_reply(tcp)).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) => return Err(GreetingFailure::Io(e)),
        Err(_) => return Err(GreetingFailure::Incomplete),
    };
    if nudged {
        // A slow SMTP server answers our early EHLO after its greeting: drop that answer so the
        // session stays in step.
        let _ = tokio::time::timeout_at(deadline, read_reply(tcp)).await;
    }
    let code = reply_code(&bytes);
    if code != Some(220) {
        return Err(GreetingFailure::Refused {
            code,
            text: String::from_utf8_lossy(&bytes).trim().to_string(),
        });
    }
    Ok(bytes)
}

/// Reads one complete SMTP reply (possibly multi-line); returns its bytes.
async fn read_reply<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        if stream.read(&mut byte).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.push(byte[0]);
        if byte[0] == b'\n' {
            let line_start = buf[..buf.len() - 1]
                .iter()
                .rposition(|b| *b == b'\n')
                .map_or(0, |i| i + 1);
            let line = &buf[line_start..];
            if line.len() < 4 || line[3] != b'-' {
                return Ok(buf);
            }
        }
        if buf.len() > 64 * 1024 {
            return Err(std::io::ErrorKind::InvalidData.into());
        }
    }
}

pub fn reply_code(reply: &[u8]) -> Option<u16> {
    std::str::from_utf8(reply.get(..3)?).ok()?.parse().ok()
}
