//! XEP-0198 Stream Management counters, without I/O.
//!
//! `h` values are 32-bit and wrap (XEP-0198 section 4). The server counts
//! an inbound stanza only once it has been handled (routed to a session or
//! committed to storage), and keeps every outbound stanza until the peer
//! acknowledges it, so nothing is lost when a link drops and nothing is
//! duplicated when the stream resumes.

use minidom::Element;
use std::collections::VecDeque;

pub const NS: &str = "urn:xmpp:sm:3";

/// Why an acknowledgement cannot be accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SmError {
    /// The peer acknowledged more than was sent, or its `h` went backwards
    /// (which, modulo 2^32, looks the same).
    #[error("handled count {h} is not between the last ack and the {sent} stanzas sent")]
    HandledCountTooHigh { h: u32, sent: u32 },
    /// More unacknowledged stanzas than the configured maximum.
    #[error("more than {max} stanzas unacknowledged")]
    TooManyUnacked { max: usize },
}

impl SmError {
    /// The XEP-0198 application condition for the stream error, if any.
    pub fn app_condition(&self) -> Option<String> {
        match self {
            SmError::HandledCountTooHigh { h, sent } => Some(format!(
                "<handled-count-too-high xmlns='{NS}' h='{h}' send-count='{sent}'/>"
            )),
            SmError::TooManyUnacked { .. } => None,
        }
    }
}

/// Both directions of one stream-managed session.
#[derive(Debug, Clone)]
pub struct SmState {
    /// The resumption id given in `<enabled/>`.
    pub id: String,
    pub resumable: bool,
    /// Inbound stanzas handled (the `h` we report).
    handled: u32,
    /// Outbound stanzas sent (the peer's `h` counts up to this).
    sent: u32,
    /// Sent and not yet acknowledged, oldest first: numbers
    /// `sent - len + 1 ..= sent` (mod 2^32). `None` for a stanza counted
    /// but not kept: one whose copy is kept elsewhere (a component's
    /// durable queue), so no clone is made only to be dropped at the ack.
    unacked: VecDeque<Option<Element>>,
    max_unacked: usize,
    /// Stanzas sent since our last `<r/>`.
    since_request: u32,
}

impl SmState {
    pub fn new(id: String, resumable: bool, max_unacked: usize) -> SmState {
        SmState {
            id,
            resumable,
            handled: 0,
            sent: 0,
            unacked: VecDeque::new(),
            max_unacked,
            since_request: 0,
        }
    }

    /// Counts one inbound stanza as handled.
    pub fn handled_one(&mut self) {
        self.handled = self.handled.wrapping_add(1);
    }

    /// The `h` to report in `<a/>` and `<resumed/>`.
    pub fn handled(&self) -> u32 {
        self.handled
    }

    pub fn sent(&self) -> u32 {
        self.sent
    }

    /// Records an outbound stanza about to be written, keeping `el` until
    /// it is acknowledged.
    pub fn on_send(&mut self, el: Option<Element>) -> Result<(), SmError> {
        self.check_room()?;
        self.sent = self.sent.wrapping_add(1);
        self.since_request = self.since_request.saturating_add(1);
        self.unacked.push_back(el);
        Ok(())
    }

    /// `Err` when one more stanza would exceed the unacked limit.
    pub fn check_room(&self) -> Result<(), SmError> {
        if self.unacked.len() >= self.max_unacked {
            return Err(SmError::TooManyUnacked {
                max: self.max_unacked,
            });
        }
        Ok(())
    }

    /// Applies the peer's `h`; returns how many stanzas it newly acknowledged.
    pub fn on_ack(&mut self, h: u32) -> Result<usize, SmError> {
        let acked_before = self.sent.wrapping_sub(self.unacked.len() as u32);
        let newly = h.wrapping_sub(acked_before) as usize;
        if newly > self.unacked.len() {
            return Err(SmError::HandledCountTooHigh { h, sent: self.sent });
        }
        self.unacked.drain(..newly);
        Ok(newly)
    }

    pub fn unacked_len(&self) -> usize {
        self.unacked.len()
    }

    /// Takes every unacknowledged stanza that was kept, oldest first (for
    /// resending on resumption, or for offline storage when the session
    /// ends).
    pub fn take_unacked(&mut self) -> Vec<Element> {
        // Taken stanzas are resent (and counted again) or stored; the
        // counter restarts from the acknowledged position.
        self.sent = self.sent.wrapping_sub(self.unacked.len() as u32);
        self.unacked.drain(..).flatten().collect()
    }

    /// Whether to ask for an ack now: `every` stanzas were sent since the
    /// last request. Resets the count when it says yes.
    pub fn should_request(&mut self, every: u32) -> bool {
        if self.since_request >= every.max(1) {
            self.since_request = 0;
            true
        } else {
            false
        }
    }

    /// Marks that a request was sent for another reason (timer, idle).
    pub fn requested(&mut self) {
        self.since_request = 0;
    }

    #[cfg(test)]
    fn at(sent: u32, handled: u32) -> SmState {
        let mut s = SmState::new("t".into(), true, 10);
        s.sent = sent;
        s.handled = handled;
        s
    }
}

/// A XEP-0198 element received on an established stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nonza {
    Enable {
        resume: bool,
        max: Option<u32>,
    },
    Request,
    Ack(u32),
    /// `<resume/>` where it is not allowed.
    Resume,
}

/// Classifies an element in the SM namespace; `Err` names what is wrong.
pub fn parse_nonza(el: &Element) -> Option<Result<Nonza, &'static str>> {
    if !el.has_ns(NS) {
        return None;
    }
    Some(match el.name() {
        "enable" => Ok(Nonza::Enable {
            resume: matches!(el.attr("resume"), Some("true" | "1")),
            max: el.attr("max").and_then(|m| m.parse().ok()),
        }),
        "r" => Ok(Nonza::Request),
        "a" => parse_h(el).map(Nonza::Ack).ok_or("ack without a valid h"),
        "resume" => Ok(Nonza::Resume),
        _ => Err("unknown stream management element"),
    })
}

/// Parses the `h` attribute of `<a/>` or `<resume/>`.
pub fn parse_h(el: &Element) -> Option<u32> {
    el.attr("h")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(n: u32) -> Option<Element> {
        Some(crate::stanza::element(
            "message",
            crate::ns::CLIENT,
            &[("id", &n.to_string())],
        ))
    }

    #[test]
    fn acks_remove_exactly_what_was_acknowledged() {
        let mut s = SmState::new("x".into(), true, 10);
        for i in 1..=5 {
            s.on_send(m(i)).expect("room");
        }
        assert_eq!(s.on_ack(2), Ok(2));
        assert_eq!(s.unacked_len(), 3);
        assert_eq!(s.on_ack(2), Ok(0), "a repeated ack is harmless");
        assert_eq!(s.on_ack(5), Ok(3));
        assert_eq!(s.unacked_len(), 0);
    }

    #[test]
    fn h_larger_than_sent_is_an_error() {
        let mut s = SmState::new("x".into(), true, 10);
        s.on_send(m(1)).expect("room");
        assert_eq!(
            s.on_ack(3),
            Err(SmError::HandledCountTooHigh { h: 3, sent: 1 })
        );
        let app = SmError::HandledCountTooHigh { h: 3, sent: 1 }
            .app_condition()
            .expect("app");
        assert!(app.contains("h='3'") && app.contains("send-count='1'"));
    }

    #[test]
    fn h_going_backwards_is_an_error() {
        let mut s = SmState::new("x".into(), true, 10);
        for i in 1..=4 {
            s.on_send(m(i)).expect("room");
        }
        s.on_ack(3).expect("valid");
        assert!(matches!(
            s.on_ack(2),
            Err(SmError::HandledCountTooHigh { .. })
        ));
    }

    #[test]
    fn counters_wrap_at_two_to_the_32() {
        let mut s = SmState::at(u32::MAX - 1, u32::MAX);
        s.handled_one();
        assert_eq!(s.handled(), 0);
        for i in 0..4 {
            s.on_send(m(i)).expect("room");
        }
        // Sent numbers: MAX, 0, 1, 2.
        assert_eq!(s.sent(), 2);
        assert_eq!(s.on_ack(u32::MAX), Ok(1));
        assert_eq!(s.on_ack(1), Ok(2));
        assert_eq!(s.unacked_len(), 1);
        assert!(s.on_ack(u32::MAX - 5).is_err(), "far behind is refused");
    }

    #[test]
    fn unacked_queue_is_bounded() {
        let mut s = SmState::new("x".into(), true, 2);
        s.on_send(m(1)).expect("room");
        s.on_send(m(2)).expect("room");
        assert_eq!(s.on_send(m(3)), Err(SmError::TooManyUnacked { max: 2 }));
    }

    #[test]
    fn taking_unacked_rewinds_the_send_counter() {
        let mut s = SmState::new("x".into(), true, 10);
        for i in 1..=3 {
            s.on_send(m(i)).expect("room");
        }
        s.on_ack(1).expect("valid");
        let resend = s.take_unacked();
        assert_eq!(
            resend.iter().map(|e| e.attr("id")).collect::<Vec<_>>(),
            [Some("2"), Some("3")]
        );
        assert_eq!(s.sent(), 1);
        for e in resend {
            s.on_send(Some(e)).expect("room");
        }
        assert_eq!(s.on_ack(3), Ok(2));
    }

    #[test]
    fn stanzas_counted_but_not_kept_are_acked_alike_and_never_resent() {
        let mut s = SmState::new("x".into(), true, 3);
        s.on_send(m(1)).expect("room");
        s.on_send(None).expect("room");
        s.on_send(m(3)).expect("room");
        assert_eq!(s.on_send(None), Err(SmError::TooManyUnacked { max: 3 }));
        assert_eq!(s.on_ack(2), Ok(2));
        s.on_send(None).expect("room");
        assert_eq!(s.sent(), 4);
        let resend = s.take_unacked();
        assert_eq!(
            resend.iter().map(|e| e.attr("id")).collect::<Vec<_>>(),
            [Some("3")]
        );
        assert_eq!(s.sent(), 2, "rewound past the uncounted one as well");
    }

    #[test]
    fn requests_after_every_n_stanzas() {
        let mut s = SmState::new("x".into(), true, 10);
        s.on_send(m(1)).expect("room");
        assert!(!s.should_request(2));
        s.on_send(m(2)).expect("room");
        assert!(s.should_request(2));
        assert!(!s.should_request(2));
    }
}
