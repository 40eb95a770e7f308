//! Secrets at rest: AES-256-GCM for stored credentials, and the generated key and JWT secret files.

use std::io::Write;
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use anyhow::Context;
use base64::Engine;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretBox, SecretString};

use crate::config::{parse_key, Config};

const CIPHERTEXT_PREFIX: &str = "v1:";

/// Whether `s` is a value [`SecretCipher::encrypt`] made (such values are never shown or logged).
pub fn is_sealed(s: &str) -> bool {
    s.strip_prefix(CIPHERTEXT_PREFIX).is_some_and(|rest| {
        rest.len() >= 16
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
    })
}

/// A secret as stored: ciphertext made by [`SecretCipher::encrypt`], never the plaintext. It is
/// its own type so that no field holding one reads like plaintext: `Debug` shows none of it, the
/// audit diff reports it only as changed ([`is_sealed`]), and only [`SecretCipher::decrypt`] opens
/// it. Serialized as the ciphertext string, as settings documents have always stored it.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Sealed(String);

impl Sealed {
    /// The ciphertext, to store or compare; never the secret.
    pub fn ciphertext(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealed(..)")
    }
}

/// Encrypts and decrypts stored secrets. The associated data binds a ciphertext to its purpose,
/// so a value copied into another column does not decrypt.
pub struct SecretCipher {
    cipher: Aes256Gcm,
}

impl SecretCipher {
    pub fn new(key: &SecretBox<[u8; 32]>) -> Self {
        let cipher =
            Aes256Gcm::new_from_slice(key.expose_secret()).expect("a 32-byte key is valid for AES-256");
        Self { cipher }
    }

    pub fn encrypt(&self, purpose: &str, plaintext: &str) -> anyhow::Result<Sealed> {
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let ciphertext = self
            .cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: purpose.as_bytes(),
                },
            )
            .map_err(|_| anyhow::anyhow!("encryption failed"))?;
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&ciphertext);
        Ok(Sealed(format!(
            "{CIPHERTEXT_PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(sealed)
        )))
    }

    pub fn decrypt(&self, purpose: &str, sealed: &Sealed) -> anyhow::Result<SecretString> {
        let bytes = sealed
            .0
            .strip_prefix(CIPHERTEXT_PREFIX)
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .filter(|b| b.len() > 12)
            .context("stored secret is not in the expected format")?;
        let (nonce, ciphertext) = bytes.split_at(12);
        let nonce: [u8; 12] = nonce.try_into().context("bad nonce")?;
        let plaintext = self
            .cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad: purpose.as_bytes(),
                },
            )
            .map_err(|_| {
                anyhow::anyhow!("stored secret cannot be decrypted: was MAILROOM_SECRET_KEY changed?")
            })?;
        Ok(SecretString::from(
            String::from_utf8(plaintext).context("stored secret is not UTF-8")?,
        ))
    }
}

/// Creates `dir` (and missing parents) accessible only by its owner (0700). An existing
/// directory is left as it is: it may be the working directory or shared on purpose.
pub fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))
}

/// Writes a new file readable only by its owner; fails if it already exists.
fn create_private_file(path: &Path, contents: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        create_private_dir(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    Ok(())
}

fn random_base64(len: usize) -> String {
    let mut bytes = vec![0u8; len];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The encryption key: `MAILROOM_SECRET_KEY`, else `MAILROOM_SECRET_KEY_FILE`, else
/// `<data dir>/secret.key`, generated on first start.
pub fn load_or_create_secret_key(config: &Config) -> anyhow::Result<SecretBox<[u8; 32]>> {
    if let Some(key) = &config.secret_key {
        return Ok(SecretBox::new(Box::new(*key.expose_secret())));
    }
    let (path, may_create) = match &config.secret_key_file {
        Some(path) => (path.clone(), false),
        None => (config.data_dir.join("secret.key"), true),
    };
    if !path.exists() {
        anyhow::ensure!(
            may_create,
            "MAILROOM_SECRET_KEY_FILE: {} does not exist",
            path.display()
        );
        create_private_file(&path, &random_base64(32))?;
        tracing::warn!(path = %path.display(), "generated a new encryption key for stored SMTP passwords; back it up with the database");
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let key = parse_key(&text)
        .map_err(|m| anyhow::anyhow!("MAILROOM_SECRET_KEY_FILE ({}): {m}", path.display()))?;
    Ok(SecretBox::new(Box::new(key)))
}

pub fn jwt_secret_path(config: &Config) -> PathBuf {
    config.data_dir.join("jwt-secret")
}

/// The HS256 secret: `MAILROOM_JWT_SECRET`, else `<data dir>/jwt-secret`, created when no public
/// key is configured either, so a first start never leaves the API open. With a public key only
/// an explicit `MAILROOM_JWT_SECRET` is used: a file generated before the key was configured
/// would otherwise keep minting valid tokens. Returns whether it was generated just now.
pub fn load_or_create_jwt_secret(config: &Config) -> anyhow::Result<(Option<SecretString>, bool)> {
    if let Some(secret) = &config.jwt_secret {
        return Ok((Some(secret.clone()), false));
    }
    let path = jwt_secret_path(config);
    if config.jwt_public_key_file.is_some() || config.jwt_jwks_url.is_some() {
        if path.exists() {
            tracing::warn!(
                path = %path.display(),
                "MAILROOM_JWT_PUBLIC_KEY_FILE or MAILROOM_JWT_JWKS_URL is set: HS256 tokens of the generated secret are refused (set MAILROOM_JWT_SECRET to accept HS256 as well)"
            );
        }
        return Ok((None, false));
    }
    let mut created = false;
    if !path.exists() {
        create_private_file(&path, &random_base64(48))?;
        created = true;
    }
    let secret = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok((Some(SecretString::from(secret.trim().to_string())), created))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cipher() -> SecretCipher {
        SecretCipher::new(&SecretBox::new(Box::new([9u8; 32])))
    }

    #[test]
    fn a_sealed_secret_shows_nothing_of_itself_when_debug_printed() {
        let sealed = cipher().encrypt("smtp.password", "hunter2").unwrap();
        let printed = format!("{:?}", Some(&sealed));
        assert_eq!(printed, "Some(Sealed(..))");
        assert!(is_sealed(sealed.ciphertext()));
    }

    #[test]
    fn a_secret_round_trips_and_the_ciphertext_hides_it() {
        let sealed = cipher().encrypt("smtp.password", "hunter2").unwrap();
        assert!(!sealed.ciphertext().contains("hunter2"));
        let opened = cipher().decrypt("smtp.password", &sealed).unwrap();
        assert_eq!(opened.expose_secret(), "hunter2");
    }

    #[test]
    fn a_ciphertext_does_not_open_for_another_purpose_or_key() {
        let sealed = cipher().encrypt("smtp.password", "hunter2").unwrap();
        assert!(cipher().decrypt("other", &sealed).is_err());
        let other = SecretCipher::new(&SecretBox::new(Box::new([1u8; 32])));
        assert!(other.decrypt("smtp.password", &sealed).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn generated_secret_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mut vars = std::collections::BTreeMap::new();
        vars.insert("MAILROOM_DATA_DIR".to_string(), dir.path().display().to_string());
        let config = Config::from_vars(&vars).unwrap();
        let (secret, created) = load_or_create_jwt_secret(&config).unwrap();
        assert!(created && secret.is_some());
        load_or_create_secret_key(&config).unwrap();
        for name in ["jwt-secret", "secret.key"] {
            let mode = std::fs::metadata(dir.path().join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
        let (again, created) = load_or_create_jwt_secret(&config).unwrap();
        assert!(!created);
        assert_eq!(again.unwrap().expose_secret(), secret.unwrap().expose_secret());
    }

    #[test]
    fn a_generated_secret_is_no_longer_accepted_once_a_public_key_is_configured() {
        let dir = tempfile::tempdir().unwrap();
        let mut vars = std::collections::BTreeMap::new();
        vars.insert("MAILROOM_DATA_DIR".to_string(), dir.path().display().to_string());
        let (generated, created) = load_or_create_jwt_secret(&Config::from_vars(&vars).unwrap()).unwrap();
        assert!(created && generated.is_some());

        let key = dir.path().join("jwt.pub.pem");
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        std::fs::write(&key, pair.public_key_pem()).unwrap();
        vars.insert(
            "MAILROOM_JWT_PUBLIC_KEY_FILE".to_string(),
            key.display().to_string(),
        );
        let (secret, _) = load_or_create_jwt_secret(&Config::from_vars(&vars).unwrap()).unwrap();
        assert!(secret.is_none(), "the generated file still signs tokens");

        // Set explicitly, HS256 is accepted beside the key.
        vars.insert("MAILROOM_JWT_SECRET".to_string(), "x".repeat(40));
        let (secret, _) = load_or_create_jwt_secret(&Config::from_vars(&vars).unwrap()).unwrap();
        assert_eq!(secret.unwrap().expose_secret(), "x".repeat(40));
    }
}
