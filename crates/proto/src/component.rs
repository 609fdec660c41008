//! The XEP-0114 component stream state machine: header, handshake, and the
//! checks on every stanza a connected component sends. Processors connect
//! this way. Stream management (XEP-0198) works as on client streams,
//! without resumption: a component that reconnects simply starts again.

use crate::error::{StanzaErrorCondition, StreamError, StreamErrorCondition};
use crate::negotiation::{sm_action, Action};
use crate::ns;
use crate::stanza::{self, StanzaKind};
use crate::xml::{Frame, StreamHeader};
use minidom::Element;
use rand::Rng;
use sha1::{Digest, Sha1};
use std::collections::HashMap;
use subtle::ConstantTimeEq;

enum Phase {
    AwaitHeader,
    /// Header answered for this domain; waiting for `<handshake/>`.
    AwaitHandshake {
        domain: String,
    },
    Established {
        domain: String,
    },
    Closed,
}

pub struct ComponentNegotiator {
    /// Configured component domains and their shared secrets.
    secrets: HashMap<String, String>,
    stream_id: String,
    phase: Phase,
    header_sent: bool,
}

/// The handshake value of XEP-0114 section 3: hex SHA-1 of id + secret.
pub fn handshake_digest(stream_id: &str, secret: &str) -> String {
    let digest = Sha1::digest(format!("{stream_id}{secret}").as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl ComponentNegotiator {
    pub fn new(secrets: HashMap<String, String>) -> Self {
        let n: u128 = rand::thread_rng().gen();
        ComponentNegotiator {
            secrets,
            stream_id: format!("{n:032x}"),
            phase: Phase::AwaitHeader,
            header_sent: false,
        }
    }

    pub fn stream_id(&self) -> &str {
        &self.stream_id
    }

    /// The component domain once the handshake succeeded.
    pub fn domain(&self) -> Option<&str> {
        match &self.phase {
            Phase::Established { domain } => Some(domain),
            _ => None,
        }
    }

    pub fn handle(&mut self, frame: Frame, out: &mut Vec<Action>) {
        match (frame, &self.phase) {
            (_, Phase::Closed) => {}
            (Frame::StreamOpen(h), Phase::AwaitHeader) => self.on_header(h, out),
            (Frame::Whitespace, _) => {}
            (Frame::StreamClose, _) => {
                self.phase = Phase::Closed;
                out.push(Action::Close(None));
            }
            (Frame::Element(el), Phase::AwaitHandshake { .. }) => self.on_handshake(el, out),
            (Frame::Element(el), Phase::Established { .. }) => self.on_element(el, out),
            _ => self.fail(StreamError::new(StreamErrorCondition::NotAuthorized), out),
        }
    }

    pub fn fail(&mut self, err: StreamError, out: &mut Vec<Action>) {
        if !self.header_sent {
            out.push(Action::Write(self.header("")));
            self.header_sent = true;
        }
        self.phase = Phase::Closed;
        out.push(Action::Close(Some(err)));
    }

    fn header(&self, domain: &str) -> String {
        format!(
            "<?xml version='1.0'?><stream:stream xmlns='{}' xmlns:stream='{}' id='{}' from='{}'>",
            ns::COMPONENT_ACCEPT,
            ns::STREAM,
            self.stream_id,
            crate::error::escape(domain)
        )
    }

    fn on_header(&mut self, h: StreamHeader, out: &mut Vec<Action>) {
        let domain = h.to.unwrap_or_default().to_ascii_lowercase();
        out.push(Action::Write(self.header(&domain)));
        self.header_sent = true;
        if !self.secrets.contains_key(&domain) {
            return self.fail(
                StreamError::with_text(StreamErrorCondition::HostUnknown, "no such component"),
                out,
            );
        }
        self.phase = Phase::AwaitHandshake { domain };
    }

    fn on_handshake(&mut self, el: Element, out: &mut Vec<Action>) {
        let Phase::AwaitHandshake { domain } = &self.phase else {
            return;
        };
        let domain = domain.clone();
        if !el.is("handshake", ns::COMPONENT_ACCEPT) {
            return self.fail(StreamError::new(StreamErrorCondition::NotAuthorized), out);
        }
        let expected = self
            .secrets
            .get(&domain)
            .map(|secret| handshake_digest(&self.stream_id, secret))
            .unwrap_or_default();
        let given = el.text().trim().to_ascii_lowercase();
        let ok: bool = given.as_bytes().ct_eq(expected.as_bytes()).into();
        if !ok || expected.is_empty() {
            return self.fail(
                StreamError::with_text(StreamErrorCondition::NotAuthorized, "wrong handshake"),
                out,
            );
        }
        out.push(Action::Write(format!(
            "<handshake xmlns='{}'/>",
            ns::COMPONENT_ACCEPT
        )));
        if let Ok(bare) = jid::BareJid::new(&domain) {
            out.push(Action::Authenticated(bare));
        }
        self.phase = Phase::Established { domain };
    }

    fn on_element(&mut self, el: Element, out: &mut Vec<Action>) {
        let Phase::Established { domain } = &self.phase else {
            return;
        };
        let domain = domain.clone();
        if let Some(parsed) = crate::sm::parse_nonza(&el) {
            match sm_action(parsed) {
                // Components do not resume: a reconnecting processor starts over.
                Ok(Action::EnableSm { .. }) => out.push(Action::EnableSm {
                    resume: false,
                    max: None,
                }),
                Ok(action) => out.push(action),
                Err(e) => self.fail(e, out),
            }
            return;
        }
        let Some(_kind) = StanzaKind::of(&el, ns::COMPONENT_ACCEPT) else {
            let cond = if matches!(el.name(), "message" | "presence" | "iq") {
                StreamErrorCondition::InvalidNamespace
            } else {
                StreamErrorCondition::UnsupportedStanzaType
            };
            return self.fail(StreamError::new(cond), out);
        };
        // XEP-0114: the component stamps `from` itself, within its domain.
        let from_ok = stanza::from(&el)
            .and_then(|f| jid::Jid::new(f).ok())
            .is_some_and(|j| j.domain().as_str() == domain);
        if !from_ok {
            return self.fail(
                StreamError::with_text(
                    StreamErrorCondition::InvalidFrom,
                    "from must be within the component's domain",
                ),
                out,
            );
        }
        let el = stanza::translate(el, ns::COMPONENT_ACCEPT, ns::CLIENT);
        match stanza::to_jid(&el) {
            Ok(Some(_)) => out.push(Action::Stanza(el)),
            _ => {
                if stanza::stanza_type(&el) != Some("error") {
                    let cond = if stanza::to(&el).is_none() {
                        StanzaErrorCondition::BadRequest
                    } else {
                        StanzaErrorCondition::JidMalformed
                    };
                    out.push(Action::Reply(stanza::error_reply(&el, cond, None)));
                }
                out.push(Action::Handled);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn negotiator() -> ComponentNegotiator {
        let mut secrets = HashMap::new();
        secrets.insert("collect.localhost".to_owned(), "s3cret".to_owned());
        ComponentNegotiator::new(secrets)
    }

    fn header(to: &str) -> Frame {
        Frame::StreamOpen(StreamHeader {
            to: Some(to.into()),
            ..Default::default()
        })
    }

    fn el(xml: &str) -> Frame {
        Frame::Element(xml.parse().expect("test XML"))
    }

    fn run(n: &mut ComponentNegotiator, f: Frame) -> Vec<Action> {
        let mut out = Vec::new();
        n.handle(f, &mut out);
        out
    }

    fn connected() -> ComponentNegotiator {
        let mut n = negotiator();
        run(&mut n, header("collect.localhost"));
        let digest = handshake_digest(n.stream_id(), "s3cret");
        let a = run(
            &mut n,
            el(&format!(
                "<handshake xmlns='jabber:component:accept'>{digest}</handshake>"
            )),
        );
        assert_eq!(
            a[0],
            Action::Write("<handshake xmlns='jabber:component:accept'/>".into())
        );
        assert_eq!(n.domain(), Some("collect.localhost"));
        n
    }

    #[test]
    fn digest_is_hex_sha1_of_id_then_secret() {
        // Cross-checked with Python: hashlib.sha1(b"3BF96D32sesame").hexdigest()
        assert_eq!(
            handshake_digest("3BF96D32", "sesame"),
            "7a98dc4c9e92493d7fd66a25364c862637789c45"
        );
    }

    #[test]
    fn unknown_domain_is_host_unknown() {
        let mut n = negotiator();
        let a = run(&mut n, header("other.localhost"));
        assert!(
            matches!(a.last(), Some(Action::Close(Some(e))) if e.condition == StreamErrorCondition::HostUnknown)
        );
    }

    #[test]
    fn wrong_secret_is_not_authorized() {
        let mut n = negotiator();
        run(&mut n, header("collect.localhost"));
        let wrong = handshake_digest(n.stream_id(), "guess");
        let a = run(
            &mut n,
            el(&format!(
                "<handshake xmlns='jabber:component:accept'>{wrong}</handshake>"
            )),
        );
        assert!(
            matches!(a.last(), Some(Action::Close(Some(e))) if e.condition == StreamErrorCondition::NotAuthorized)
        );
    }

    #[test]
    fn stanzas_are_translated_to_the_client_namespace() {
        let mut n = connected();
        let a = run(
            &mut n,
            el("<message xmlns='jabber:component:accept' from='collect.localhost' to='alice@localhost'><body>ok</body></message>"),
        );
        let [Action::Stanza(m)] = a.as_slice() else {
            panic!("{a:?}")
        };
        assert!(m.is("message", ns::CLIENT));
        assert!(m.has_child("body", ns::CLIENT));
    }

    #[test]
    fn from_outside_the_domain_is_invalid_from() {
        let mut n = connected();
        let a = run(
            &mut n,
            el("<message xmlns='jabber:component:accept' from='alice@localhost' to='bob@localhost'/>"),
        );
        assert!(
            matches!(a.last(), Some(Action::Close(Some(e))) if e.condition == StreamErrorCondition::InvalidFrom)
        );
    }

    #[test]
    fn stream_management_is_offered_without_resumption() {
        let mut n = connected();
        let a = run(&mut n, el("<enable xmlns='urn:xmpp:sm:3' resume='true'/>"));
        assert_eq!(
            a,
            vec![Action::EnableSm {
                resume: false,
                max: None
            }]
        );
        assert_eq!(
            run(&mut n, el("<a xmlns='urn:xmpp:sm:3' h='2'/>")),
            vec![Action::Acked(2)]
        );
    }
}
