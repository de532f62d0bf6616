//! One audit line as the reader sees it: only the fields the questions need, borrowed from the
//! line where possible, and tolerant of what a newer or older bpgate may write (unknown fields
//! are skipped, unknown values of known fields are kept as text).

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// A JSON string, borrowed from the line unless it had escapes. (serde's own `Cow<str>` always
/// allocates inside an `Option`, which would cost one allocation per field per line.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Str<'a>(pub Cow<'a, str>);

impl Str<'_> {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v)))
            }
            // A field that became a number or a flag in another version is still shown.
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v.to_string())))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v.to_string())))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

/// The fields of a line the tool reads. Everything but `ts` may be missing or null.
#[derive(Debug, Deserialize)]
pub struct Entry<'a> {
    #[serde(borrow)]
    pub ts: Str<'a>,
    #[serde(borrow, default)]
    pub event: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub client_ip: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub user: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub user_source: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub method: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub path: Option<Str<'a>>,
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub bytes_in: Option<u64>,
    #[serde(default)]
    pub bytes_out: Option<u64>,
    #[serde(default)]
    pub duration_ms: Option<f64>,
    #[serde(borrow, default)]
    pub upstream: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub sticky: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub outcome: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub reason: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub closed_by: Option<Str<'a>>,
}

/// A parsed line with its time.
#[derive(Debug)]
pub struct Parsed<'a> {
    pub e: Entry<'a>,
    /// `ts` as Unix milliseconds.
    pub ts_ms: i64,
}

impl Parsed<'_> {
    pub fn is_tunnel_close(&self) -> bool {
        self.e
            .event
            .as_ref()
            .is_some_and(|e| e.as_str() == "tunnel_close")
    }

    /// Request lines, and lines of a bpgate that wrote no `event` field.
    pub fn is_request(&self) -> bool {
        self.e
            .event
            .as_ref()
            .is_none_or(|e| e.as_str() == "request")
    }

    pub fn duration_us(&self) -> u64 {
        self.e
            .duration_ms
            .filter(|d| d.is_finite() && *d >= 0.0)
            .map(|d| (d * 1000.0).round() as u64)
            .unwrap_or(0)
    }
}

/// Parses one line, giving back the record and where it starts in the line. A line torn by a
/// crash and glued to the next one (`{"ts":…{"ts":…}`) gives the later, whole record back,
/// starting after the torn part (which is still counted as malformed).
pub fn parse(line: &[u8]) -> Result<(Parsed<'_>, usize), ()> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if let Some(p) = parse_one(line) {
        return Ok((p, 0));
    }
    let glued = memchr::memmem::rfind(line, b"{\"ts\":").filter(|i| *i > 0);
    match glued.and_then(|i| parse_one(&line[i..]).map(|p| (p, i))) {
        Some(found) => Ok(found),
        None => Err(()),
    }
}

fn parse_one(line: &[u8]) -> Option<Parsed<'_>> {
    let e: Entry = serde_json::from_slice(line).ok()?;
    let ts_ms = parse_ts(e.ts.as_str())?;
    Some(Parsed { e, ts_ms })
}

/// An RFC 3339 time as Unix milliseconds. bpgate's own form (`2026-11-24T20:56:17.123Z`) is
/// read digit by digit; any other RFC 3339 form goes through the `time` crate.
pub fn parse_ts(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() == 24
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'.'
        && b[23] == b'Z'
    {
        let num = |r: std::ops::Range<usize>| -> Option<i64> {
            b[r].iter().try_fold(0i64, |acc, c| {
                c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
            })
        };
        let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
        let (h, mi, sec, ms) = (num(11..13)?, num(14..16)?, num(17..19)?, num(20..23)?);
        if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
            return None;
        }
        let days = days_from_civil(y, mo, d);
        return Some(((days * 24 + h) * 60 + mi) * 60_000 + sec * 1000 + ms);
    }
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    Some((t.unix_timestamp_nanos() / 1_000_000) as i64)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Unix milliseconds as bpgate writes times: `2026-11-24T20:56:17.123Z`.
pub fn format_ms(ms: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000)) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            t.month() as u8,
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            ms.rem_euclid(1000)
        ),
        Err(_) => ms.to_string(),
    }
}

/// Unix milliseconds of a rotation stamp (`YYYYMMDDTHHMMSSZ`, see `writer::rotated_key`).
pub fn stamp_ms(stamp: &str) -> Option<i64> {
    let b = stamp.as_bytes();
    if b.len() != 16 {
        return None;
    }
    let s = format!(
        "{}-{}-{}T{}:{}:{}.000Z",
        &stamp[0..4],
        &stamp[4..6],
        &stamp[6..8],
        &stamp[9..11],
        &stamp[11..13],
        &stamp[13..15]
    );
    parse_ts(&s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(parse_ts("1970-01-01T00:00:00.000Z"), Some(0));
        assert_eq!(
            parse_ts("2025-11-24T20:56:17.123Z"),
            Some(1_764_017_777_123)
        );
        assert_eq!(
            parse_ts("2025-11-24T21:56:17.123+01:00"),
            Some(1_764_017_777_123)
        );
        assert_eq!(parse_ts("2025-11-24T20:56:17Z"), Some(1_764_017_777_000));
        assert_eq!(parse_ts("2025-13-24T20:56:17.123Z"), None);
        assert_eq!(parse_ts("yesterday"), None);
        assert_eq!(format_ms(1_764_017_777_123), "2025-11-24T20:56:17.123Z");
        assert_eq!(stamp_ms("20251124T205617Z"), Some(1_764_017_777_000));
        // Leap-year and century rules agree with the `time` crate.
        for (y, m, d) in [
            (2000i64, 2i64, 29i64),
            (2100, 3, 1),
            (1999, 12, 31),
            (2024, 2, 29),
        ] {
            let month: time::Month = (m as u8).try_into().unwrap();
            let t = time::Date::from_calendar_date(y as i32, month, d as u8).unwrap();
            assert_eq!(
                days_from_civil(y, m, d),
                t.to_julian_day() as i64 - 2_440_588
            );
        }
    }

    #[test]
    fn tolerant_and_torn_lines() {
        let l = br#"{"ts":"2025-11-24T20:56:17.123Z","future":{"a":[1,2]},"status":503,"outcome":"new_kind","user":"a\u00e9","duration_ms":1.5}"#;
        let (p, start) = parse(l).unwrap();
        assert_eq!(start, 0);
        assert_eq!(p.e.status, Some(503));
        assert_eq!(p.e.outcome.as_ref().unwrap().as_str(), "new_kind");
        assert_eq!(p.e.user.as_ref().unwrap().as_str(), "aé");
        assert_eq!(p.duration_us(), 1500);
        assert!(p.is_request());
        let glued = br#"{"ts":"2025-11-24T20:56:17.123Z","sta{"ts":"2025-11-24T20:56:18.000Z","status":200}"#;
        let (p, start) = parse(glued).unwrap();
        assert_eq!(start, 37);
        assert_eq!(p.ts_ms, 1_764_017_778_000);
        assert!(parse(b"{\"ts\":\"2025-11-24T20:56:17.123Z\",\"stat").is_err());
        assert!(parse(b"{\"status\":200}").is_err(), "a line needs its time");
        assert!(parse(b"").is_err());
    }
}
