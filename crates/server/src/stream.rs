//! The outbound half of a stream, shared by client and component
//! connections: bytes waiting to be written and the XEP-0198 bookkeeping
//! of every stanza written (kept until acknowledged, ack requests after
//! `every` stanzas or `delay`).

use minidom::Element;
use std::time::{Duration, Instant};
use tributary_proto::sm::{self, SmError, SmState};
use tributary_proto::{ns, stanza};

/// Who is on the other end, which decides how stanzas are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// A client: stanzas in `jabber:client`, each kept until acknowledged
    /// so it can be resent on resumption or stored when the session ends.
    Client,
    /// A component: stanzas in `jabber:component:accept`, counted but not
    /// kept; its queue items are redelivered from the queue by id, and a
    /// component link is never resumed.
    Component,
}

#[derive(Debug)]
pub struct Outgoing {
    /// Bytes waiting to be written.
    pub out: Vec<u8>,
    /// Stream management, once the peer enabled it.
    pub sm: Option<SmState>,
    /// Stanzas that could not be kept (over the unacked limit): the caller
    /// closes the stream and stores them.
    pub overflow: Vec<Element>,
    /// When the oldest stanza still waiting for an ack was sent.
    oldest_unacked: Option<Instant>,
    ack_requested: bool,
    ack_every: u32,
    ack_delay: Duration,
    peer: Peer,
}

impl Outgoing {
    pub fn new(ack_every: u32, ack_delay: Duration, peer: Peer) -> Outgoing {
        Outgoing {
            out: Vec::new(),
            sm: None,
            overflow: Vec::new(),
            oldest_unacked: None,
            ack_requested: false,
            ack_every,
            ack_delay,
            peer,
        }
    }

    pub fn raw(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    /// Writes a stanza, counting it (and, to a client, keeping it until
    /// acknowledged) when SM is on. `Err` when the unacked queue is full:
    /// a client's stanza is in `overflow` and the stream must be closed.
    pub fn emit(&mut self, el: Element) -> Result<(), SmError> {
        let el = match self.peer {
            Peer::Client => el,
            Peer::Component => stanza::translate(el, ns::CLIENT, ns::COMPONENT_ACCEPT),
        };
        let bytes = stanza::to_bytes(&el);
        self.send(&bytes, Some(el))
    }

    /// Writes a stanza serialised for this stream already (a component's
    /// queue item, stored as the component is sent it).
    pub fn emit_serialized(&mut self, bytes: &[u8]) -> Result<(), SmError> {
        self.send(bytes, None)
    }

    fn send(&mut self, bytes: &[u8], el: Option<Element>) -> Result<(), SmError> {
        let keep = el.filter(|_| self.peer == Peer::Client);
        let mut ask = false;
        if let Some(sm) = self.sm.as_mut() {
            if let Err(e) = sm.check_room() {
                self.overflow.extend(keep);
                return Err(e);
            }
            sm.on_send(keep)?;
            ask = sm.should_request(self.ack_every);
            if self.oldest_unacked.is_none() {
                self.oldest_unacked = Some(Instant::now());
            }
        }
        self.out.extend_from_slice(bytes);
        if ask {
            self.request_ack();
        }
        Ok(())
    }

    /// Sends `<r/>` (when SM is on).
    pub fn request_ack(&mut self) {
        if let Some(sm) = self.sm.as_mut() {
            sm.requested();
            self.ack_requested = true;
            self.out
                .extend_from_slice(format!("<r xmlns='{}'/>", sm::NS).as_bytes());
        }
    }

    /// Answers the peer's `<r/>` with our handled count.
    pub fn answer_ack_request(&mut self) {
        if let Some(h) = self.sm.as_ref().map(|s| s.handled()) {
            self.out
                .extend_from_slice(format!("<a xmlns='{}' h='{h}'/>", sm::NS).as_bytes());
        }
    }

    /// Counts one inbound stanza as handled.
    pub fn handled_one(&mut self) {
        if let Some(sm) = self.sm.as_mut() {
            sm.handled_one();
        }
    }

    /// Applies the peer's `<a h/>`; returns how many stanzas it acknowledged.
    pub fn on_ack(&mut self, h: u32) -> Result<usize, SmError> {
        let Some(sm) = self.sm.as_mut() else {
            return Ok(0);
        };
        let acked = sm.on_ack(h)?;
        self.ack_requested = false;
        self.oldest_unacked = (sm.unacked_len() > 0).then(Instant::now);
        Ok(acked)
    }

    /// When an ack request is due for the oldest unacknowledged stanza.
    pub fn ack_due(&self) -> Option<Instant> {
        match (self.oldest_unacked, self.ack_requested) {
            (Some(t), false) => Some(t + self.ack_delay),
            _ => None,
        }
    }

    /// Sends `<r/>` if it is due at `now`.
    pub fn on_timer(&mut self, now: Instant) {
        if self.ack_due().is_some_and(|due| now >= due) {
            self.request_ack();
        }
    }

    /// Takes what the peer has not acknowledged, oldest first, and resets
    /// the timers (for resending after resumption, or for storage).
    pub fn take_unacked(&mut self) -> Vec<Element> {
        self.oldest_unacked = None;
        self.ack_requested = false;
        self.sm
            .as_mut()
            .map(|s| s.take_unacked())
            .unwrap_or_default()
    }

    pub fn unacked_len(&self) -> usize {
        self.sm.as_ref().map_or(0, |s| s.unacked_len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: &str) -> Element {
        stanza::element("message", ns::CLIENT, &[("id", id)])
    }

    #[test]
    fn without_sm_stanzas_are_just_written() {
        let mut o = Outgoing::new(2, Duration::from_secs(1), Peer::Client);
        o.emit(msg("1")).expect("written");
        assert!(
            String::from_utf8_lossy(&o.out).contains("id=\"1\"")
                || String::from_utf8_lossy(&o.out).contains("id='1'")
        );
        assert_eq!(o.unacked_len(), 0);
        assert_eq!(o.ack_due(), None);
    }

    #[test]
    fn with_sm_stanzas_are_kept_and_acks_requested() {
        let mut o = Outgoing::new(2, Duration::from_secs(5), Peer::Client);
        o.sm = Some(SmState::new("id".into(), false, 3));
        o.emit(msg("1")).expect("kept");
        assert!(o.ack_due().is_some());
        o.out.clear();
        o.emit(msg("2")).expect("kept");
        assert!(String::from_utf8_lossy(&o.out).ends_with("<r xmlns='urn:xmpp:sm:3'/>"));
        assert_eq!(o.on_ack(2), Ok(2));
        assert_eq!(o.ack_due(), None);
        o.emit(msg("3")).expect("kept");
        o.emit(msg("4")).expect("kept");
        o.emit(msg("5")).expect("kept");
        assert!(o.emit(msg("6")).is_err());
        assert_eq!(o.overflow.len(), 1);
        assert_eq!(o.take_unacked().len(), 3);
    }

    #[test]
    fn to_a_component_stanzas_are_translated_and_counted_but_not_kept() {
        let mut o = Outgoing::new(10, Duration::from_secs(5), Peer::Component);
        o.sm = Some(SmState::new("id".into(), false, 2));
        o.emit(msg("1")).expect("counted");
        let written: Element = String::from_utf8_lossy(&o.out).parse().expect("xml");
        assert!(written.has_ns(ns::COMPONENT_ACCEPT));
        o.emit_serialized(b"<message xmlns='jabber:component:accept' id='2'/>")
            .expect("counted");
        assert!(o.emit(msg("3")).is_err(), "the unacked limit still holds");
        assert!(o.overflow.is_empty());
        assert_eq!(o.unacked_len(), 2);
        assert!(o.take_unacked().is_empty());
    }
}
