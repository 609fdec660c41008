//! Stream framing: turns bytes from a peer into stream headers, top-level
//! elements and the stream close, using rxml for all tokenising.
//!
//! The framer keeps one partially built element at most, and refuses any
//! top-level element whose bytes exceed the configured limit, so a peer
//! cannot make it hold more than `max_stanza_bytes` plus one token.

use crate::error::{StreamError, StreamErrorCondition};
use crate::ns;
use minidom::Element;
use rxml::{Event, Parse, Parser};

/// Attributes of a received `<stream:stream>` header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamHeader {
    pub id: Option<String>,
    pub to: Option<String>,
    pub from: Option<String>,
    pub version: Option<String>,
    pub lang: Option<String>,
}

/// One unit of a peer's stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// The opening `<stream:stream>` tag.
    StreamOpen(StreamHeader),
    /// A complete top-level element (a stanza or a negotiation element).
    Element(Element),
    /// Whitespace between top-level elements: a keepalive (RFC 6120 4.6.1).
    Whitespace,
    /// `</stream:stream>`.
    StreamClose,
}

/// Push-based framer; feed it whatever the socket returned.
pub struct Framer {
    parser: Parser,
    /// Elements under construction; `stack[0]` is the top-level element.
    stack: Vec<Element>,
    /// True between the stream header and its close tag.
    in_stream: bool,
    /// Bytes consumed by the top-level element being built.
    element_bytes: usize,
    max_element_bytes: usize,
}

impl Framer {
    pub fn new(max_element_bytes: usize) -> Self {
        Framer {
            parser: Parser::new(),
            stack: Vec::new(),
            in_stream: false,
            element_bytes: 0,
            max_element_bytes,
        }
    }

    /// Starts over for a new stream, as required after STARTTLS and SASL
    /// success (RFC 6120 5.4.3.3 and 6.4.6).
    pub fn reset(&mut self) {
        *self = Framer::new(self.max_element_bytes);
    }

    /// Consumes bytes from `buf` until one frame is complete or the buffer
    /// is exhausted (`Ok(None)`: feed more bytes).
    pub fn next_frame(&mut self, buf: &mut &[u8]) -> Result<Option<Frame>, StreamError> {
        loop {
            let ev = match self.parser.parse(buf, false) {
                Ok(Some(ev)) => ev,
                Ok(None) => return Ok(None),
                Err(rxml::error::EndOrError::NeedMoreData) => {
                    self.release_when_used_up(buf);
                    return Ok(None);
                }
                Err(rxml::error::EndOrError::Error(e)) => return Err(map_xml_error(e)),
            };
            if !self.stack.is_empty() || matches!(ev, Event::StartElement(..)) && self.in_stream {
                self.element_bytes += ev.metrics().len();
                if self.element_bytes > self.max_element_bytes {
                    return Err(StreamError::with_text(
                        StreamErrorCondition::PolicyViolation,
                        format!("stanza larger than {} bytes", self.max_element_bytes),
                    ));
                }
            }
            if let Some(frame) = self.on_event(ev)? {
                self.release_when_used_up(buf);
                return Ok(Some(frame));
            }
        }
    }

    /// Once the peer's bytes are used up (it sent nothing more for now),
    /// frees rxml's token buffer, sized for the longest token (8 KiB), and
    /// the element stack if no element is open: an idle session should not
    /// keep them until its next stanza. Most reads end on a frame, so this
    /// is checked there as well as on running dry. Allocating them again on
    /// the next read costs well under a microsecond.
    fn release_when_used_up(&mut self, buf: &[u8]) {
        if buf.is_empty() {
            self.parser.release_temporaries();
            if self.stack.is_empty() {
                self.stack = Vec::new();
            }
        }
    }

    fn on_event(&mut self, ev: Event) -> Result<Option<Frame>, StreamError> {
        match ev {
            Event::XmlDeclaration(..) => Ok(None),
            Event::StartElement(_, (nsuri, name), attrs) => {
                if !self.in_stream {
                    if name.as_str() != "stream" || nsuri.as_str() != ns::STREAM {
                        return Err(StreamError::new(StreamErrorCondition::InvalidNamespace));
                    }
                    self.in_stream = true;
                    let get = |n: &str| {
                        attrs
                            .iter()
                            .find(|((ans, an), _)| ans.is_none() && an.as_str() == n)
                            .map(|(_, v)| v.clone())
                    };
                    let lang = attrs
                        .iter()
                        .find(|((ans, an), _)| {
                            ans.as_str() == rxml::XMLNS_XML && an.as_str() == "lang"
                        })
                        .map(|(_, v)| v.clone());
                    return Ok(Some(Frame::StreamOpen(StreamHeader {
                        id: get("id"),
                        to: get("to"),
                        from: get("from"),
                        version: get("version"),
                        lang,
                    })));
                }
                let mut el = Element::bare(name.as_str(), nsuri.as_str());
                *el.attrs_mut() = attrs;
                self.stack.push(el);
                Ok(None)
            }
            Event::Text(_, text) => {
                match self.stack.last_mut() {
                    Some(top) => top.append_text(text),
                    None if text.chars().all(|c| c.is_ascii_whitespace()) => {
                        return Ok(Some(Frame::Whitespace))
                    }
                    None => {
                        return Err(StreamError::with_text(
                            StreamErrorCondition::BadFormat,
                            "character data at stream level",
                        ))
                    }
                }
                Ok(None)
            }
            Event::EndElement(_) => match self.stack.pop() {
                None => {
                    self.in_stream = false;
                    Ok(Some(Frame::StreamClose))
                }
                Some(done) => match self.stack.last_mut() {
                    Some(parent) => {
                        parent.append_child(done);
                        Ok(None)
                    }
                    None => {
                        self.element_bytes = 0;
                        Ok(Some(Frame::Element(done)))
                    }
                },
            },
        }
    }
}

fn map_xml_error(e: rxml::Error) -> StreamError {
    match e {
        rxml::Error::RestrictedXml(what) => {
            StreamError::with_text(StreamErrorCondition::RestrictedXml, what)
        }
        rxml::Error::UndeclaredEntity => StreamError::with_text(
            StreamErrorCondition::RestrictedXml,
            "entity references other than the predefined ones are not allowed",
        ),
        // rxml reports `<!DOCTYPE` and `<!ENTITY` as a malformed `<!` section.
        rxml::Error::InvalidSyntax(what) if what.contains("cdata or comment") => {
            StreamError::with_text(
                StreamErrorCondition::RestrictedXml,
                "DTDs and comments are not allowed",
            )
        }
        other => StreamError::with_text(StreamErrorCondition::NotWellFormed, other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPEN: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
        xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0' xml:lang='en'>";

    fn frames(input: &str, max: usize) -> Result<Vec<Frame>, StreamError> {
        let mut f = Framer::new(max);
        let mut out = Vec::new();
        // Feed one byte at a time: framing must not depend on read sizes.
        for b in input.as_bytes().chunks(1) {
            let mut slice = b;
            while let Some(frame) = f.next_frame(&mut slice)? {
                out.push(frame);
            }
        }
        Ok(out)
    }

    #[test]
    fn header_stanzas_whitespace_and_close() {
        let input = format!(
            "{OPEN}<message to='a@b'><body>hi &amp; bye</body></message> \
             <presence/></stream:stream>"
        );
        let f = frames(&input, 10_000).expect("valid stream");
        assert_eq!(
            f[0],
            Frame::StreamOpen(StreamHeader {
                id: None,
                to: Some("localhost".into()),
                from: None,
                version: Some("1.0".into()),
                lang: Some("en".into()),
            })
        );
        let Frame::Element(msg) = &f[1] else {
            panic!("expected element")
        };
        assert!(msg.is("message", ns::CLIENT));
        assert_eq!(msg.attr("to"), Some("a@b"));
        assert_eq!(
            msg.get_child("body", ns::CLIENT).map(|b| b.text()),
            Some("hi & bye".into())
        );
        assert_eq!(f[2], Frame::Whitespace);
        assert!(matches!(&f[3], Frame::Element(p) if p.name() == "presence"));
        assert_eq!(f[4], Frame::StreamClose);
    }

    #[test]
    fn wrong_stream_namespace_is_invalid_namespace() {
        let err = frames("<stream:stream xmlns:stream='urn:wrong'>", 100).unwrap_err();
        assert_eq!(err.condition, StreamErrorCondition::InvalidNamespace);
    }

    #[test]
    fn dtd_and_entities_are_restricted() {
        let err = frames("<!DOCTYPE foo [<!ENTITY x 'y'>]><stream:stream>", 100).unwrap_err();
        assert_eq!(err.condition, StreamErrorCondition::RestrictedXml);
        let err = frames(&format!("{OPEN}<message>&x;</message>"), 1000).unwrap_err();
        assert_eq!(err.condition, StreamErrorCondition::RestrictedXml);
    }

    #[test]
    fn processing_instruction_is_restricted() {
        let err = frames(&format!("{OPEN}<?foo bar?>"), 1000).unwrap_err();
        assert_eq!(err.condition, StreamErrorCondition::RestrictedXml);
    }

    #[test]
    fn mismatched_tags_are_not_well_formed() {
        let err = frames(&format!("{OPEN}<message></presence>"), 1000).unwrap_err();
        assert_eq!(err.condition, StreamErrorCondition::NotWellFormed);
    }

    #[test]
    fn oversized_stanza_is_policy_violation() {
        let body = "x".repeat(500);
        let err = frames(
            &format!("{OPEN}<message><body>{body}</body></message>"),
            200,
        )
        .unwrap_err();
        assert_eq!(err.condition, StreamErrorCondition::PolicyViolation);
        // The same stanza fits a larger limit, and the count restarts per stanza.
        let twice = format!(
            "{OPEN}<message><body>{body}</body></message><message><body>{body}</body></message>"
        );
        assert_eq!(frames(&twice, 600).expect("fits").len(), 3);
    }
}
