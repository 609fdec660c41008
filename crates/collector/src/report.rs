//! Reports: what callers hand in, ids, timestamps and the wire form.

use crate::Error;
use minidom::Element;
use std::sync::atomic::{AtomicU32, Ordering};
use tributary_proto::{ns, stanza};

pub const REPORT_NS: &str = "urn:tributary:report:0";
/// XEP-0335 JSON containers.
pub const JSON_NS: &str = "urn:xmpp:json:0";
/// XEP-0184 message delivery receipts.
pub const RECEIPTS_NS: &str = "urn:xmpp:receipts";

/// Largest serialised payload accepted, well below the server's default
/// `max_stanza_bytes` (256 KiB), so a report never breaks the stream.
pub const MAX_PAYLOAD_BYTES: usize = 200 * 1024;
const MAX_ATTR_BYTES: usize = 256;

/// One report as a caller hands it in. Missing fields are filled in when
/// it enters the outbox: a fresh unique id, the configured kind, and the
/// current time.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub id: Option<String>,
    pub kind: Option<String>,
    /// XEP-0082 date-time, e.g. `2026-11-25T10:00:00Z`.
    pub at: Option<String>,
    pub payload: serde_json::Value,
}

impl Report {
    pub fn new(payload: serde_json::Value) -> Report {
        Report {
            id: None,
            kind: None,
            at: None,
            payload,
        }
    }
}

impl From<serde_json::Value> for Report {
    fn from(payload: serde_json::Value) -> Report {
        Report::new(payload)
    }
}

/// A report as the outbox holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub id: String,
    pub kind: String,
    pub at: Option<String>,
    /// The JSON text.
    pub payload: String,
}

impl Stored {
    /// Checks and completes a caller's report.
    pub fn prepare(r: Report, default_kind: &str) -> Result<Stored, Error> {
        let id = match r.id {
            Some(id) => id,
            None => new_id(),
        };
        check_attr("id", &id)?;
        if id.is_empty() {
            return Err(Error::InvalidReport("empty id".into()));
        }
        let kind = r.kind.unwrap_or_else(|| default_kind.to_owned());
        check_attr("kind", &kind)?;
        let at = match r.at {
            Some(at) if is_datetime(&at) => at,
            Some(at) => {
                return Err(Error::InvalidReport(format!(
                    "report {id}: `at` is not a XEP-0082 date-time: {at:?}"
                )))
            }
            None => now(),
        };
        let payload = serde_json::to_string(&r.payload)
            .map_err(|e| Error::InvalidReport(format!("report {id}: {e}")))?;
        if payload.len() > MAX_PAYLOAD_BYTES {
            return Err(Error::InvalidReport(format!(
                "report {id}: payload of {} bytes is larger than {MAX_PAYLOAD_BYTES}",
                payload.len()
            )));
        }
        Ok(Stored {
            id,
            kind,
            at: Some(at),
            payload,
        })
    }

    /// The `<message/>` carrying this report to `to`.
    pub fn stanza(&self, to: &str) -> Element {
        let mut report = stanza::element(
            "report",
            REPORT_NS,
            &[("id", &self.id), ("kind", &self.kind)],
        );
        if let Some(at) = &self.at {
            stanza::set_attr(&mut report, "at", at.as_str());
        }
        report.append_child(stanza::text_element("json", JSON_NS, &self.payload));
        let mut msg = stanza::element("message", ns::CLIENT, &[("to", to), ("id", &self.id)]);
        msg.append_child(report);
        msg.append_child(Element::bare("request", RECEIPTS_NS));
        msg
    }
}

fn check_attr(name: &str, value: &str) -> Result<(), Error> {
    if value.len() > MAX_ATTR_BYTES {
        return Err(Error::InvalidReport(format!(
            "{name} longer than {MAX_ATTR_BYTES} bytes"
        )));
    }
    // XML 1.0 forbids most control characters even when escaped.
    if value
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
    {
        return Err(Error::InvalidReport(format!(
            "{name} contains control characters: {value:?}"
        )));
    }
    Ok(())
}

/// `R-<unix ms>-<random>-<counter>`: unique per sender without any
/// coordination (64 random bits per process, a counter within it).
pub fn new_id() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    static PROCESS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let process = *PROCESS.get_or_init(rand::random::<u64>);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let ms = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
    format!("R-{ms}-{process:016x}-{n}")
}

/// The current time as a XEP-0082 date-time in UTC, to the second.
pub fn now() -> String {
    let t = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// XEP-0082 DateTime: `CCYY-MM-DDThh:mm:ss[.sss]TZD`, TZD = `Z` or `±hh:mm`.
pub fn is_datetime(s: &str) -> bool {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    if b.len() < 20
        || !digits(0..4)
        || b[4] != b'-'
        || !digits(5..7)
        || b[7] != b'-'
        || !digits(8..10)
        || b[10] != b'T'
        || !digits(11..13)
        || b[13] != b':'
        || !digits(14..16)
        || b[16] != b':'
        || !digits(17..19)
    {
        return false;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return false;
        }
        rest = &frac[n..];
    }
    match rest.as_bytes() {
        b"Z" => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => [h1, h2, m1, m2].iter().all(|d| d.is_ascii_digit()),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique() {
        let a = new_id();
        let b = new_id();
        assert_ne!(a, b);
        assert!(a.starts_with("R-"));
    }

    #[test]
    fn datetimes() {
        assert!(is_datetime("2026-11-25T10:00:00Z"));
        assert!(is_datetime("2026-11-25T10:00:00.123Z"));
        assert!(is_datetime("2026-11-25T10:00:00+02:00"));
        assert!(is_datetime(&now()));
        assert!(!is_datetime("2026-11-25 10:00:00Z"));
        assert!(!is_datetime("2026-11-25T10:00:00"));
        assert!(!is_datetime("2026-11-25T10:00:00.Z"));
        assert!(!is_datetime("yesterday"));
    }

    #[test]
    fn stanza_matches_the_wire_format() {
        let r = Stored::prepare(
            Report {
                id: Some("R-0001".into()),
                kind: Some("meter.reading".into()),
                at: Some("2026-11-25T10:00:00Z".into()),
                payload: serde_json::json!({"meter": "A-17", "kwh": 1234.5}),
            },
            "report",
        )
        .expect("valid");
        let el = r.stanza("collect.localhost");
        assert!(el.is("message", ns::CLIENT));
        assert_eq!(el.attr("to"), Some("collect.localhost"));
        assert_eq!(el.attr("id"), Some("R-0001"));
        let report = el.get_child("report", REPORT_NS).expect("report");
        assert_eq!(report.attr("id"), Some("R-0001"));
        assert_eq!(report.attr("kind"), Some("meter.reading"));
        assert_eq!(report.attr("at"), Some("2026-11-25T10:00:00Z"));
        let json = report.get_child("json", JSON_NS).expect("json").text();
        let v: serde_json::Value = serde_json::from_str(&json).expect("json");
        assert_eq!(v["meter"], "A-17");
        assert!(el.has_child("request", RECEIPTS_NS));
        // Round trip through the text form the server parses.
        let text = stanza::to_string(&el);
        let back: Element = text.parse().expect("well-formed");
        assert_eq!(back, el);
    }

    #[test]
    fn bad_reports_are_refused() {
        let bad_at = Report {
            at: Some("now".into()),
            ..Report::new(serde_json::json!(1))
        };
        assert!(Stored::prepare(bad_at, "k").is_err());
        let bad_id = Report {
            id: Some("a\u{1}b".into()),
            ..Report::new(serde_json::json!(1))
        };
        assert!(Stored::prepare(bad_id, "k").is_err());
        let big = Report::new(serde_json::json!("x".repeat(MAX_PAYLOAD_BYTES)));
        assert!(Stored::prepare(big, "k").is_err());
    }
}
