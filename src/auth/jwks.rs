//! Signing keys published by an OpenID Connect provider (`MAILROOM_JWT_JWKS_URL`): fetched through
//! the outbound address policy, kept for a while, and fetched again when a token names a key the
//! cached set does not hold (the provider rotated its keys), at most once per
//! [`MIN_REFETCH`] so that tokens with made-up key ids cannot make us hammer the provider.

use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::sync::Mutex;

use crate::outbound::policy::HostPolicy;

/// How long a fetched key set is used before it is fetched again.
pub const FRESH_FOR: Duration = Duration::from_secs(600);
/// The least time between two fetches, whatever tokens arrive.
pub const MIN_REFETCH: Duration = Duration::from_secs(10);
/// Time allowed for one fetch.
const TIMEOUT: Duration = Duration::from_secs(5);
/// The most of a key set read: a few keys are a few KiB.
const MAX_BYTES: usize = 256 * 1024;

/// The provider's keys, as of the last fetch.
pub struct Jwks {
    url: String,
    policy: HostPolicy,
    min_refetch: Duration,
    cached: Mutex<Cached>,
}

#[derive(Default)]
struct Cached {
    /// The set as of the last fetch, each key made ready to verify once, when it was fetched.
    keys: Option<Vec<Key>>,
    fetched_at: Option<Instant>,
    tried_at: Option<Instant>,
}

/// One published key, ready to verify with.
struct Key {
    kid: Option<String>,
    alg: Option<KeyAlgorithm>,
    decoding: DecodingKey,
}

impl Jwks {
    pub fn new(url: String, policy: HostPolicy) -> Self {
        Self {
            url,
            policy,
            min_refetch: MIN_REFETCH,
            cached: Mutex::default(),
        }
    }

    /// The key that verifies a token signed with `alg` under `kid`. Only asymmetric algorithms
    /// are taken from a key set: a published public key must never serve as an HMAC secret.
    pub async fn key(&self, kid: Option<&str>, alg: Algorithm) -> Result<DecodingKey, String> {
        if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
            return Err("the token's algorithm is not accepted".into());
        }
        let mut cached = self.cached.lock().await;
        let fresh = cached.fetched_at.is_some_and(|at| at.elapsed() < FRESH_FOR);
        if let Some(known) = cached
            .keys
            .as_deref()
            .and_then(|k| find(k, kid, alg))
            .filter(|_| fresh)
        {
            return Ok(known.decoding.clone());
        }
        let may_fetch = cached.tried_at.is_none_or(|at| at.elapsed() >= self.min_refetch);
        if may_fetch {
            cached.tried_at = Some(Instant::now());
            match self.fetch().await {
                Ok(keys) => {
                    cached.keys = Some(keys);
                    cached.fetched_at = Some(Instant::now());
                }
                // Keys fetched earlier still verify while the provider is away.
                Err(e) if cached.keys.is_some() => {
                    tracing::warn!(url = %self.url, error = %e, "fetching the JWKS failed; using the keys fetched earlier")
                }
                Err(e) => {
                    tracing::warn!(url = %self.url, error = %e, "fetching the JWKS failed");
                    return Err("the issuer's signing keys cannot be fetched".into());
                }
            }
        }
        match cached.keys.as_deref().and_then(|k| find(k, kid, alg)) {
            Some(key) => Ok(key.decoding.clone()),
            None => Err("the token's signing key is not among the issuer's keys".into()),
        }
    }

    /// The published set, each usable key converted once; keys that cannot be used are left out.
    async fn fetch(&self) -> Result<Vec<Key>, String> {
        let (client, url) = crate::outbound::client_for(&self.policy, &self.url, TIMEOUT).await?;
        let response = client
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| crate::outbound::cause(&e))?;
        if !response.status().is_success() {
            return Err(format!("the JWKS URL answered {}", response.status().as_u16()));
        }
        let body = crate::outbound::read_capped(response, MAX_BYTES)
            .await
            .map_err(|e| e.to_string())?;
        let set: JwkSet =
            serde_json::from_slice(&body).map_err(|e| format!("the JWKS is not a key set: {e}"))?;
        Ok(set.keys.iter().filter_map(ready).collect())
    }
}

fn ready(jwk: &Jwk) -> Option<Key> {
    let decoding = DecodingKey::from_jwk(jwk).ok()?;
    Some(Key {
        kid: jwk.common.key_id.clone(),
        alg: jwk.common.key_algorithm,
        decoding,
    })
}

/// The key named `kid`; without a `kid`, the one key of the set that fits `alg`.
fn find<'a>(keys: &'a [Key], kid: Option<&str>, alg: Algorithm) -> Option<&'a Key> {
    let fits = |k: &&Key| k.alg.is_none_or(|a| a == KeyAlgorithm::from(alg));
    match kid {
        Some(kid) => keys.iter().filter(fits).find(|k| k.kid.as_deref() == Some(kid)),
        None => {
            let mut candidates = keys.iter().filter(fits);
            let only = candidates.next()?;
            candidates.next().is_none().then_some(only)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex as StdMutex};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn rsa_key(kid: &str, n: &str) -> serde_json::Value {
        serde_json::json!({"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig", "n": n, "e": "AQAB"})
    }

    // A modulus of 2048 bits (any valid one; these tests never check a signature).
    const N: &str = "n0WlHrEGZ08_WtNrxmgM";

    /// Serves the set in `keys` on 127.0.0.1 and counts the requests.
    async fn issuer(keys: Arc<StdMutex<serde_json::Value>>) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks", listener.local_addr().unwrap());
        let hits = Arc::new(AtomicUsize::new(0));
        let counted = hits.clone();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let body = serde_json::json!({"keys": keys.lock().unwrap().clone()}).to_string();
                tokio::spawn(async move {
                    let mut buf = [0u8; 2048];
                    let _ = tcp.read(&mut buf).await;
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tcp.write_all(answer.as_bytes()).await;
                });
            }
        });
        (url, hits)
    }

    fn jwks(url: String, min_refetch: Duration) -> Jwks {
        crate::mail::install_crypto_provider();
        Jwks {
            min_refetch,
            ..Jwks::new(url, HostPolicy::default())
        }
    }

    #[tokio::test]
    async fn a_known_key_is_served_from_the_cache_and_a_rotated_one_is_fetched() {
        let keys = Arc::new(StdMutex::new(serde_json::json!([rsa_key("k1", N)])));
        let (url, hits) = issuer(keys.clone()).await;
        let set = jwks(url, Duration::ZERO);
        assert!(set.key(Some("k1"), Algorithm::RS256).await.is_ok());
        assert!(set.key(Some("k1"), Algorithm::RS256).await.is_ok());
        assert_eq!(hits.load(Ordering::SeqCst), 1, "a known key is not fetched again");
        *keys.lock().unwrap() = serde_json::json!([rsa_key("k1", N), rsa_key("k2", N)]);
        assert!(set.key(Some("k2"), Algorithm::RS256).await.is_ok());
        assert_eq!(
            hits.load(Ordering::SeqCst),
            2,
            "an unknown key id fetches the set again"
        );
        assert!(set.key(Some("k9"), Algorithm::RS256).await.is_err());
    }

    #[tokio::test]
    async fn made_up_key_ids_fetch_the_set_at_most_once_per_interval() {
        let keys = Arc::new(StdMutex::new(serde_json::json!([rsa_key("k1", N)])));
        let (url, hits) = issuer(keys).await;
        let set = jwks(url, Duration::from_secs(3600));
        for i in 0..20 {
            assert!(set
                .key(Some(&format!("made-up-{i}")), Algorithm::RS256)
                .await
                .is_err());
        }
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        assert!(set.key(Some("k1"), Algorithm::RS256).await.is_ok());
    }

    #[tokio::test]
    async fn a_published_key_never_serves_as_an_hmac_secret() {
        let keys = Arc::new(StdMutex::new(serde_json::json!([
            {"kty": "oct", "kid": "k1", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"}
        ])));
        let (url, hits) = issuer(keys).await;
        let set = jwks(url, Duration::ZERO);
        assert!(set.key(Some("k1"), Algorithm::HS256).await.is_err());
        assert_eq!(hits.load(Ordering::SeqCst), 0, "refused before any fetch");
    }

    #[tokio::test]
    async fn keys_are_fetched_only_where_the_address_policy_allows() {
        let keys = Arc::new(StdMutex::new(serde_json::json!([rsa_key("k1", N)])));
        let (url, hits) = issuer(keys).await;
        let set = Jwks {
            min_refetch: Duration::ZERO,
            ..Jwks::new(
                url,
                HostPolicy {
                    allowed_hosts: Some(vec!["idp.example.com".into()]),
                },
            )
        };
        assert!(set.key(Some("k1"), Algorithm::RS256).await.is_err());
        assert_eq!(hits.load(Ordering::SeqCst), 0, "refused before connecting");
    }
}
