//! RFC 6120 stream errors (section 4.9) and stanza errors (section 8.3).

use crate::ns;
use minidom::Element;

/// The defined stream error conditions we emit. Every condition closes the
/// stream; the variant names follow RFC 6120 section 4.9.3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamErrorCondition {
    BadFormat,
    Conflict,
    ConnectionTimeout,
    HostUnknown,
    ImproperAddressing,
    InvalidFrom,
    InvalidNamespace,
    InvalidXml,
    NotAuthorized,
    NotWellFormed,
    PolicyViolation,
    ResourceConstraint,
    RestrictedXml,
    SystemShutdown,
    UndefinedCondition,
    UnsupportedStanzaType,
    UnsupportedVersion,
    InternalServerError,
}

impl StreamErrorCondition {
    pub fn name(self) -> &'static str {
        use StreamErrorCondition::*;
        match self {
            BadFormat => "bad-format",
            Conflict => "conflict",
            ConnectionTimeout => "connection-timeout",
            HostUnknown => "host-unknown",
            ImproperAddressing => "improper-addressing",
            InvalidFrom => "invalid-from",
            InvalidNamespace => "invalid-namespace",
            InvalidXml => "invalid-xml",
            NotAuthorized => "not-authorized",
            NotWellFormed => "not-well-formed",
            PolicyViolation => "policy-violation",
            ResourceConstraint => "resource-constraint",
            RestrictedXml => "restricted-xml",
            SystemShutdown => "system-shutdown",
            UndefinedCondition => "undefined-condition",
            UnsupportedStanzaType => "unsupported-stanza-type",
            UnsupportedVersion => "unsupported-version",
            InternalServerError => "internal-server-error",
        }
    }
}

/// A stream error with an optional human-readable text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamError {
    pub condition: StreamErrorCondition,
    pub text: Option<String>,
    /// An application-specific condition element, serialised.
    pub app: Option<String>,
}

impl StreamError {
    pub fn new(condition: StreamErrorCondition) -> Self {
        StreamError {
            condition,
            text: None,
            app: None,
        }
    }

    pub fn with_text(condition: StreamErrorCondition, text: impl Into<String>) -> Self {
        StreamError {
            condition,
            text: Some(text.into()),
            app: None,
        }
    }

    /// Adds an application-specific condition (RFC 6120 4.9.4).
    pub fn with_app(mut self, app: String) -> Self {
        self.app = Some(app);
        self
    }

    /// `<stream:error>` serialised with an explicit prefix declaration, so
    /// it is valid wherever it is written on a stream.
    pub fn to_xml(&self) -> String {
        let mut out = format!(
            "<stream:error><{} xmlns='{}'/>",
            self.condition.name(),
            ns::STREAMS_ERR
        );
        if let Some(text) = &self.text {
            out.push_str(&format!(
                "<text xmlns='{}'>{}</text>",
                ns::STREAMS_ERR,
                escape(text)
            ));
        }
        if let Some(app) = &self.app {
            out.push_str(app);
        }
        out.push_str("</stream:error>");
        out
    }
}

impl std::fmt::Display for StreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.text {
            Some(t) => write!(f, "{}: {}", self.condition.name(), t),
            None => f.write_str(self.condition.name()),
        }
    }
}

/// Escapes text for use in XML character data or a quoted attribute.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// RFC 6120 section 8.3.3 stanza error conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StanzaErrorCondition {
    BadRequest,
    Conflict,
    FeatureNotImplemented,
    Forbidden,
    ItemNotFound,
    InternalServerError,
    JidMalformed,
    NotAcceptable,
    NotAllowed,
    NotAuthorized,
    PolicyViolation,
    RecipientUnavailable,
    RemoteServerNotFound,
    ResourceConstraint,
    ServiceUnavailable,
    UnexpectedRequest,
}

impl StanzaErrorCondition {
    pub fn name(self) -> &'static str {
        use StanzaErrorCondition::*;
        match self {
            BadRequest => "bad-request",
            Conflict => "conflict",
            FeatureNotImplemented => "feature-not-implemented",
            Forbidden => "forbidden",
            ItemNotFound => "item-not-found",
            InternalServerError => "internal-server-error",
            JidMalformed => "jid-malformed",
            NotAcceptable => "not-acceptable",
            NotAllowed => "not-allowed",
            NotAuthorized => "not-authorized",
            PolicyViolation => "policy-violation",
            RecipientUnavailable => "recipient-unavailable",
            RemoteServerNotFound => "remote-server-not-found",
            ResourceConstraint => "resource-constraint",
            ServiceUnavailable => "service-unavailable",
            UnexpectedRequest => "unexpected-request",
        }
    }

    /// The error type RFC 6120 section 8.3.3 recommends for the condition.
    pub fn default_type(self) -> &'static str {
        use StanzaErrorCondition::*;
        match self {
            BadRequest | JidMalformed | NotAcceptable | PolicyViolation => "modify",
            Conflict
            | FeatureNotImplemented
            | ItemNotFound
            | NotAllowed
            | RemoteServerNotFound
            | ServiceUnavailable => "cancel",
            Forbidden | NotAuthorized => "auth",
            InternalServerError => "cancel",
            RecipientUnavailable | ResourceConstraint | UnexpectedRequest => "wait",
        }
    }
}

/// Builds the `<error/>` child for a stanza error.
pub fn stanza_error_element(cond: StanzaErrorCondition, text: Option<&str>) -> Element {
    let mut err = Element::builder("error", ns::CLIENT)
        .attr(
            rxml::NcName::try_from("type").expect("static name"),
            cond.default_type(),
        )
        .append(Element::bare(cond.name(), ns::STANZAS_ERR))
        .build();
    if let Some(t) = text {
        let mut text_el = Element::bare("text", ns::STANZAS_ERR);
        text_el.append_text(t);
        err.append_child(text_el);
    }
    err
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_error_xml_names_condition_and_escapes_text() {
        let e = StreamError::with_text(StreamErrorCondition::PolicyViolation, "a<b");
        assert_eq!(
            e.to_xml(),
            "<stream:error><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>\
             <text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>a&lt;b</text></stream:error>"
        );
    }

    #[test]
    fn stanza_error_has_rfc_type() {
        let el = stanza_error_element(StanzaErrorCondition::ServiceUnavailable, None);
        assert_eq!(el.attr("type"), Some("cancel"));
        assert!(el.has_child("service-unavailable", ns::STANZAS_ERR));
    }
}
