//! The client-to-server stream state machine (RFC 6120 sections 4 to 7):
//! stream headers, STARTTLS, SASL, resource binding, and afterwards the
//! checks every stanza from a bound client passes (`from` stamping,
//! addressing, stanza kinds).
//!
//! It performs no I/O. The connection task feeds [`Input`]s and carries out
//! the returned [`Action`]s in order: writing bytes, upgrading to TLS,
//! looking up credentials, asking the session registry for a resource.

use crate::error::{StanzaErrorCondition, StreamError, StreamErrorCondition};
use crate::ns;
use crate::sasl::{initial_authcid, LinkSecurity, SaslExchange, SaslFailure, SaslStep};
use crate::scram::Credentials;
use crate::stanza::{self, StanzaKind};
use crate::xml::{Frame, StreamHeader};
use base64::Engine;
use jid::{BareJid, FullJid, Jid};
use minidom::Element;
use rand::Rng;

/// Fixed settings of the listener a stream arrived on.
#[derive(Debug, Clone)]
pub struct C2sSettings {
    pub domain: String,
    /// Refuse SASL until TLS is up (RFC 6120 5.3.1 `<required/>`).
    pub tls_required: bool,
    /// Whether STARTTLS can be offered at all (false once TLS is direct).
    pub starttls_available: bool,
    /// Failed SASL attempts tolerated on one stream before it is closed.
    pub max_auth_failures: u32,
}

/// Why binding a resource failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindError {
    /// The resource is in use and the policy keeps the existing session.
    Conflict,
    /// Resource limit for the account reached.
    ResourceConstraint,
    /// The requested resource is not a valid resourcepart.
    BadRequest,
}

#[derive(Debug)]
pub enum Input {
    Frame(Frame),
    /// The TLS handshake finished (after `Action::StartTls`, or at once
    /// for direct TLS before the first frame).
    TlsEstablished(LinkSecurity),
    /// Answer to `Action::LookupCredentials`.
    Credentials(Option<Credentials>),
    /// Answer to `Action::Bind`.
    Bound(Result<FullJid, BindError>),
    /// Answer to `Action::Resume`: the resumed session's JID and the
    /// inbound count to report, or the failure (with `h` if known).
    Resumed(Result<(FullJid, u32), Option<u32>>),
}

#[derive(Debug, PartialEq)]
pub enum Action {
    /// Bytes to write to the peer.
    Write(String),
    /// Upgrade the transport now; the framer must be reset too.
    StartTls,
    /// A new stream begins (after SASL success): reset the framer.
    ResetFramer,
    /// Fetch the stored credentials of this local part.
    LookupCredentials(String),
    /// A SASL attempt failed; the caller may delay before going on.
    AuthFailed {
        authcid: Option<String>,
    },
    Authenticated(BareJid),
    /// Pick a resource (the client's or a generated one) and answer with
    /// `Input::Bound`.
    Bind {
        requested: Option<String>,
    },
    /// Resource bound: the session is live.
    SessionStarted(FullJid),
    /// A stanza from the bound client, `from` stamped, ready to route.
    /// Once handled it counts for XEP-0198.
    Stanza(Element),
    /// A stanza for the bound client (counted and kept by XEP-0198).
    Reply(Element),
    /// A stanza from the bound client was answered by the core itself.
    Handled,
    /// XEP-0198 `<resume/>` instead of binding: find the detached session.
    Resume {
        previd: String,
        h: u32,
    },
    /// The session was resumed: its queue must be resent.
    SessionResumed(FullJid),
    /// XEP-0198 `<enable/>` on a bound stream.
    EnableSm {
        resume: bool,
        max: Option<u32>,
    },
    /// XEP-0198 `<r/>`: answer with the handled count.
    AckRequested,
    /// XEP-0198 `<a h=.../>` from the client.
    Acked(u32),
    /// XEP-0352: the client became active (true) or inactive (false).
    ClientState {
        active: bool,
    },
    /// Write the stream error (if any), close the stream and the connection.
    Close(Option<StreamError>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    PreAuth,
    PostAuth,
}

enum Phase {
    AwaitHeader,
    Negotiating,
    AwaitTls,
    /// `<auth/>` came without initial response; a `<response/>` carries it.
    SaslAwaitInitial {
        mechanism: String,
    },
    SaslLookup {
        mechanism: String,
        authcid: String,
        data: Vec<u8>,
    },
    Sasl(Box<SaslExchange>),
    BindPending {
        iq_id: String,
    },
    ResumePending {
        previd: String,
    },
    Established,
    Closed,
}

pub struct C2sNegotiator {
    settings: C2sSettings,
    stage: Stage,
    phase: Phase,
    link: LinkSecurity,
    header_sent: bool,
    stream_id: String,
    auth_failures: u32,
    user: Option<BareJid>,
    bound: Option<FullJid>,
}

impl C2sNegotiator {
    pub fn new(settings: C2sSettings) -> Self {
        C2sNegotiator {
            settings,
            stage: Stage::PreAuth,
            phase: Phase::AwaitHeader,
            link: LinkSecurity::default(),
            header_sent: false,
            stream_id: new_id(),
            auth_failures: 0,
            user: None,
            bound: None,
        }
    }

    pub fn stream_id(&self) -> &str {
        &self.stream_id
    }

    pub fn bound_jid(&self) -> Option<&FullJid> {
        self.bound.as_ref()
    }

    pub fn is_tls(&self) -> bool {
        self.link.tls
    }

    /// Feeds one input; actions are appended to `out` in the order they
    /// must be carried out.
    pub fn handle(&mut self, input: Input, out: &mut Vec<Action>) {
        if matches!(self.phase, Phase::Closed) {
            return;
        }
        match input {
            Input::TlsEstablished(link) => {
                self.link = link;
                self.phase = Phase::AwaitHeader;
                self.header_sent = false;
            }
            Input::Credentials(creds) => self.on_credentials(creds, out),
            Input::Bound(result) => self.on_bound(result, out),
            Input::Resumed(result) => self.on_resumed(result, out),
            Input::Frame(Frame::StreamOpen(h)) => self.on_header(h, out),
            Input::Frame(Frame::Whitespace) => {}
            Input::Frame(Frame::StreamClose) => {
                self.phase = Phase::Closed;
                out.push(Action::Close(None));
            }
            Input::Frame(Frame::Element(el)) => self.on_element(el, out),
        }
    }

    /// Closes with a stream error, sending our header first if the peer has
    /// not seen one yet (RFC 6120 4.9.1.2).
    pub fn fail(&mut self, err: StreamError, out: &mut Vec<Action>) {
        if !self.header_sent {
            out.push(Action::Write(self.header(None)));
            self.header_sent = true;
        }
        self.phase = Phase::Closed;
        out.push(Action::Close(Some(err)));
    }

    fn header(&self, to: Option<&str>) -> String {
        let to_attr = to
            .map(|t| format!(" to='{}'", crate::error::escape(t)))
            .unwrap_or_default();
        format!(
            "<?xml version='1.0'?><stream:stream xmlns='{}' xmlns:stream='{}' id='{}' from='{}'{} version='1.0' xml:lang='en'>",
            ns::CLIENT,
            ns::STREAM,
            self.stream_id,
            crate::error::escape(&self.settings.domain),
            to_attr
        )
    }

    fn on_header(&mut self, h: StreamHeader, out: &mut Vec<Action>) {
        if !matches!(self.phase, Phase::AwaitHeader) {
            return self.fail(StreamError::new(StreamErrorCondition::NotWellFormed), out);
        }
        if self.header_sent {
            // A restarted stream gets a fresh id (RFC 6120 4.7.3).
            self.stream_id = new_id();
        }
        out.push(Action::Write(self.header(h.from.as_deref())));
        self.header_sent = true;
        if let Some(to) = &h.to {
            if !to.eq_ignore_ascii_case(&self.settings.domain) {
                return self.fail(
                    StreamError::with_text(
                        StreamErrorCondition::HostUnknown,
                        "this server does not serve that domain",
                    ),
                    out,
                );
            }
        }
        let major = h
            .version
            .as_deref()
            .and_then(|v| v.split('.').next()?.parse::<u32>().ok());
        if major != Some(1) {
            return self.fail(
                StreamError::new(StreamErrorCondition::UnsupportedVersion),
                out,
            );
        }
        out.push(Action::Write(self.features()));
        self.phase = Phase::Negotiating;
    }

    fn features(&self) -> String {
        let mut f = String::from("<stream:features>");
        match self.stage {
            Stage::PreAuth => {
                if !self.link.tls && self.settings.starttls_available {
                    f.push_str(&format!("<starttls xmlns='{}'>", ns::TLS));
                    if self.settings.tls_required {
                        f.push_str("<required/>");
                    }
                    f.push_str("</starttls>");
                }
                if self.link.tls || !self.settings.tls_required {
                    f.push_str(&format!("<mechanisms xmlns='{}'>", ns::SASL));
                    for m in self.link.mechanisms() {
                        f.push_str(&format!("<mechanism>{m}</mechanism>"));
                    }
                    f.push_str("</mechanisms>");
                }
            }
            Stage::PostAuth => {
                f.push_str(&format!(
                    "<bind xmlns='{}'/><session xmlns='{}'><optional/></session><ver xmlns='{}'/><sub xmlns='{}'/><sm xmlns='{}'/><csi xmlns='{}'/>",
                    ns::BIND,
                    ns::SESSION,
                    ns::ROSTER_VER,
                    ns::PRE_APPROVAL,
                    crate::sm::NS,
                    ns::CSI
                ));
            }
        }
        f.push_str("</stream:features>");
        f
    }

    fn on_element(&mut self, el: Element, out: &mut Vec<Action>) {
        match self.phase {
            Phase::Negotiating | Phase::SaslAwaitInitial { .. } | Phase::Sasl(_)
                if self.stage == Stage::PreAuth =>
            {
                self.on_pre_auth(el, out)
            }
            Phase::Negotiating if self.stage == Stage::PostAuth => self.on_pre_bind(el, out),
            Phase::Established => self.on_stanza(el, out),
            // Pipelined data while a lookup or the TLS upgrade is pending is
            // a protocol violation: the client must wait for our answer.
            _ => self.fail(
                StreamError::with_text(
                    StreamErrorCondition::PolicyViolation,
                    "element sent before the server answered",
                ),
                out,
            ),
        }
    }

    fn on_pre_auth(&mut self, el: Element, out: &mut Vec<Action>) {
        if el.is("starttls", ns::TLS) {
            if self.link.tls || !self.settings.starttls_available {
                out.push(Action::Write(format!("<failure xmlns='{}'/>", ns::TLS)));
                self.phase = Phase::Closed;
                out.push(Action::Close(None));
                return;
            }
            out.push(Action::Write(format!("<proceed xmlns='{}'/>", ns::TLS)));
            out.push(Action::StartTls);
            self.phase = Phase::AwaitTls;
            return;
        }
        if el.is("auth", ns::SASL) {
            if !self.link.tls && self.settings.tls_required {
                return self.sasl_failure(None, SaslFailure::EncryptionRequired, out);
            }
            let Some(mechanism) = el.attr("mechanism").map(str::to_owned) else {
                return self.sasl_failure(None, SaslFailure::InvalidMechanism, out);
            };
            if !self.link.mechanisms().contains(&mechanism.as_str()) {
                let failure = if mechanism == "PLAIN" && !self.link.tls {
                    SaslFailure::EncryptionRequired
                } else {
                    SaslFailure::InvalidMechanism
                };
                return self.sasl_failure(None, failure, out);
            }
            return match decode_sasl(&el.text()) {
                None => self.sasl_failure(None, SaslFailure::MalformedRequest, out),
                Some(data) if data.is_empty() => {
                    out.push(Action::Write(format!("<challenge xmlns='{}'/>", ns::SASL)));
                    self.phase = Phase::SaslAwaitInitial { mechanism };
                }
                Some(data) => self.sasl_initial(mechanism, data, out),
            };
        }
        if el.is("response", ns::SASL) {
            let Some(data) = decode_sasl(&el.text()) else {
                return self.sasl_failure(None, SaslFailure::MalformedRequest, out);
            };
            match std::mem::replace(&mut self.phase, Phase::Negotiating) {
                Phase::SaslAwaitInitial { mechanism } => self.sasl_initial(mechanism, data, out),
                Phase::Sasl(mut ex) => {
                    let step = ex.step(&data);
                    self.on_sasl_step(step, Some(ex), out);
                }
                _ => self.sasl_failure(None, SaslFailure::MalformedRequest, out),
            }
            return;
        }
        if el.is("abort", ns::SASL) {
            return self.sasl_failure(None, SaslFailure::Aborted, out);
        }
        if StanzaKind::of(&el, ns::CLIENT).is_some() {
            return self.fail(
                StreamError::with_text(StreamErrorCondition::NotAuthorized, "authenticate first"),
                out,
            );
        }
        self.fail(
            StreamError::new(StreamErrorCondition::UnsupportedStanzaType),
            out,
        )
    }

    fn sasl_initial(&mut self, mechanism: String, data: Vec<u8>, out: &mut Vec<Action>) {
        let Some(authcid) = initial_authcid(&mechanism, &data) else {
            return self.sasl_failure(None, SaslFailure::MalformedRequest, out);
        };
        // The local part is normalised as a JID node would be, so that
        // "Alice" and "alice" are one account.
        let normalised = BareJid::new(&format!("{}@{}", authcid, self.settings.domain))
            .ok()
            .and_then(|j| j.node().map(|n| n.to_string()));
        let Some(node) = normalised else {
            return self.sasl_failure(Some(authcid), SaslFailure::NotAuthorized, out);
        };
        out.push(Action::LookupCredentials(node.clone()));
        // rsasl compares the authcid as sent; it is kept as sent and the
        // looked-up credentials belong to its normalised form.
        let _ = node;
        self.phase = Phase::SaslLookup {
            mechanism,
            authcid,
            data,
        };
    }

    fn on_credentials(&mut self, creds: Option<Credentials>, out: &mut Vec<Action>) {
        let Phase::SaslLookup {
            mechanism,
            authcid,
            data,
        } = std::mem::replace(&mut self.phase, Phase::Negotiating)
        else {
            return;
        };
        match SaslExchange::start(
            &mechanism,
            &self.link,
            &self.settings.domain,
            &authcid,
            creds,
        ) {
            Err(f) => self.sasl_failure(Some(authcid), f, out),
            Ok(mut ex) => {
                let step = ex.step(&data);
                self.on_sasl_step(step, Some(Box::new(ex)), out);
            }
        }
    }

    fn on_sasl_step(
        &mut self,
        step: SaslStep,
        ex: Option<Box<SaslExchange>>,
        out: &mut Vec<Action>,
    ) {
        match step {
            SaslStep::Challenge(data) => {
                out.push(Action::Write(format!(
                    "<challenge xmlns='{}'>{}</challenge>",
                    ns::SASL,
                    base64::engine::general_purpose::STANDARD.encode(data)
                )));
                if let Some(ex) = ex {
                    self.phase = Phase::Sasl(ex);
                }
            }
            SaslStep::Success {
                authcid,
                additional_data,
            } => {
                let Ok(user) = BareJid::new(&format!("{}@{}", authcid, self.settings.domain))
                else {
                    return self.sasl_failure(Some(authcid), SaslFailure::NotAuthorized, out);
                };
                let body = additional_data
                    .map(|d| base64::engine::general_purpose::STANDARD.encode(d))
                    .unwrap_or_default();
                out.push(Action::Write(format!(
                    "<success xmlns='{}'>{}</success>",
                    ns::SASL,
                    body
                )));
                out.push(Action::Authenticated(user.clone()));
                out.push(Action::ResetFramer);
                self.user = Some(user);
                self.stage = Stage::PostAuth;
                self.phase = Phase::AwaitHeader;
            }
            SaslStep::Failure(f) => self.sasl_failure(None, f, out),
        }
    }

    fn sasl_failure(
        &mut self,
        authcid: Option<String>,
        failure: SaslFailure,
        out: &mut Vec<Action>,
    ) {
        self.phase = Phase::Negotiating;
        let counts = matches!(
            failure,
            SaslFailure::NotAuthorized | SaslFailure::MalformedRequest
        );
        if counts {
            self.auth_failures += 1;
            out.push(Action::AuthFailed { authcid });
        }
        out.push(Action::Write(format!(
            "<failure xmlns='{}'><{}/></failure>",
            ns::SASL,
            failure.name()
        )));
        if counts && self.auth_failures >= self.settings.max_auth_failures {
            self.fail(
                StreamError::with_text(
                    StreamErrorCondition::PolicyViolation,
                    "too many failed authentication attempts",
                ),
                out,
            );
        }
    }

    fn on_pre_bind(&mut self, el: Element, out: &mut Vec<Action>) {
        if el.is("resume", crate::sm::NS) {
            let (Some(previd), Some(h)) = (el.attr("previd"), crate::sm::parse_h(&el)) else {
                return self.fail(
                    StreamError::with_text(
                        StreamErrorCondition::BadFormat,
                        "resume needs previd and h",
                    ),
                    out,
                );
            };
            self.phase = Phase::ResumePending {
                previd: previd.to_owned(),
            };
            out.push(Action::Resume {
                previd: previd.to_owned(),
                h,
            });
            return;
        }
        if el.is("enable", crate::sm::NS) {
            out.push(Action::Write(sm_failed(None, "unexpected-request")));
            return;
        }
        let is_set = StanzaKind::of(&el, ns::CLIENT) == Some(StanzaKind::Iq)
            && stanza::stanza_type(&el) == Some("set");
        if is_set {
            if let Some(bind) = el.get_child("bind", ns::BIND) {
                let requested = bind
                    .get_child("resource", ns::BIND)
                    .map(|r| r.text())
                    .filter(|r| !r.is_empty());
                self.phase = Phase::BindPending {
                    iq_id: stanza::id(&el).unwrap_or_default().to_owned(),
                };
                out.push(Action::Bind { requested });
                return;
            }
        }
        if StanzaKind::of(&el, ns::CLIENT).is_some() {
            return self.fail(
                StreamError::with_text(
                    StreamErrorCondition::NotAuthorized,
                    "bind a resource first",
                ),
                out,
            );
        }
        self.fail(
            StreamError::new(StreamErrorCondition::UnsupportedStanzaType),
            out,
        )
    }

    fn on_bound(&mut self, result: Result<FullJid, BindError>, out: &mut Vec<Action>) {
        let Phase::BindPending { iq_id } = std::mem::replace(&mut self.phase, Phase::Negotiating)
        else {
            return;
        };
        let mut req = stanza::element("iq", ns::CLIENT, &[("type", "set"), ("id", &iq_id)]);
        req.append_child(Element::bare("bind", ns::BIND));
        match result {
            Ok(full) => {
                let mut bind = Element::bare("bind", ns::BIND);
                bind.append_child(stanza::text_element("jid", ns::BIND, &full.to_string()));
                let reply =
                    stanza::element("iq", ns::CLIENT, &[("type", "result"), ("id", &iq_id)]);
                let mut reply = reply;
                reply.append_child(bind);
                out.push(Action::Write(stanza::to_string(&reply)));
                out.push(Action::SessionStarted(full.clone()));
                self.bound = Some(full);
                self.phase = Phase::Established;
            }
            Err(e) => {
                let cond = match e {
                    BindError::Conflict => StanzaErrorCondition::Conflict,
                    BindError::ResourceConstraint => StanzaErrorCondition::ResourceConstraint,
                    BindError::BadRequest => StanzaErrorCondition::BadRequest,
                };
                out.push(Action::Write(stanza::to_string(&stanza::error_reply(
                    &req, cond, None,
                ))));
            }
        }
    }

    fn on_resumed(&mut self, result: Result<(FullJid, u32), Option<u32>>, out: &mut Vec<Action>) {
        let Phase::ResumePending { previd } =
            std::mem::replace(&mut self.phase, Phase::Negotiating)
        else {
            return;
        };
        match result {
            Ok((full, h)) => {
                out.push(Action::Write(format!(
                    "<resumed xmlns='{}' previd='{}' h='{h}'/>",
                    crate::sm::NS,
                    crate::error::escape(&previd)
                )));
                out.push(Action::SessionResumed(full.clone()));
                self.bound = Some(full);
                self.phase = Phase::Established;
            }
            Err(h) => out.push(Action::Write(sm_failed(h, "item-not-found"))),
        }
    }

    /// Stream-level elements of an established session: XEP-0198 and XEP-0352.
    fn on_nonza(&mut self, el: &Element, out: &mut Vec<Action>) -> bool {
        if let Some(parsed) = crate::sm::parse_nonza(el) {
            match sm_action(parsed) {
                Ok(action) => out.push(action),
                Err(e) => self.fail(e, out),
            }
            return true;
        }
        if el.has_ns(ns::CSI) {
            match el.name() {
                "active" => out.push(Action::ClientState { active: true }),
                "inactive" => out.push(Action::ClientState { active: false }),
                _ => self.fail(
                    StreamError::new(StreamErrorCondition::UnsupportedStanzaType),
                    out,
                ),
            }
            return true;
        }
        false
    }

    fn on_stanza(&mut self, mut el: Element, out: &mut Vec<Action>) {
        let Some(full) = self.bound.clone() else {
            return;
        };
        if self.on_nonza(&el, out) {
            return;
        }
        let Some(kind) = StanzaKind::of(&el, ns::CLIENT) else {
            let cond = if matches!(el.name(), "message" | "presence" | "iq") {
                StreamErrorCondition::InvalidNamespace
            } else {
                StreamErrorCondition::UnsupportedStanzaType
            };
            return self.fail(StreamError::new(cond), out);
        };
        if let Some(from) = stanza::from(&el) {
            let matches = match Jid::new(from) {
                Ok(j) => match j.try_as_full() {
                    Ok(f) => *f == full,
                    Err(b) => *b == full.to_bare(),
                },
                Err(_) => false,
            };
            if !matches {
                return self.fail(
                    StreamError::with_text(
                        StreamErrorCondition::InvalidFrom,
                        "from does not match the bound JID",
                    ),
                    out,
                );
            }
        }
        stanza::set_attr(&mut el, "from", full.to_string());
        // Stanzas answered here are handled as much as routed ones (XEP-0198
        // counts them), and their replies are stanzas too.
        if stanza::to_jid(&el).is_err() {
            if stanza::stanza_type(&el) != Some("error") {
                let reply = stanza::error_reply(&el, StanzaErrorCondition::JidMalformed, None);
                out.push(Action::Reply(reply));
            }
            out.push(Action::Handled);
            return;
        }
        if kind == StanzaKind::Iq && !valid_iq(&el) {
            let reply = stanza::error_reply(&el, StanzaErrorCondition::BadRequest, None);
            out.push(Action::Reply(reply));
            out.push(Action::Handled);
            return;
        }
        if kind == StanzaKind::Iq
            && stanza::stanza_type(&el) == Some("set")
            && stanza::to(&el).is_none()
            && el.has_child("session", ns::SESSION)
        {
            out.push(Action::Reply(stanza::iq_result(&el, None)));
            out.push(Action::Handled);
            return;
        }
        out.push(Action::Stanza(el));
    }
}

/// RFC 6120 8.2.3: an iq has an id, a type, and exactly one payload for
/// get and set. Results and errors pass through untouched.
fn valid_iq(el: &Element) -> bool {
    match (stanza::id(el), stanza::stanza_type(el)) {
        (Some(_), Some("get" | "set")) => el.children().count() == 1,
        (Some(_), Some("result" | "error")) => true,
        _ => false,
    }
}

/// The action for a XEP-0198 element on an established stream (shared by
/// client and component streams).
pub fn sm_action(parsed: Result<crate::sm::Nonza, &'static str>) -> Result<Action, StreamError> {
    use crate::sm::Nonza;
    match parsed {
        Ok(Nonza::Enable { resume, max }) => Ok(Action::EnableSm { resume, max }),
        Ok(Nonza::Request) => Ok(Action::AckRequested),
        Ok(Nonza::Ack(h)) => Ok(Action::Acked(h)),
        Ok(Nonza::Resume) => Ok(Action::Write(sm_failed(None, "unexpected-request"))),
        Err(why) => Err(StreamError::with_text(StreamErrorCondition::BadFormat, why)),
    }
}

/// XEP-0198 `<failed/>` with a stanza error condition and, when known,
/// the handled count.
pub fn sm_failed(h: Option<u32>, condition: &str) -> String {
    let h = h.map(|h| format!(" h='{h}'")).unwrap_or_default();
    format!(
        "<failed xmlns='{}'{h}><{condition} xmlns='{}'/></failed>",
        crate::sm::NS,
        ns::STANZAS_ERR
    )
}

fn decode_sasl(text: &str) -> Option<Vec<u8>> {
    let t = text.trim();
    if t.is_empty() || t == "=" {
        return Some(Vec::new());
    }
    base64::engine::general_purpose::STANDARD.decode(t).ok()
}

fn new_id() -> String {
    let n: u128 = rand::thread_rng().gen();
    format!("{n:032x}")
}

#[cfg(test)]
mod tests;
