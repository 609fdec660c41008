//! XEP-0049 Private XML Storage (jabber:iq:private): one XML element per
//! namespace that only the owning account can read and write. Clients
//! keep settings there, and older ones their bookmarks (XEP-0048).
//!
//! The dispatcher only routes iqs about the sender's own account here.

use super::{IqRequest, IqResult, Session};
use crate::node::Node;
use minidom::Element;
use tributary_proto::error::StanzaErrorCondition;
use tributary_proto::ns;
use tributary_proto::stanza;

/// Private storage has no disco feature of its own, but some clients look
/// for the namespace before using it.
pub const FEATURES: &[&str] = &[ns::PRIVATE];

/// Largest serialised element stored under one namespace: bookmarks and
/// settings are small, and the limit keeps an account from using the
/// server as a file store.
pub const MAX_PRIVATE_BYTES: usize = 64 * 1024;

pub async fn handle(node: &Node, s: &mut Session, req: &IqRequest<'_>) -> IqResult {
    // Section 2.3: forbidden is the preferred answer for another user's
    // data. The dispatcher already guarantees this; checked again because
    // a mistake here would leak private data.
    if !req.is_self(s) {
        return Err(StanzaErrorCondition::Forbidden);
    }
    if req.payload.name() != "query" {
        return Err(StanzaErrorCondition::BadRequest);
    }
    let child = stored_child(req.payload)?;
    let key = child.ns();
    if req.is_set() {
        let xml = serialise(child)?;
        return match node.store.set_private_data(&s.user, &key, &xml).await {
            Ok(()) => Ok(None),
            Err(e) => {
                tracing::warn!(user = %s.user, namespace = %key, "cannot store private data: {e}");
                Err(StanzaErrorCondition::InternalServerError)
            }
        };
    }
    let stored = match node.store.private_data(&s.user, &key).await {
        Ok(stored) => stored,
        Err(e) => {
            tracing::warn!(user = %s.user, namespace = %key, "cannot read private data: {e}");
            return Err(StanzaErrorCondition::InternalServerError);
        }
    };
    let data = match stored {
        Some(xml) => match parse_stored(&xml, &key) {
            Some(el) => el,
            None => {
                tracing::warn!(user = %s.user, namespace = %key, "stored private data is corrupt");
                return Err(StanzaErrorCondition::InternalServerError);
            }
        },
        // Nothing stored: answer with the empty element that was asked
        // for, which is how clients recognise "no data" (section 2.3).
        None => Element::bare(child.name(), key.as_str()),
    };
    Ok(Some(query(data)))
}

/// The element a get or set is about: the query's single child, whose
/// namespace is the storage key.
fn stored_child(query: &Element) -> Result<&Element, StanzaErrorCondition> {
    let mut children = query.children();
    // Section 2.3: a query without a child is not-acceptable.
    let child = children.next().ok_or(StanzaErrorCondition::NotAcceptable)?;
    // A get names one namespace; a set could carry several elements of
    // one namespace, but the store keeps one element per namespace.
    if children.next().is_some() {
        return Err(StanzaErrorCondition::BadRequest);
    }
    if reserved(&child.ns()) {
        return Err(StanzaErrorCondition::NotAcceptable);
    }
    Ok(child)
}

/// Namespaces that cannot be a storage key. An unqualified child inherits
/// jabber:iq:private from the query, so refusing that also refuses
/// "no namespace of its own", which the XEP requires; the stanza
/// namespaces are refused because such an element would be read as a
/// stanza, not data. Other reserved names (jabber:*, vcard-temp) are
/// allowed: the XEP makes refusing them optional, and clients do use
/// some of them.
fn reserved(namespace: &str) -> bool {
    matches!(
        namespace,
        "" | ns::PRIVATE | ns::CLIENT | "jabber:server" | ns::COMPONENT_ACCEPT
    )
}

fn serialise(child: &Element) -> Result<String, StanzaErrorCondition> {
    let xml = stanza::to_string(child);
    // Empty only when serialisation failed; nothing sensible to store.
    if xml.is_empty() {
        return Err(StanzaErrorCondition::BadRequest);
    }
    if xml.len() > MAX_PRIVATE_BYTES {
        return Err(StanzaErrorCondition::NotAcceptable);
    }
    Ok(xml)
}

/// Parses stored text, which must be one element in the key's namespace.
fn parse_stored(xml: &str, key: &str) -> Option<Element> {
    xml.parse::<Element>().ok().filter(|el| el.ns() == key)
}

fn query(data: Element) -> Element {
    let mut q = Element::bare("query", ns::PRIVATE);
    q.append_child(data);
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(xml: &str) -> Element {
        xml.parse().expect("test XML parses")
    }

    #[test]
    fn the_single_child_is_the_key() {
        let q = parse(
            "<query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'>\
             <conference jid='room@muc.example' autojoin='true'/></storage></query>",
        );
        let child = stored_child(&q).expect("valid");
        assert!(child.is("storage", "storage:bookmarks"));
    }

    #[test]
    fn bad_queries_are_refused() {
        let cases = [
            (
                "<query xmlns='jabber:iq:private'/>",
                StanzaErrorCondition::NotAcceptable,
            ),
            // Unqualified: inherits jabber:iq:private.
            (
                "<query xmlns='jabber:iq:private'><prefs/></query>",
                StanzaErrorCondition::NotAcceptable,
            ),
            (
                "<query xmlns='jabber:iq:private'><message xmlns='jabber:client'/></query>",
                StanzaErrorCondition::NotAcceptable,
            ),
            (
                "<query xmlns='jabber:iq:private'><a xmlns='urn:a'/><b xmlns='urn:b'/></query>",
                StanzaErrorCondition::BadRequest,
            ),
        ];
        for (xml, cond) in cases {
            assert_eq!(stored_child(&parse(xml)).err(), Some(cond), "{xml}");
        }
    }

    #[test]
    fn storage_round_trip_and_size_limit() {
        let data = parse("<exodus xmlns='exodus:prefs'><defaultnick>Hamlet</defaultnick></exodus>");
        let xml = serialise(&data).expect("small element accepted");
        assert_eq!(parse_stored(&xml, "exodus:prefs"), Some(data));
        // Stored under another key, or damaged: not handed out.
        assert_eq!(parse_stored(&xml, "other:ns"), None);
        assert_eq!(
            parse_stored("<exodus xmlns='exodus:prefs'>", "exodus:prefs"),
            None
        );

        let mut big = Element::bare("blob", "urn:example");
        big.append_text("x".repeat(MAX_PRIVATE_BYTES));
        assert_eq!(serialise(&big), Err(StanzaErrorCondition::NotAcceptable));
    }

    #[test]
    fn result_wraps_data_in_query() {
        let q = query(Element::bare("exodus", "exodus:prefs"));
        assert!(q.is("query", ns::PRIVATE));
        assert!(q.has_child("exodus", "exodus:prefs"));
    }
}
