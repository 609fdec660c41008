//! SASL on the server side (RFC 6120 section 6), driven through rsasl.
//!
//! Credential lookup is asynchronous in the server but rsasl's callbacks are
//! synchronous, so the exchange is split: [`initial_authcid`] reads the user
//! name out of the client's first message, the caller fetches that user's
//! [`Credentials`], and [`SaslExchange::start`] runs rsasl with them at hand.

use crate::scram::Credentials;
use rsasl::callback::{Context, Request, SessionCallback, SessionData};
use rsasl::mechanisms::scram::properties::ScramStoredPassword;
use rsasl::mechanisms::{plain, scram};
use rsasl::prelude::{
    ChannelBindingCallback, Mechanism, Mechname, Registry, SASLConfig, SASLServer, Session,
    SessionError, State, Validation,
};
use rsasl::property::{AuthId, AuthzId, Password};
use rsasl::validate::{Validate, ValidationError};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

/// SASL failure conditions (RFC 6120 6.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslFailure {
    Aborted,
    EncryptionRequired,
    InvalidMechanism,
    MalformedRequest,
    NotAuthorized,
}

impl SaslFailure {
    pub fn name(self) -> &'static str {
        match self {
            SaslFailure::Aborted => "aborted",
            SaslFailure::EncryptionRequired => "encryption-required",
            SaslFailure::InvalidMechanism => "invalid-mechanism",
            SaslFailure::MalformedRequest => "malformed-request",
            SaslFailure::NotAuthorized => "not-authorized",
        }
    }
}

/// What one step of the exchange produced.
#[derive(Debug, PartialEq, Eq)]
pub enum SaslStep {
    Challenge(Vec<u8>),
    Success {
        authcid: String,
        additional_data: Option<Vec<u8>>,
    },
    Failure(SaslFailure),
}

static MECHS_PLUS: &[Mechanism] = &[
    scram::SCRAM_SHA256_PLUS,
    scram::SCRAM_SHA256,
    scram::SCRAM_SHA1_PLUS,
    scram::SCRAM_SHA1,
    plain::PLAIN,
];
static MECHS_TLS: &[Mechanism] = &[scram::SCRAM_SHA256, scram::SCRAM_SHA1, plain::PLAIN];
static MECHS_PLAINTEXT: &[Mechanism] = &[scram::SCRAM_SHA256, scram::SCRAM_SHA1];

/// What the link offers, which decides the mechanisms offered on it.
#[derive(Debug, Clone, Default)]
pub struct LinkSecurity {
    pub tls: bool,
    /// RFC 9266 tls-exporter channel binding data, when TLS 1.3 gave one.
    pub tls_exporter: Option<Vec<u8>>,
}

impl LinkSecurity {
    fn registry(&self) -> &'static [Mechanism] {
        match (self.tls, self.tls_exporter.is_some()) {
            (true, true) => MECHS_PLUS,
            (true, false) => MECHS_TLS,
            (false, _) => MECHS_PLAINTEXT,
        }
    }

    /// Mechanism names for `<mechanisms/>`, strongest first. PLAIN is only
    /// ever offered over TLS.
    pub fn mechanisms(&self) -> Vec<&'static str> {
        self.registry()
            .iter()
            .map(|m| m.mechanism.as_str())
            .collect()
    }
}

/// Extracts the authentication identity from a client's first message so
/// its credentials can be fetched before rsasl runs. `None` means the
/// message is malformed.
pub fn initial_authcid(mechanism: &str, data: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(data).ok()?;
    if mechanism == "PLAIN" {
        let mut parts = text.split('\0');
        let _authzid = parts.next()?;
        let authcid = parts.next()?;
        let _password = parts.next()?;
        if parts.next().is_some() || authcid.is_empty() {
            return None;
        }
        return Some(authcid.to_owned());
    }
    // SCRAM client-first-message: gs2-cbind-flag "," [authzid] "," "n=" saslname "," "r=" nonce ...
    let mut parts = text.splitn(4, ',');
    let flag = parts.next()?;
    if !(flag == "n" || flag == "y" || flag.starts_with("p=")) {
        return None;
    }
    let authzid = parts.next()?;
    if !(authzid.is_empty() || authzid.starts_with("a=")) {
        return None;
    }
    let name = parts.next()?.strip_prefix("n=")?;
    let nonce = parts.next()?;
    if !nonce.starts_with("r=") || nonce.len() < 3 || name.is_empty() {
        return None;
    }
    Some(name.replace("=2C", ",").replace("=3D", "="))
}

struct XmppValidation;
impl Validation for XmppValidation {
    type Value = Option<String>;
}

/// Per-attempt callback holding the credentials fetched for the user.
struct Callback {
    authcid: String,
    credentials: Option<Credentials>,
    /// Our domain, so that an authzid of `user@domain` is recognised as the
    /// user's own identity.
    domain: String,
}

impl SessionCallback for Callback {
    fn callback(
        &self,
        session_data: &SessionData,
        context: &Context,
        request: &mut Request,
    ) -> Result<(), SessionError> {
        if request.is::<ScramStoredPassword>() {
            if context.get_ref::<AuthId>() != Some(self.authcid.as_str()) {
                return Ok(());
            }
            if let Some(creds) = &self.credentials {
                let keys = if session_data
                    .mechanism()
                    .mechanism
                    .as_str()
                    .starts_with("SCRAM-SHA-1")
                {
                    &creds.sha1
                } else {
                    &creds.sha256
                };
                request.satisfy::<ScramStoredPassword>(&ScramStoredPassword::new(
                    creds.iterations,
                    &creds.salt,
                    &keys.stored_key,
                    &keys.server_key,
                ))?;
            }
        }
        Ok(())
    }

    fn validate(
        &self,
        session_data: &SessionData,
        context: &Context,
        validate: &mut Validate<'_>,
    ) -> Result<(), ValidationError> {
        let authid = context
            .get_ref::<AuthId>()
            .ok_or(ValidationError::MissingRequiredProperty)?;
        let authzid = context.get_ref::<AuthzId>().filter(|z| !z.is_empty());
        let own_identity = format!("{}@{}", self.authcid, self.domain);
        let authz_ok = authzid.is_none_or(|z| z == authid || z == own_identity);
        let proof_ok = if session_data.mechanism().mechanism.as_str() == "PLAIN" {
            let password = context
                .get_ref::<Password>()
                .ok_or(ValidationError::MissingRequiredProperty)?;
            self.credentials
                .as_ref()
                .is_some_and(|c| c.verify_prepped_password(password))
        } else {
            // SCRAM only calls validate after the client proof verified.
            true
        };
        let ok = authid == self.authcid && authz_ok && proof_ok;
        validate.finalize::<XmppValidation>(ok.then(|| authid.to_owned()));
        Ok(())
    }
}

struct ExporterBinding(Option<Vec<u8>>);
impl ChannelBindingCallback for ExporterBinding {
    fn get_cb_data(&self, cbname: &str) -> Option<&[u8]> {
        match (&self.0, cbname) {
            (Some(data), "tls-exporter") => Some(data),
            _ => None,
        }
    }
}

/// One running SASL exchange.
pub struct SaslExchange {
    session: Session<XmppValidation, ExporterBinding>,
}

impl SaslExchange {
    /// Starts `mechanism` for `authcid` (from [`initial_authcid`]) with the
    /// credentials found for it (`None`: no such account).
    pub fn start(
        mechanism: &str,
        link: &LinkSecurity,
        domain: &str,
        authcid: &str,
        credentials: Option<Credentials>,
    ) -> Result<SaslExchange, SaslFailure> {
        let registry = link.registry();
        if !registry.iter().any(|m| m.mechanism.as_str() == mechanism) {
            return Err(if mechanism == "PLAIN" && !link.tls {
                SaslFailure::EncryptionRequired
            } else {
                SaslFailure::InvalidMechanism
            });
        }
        let config: Arc<SASLConfig> = SASLConfig::builder()
            .with_registry(Registry::with_mechanisms(registry))
            .with_callback(Callback {
                authcid: authcid.to_owned(),
                credentials,
                domain: domain.to_owned(),
            })
            .map_err(|_| SaslFailure::InvalidMechanism)?;
        let server = SASLServer::<XmppValidation, _>::with_cb(
            config,
            ExporterBinding(link.tls_exporter.clone()),
        );
        let name =
            Mechname::parse(mechanism.as_bytes()).map_err(|_| SaslFailure::InvalidMechanism)?;
        let session = server
            .start_suggested(name)
            .map_err(|_| SaslFailure::InvalidMechanism)?;
        Ok(SaslExchange { session })
    }

    /// Feeds one client message (already base64-decoded).
    pub fn step(&mut self, input: &[u8]) -> SaslStep {
        let mut out = Vec::new();
        // rsasl 2.3.1 panics on some truncated SCRAM messages instead of
        // returning an error; a peer must not be able to crash its task.
        let result = catch_unwind(AssertUnwindSafe(|| {
            self.session.step(Some(input), &mut out)
        }));
        match result {
            Ok(Ok(State::Running)) => SaslStep::Challenge(out),
            Ok(Ok(State::Finished(sent))) => match self.session.validation() {
                Some(Some(authcid)) => SaslStep::Success {
                    authcid,
                    additional_data: matches!(sent, rsasl::prelude::MessageSent::Yes)
                        .then_some(out),
                },
                _ => SaslStep::Failure(SaslFailure::NotAuthorized),
            },
            Ok(Err(e)) if e.is_mechanism_error() => {
                SaslStep::Failure(SaslFailure::MalformedRequest)
            }
            Ok(Err(_)) => SaslStep::Failure(SaslFailure::NotAuthorized),
            Err(_) => SaslStep::Failure(SaslFailure::MalformedRequest),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authcid_from_first_messages() {
        assert_eq!(
            initial_authcid("PLAIN", b"\0alice\0secret").as_deref(),
            Some("alice")
        );
        assert_eq!(initial_authcid("PLAIN", b"alice\0secret"), None);
        assert_eq!(
            initial_authcid("SCRAM-SHA-256", b"n,,n=al=2Cice,r=abc").as_deref(),
            Some("al,ice")
        );
        assert_eq!(initial_authcid("SCRAM-SHA-256", b"n,,x"), None);
        assert_eq!(initial_authcid("SCRAM-SHA-256", b"q,,n=a,r=b"), None);
    }

    #[test]
    fn plain_is_only_offered_over_tls() {
        let plaintext = LinkSecurity::default();
        assert_eq!(plaintext.mechanisms(), vec!["SCRAM-SHA-256", "SCRAM-SHA-1"]);
        let tls = LinkSecurity {
            tls: true,
            tls_exporter: Some(vec![1; 32]),
        };
        assert_eq!(tls.mechanisms()[0], "SCRAM-SHA-256-PLUS");
        assert!(tls.mechanisms().contains(&"PLAIN"));
        assert_eq!(
            SaslExchange::start("PLAIN", &plaintext, "localhost", "a", None).err(),
            Some(SaslFailure::EncryptionRequired)
        );
    }

    fn tls() -> LinkSecurity {
        LinkSecurity {
            tls: true,
            tls_exporter: None,
        }
    }

    #[test]
    fn plain_success_and_wrong_password() {
        let creds = Credentials::new("secret").expect("valid");
        let mut ok =
            SaslExchange::start("PLAIN", &tls(), "localhost", "alice", Some(creds.clone()))
                .expect("offered");
        assert_eq!(
            ok.step(b"\0alice\0secret"),
            SaslStep::Success {
                authcid: "alice".into(),
                additional_data: None
            }
        );
        let mut bad = SaslExchange::start("PLAIN", &tls(), "localhost", "alice", Some(creds))
            .expect("offered");
        assert_eq!(
            bad.step(b"\0alice\0wrong"),
            SaslStep::Failure(SaslFailure::NotAuthorized)
        );
        let mut nobody =
            SaslExchange::start("PLAIN", &tls(), "localhost", "bob", None).expect("offered");
        assert_eq!(
            nobody.step(b"\0bob\0x"),
            SaslStep::Failure(SaslFailure::NotAuthorized)
        );
    }

    #[test]
    fn plain_authzid_of_another_user_is_refused() {
        let creds = Credentials::new("secret").expect("valid");
        let mut ex = SaslExchange::start("PLAIN", &tls(), "localhost", "alice", Some(creds))
            .expect("offered");
        assert_eq!(
            ex.step(b"bob@localhost\0alice\0secret"),
            SaslStep::Failure(SaslFailure::NotAuthorized)
        );
    }

    #[test]
    fn truncated_scram_is_malformed_not_a_panic() {
        let mut ex = SaslExchange::start("SCRAM-SHA-256", &tls(), "localhost", "alice", None)
            .expect("offered");
        assert_eq!(
            ex.step(b"n,,x"),
            SaslStep::Failure(SaslFailure::MalformedRequest)
        );
    }
}
