//! XEP-0054 vcard-temp: each account's vCard, which the owner sets and
//! anyone may read. The server stores it as XML text and answers on the
//! account's behalf, so it is available while the owner is offline.

use super::{IqRequest, IqResult, Session, Target};
use crate::node::Node;
use jid::Jid;
use minidom::Element;
use tributary_proto::error::StanzaErrorCondition;
use tributary_proto::ns;
use tributary_proto::stanza;

pub const FEATURES: &[&str] = &[ns::VCARD];

/// Largest serialised vCard accepted. Avatars embedded as base64 PHOTOs
/// are the bulk of real vCards; 64 KiB fits a small one and keeps a
/// single account from filling the database through its profile.
pub const MAX_VCARD_BYTES: usize = 64 * 1024;

pub async fn handle(node: &Node, s: &mut Session, req: &IqRequest<'_>) -> IqResult {
    if req.payload.name() != "vCard" {
        return Err(StanzaErrorCondition::BadRequest);
    }
    if req.is_set() {
        // Section 3.2: only the owner publishes their vCard.
        if !req.is_self(s) {
            return Err(StanzaErrorCondition::Forbidden);
        }
        return set(node, s, req.payload).await;
    }
    if req.is_self(s) {
        // Section 3.1: with nothing stored, the owner gets an empty vCard
        // (allowed instead of item-not-found, and simpler for clients).
        return Ok(Some(read(node, &s.user).await?.unwrap_or_else(empty)));
    }
    // Only account targets are dispatched here; anything else (the domain
    // itself has no vCard) is refused rather than guessed at.
    let Target::Account(bare) = &req.target else {
        return Err(StanzaErrorCondition::ServiceUnavailable);
    };
    let Some(user) = bare.node().map(|n| n.as_str().to_owned()) else {
        return Err(StanzaErrorCondition::ServiceUnavailable);
    };
    // XEP-0191 section 3.3: to a contact the owner blocked, the account
    // appears not to exist, and iqs get service-unavailable.
    if node.blocks(&user, &Jid::from(s.jid.clone())).await {
        return Err(StanzaErrorCondition::ServiceUnavailable);
    }
    // Section 3.3: another user's missing vCard is an error, not an empty
    // vCard. Answering service-unavailable whether the account exists or
    // not (RFC 6121 8.5.1) also keeps this from revealing which do.
    match read(node, &user).await? {
        Some(vcard) => Ok(Some(vcard)),
        None => Err(StanzaErrorCondition::ServiceUnavailable),
    }
}

/// The stored vCard of `user`, if any.
async fn read(node: &Node, user: &str) -> Result<Option<Element>, StanzaErrorCondition> {
    match node.store.vcard(user).await {
        Ok(Some(xml)) => match parse_stored(&xml) {
            Some(el) => Ok(Some(el)),
            None => {
                tracing::warn!(%user, "stored vCard is not a vCard element");
                Err(StanzaErrorCondition::InternalServerError)
            }
        },
        Ok(None) => Ok(None),
        Err(e) => {
            tracing::warn!(%user, "cannot read vCard: {e}");
            Err(StanzaErrorCondition::InternalServerError)
        }
    }
}

async fn set(node: &Node, s: &Session, payload: &Element) -> IqResult {
    let xml = serialise(payload)?;
    match node.store.set_vcard(&s.user, &xml).await {
        Ok(()) => Ok(None),
        Err(e) => {
            tracing::warn!(user = %s.user, "cannot store vCard: {e}");
            Err(StanzaErrorCondition::InternalServerError)
        }
    }
}

/// The text stored for a vCard set, refused when over the size limit.
fn serialise(vcard: &Element) -> Result<String, StanzaErrorCondition> {
    let xml = stanza::to_string(vcard);
    // `to_string` yields "" only if serialisation failed; storing that
    // would later read back as a corrupt vCard.
    if xml.is_empty() {
        return Err(StanzaErrorCondition::BadRequest);
    }
    if xml.len() > MAX_VCARD_BYTES {
        return Err(StanzaErrorCondition::NotAcceptable);
    }
    Ok(xml)
}

/// Parses stored text back into a `<vCard xmlns='vcard-temp'>`; `None` if
/// the text is not one (a damaged row must not go out as a payload).
fn parse_stored(xml: &str) -> Option<Element> {
    xml.parse::<Element>()
        .ok()
        .filter(|el| el.is("vCard", ns::VCARD))
}

fn empty() -> Element {
    Element::bare("vCard", ns::VCARD)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(xml: &str) -> Element {
        xml.parse().expect("test XML parses")
    }

    #[test]
    fn round_trip_through_storage_text() {
        let v = parse(
            "<vCard xmlns='vcard-temp'><FN>Juliet &amp; co</FN>\
             <PHOTO><TYPE>image/png</TYPE><BINVAL>AAAA</BINVAL></PHOTO></vCard>",
        );
        let xml = serialise(&v).expect("small vCard accepted");
        assert_eq!(parse_stored(&xml), Some(v));
    }

    #[test]
    fn oversized_vcard_is_not_acceptable() {
        let mut v = empty();
        let mut photo = Element::bare("BINVAL", ns::VCARD);
        photo.append_text("A".repeat(MAX_VCARD_BYTES));
        v.append_child(photo);
        assert_eq!(serialise(&v), Err(StanzaErrorCondition::NotAcceptable));
    }

    #[test]
    fn damaged_rows_are_rejected() {
        assert_eq!(parse_stored("<vCard xmlns='vcard-temp'>"), None);
        assert_eq!(parse_stored("<other xmlns='vcard-temp'/>"), None);
        assert_eq!(parse_stored(""), None);
    }

    #[test]
    fn empty_vcard_shape() {
        let e = empty();
        assert!(e.is("vCard", ns::VCARD));
        assert_eq!(e.nodes().count(), 0);
        assert_eq!(parse_stored(&stanza::to_string(&e)), Some(e));
    }
}
