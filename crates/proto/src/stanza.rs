//! Stanza envelope helpers: the few attributes routing looks at (name,
//! `to`, `from`, `type`, `id`) and constructors for replies and errors.
//! Payloads stay inside the element untouched unless a module reads them.

use crate::error::{stanza_error_element, StanzaErrorCondition};
use crate::ns;
use jid::Jid;
use minidom::{Element, Node};
use rxml::{Namespace, NcName};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StanzaKind {
    Message,
    Presence,
    Iq,
}

impl StanzaKind {
    /// Classifies a top-level element; `None` when it is not a stanza in the
    /// given content namespace.
    pub fn of(el: &Element, content_ns: &str) -> Option<StanzaKind> {
        if !el.has_ns(content_ns) {
            return None;
        }
        match el.name() {
            "message" => Some(StanzaKind::Message),
            "presence" => Some(StanzaKind::Presence),
            "iq" => Some(StanzaKind::Iq),
            _ => None,
        }
    }
}

/// Makes an attribute name from a literal known to be a valid NCName.
pub fn name(n: &'static str) -> NcName {
    NcName::try_from(n).expect("attribute names in this crate are valid NCNames")
}

/// Sets (or replaces) an unqualified attribute.
pub fn set_attr(el: &mut Element, attr: &'static str, value: impl Into<String>) {
    el.set_attr(Namespace::NONE, name(attr), value.into());
}

/// Removes an unqualified attribute if present.
pub fn remove_attr(el: &mut Element, attr: &'static str) {
    el.attrs_mut().remove(&Namespace::NONE, &name(attr));
}

/// Builds `<name xmlns=ns>` with the given unqualified attributes.
pub fn element(el_name: &str, el_ns: &str, attrs: &[(&'static str, &str)]) -> Element {
    let mut el = Element::bare(el_name, el_ns);
    for (k, v) in attrs {
        set_attr(&mut el, k, *v);
    }
    el
}

/// Builds an element holding only text.
pub fn text_element(el_name: &str, el_ns: &str, text: &str) -> Element {
    let mut el = Element::bare(el_name, el_ns);
    el.append_text(text);
    el
}

pub fn to(el: &Element) -> Option<&str> {
    el.attr("to")
}

pub fn from(el: &Element) -> Option<&str> {
    el.attr("from")
}

pub fn stanza_type(el: &Element) -> Option<&str> {
    el.attr("type")
}

pub fn id(el: &Element) -> Option<&str> {
    el.attr("id")
}

/// Parses the `to` attribute. `Err` when present but not a valid JID.
pub fn to_jid(el: &Element) -> Result<Option<Jid>, jid::Error> {
    to(el).map(Jid::new).transpose()
}

/// An `iq` of type `result` answering `req`, optionally with a payload.
pub fn iq_result(req: &Element, payload: Option<Element>) -> Element {
    let mut iq = Element::bare("iq", ns::CLIENT);
    set_attr(&mut iq, "type", "result");
    if let Some(id) = id(req) {
        set_attr(&mut iq, "id", id);
    }
    if let Some(f) = from(req) {
        set_attr(&mut iq, "to", f);
    }
    if let Some(t) = to(req) {
        set_attr(&mut iq, "from", t);
    }
    if let Some(p) = payload {
        iq.append_child(p);
    }
    iq
}

/// The error reply RFC 6120 8.3.1 describes: same name and id, `to` and
/// `from` swapped, type `error`, the original payload kept for context.
pub fn error_reply(req: &Element, cond: StanzaErrorCondition, text: Option<&str>) -> Element {
    let mut reply = Element::bare(req.name(), ns::CLIENT);
    set_attr(&mut reply, "type", "error");
    if let Some(id) = id(req) {
        set_attr(&mut reply, "id", id);
    }
    if let Some(f) = from(req) {
        set_attr(&mut reply, "to", f);
    }
    if let Some(t) = to(req) {
        set_attr(&mut reply, "from", t);
    }
    for child in req.children() {
        if !child.is("error", ns::CLIENT) {
            reply.append_child(child.clone());
        }
    }
    reply.append_child(stanza_error_element(cond, text));
    reply
}

/// Moves an element and its descendants from one namespace to another
/// (`jabber:client` and `jabber:component:accept` carry the same stanzas;
/// RFC 6120 4.8.3 has servers translate between them).
pub fn translate(mut el: Element, from_ns: &str, to_ns: &str) -> Element {
    if !needs_translation(&el, from_ns) {
        return el;
    }
    let mut out = translated_bare(&el, from_ns, to_ns);
    *out.attrs_mut() = std::mem::take(el.attrs_mut());
    for node in el.take_nodes() {
        match node {
            minidom::Node::Element(child) => {
                out.append_child(translate(child, from_ns, to_ns));
            }
            minidom::Node::Text(t) => out.append_text_node(t),
        }
    }
    out
}

/// [`translate`] of a copy of `el`, made as it is translated: what the
/// queue stores of a client's stanza, which the connection keeps.
pub fn translated(el: &Element, from_ns: &str, to_ns: &str) -> Element {
    if !needs_translation(el, from_ns) {
        return el.clone();
    }
    let mut out = translated_bare(el, from_ns, to_ns);
    *out.attrs_mut() = el.attrs().clone();
    for node in el.nodes() {
        match node {
            minidom::Node::Element(child) => {
                out.append_child(translated(child, from_ns, to_ns));
            }
            minidom::Node::Text(t) => out.append_text_node(t.as_str()),
        }
    }
    out
}

/// [`to_string`] of [`translated`], without copying a tree that has
/// nothing to translate.
pub fn to_string_translated(el: &Element, from_ns: &str, to_ns: &str) -> String {
    if needs_translation(el, from_ns) {
        to_string(&translated(el, from_ns, to_ns))
    } else {
        to_string(el)
    }
}

fn needs_translation(el: &Element, from_ns: &str) -> bool {
    el.has_ns(from_ns) || el.children().any(|c| c.has_ns(from_ns))
}

/// `el`'s name in its translated namespace, without attributes or children.
fn translated_bare(el: &Element, from_ns: &str, to_ns: &str) -> Element {
    let ns = if el.has_ns(from_ns) {
        to_ns.to_owned()
    } else {
        el.ns()
    };
    Element::bare(el.name(), ns)
}

/// Serialises an element as a string for writing on a stream.
pub fn to_string(el: &Element) -> String {
    String::from_utf8(to_bytes(el)).unwrap_or_default()
}

/// Serialises an element for writing on a stream: the bytes minidom's
/// `write_to` gives, encoded by rxml straight into one buffer. minidom
/// encodes every tag, attribute and text into a buffer of its own and
/// copies it out, about half of its time for a report.
pub fn to_bytes(el: &Element) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    if encode(el, &mut rxml::writer::Encoder::new(), &mut out).is_err() {
        // An element with namespace prefixes of its own (none of ours has
        // them), or an invalid name: minidom writes or refuses it.
        out.clear();
        if el.write_to(&mut out).is_err() {
            out.clear();
        }
    }
    out
}

/// Why [`encode`] leaves an element to minidom.
struct NotEncoded;

impl From<rxml::Error> for NotEncoded {
    fn from(_: rxml::Error) -> Self {
        NotEncoded
    }
}

/// What minidom's `write_to_inner` does, item for item.
fn encode(
    el: &Element,
    enc: &mut rxml::writer::Encoder<rxml::writer::SimpleNamespaces>,
    out: &mut Vec<u8>,
) -> Result<(), NotEncoded> {
    use rxml::writer::Item;
    if !el.prefixes.declared_prefixes().is_empty() {
        return Err(NotEncoded);
    }
    let name = <&rxml::NcNameStr>::try_from(el.name()).map_err(|_| NotEncoded)?;
    enc.encode(Item::ElementHeadStart(Namespace::from(el.ns()), name), out)?;
    for ((ns, key), value) in el.attrs().iter() {
        enc.encode(Item::Attribute(ns.clone(), key, value), out)?;
    }
    if el.nodes().next().is_some() {
        enc.encode(Item::ElementHeadEnd, out)?;
        for node in el.nodes() {
            match node {
                Node::Element(child) => encode(child, enc, out)?,
                Node::Text(text) => enc.encode(Item::Text(text), out)?,
            }
        }
    }
    enc.encode(Item::ElementFoot, out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_reply_swaps_addresses_and_keeps_id() {
        let req = element(
            "iq",
            ns::CLIENT,
            &[
                ("to", "x@localhost"),
                ("from", "a@localhost/r"),
                ("id", "7"),
                ("type", "get"),
            ],
        );
        let err = error_reply(&req, StanzaErrorCondition::ServiceUnavailable, None);
        assert_eq!(to(&err), Some("a@localhost/r"));
        assert_eq!(from(&err), Some("x@localhost"));
        assert_eq!(id(&err), Some("7"));
        assert_eq!(stanza_type(&err), Some("error"));
    }

    #[test]
    fn translate_moves_only_the_given_namespace() {
        let el: Element = "<message xmlns='jabber:component:accept' to='a@b'><body>x</body><x xmlns='urn:other'><y/></x></message>"
            .parse()
            .expect("xml");
        let t = translate(el, ns::COMPONENT_ACCEPT, ns::CLIENT);
        assert!(t.is("message", ns::CLIENT));
        assert_eq!(t.attr("to"), Some("a@b"));
        assert_eq!(
            t.get_child("body", ns::CLIENT).map(|b| b.text()),
            Some("x".into())
        );
        assert!(t
            .get_child("x", "urn:other")
            .is_some_and(|x| x.has_child("y", "urn:other")));
    }

    #[test]
    fn a_translated_copy_is_the_translation_of_a_clone() {
        for xml in [
            "<message xmlns='jabber:client' to='a@b' id='1'><body>x &amp; y</body>\
             <report xmlns='urn:tributary:report:0' id='1'><json xmlns='urn:xmpp:json:0'>{}</json></report></message>",
            "<iq xmlns='jabber:client' type='get' id='2'><query xmlns='urn:other'><item xmlns='jabber:client'/></query></iq>",
            "<presence xmlns='urn:other'/>",
        ] {
            let el: Element = xml.parse().expect("xml");
            let copy = translated(&el, ns::CLIENT, ns::COMPONENT_ACCEPT);
            assert_eq!(
                copy,
                translate(el.clone(), ns::CLIENT, ns::COMPONENT_ACCEPT),
                "{xml}"
            );
            assert_eq!(el, xml.parse::<Element>().expect("xml"), "left as it was");
        }
    }

    #[test]
    fn classify() {
        let m = element("message", ns::CLIENT, &[]);
        assert_eq!(StanzaKind::of(&m, ns::CLIENT), Some(StanzaKind::Message));
        assert_eq!(StanzaKind::of(&m, ns::COMPONENT_ACCEPT), None);
    }

    fn minidom_bytes(el: &Element) -> Vec<u8> {
        let mut out = Vec::new();
        el.write_to(&mut out).expect("minidom writes it");
        out
    }

    #[test]
    fn to_bytes_writes_what_minidom_writes() {
        let texts = [
            // A report as the node queues it: nested default namespaces.
            "<message xmlns='jabber:component:accept' to='collect.localhost' from='a@localhost/r' id='r-1'>\
             <report xmlns='urn:tributary:report:0' id='r-1' kind='t'>\
             <json xmlns='urn:xmpp:json:0'>{\"k\":\"a &lt; b &amp; c\",\"q\":\"&quot;'\"}</json>\
             </report><request xmlns='urn:xmpp:receipts'/></message>",
            // Escaping in attributes and text, non-ASCII, mixed content,
            // xml:lang (a namespaced attribute), children in the parent's
            // namespace, an empty element.
            "<message xmlns='jabber:client' to='b@localhost' type='chat' xml:lang='fr' id='x&amp;&lt;&quot;&apos;&gt;'>\
             <body>Grüße &amp; &lt;tags&gt; &quot;quoted&quot; ☃\ttab</body>\
             <thread parent='p'>t</thread>text between<x xmlns='jabber:x:data' type='submit'/></message>",
            "<iq xmlns='jabber:client' type='result' id='1'/>",
        ];
        for text in texts {
            let el: Element = text.parse().expect("valid XML");
            assert_eq!(
                String::from_utf8(to_bytes(&el)).expect("UTF-8"),
                String::from_utf8(minidom_bytes(&el)).expect("UTF-8"),
            );
        }
        let built = Element::builder("presence", ns::CLIENT)
            .attr(NcName::try_from("from").expect("name"), "a@localhost/r")
            .append(Element::builder("show", ns::CLIENT).append("away"))
            .append(
                Element::builder("c", "http://jabber.org/protocol/caps")
                    .attr(NcName::try_from("ver").expect("name"), "a<b>"),
            )
            .build();
        assert_eq!(to_bytes(&built), minidom_bytes(&built));
    }

    #[test]
    fn to_bytes_leaves_prefixed_elements_to_minidom() {
        let el: Element = "<a xmlns='urn:a' xmlns:b='urn:b'><b:c/></a>"
            .parse()
            .expect("valid XML");
        assert_eq!(to_bytes(&el), minidom_bytes(&el));
    }
}
