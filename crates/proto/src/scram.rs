//! SCRAM credentials (RFC 5802 / RFC 7677): what the server stores instead
//! of a password. Keys for both hash functions are derived at once so that
//! either mechanism can be offered without ever keeping the plaintext.

use digest::core_api::BlockSizeUser;
use digest::generic_array::GenericArray;
use digest::{Digest, FixedOutputReset};
use rand::RngCore;
use rsasl::mechanisms::scram::tools;
use subtle::ConstantTimeEq;

/// Iteration count for new credentials. RFC 7677 asks for at least 4096.
pub const DEFAULT_ITERATIONS: u32 = 4096;

/// StoredKey and ServerKey for one hash function.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramKeys {
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

impl std::fmt::Debug for ScramKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScramKeys(..)")
    }
}

/// A stored credential: salt and iteration count shared by both key sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub sha1: ScramKeys,
    pub sha256: ScramKeys,
}

/// Why a password cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("password is empty")]
    Empty,
    #[error("password contains characters SASLprep prohibits")]
    Prohibited,
}

impl Credentials {
    /// Derives credentials for a new password with a fresh random salt.
    pub fn new(password: &str) -> Result<Credentials, PasswordError> {
        let mut salt = vec![0u8; 16];
        rand::thread_rng().fill_bytes(&mut salt);
        Credentials::derive(password, salt, DEFAULT_ITERATIONS)
    }

    /// Derives keys from the SASLprep'd password, as SCRAM clients do and
    /// as rsasl's PLAIN hands the password to validation.
    pub fn derive(
        password: &str,
        salt: Vec<u8>,
        iterations: u32,
    ) -> Result<Credentials, PasswordError> {
        let prepped = stringprep::saslprep(password).map_err(|_| PasswordError::Prohibited)?;
        if prepped.is_empty() {
            return Err(PasswordError::Empty);
        }
        let sha1 = keys::<sha1::Sha1>(prepped.as_bytes(), &salt, iterations);
        let sha256 = keys::<sha2::Sha256>(prepped.as_bytes(), &salt, iterations);
        Ok(Credentials {
            salt,
            iterations,
            sha1,
            sha256,
        })
    }

    /// Checks an already SASLprep'd plaintext password (SASL PLAIN).
    pub fn verify_prepped_password(&self, password: &[u8]) -> bool {
        let candidate = keys::<sha2::Sha256>(password, &self.salt, self.iterations);
        candidate.stored_key.ct_eq(&self.sha256.stored_key).into()
    }
}

fn keys<D>(password: &[u8], salt: &[u8], iterations: u32) -> ScramKeys
where
    D: Digest + BlockSizeUser + FixedOutputReset + Clone + Sync,
{
    let mut salted = GenericArray::default();
    tools::hash_password::<D>(password, iterations, salt, &mut salted);
    let (client_key, server_key) = tools::derive_keys::<D>(salted.as_slice());
    ScramKeys {
        stored_key: D::digest(client_key).to_vec(),
        server_key: server_key.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    #[test]
    fn rfc7677_server_signature_key() {
        // RFC 7677 section 3: password "pencil", salt W22ZaJ0SNY7soEsUEjb6gQ==, 4096
        // iterations; the ServerSignature in the exchange is computed from this key.
        let salt = base64::engine::general_purpose::STANDARD
            .decode("W22ZaJ0SNY7soEsUEjb6gQ==")
            .expect("valid base64");
        let c = Credentials::derive("pencil", salt, 4096).expect("valid password");
        assert_eq!(c.sha256.stored_key.len(), 32);
        assert_eq!(c.sha1.stored_key.len(), 20);
        assert!(c.verify_prepped_password(b"pencil"));
        assert!(!c.verify_prepped_password(b"pencil2"));
    }

    #[test]
    fn empty_password_refused() {
        assert!(matches!(Credentials::new(""), Err(PasswordError::Empty)));
    }
}
