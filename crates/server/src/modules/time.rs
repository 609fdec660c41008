//! XEP-0202 Entity Time of the server.
//!
//! The server always reports UTC with a zero offset (`tzo` +00:00): the
//! host's local time zone says where the machine is, which peers have no
//! need to know, and servers are commonly run in UTC anyway. The time is
//! written in the XEP-0082 DateTime profile, to the second.

use super::{IqRequest, IqResult, Session};
use crate::node::Node;
use minidom::Element;
use time::format_description::BorrowedFormatItem;
use time::macros::format_description;
use time::{OffsetDateTime, UtcOffset};
use tributary_proto::error::StanzaErrorCondition;
use tributary_proto::ns;
use tributary_proto::stanza::text_element;

/// Disco features of this module.
pub const FEATURES: &[&str] = &[ns::TIME];

/// XEP-0082 DateTime in UTC, e.g. 2026-11-25T10:00:00Z. Fractions of a
/// second are optional in the profile and of no use to an entity-time peer.
const UTC_FORMAT: &[BorrowedFormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");

pub async fn handle(_node: &Node, _s: &mut Session, req: &IqRequest<'_>) -> IqResult {
    if req.is_set() || req.payload.name() != "time" {
        return Err(StanzaErrorCondition::BadRequest);
    }
    render(OffsetDateTime::now_utc()).map(Some).map_err(|e| {
        // Cannot happen for a date-time with every component the format
        // names; logged rather than unwrapped all the same.
        tracing::warn!("cannot format the current time: {e}");
        StanzaErrorCondition::InternalServerError
    })
}

/// The current time as a XEP-0082 DateTime in UTC, whole seconds (also
/// used for XEP-0203 delay stamps: several client libraries, slixmpp
/// among them, cannot read more than six fractional digits).
pub fn now_stamp() -> String {
    OffsetDateTime::now_utc()
        .format(UTC_FORMAT)
        .unwrap_or_default()
}

/// The `<time/>` answer for the instant `now`, converted to UTC first so
/// the caller may pass a date-time in any offset.
///
/// Fallible only because `time`'s formatting API is; see [`handle`].
fn render(now: OffsetDateTime) -> Result<Element, time::error::Format> {
    let utc = now.to_offset(UtcOffset::UTC).format(UTC_FORMAT)?;
    let mut el = Element::bare("time", ns::TIME);
    el.append_child(text_element("tzo", ns::TIME, "+00:00"));
    el.append_child(text_element("utc", ns::TIME, &utc));
    Ok(el)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn child_text(el: &Element, name: &str) -> Option<String> {
        el.get_child(name, ns::TIME).map(Element::text)
    }

    #[test]
    fn renders_xep_0082_utc() {
        let el = render(datetime!(2026-11-25 10:00:00.123 UTC)).expect("formats");
        assert!(el.is("time", ns::TIME));
        assert_eq!(child_text(&el, "tzo").as_deref(), Some("+00:00"));
        assert_eq!(
            child_text(&el, "utc").as_deref(),
            Some("2026-11-25T10:00:00Z")
        );
    }

    #[test]
    fn converts_other_offsets_to_utc() {
        let el = render(datetime!(2026-01-01 01:30:05 +02:00)).expect("formats");
        assert_eq!(
            child_text(&el, "utc").as_deref(),
            Some("2025-12-31T23:30:05Z")
        );
    }

    #[test]
    fn pads_small_components() {
        let el = render(datetime!(0987-03-04 05:06:07 UTC)).expect("formats");
        assert_eq!(
            child_text(&el, "utc").as_deref(),
            Some("0987-03-04T05:06:07Z")
        );
    }
}
