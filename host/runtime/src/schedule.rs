//! Agent schedules: `every = "5m"` or a five-field cron expression, with jitter.
//!
//! Parsing is pure and shared with manifest validation, so a bad schedule is refused when the
//! plugin loads, with the offending field named. Cron fields are minute, hour, day of month,
//! month, day of week (0 or 7 = Sunday), each `*`, `N`, `A-B`, a list of those, or any of them
//! with `/STEP`; `@hourly`, `@daily`, `@weekly`, `@monthly` are accepted. Times are UTC. As in
//! Vixie cron, when both day fields are restricted a day matches if either does.

use std::time::Duration;

use chrono::{DateTime, Datelike, Duration as ChronoDuration, DurationRound, Timelike, Utc};

/// Shortest `every` interval: a run every few seconds is a busy loop, not a schedule.
pub const MIN_EVERY: Duration = Duration::from_secs(1);

/// Longest `every` interval (a year); longer is almost certainly a typo in the unit.
pub const MAX_EVERY: Duration = Duration::from_secs(366 * 86_400);

/// How far ahead a cron expression is searched for its next time. An expression that never
/// fires (e.g. `0 0 31 2 *`) is refused at parse time by searching this far once.
const CRON_HORIZON_DAYS: i64 = 4 * 366;

/// When an agent runs on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    Every(Duration),
    Cron(Box<Cron>),
}

impl Schedule {
    /// Parses `every` text such as `90s`, `5m`, `1h30m`, `2d`.
    pub fn every(text: &str) -> Result<Schedule, String> {
        let every = parse_duration(text)?;
        if !(MIN_EVERY..=MAX_EVERY).contains(&every) {
            return Err(format!(
                "every = \"{text}\" is out of range: between 1s and 366d"
            ));
        }
        Ok(Schedule::Every(every))
    }

    /// Parses a cron expression.
    pub fn cron(text: &str) -> Result<Schedule, String> {
        let cron = Cron::parse(text)?;
        let probe = Utc::now();
        if cron.next_after(probe).is_none() {
            return Err(format!(
                "cron = \"{text}\" never fires (no matching day within {CRON_HORIZON_DAYS} days)"
            ));
        }
        Ok(Schedule::Cron(Box::new(cron)))
    }

    /// The first fire time strictly after `after`; `anchor` is when an `every` schedule last
    /// fired (or started), so intervals do not drift with run durations.
    pub fn next_after(&self, after: DateTime<Utc>, anchor: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Every(every) => {
                let step = ChronoDuration::from_std(*every).ok()?;
                let mut next = anchor + step;
                if next <= after {
                    // Skip whole missed intervals in one step instead of looping.
                    let behind = (after - anchor).num_milliseconds();
                    let periods = behind / step.num_milliseconds().max(1) + 1;
                    next = anchor + step * i32::try_from(periods).ok()?;
                }
                Some(next)
            }
            Schedule::Cron(cron) => cron.next_after(after),
        }
    }

    /// The nominal gap between fires, for the missed-run check: `every`'s interval, or the gap
    /// between a cron's next two fires.
    pub fn period(&self, now: DateTime<Utc>) -> Option<Duration> {
        match self {
            Schedule::Every(every) => Some(*every),
            Schedule::Cron(cron) => {
                let first = cron.next_after(now)?;
                let second = cron.next_after(first)?;
                (second - first).to_std().ok()
            }
        }
    }
}

impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Schedule::Every(every) => write!(f, "every {}", format_duration(*every)),
            Schedule::Cron(cron) => write!(f, "cron {}", cron.text),
        }
    }
}

/// Parses `1h30m`, `90s`, `500ms`, `2d`: one or more number+unit pairs.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("a duration must not be empty; write e.g. \"5m\" or \"1h30m\"".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = trimmed;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!(
                "\"{text}\" is not a duration; write number+unit pairs such as \"5m\" or \"1h30m\" (units ms, s, m, h, d)"
            ));
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("\"{text}\": the number is too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let millis_per_unit: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" => return Err(format!("\"{text}\": a number has no unit (ms, s, m, h, d)")),
            other => {
                return Err(format!(
                    "\"{text}\": unknown unit \"{other}\" (use ms, s, m, h, d)"
                ));
            }
        };
        let millis = number
            .checked_mul(millis_per_unit)
            .ok_or_else(|| format!("\"{text}\" is too long"))?;
        total = total
            .checked_add(Duration::from_millis(millis))
            .ok_or_else(|| format!("\"{text}\" is too long"))?;
    }
    Ok(total)
}

/// The shortest `1h30m`-style text for a duration.
pub fn format_duration(duration: Duration) -> String {
    let mut millis = duration.as_millis();
    if millis == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ] {
        if millis >= size {
            out.push_str(&format!("{}{unit}", millis / size));
            millis %= size;
        }
    }
    out
}

/// A parsed cron expression: one bit set per allowed value of each field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    text: String,
    minutes: u64,
    hours: u64,
    days_of_month: u64,
    months: u64,
    days_of_week: u64,
    /// Whether each day field was `*` (for the either-day rule).
    dom_any: bool,
    dow_any: bool,
}

impl Cron {
    pub fn parse(text: &str) -> Result<Cron, String> {
        let expanded = match text.trim() {
            "@hourly" => "0 * * * *",
            "@daily" | "@midnight" => "0 0 * * *",
            "@weekly" => "0 0 * * 0",
            "@monthly" => "0 0 1 * *",
            other => other,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(format!(
                "cron = \"{text}\" has {} fields; write five: minute hour day-of-month month day-of-week, e.g. \"*/15 * * * *\"",
                fields.len()
            ));
        }
        let field = |index: usize, name: &str, min: u32, max: u32| {
            parse_field(fields[index], min, max)
                .map_err(|e| format!("cron = \"{text}\": {name} field \"{}\": {e}", fields[index]))
        };
        let mut days_of_week = field(4, "day-of-week", 0, 7)?;
        // 7 is Sunday too.
        if days_of_week & (1 << 7) != 0 {
            days_of_week |= 1;
            days_of_week &= !(1 << 7);
        }
        Ok(Cron {
            text: text.trim().to_string(),
            minutes: field(0, "minute", 0, 59)?,
            hours: field(1, "hour", 0, 23)?,
            days_of_month: field(2, "day-of-month", 1, 31)?,
            months: field(3, "month", 1, 12)?,
            days_of_week,
            dom_any: fields[2] == "*",
            dow_any: fields[4] == "*",
        })
    }

    fn day_matches(&self, t: &DateTime<Utc>) -> bool {
        let dom = self.days_of_month & (1 << t.day()) != 0;
        let dow = self.days_of_week & (1 << t.weekday().num_days_from_sunday()) != 0;
        match (self.dom_any, self.dow_any) {
            (true, true) => true,
            (false, true) => dom,
            (true, false) => dow,
            (false, false) => dom || dow,
        }
    }

    /// The first matching minute strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut t =
            after.duration_trunc(ChronoDuration::minutes(1)).ok()? + ChronoDuration::minutes(1);
        let horizon = after + ChronoDuration::days(CRON_HORIZON_DAYS);
        while t <= horizon {
            // Skip whole months, days and hours that cannot match before testing minutes.
            if self.months & (1 << t.month()) == 0 {
                let first_of_next = if t.month() == 12 {
                    t.with_day(1)?.with_month(1)?.with_year(t.year() + 1)?
                } else {
                    t.with_day(1)?.with_month(t.month() + 1)?
                };
                t = first_of_next.with_hour(0)?.with_minute(0)?;
                continue;
            }
            if !self.day_matches(&t) {
                t = (t + ChronoDuration::days(1)).with_hour(0)?.with_minute(0)?;
                continue;
            }
            if self.hours & (1 << t.hour()) == 0 {
                t = (t + ChronoDuration::hours(1)).with_minute(0)?;
                continue;
            }
            if self.minutes & (1 << t.minute()) == 0 {
                t += ChronoDuration::minutes(1);
                continue;
            }
            return Some(t);
        }
        None
    }
}

/// One cron field → a bit set over `min..=max`.
fn parse_field(text: &str, min: u32, max: u32) -> Result<u64, String> {
    let mut bits = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => {
                let step: u32 = step
                    .parse()
                    .map_err(|_| format!("step \"{step}\" is not a number"))?;
                if step == 0 {
                    return Err("a step must be at least 1".into());
                }
                (range, step)
            }
            None => (part, 1),
        };
        let (low, high) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (number(a, min, max)?, number(b, min, max)?)
        } else {
            let n = number(range, min, max)?;
            // `N/STEP` means from N to the end, as in Vixie cron.
            (n, if step > 1 { max } else { n })
        };
        if low > high {
            return Err(format!("range {low}-{high} is backwards"));
        }
        let mut value = low;
        while value <= high {
            bits |= 1 << value;
            value += step;
        }
    }
    Ok(bits)
}

fn number(text: &str, min: u32, max: u32) -> Result<u32, String> {
    let n: u32 = text
        .parse()
        .map_err(|_| format!("\"{text}\" is not a number"))?;
    if !(min..=max).contains(&n) {
        return Err(format!("{n} is outside {min}-{max}"));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0)
            .single()
            .expect("valid time")
    }

    #[test]
    fn durations_parse_in_pairs_and_refuse_nonsense() {
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(
            parse_duration("5")
                .expect_err("must fail")
                .contains("no unit")
        );
        assert!(parse_duration("5 minutes").is_err());
        assert!(
            parse_duration("3w")
                .expect_err("must fail")
                .contains("unknown unit \"w\"")
        );
        assert_eq!(format_duration(Duration::from_secs(5_400)), "1h30m");
        assert!(
            Schedule::every("0s")
                .expect_err("must fail")
                .contains("out of range")
        );
    }

    #[test]
    fn every_skips_missed_intervals_without_drifting() {
        let schedule = Schedule::every("10m").expect("valid");
        let anchor = at(2026, 1, 1, 12, 0);
        assert_eq!(
            schedule.next_after(anchor, anchor),
            Some(at(2026, 1, 1, 12, 10))
        );
        // Woken 35 minutes late: the next fire stays on the 10-minute grid.
        let late = at(2026, 1, 1, 12, 35);
        assert_eq!(
            schedule.next_after(late, anchor),
            Some(at(2026, 1, 1, 12, 40))
        );
    }

    #[test]
    fn cron_steps_ranges_and_lists() {
        let cron = Cron::parse("*/15 9-17 * * 1-5").expect("valid");
        // Saturday 2026-01-03 → Monday 09:00.
        assert_eq!(
            cron.next_after(at(2026, 1, 3, 10, 0)),
            Some(at(2026, 1, 5, 9, 0))
        );
        assert_eq!(
            cron.next_after(at(2026, 1, 5, 9, 0)),
            Some(at(2026, 1, 5, 9, 15))
        );
        assert_eq!(
            cron.next_after(at(2026, 1, 5, 17, 45)),
            Some(at(2026, 1, 6, 9, 0))
        );
        let monthly = Cron::parse("@monthly").expect("valid");
        assert_eq!(
            monthly.next_after(at(2026, 12, 15, 0, 0)),
            Some(at(2027, 1, 1, 0, 0))
        );
    }

    #[test]
    fn cron_day_fields_match_either_when_both_are_set() {
        // The 13th, or any Friday.
        let cron = Cron::parse("0 0 13 * 5").expect("valid");
        // 2026-02-06 is a Friday, before the 13th.
        assert_eq!(
            cron.next_after(at(2026, 2, 1, 0, 0)),
            Some(at(2026, 2, 6, 0, 0))
        );
        let sunday = Cron::parse("0 0 * * 7").expect("7 is Sunday");
        assert_eq!(
            sunday.next_after(at(2026, 1, 1, 0, 0)),
            Some(at(2026, 1, 4, 0, 0))
        );
    }

    #[test]
    fn bad_cron_names_the_field() {
        let err = Cron::parse("61 * * * *").expect_err("minute out of range");
        assert!(
            err.contains("minute field \"61\"") && err.contains("outside 0-59"),
            "{err}"
        );
        assert!(
            Cron::parse("* * *")
                .expect_err("must fail")
                .contains("has 3 fields")
        );
        assert!(
            Schedule::cron("0 0 31 2 *")
                .expect_err("must fail")
                .contains("never fires")
        );
        assert!(
            Cron::parse("*/0 * * * *")
                .expect_err("must fail")
                .contains("at least 1")
        );
    }
}
