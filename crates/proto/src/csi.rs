//! XEP-0352 Client State Indication: what to hold back from an inactive
//! client. Presence is coalesced (only the latest per sender is kept),
//! other non-urgent stanzas (chat states, receipts without a body) wait
//! in order, and everything urgent goes out at once.

use crate::ns;
use minidom::Element;

/// Held stanzas beyond which the queue is flushed anyway, so an inactive
/// client never makes the server hold an unbounded amount.
const MAX_HELD: usize = 256;

#[derive(Debug, Default)]
pub struct CsiQueue {
    inactive: bool,
    /// Latest presence per sender, in order of first arrival.
    presences: Vec<(String, Element)>,
    held: Vec<Element>,
}

/// Urgent stanzas are never held: messages with a body (or any payload a
/// user would notice), iqs (someone waits for the answer), and anything
/// that is not presence or a bodiless message.
pub fn is_urgent(el: &Element) -> bool {
    match el.name() {
        "presence" => false,
        "message" => {
            el.has_child("body", ns::CLIENT)
                || el.attr("type") == Some("error")
                || el.has_child("received", ns::CARBONS)
                || el.has_child("sent", ns::CARBONS)
        }
        _ => true,
    }
}

impl CsiQueue {
    pub fn is_inactive(&self) -> bool {
        self.inactive
    }

    /// Offers a stanza for the client; returns what to send now.
    pub fn offer(&mut self, el: Element) -> Vec<Element> {
        if !self.inactive || is_urgent(&el) {
            return vec![el];
        }
        if el.name() == "presence" {
            let from = el.attr("from").unwrap_or_default().to_owned();
            match self.presences.iter_mut().find(|(f, _)| *f == from) {
                Some(slot) => slot.1 = el,
                None => self.presences.push((from, el)),
            }
        } else {
            self.held.push(el);
        }
        if self.presences.len() + self.held.len() > MAX_HELD {
            return self.flush();
        }
        Vec::new()
    }

    /// The client said `<active/>` or `<inactive/>`; returns what to send now.
    pub fn set_active(&mut self, active: bool) -> Vec<Element> {
        self.inactive = !active;
        if active {
            self.flush()
        } else {
            Vec::new()
        }
    }

    /// Everything held, presences first.
    pub fn flush(&mut self) -> Vec<Element> {
        let mut out: Vec<Element> = self.presences.drain(..).map(|(_, p)| p).collect();
        out.append(&mut self.held);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn el(xml: &str) -> Element {
        xml.parse().expect("test XML")
    }

    fn presence(from: &str, show: &str) -> Element {
        el(&format!(
            "<presence xmlns='jabber:client' from='{from}'><show>{show}</show></presence>"
        ))
    }

    #[test]
    fn active_client_gets_everything_at_once() {
        let mut q = CsiQueue::default();
        assert_eq!(q.offer(presence("a@x/1", "away")).len(), 1);
    }

    #[test]
    fn inactive_client_gets_only_the_latest_presence_per_contact() {
        let mut q = CsiQueue::default();
        q.set_active(false);
        assert!(q.offer(presence("a@x/1", "away")).is_empty());
        assert!(q.offer(presence("b@x/1", "dnd")).is_empty());
        assert!(q.offer(presence("a@x/1", "xa")).is_empty());
        let chat_state = el("<message xmlns='jabber:client' from='b@x/1'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>");
        assert!(q.offer(chat_state).is_empty());
        let out = q.set_active(true);
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].attr("from"), Some("a@x/1"));
        assert_eq!(
            out[0].get_child("show", ns::CLIENT).map(|s| s.text()),
            Some("xa".into())
        );
        assert_eq!(out[1].attr("from"), Some("b@x/1"));
        assert_eq!(out[2].name(), "message");
    }

    #[test]
    fn messages_with_a_body_and_iqs_are_never_held() {
        let mut q = CsiQueue::default();
        q.set_active(false);
        let msg = el("<message xmlns='jabber:client'><body>hi</body></message>");
        assert_eq!(q.offer(msg).len(), 1);
        let iq = el("<iq xmlns='jabber:client' type='get' id='1'/>");
        assert_eq!(q.offer(iq).len(), 1);
    }

    #[test]
    fn the_queue_is_bounded() {
        let mut q = CsiQueue::default();
        q.set_active(false);
        let mut flushed = 0;
        for i in 0..=MAX_HELD {
            flushed += q.offer(presence(&format!("u{i}@x/r"), "away")).len();
        }
        assert_eq!(flushed, MAX_HELD + 1);
    }
}
