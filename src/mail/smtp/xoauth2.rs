//! `AUTH XOAUTH2`, done by hand: lettre's mechanism cannot read the server's explanation of a
//! refused token.

use std::fmt;

use lettre::transport::smtp::authentication::Mechanism;
use lettre::transport::smtp::client::AsyncSmtpConnection;
use secrecy::{ExposeSecret, SecretString};

use crate::mail::{error_chain, redact};

/// A command line sent as is (lettre adds nothing).
struct RawCommand(String);

impl fmt::Display for RawCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}\r\n", self.0)
    }
}

/// Why `AUTH XOAUTH2` did not succeed. Every text in it has the token and its encodings
/// redacted: a server may echo what it was sent, and its words end up in answers and logs.
#[derive(Debug)]
pub enum Xoauth2Failure {
    /// The server refused the token; `challenge` is its decoded explanation, `reply` its last
    /// answer with `code`.
    Rejected {
        challenge: Option<String>,
        code: Option<u16>,
        reply: Option<String>,
    },
    /// The server does not advertise XOAUTH2.
    NotOffered,
    /// Not an answer to the token (the connection failed, or the answer did not parse).
    Failed { message: String, timeout: bool },
}

/// The forms an access token takes on the wire, for redaction: the token, its base64, the
/// XOAUTH2 initial response and its base64.
pub fn token_forms(user: &str, token: &SecretString) -> Vec<String> {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let token = token.expose_secret();
    let blob = format!("user={user}\x01auth=Bearer {token}\x01\x01");
    // Longest first, so that no shorter form leaves part of a longer one behind.
    vec![b64(&blob), blob, b64(token), token.to_string()]
}

/// `AUTH XOAUTH2` with the initial response. A server that refuses the token answers 334 with a
/// base64 JSON explanation, to which the client sends an empty line and gets the final refusal;
/// lettre's own mechanism cannot read that explanation, so the exchange is done here.
pub async fn xoauth2(
    conn: &mut AsyncSmtpConnection,
    user: &str,
    token: &SecretString,
) -> Result<lettre::transport::smtp::response::Response, Xoauth2Failure> {
    if !conn.server_info().supports_auth_mechanism(Mechanism::Xoauth2) {
        return Err(Xoauth2Failure::NotOffered);
    }
    let forms = token_forms(user, token);
    let clean = |text: String| redact(&text, &forms);
    let reply_text = |e: &lettre::transport::smtp::Error| clean(error_chain(e));
    match conn
        .command(RawCommand(format!("AUTH XOAUTH2 {}", forms[0])))
        .await
    {
        Ok(r) if r.has_code(334) => {
            let challenge = r
                .first_line()
                .and_then(crate::mail::oauth::decode_challenge)
                .map(clean);
            let last = conn.command(RawCommand(String::new())).await.err();
            Err(Xoauth2Failure::Rejected {
                challenge,
                code: last.as_ref().and_then(|e| e.status()).map(u16::from),
                reply: last.as_ref().map(reply_text),
            })
        }
        Ok(r) => Ok(r),
        Err(e) if e.is_permanent() || e.is_transient() => Err(Xoauth2Failure::Rejected {
            challenge: None,
            code: e.status().map(u16::from),
            reply: Some(reply_text(&e)),
        }),
        Err(e) => Err(Xoauth2Failure::Failed {
            message: reply_text(&e),
            timeout: e.is_timeout(),
        }),
    }
}
