//! The analysis itself, over log lines as text; pure, so it is tested without a host.
//!
//! Lines are the daemon's tracing JSON (`timestamp`, `level`, `target`, `message`, and the
//! event's fields flattened beside them). Lines that are not JSON objects with a parseable
//! timestamp are counted as `unparsed` and otherwise ignored.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value;

/// What to analyze and how.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub since_ms: u64,
    pub until_ms: u64,
    pub top: usize,
    pub burst_min_errors: u64,
    pub burst_factor: f64,
}

/// Longest line considered; longer ones are counted as unparsed (a runaway log line must not
/// cost the whole budget's worth of JSON parsing).
const MAX_LINE_BYTES: usize = 64 << 10;

/// Width of the longest bar of the chart, characters.
const CHART_WIDTH: u64 = 40;

/// Buckets the chart aims for over the window.
const CHART_BUCKETS: u64 = 60;

const MINUTE_MS: u64 = 60_000;

/// Occurrences of one folded error.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TopError {
    pub count: u64,
    pub component: String,
    /// The message with numbers and ids folded.
    pub message: String,
    /// One original message.
    pub example: String,
    pub first: String,
    pub last: String,
    #[serde(skip)]
    first_ms: u64,
    #[serde(skip)]
    last_ms: u64,
}

/// A run of consecutive minutes at or above the burst threshold.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Burst {
    pub start: String,
    /// End of the burst's last minute.
    pub end: String,
    pub minutes: u64,
    pub errors: u64,
    pub peak_per_minute: u64,
    /// The burst's most frequent folded error.
    pub top_message: String,
}

/// Errors over time.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Chart {
    pub bucket_minutes: u64,
    /// Start of each bucket and its errors.
    pub buckets: Vec<(String, u64)>,
}

/// The result.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    pub since: String,
    pub until: String,
    pub window_minutes: u64,
    pub lines_read: u64,
    pub lines_in_window: u64,
    pub unparsed: u64,
    pub bytes_read: u64,
    /// The read budget cut the oldest lines.
    pub truncated: bool,
    pub errors: u64,
    pub warnings: u64,
    pub by_level: BTreeMap<String, u64>,
    pub by_component: Vec<(String, u64)>,
    pub by_plugin: Vec<(String, u64)>,
    /// Errors per minute a minute needs to be part of a burst.
    pub burst_threshold: u64,
    pub median_errors_per_minute: u64,
    pub bursts: Vec<Burst>,
    pub top_errors: Vec<TopError>,
    pub chart: Chart,
}

/// Accumulates lines.
#[derive(Debug)]
pub(crate) struct Analysis {
    settings: Settings,
    lines_read: u64,
    unparsed: u64,
    in_window: u64,
    by_level: BTreeMap<String, u64>,
    by_component: BTreeMap<String, u64>,
    by_plugin: BTreeMap<String, u64>,
    /// Minute index (since the epoch) → folded message → errors.
    errors_by_minute: BTreeMap<u64, BTreeMap<String, u64>>,
    errors: BTreeMap<(String, String), TopError>,
}

impl Analysis {
    pub(crate) fn new(settings: Settings) -> Analysis {
        Analysis {
            settings,
            lines_read: 0,
            unparsed: 0,
            in_window: 0,
            by_level: BTreeMap::new(),
            by_component: BTreeMap::new(),
            by_plugin: BTreeMap::new(),
            errors_by_minute: BTreeMap::new(),
            errors: BTreeMap::new(),
        }
    }

    pub(crate) fn add_line(&mut self, line: &str) {
        let line = line.trim();
        if line.is_empty() {
            return;
        }
        self.lines_read += 1;
        if line.len() > MAX_LINE_BYTES {
            self.unparsed += 1;
            return;
        }
        let Ok(Value::Object(event)) = serde_json::from_str::<Value>(line) else {
            self.unparsed += 1;
            return;
        };
        let Some(at) = event
            .get("timestamp")
            .and_then(Value::as_str)
            .and_then(parse_rfc3339_ms)
        else {
            self.unparsed += 1;
            return;
        };
        if at < self.settings.since_ms || at >= self.settings.until_ms {
            return;
        }
        self.in_window += 1;
        let text = |key: &str| event.get(key).and_then(Value::as_str).unwrap_or("");
        let level = text("level").to_ascii_uppercase();
        let component = component(text("target"));
        *self.by_level.entry(level.clone()).or_default() += 1;
        *self.by_component.entry(component.clone()).or_default() += 1;
        // Plugin lines carry `plugin`; the agent manager's lines carry `agent`.
        let plugin = [text("plugin"), text("agent")]
            .into_iter()
            .find(|p| !p.is_empty());
        if let Some(plugin) = plugin {
            *self.by_plugin.entry(plugin.to_owned()).or_default() += 1;
        }
        if level != "ERROR" {
            return;
        }
        let mut message = text("message").to_owned();
        let error = text("error");
        if !error.is_empty() {
            message = format!("{message}: {error}");
        }
        let folded = fold(&message);
        *self
            .errors_by_minute
            .entry(at / MINUTE_MS)
            .or_default()
            .entry(folded.clone())
            .or_default() += 1;
        let group = self
            .errors
            .entry((folded.clone(), component.clone()))
            .or_insert_with(|| TopError {
                count: 0,
                component,
                message: folded,
                example: truncate(&message, 300),
                first: String::new(),
                last: String::new(),
                first_ms: at,
                last_ms: at,
            });
        group.count += 1;
        group.first_ms = group.first_ms.min(at);
        group.last_ms = group.last_ms.max(at);
    }

    pub(crate) fn finish(self, truncated: bool, bytes_read: u64) -> Report {
        let s = &self.settings;
        let first_minute = s.since_ms / MINUTE_MS;
        let last_minute = s.until_ms.saturating_sub(1) / MINUTE_MS;
        let per_minute: Vec<u64> = (first_minute..=last_minute)
            .map(|m| {
                self.errors_by_minute
                    .get(&m)
                    .map_or(0, |msgs| msgs.values().sum())
            })
            .collect();
        let median = median(&per_minute);
        let threshold = s
            .burst_min_errors
            .max((s.burst_factor * median as f64).ceil() as u64);
        let bursts = self.bursts(first_minute, &per_minute, threshold);
        let chart = chart(first_minute, &per_minute);

        let mut top_errors: Vec<TopError> = self.errors.into_values().collect();
        top_errors.sort_by(|a, b| b.count.cmp(&a.count).then(a.message.cmp(&b.message)));
        top_errors.truncate(s.top);
        for e in &mut top_errors {
            e.first = utc(e.first_ms);
            e.last = utc(e.last_ms);
        }
        let errors = self.by_level.get("ERROR").copied().unwrap_or(0);
        let warnings = self.by_level.get("WARN").copied().unwrap_or(0);
        Report {
            since: utc(s.since_ms),
            until: utc(s.until_ms),
            window_minutes: (s.until_ms - s.since_ms) / MINUTE_MS,
            lines_read: self.lines_read,
            lines_in_window: self.in_window,
            unparsed: self.unparsed,
            bytes_read,
            truncated,
            errors,
            warnings,
            by_level: self.by_level,
            by_component: top_counts(self.by_component, s.top),
            by_plugin: top_counts(self.by_plugin, s.top),
            burst_threshold: threshold,
            median_errors_per_minute: median,
            bursts,
            top_errors,
            chart,
        }
    }

    fn bursts(&self, first_minute: u64, per_minute: &[u64], threshold: u64) -> Vec<Burst> {
        let mut bursts = Vec::new();
        let mut index = 0;
        while index < per_minute.len() {
            if per_minute[index] < threshold {
                index += 1;
                continue;
            }
            let start = index;
            while index < per_minute.len() && per_minute[index] >= threshold {
                index += 1;
            }
            let minutes = &per_minute[start..index];
            let mut messages: BTreeMap<&str, u64> = BTreeMap::new();
            for minute in start..index {
                if let Some(msgs) = self.errors_by_minute.get(&(first_minute + minute as u64)) {
                    for (msg, n) in msgs {
                        *messages.entry(msg).or_default() += n;
                    }
                }
            }
            let top_message = messages
                .iter()
                .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
                .map(|(m, _)| (*m).to_owned())
                .unwrap_or_default();
            bursts.push(Burst {
                start: utc((first_minute + start as u64) * MINUTE_MS),
                end: utc((first_minute + index as u64) * MINUTE_MS),
                minutes: minutes.len() as u64,
                errors: minutes.iter().sum(),
                peak_per_minute: minutes.iter().copied().max().unwrap_or(0),
                top_message,
            });
        }
        bursts
    }
}

impl Report {
    pub(crate) fn summary(&self) -> String {
        format!(
            "{} lines in the last {} min: {} errors, {} warnings, {} error bursts",
            self.lines_in_window,
            self.window_minutes,
            self.errors,
            self.warnings,
            self.bursts.len()
        )
    }

    pub(crate) fn markdown(&self) -> String {
        let mut md = String::new();
        // Writing into a String cannot fail.
        let _ = self.write_markdown(&mut md);
        md
    }

    fn write_markdown(&self, md: &mut String) -> std::fmt::Result {
        writeln!(md, "# Log analysis\n")?;
        writeln!(
            md,
            "{} to {} ({} min): {} lines in the window ({} read, {} not parseable){}.\n",
            self.since,
            self.until,
            self.window_minutes,
            self.lines_in_window,
            self.lines_read,
            self.unparsed,
            if self.truncated {
                "; the read budget cut the oldest lines"
            } else {
                ""
            }
        )?;
        writeln!(md, "| Level | Lines |\n|---|---:|")?;
        for (level, n) in &self.by_level {
            writeln!(md, "| {level} | {n} |")?;
        }
        writeln!(md, "\n## Components\n\n| Component | Lines |\n|---|---:|")?;
        for (name, n) in &self.by_component {
            writeln!(md, "| {} | {n} |", cell(name))?;
        }
        writeln!(md, "\n## Plugins\n")?;
        if self.by_plugin.is_empty() {
            writeln!(md, "_no plugin lines_")?;
        } else {
            writeln!(md, "| Plugin | Lines |\n|---|---:|")?;
            for (name, n) in &self.by_plugin {
                writeln!(md, "| {} | {n} |", cell(name))?;
            }
        }
        writeln!(
            md,
            "\n## Error bursts\n\nA burst is consecutive minutes with at least {} errors (median {} per minute).\n",
            self.burst_threshold, self.median_errors_per_minute
        )?;
        if self.bursts.is_empty() {
            writeln!(md, "_no bursts_")?;
        }
        for b in &self.bursts {
            writeln!(
                md,
                "- {} to {}: {} min, {} errors (peak {}/min), mostly `{}`",
                b.start, b.end, b.minutes, b.errors, b.peak_per_minute, b.top_message
            )?;
        }
        writeln!(md, "\n## Most frequent errors\n")?;
        if self.top_errors.is_empty() {
            writeln!(md, "_no errors_")?;
        } else {
            writeln!(md, "| Count | Component | Message | First | Last |")?;
            writeln!(md, "|---:|---|---|---|---|")?;
            for e in &self.top_errors {
                writeln!(
                    md,
                    "| {} | {} | {} | {} | {} |",
                    e.count,
                    cell(&e.component),
                    cell(&e.message),
                    e.first,
                    e.last
                )?;
            }
        }
        writeln!(
            md,
            "\n## Errors over time ({} min per bar)\n\n```text",
            self.chart.bucket_minutes
        )?;
        let peak = self.chart.buckets.iter().map(|b| b.1).max().unwrap_or(0);
        for (start, n) in &self.chart.buckets {
            let width = if peak == 0 {
                0
            } else {
                (n * CHART_WIDTH).div_ceil(peak)
            };
            // The bucket's time of day (`HH:MM` of `YYYY-MM-DD HH:MM:SS UTC`).
            let clock = start.get(11..16).unwrap_or(start);
            writeln!(md, "{clock} |{} {n}", "#".repeat(width as usize))?;
        }
        writeln!(md, "```")
    }
}

/// `evolve_host::agents::manager` → `evolve_host::agents`.
fn component(target: &str) -> String {
    if target.is_empty() {
        return "(none)".to_owned();
    }
    target.split("::").take(2).collect::<Vec<_>>().join("::")
}

/// Folds what varies between occurrences of one error: UUIDs and long hex strings become
/// `<id>`, runs of digits `<n>`.
pub(crate) fn fold(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut token = String::new();
    let flush = |token: &mut String, out: &mut String| {
        if !token.is_empty() {
            out.push_str(&fold_token(token));
            token.clear();
        }
    };
    for c in message.chars() {
        if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
            token.push(c);
        } else {
            flush(&mut token, &mut out);
            out.push(c);
        }
    }
    flush(&mut token, &mut out);
    out
}

fn fold_token(token: &str) -> String {
    if is_uuid(token) {
        return "<id>".to_owned();
    }
    let mut out = String::new();
    for (i, part) in token.split(['-', '_']).enumerate() {
        if i > 0 {
            // Keep the separator that was there.
            let offset: usize = token
                .split(['-', '_'])
                .take(i)
                .map(|p| p.len() + 1)
                .sum::<usize>()
                - 1;
            out.push_str(&token[offset..=offset]);
        }
        out.push_str(&fold_part(part));
    }
    out
}

fn fold_part(part: &str) -> String {
    let has_digit = part.bytes().any(|b| b.is_ascii_digit());
    if !has_digit {
        return part.to_owned();
    }
    if part.len() >= 8 && part.bytes().all(|b| b.is_ascii_hexdigit()) {
        return "<id>".to_owned();
    }
    let mut out = String::new();
    let mut in_digits = false;
    for c in part.chars() {
        if c.is_ascii_digit() {
            if !in_digits {
                out.push_str("<n>");
                in_digits = true;
            }
        } else {
            out.push(c);
            in_digits = false;
        }
    }
    out
}

fn is_uuid(token: &str) -> bool {
    let parts: Vec<&str> = token.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(p, n)| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn median(values: &[u64]) -> u64 {
    if values.is_empty() {
        return 0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    sorted[sorted.len() / 2]
}

fn chart(first_minute: u64, per_minute: &[u64]) -> Chart {
    let bucket_minutes = (per_minute.len() as u64).div_ceil(CHART_BUCKETS).max(1);
    let buckets = per_minute
        .chunks(bucket_minutes as usize)
        .enumerate()
        .map(|(i, chunk)| {
            (
                utc((first_minute + i as u64 * bucket_minutes) * MINUTE_MS),
                chunk.iter().sum(),
            )
        })
        .collect();
    Chart {
        bucket_minutes,
        buckets,
    }
}

fn top_counts(counts: BTreeMap<String, u64>, top: usize) -> Vec<(String, u64)> {
    let mut list: Vec<(String, u64)> = counts.into_iter().collect();
    list.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    list.truncate(top);
    list
}

fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace(['\n', '\r'], " ")
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// `2026-11-24T12:34:56.789Z` (or with a `+hh:mm` offset) → ms since the epoch.
pub(crate) fn parse_rfc3339_ms(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<u64> { text.get(range)?.parse().ok() };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut rest = &text[19..];
    let mut millis = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        let ms_digits = &frac[..digits.min(3)];
        millis = ms_digits.parse::<u64>().ok()? * 10u64.pow(3 - ms_digits.len() as u32);
        rest = &frac[digits..];
    }
    let offset_s: i64 = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && (rest.starts_with('+') || rest.starts_with('-')) => {
            let h: i64 = rest.get(1..3)?.parse().ok()?;
            let m: i64 = rest.get(4..6)?.parse().ok()?;
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * (h * 3600 + m * 60)
        }
        _ => return None,
    };
    let days = days_from_civil(year as i64, month as i64, day as i64);
    let secs = days * 86_400 + (hour * 3600 + minute * 60 + second) as i64 - offset_s;
    u64::try_from(secs).ok().map(|s| s * 1000 + millis)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// ms since the epoch → `YYYY-MM-DD HH:MM:SS UTC`.
pub(crate) fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_767_268_800_000; // 2026-01-01 12:00:00 UTC

    fn line(at_ms: u64, level: &str, target: &str, message: &str, extra: &str) -> String {
        let secs = at_ms / 1000;
        let stamp = utc(at_ms);
        let stamp = format!("{}T{}.{:03}Z", &stamp[..10], &stamp[11..19], at_ms % 1000);
        let _ = secs;
        format!(
            r#"{{"timestamp":"{stamp}","level":"{level}","target":"{target}","message":"{message}"{extra}}}"#
        )
    }

    fn settings(minutes: u64) -> Settings {
        Settings {
            since_ms: T0,
            until_ms: T0 + minutes * MINUTE_MS,
            top: 5,
            burst_min_errors: 5,
            burst_factor: 3.0,
        }
    }

    #[test]
    fn timestamps_parse_with_fractions_and_offsets() {
        assert_eq!(parse_rfc3339_ms("2026-01-01T12:00:00Z"), Some(T0));
        assert_eq!(
            parse_rfc3339_ms("2026-01-01T12:00:00.250123Z"),
            Some(T0 + 250)
        );
        assert_eq!(parse_rfc3339_ms("2026-01-01T13:00:00+01:00"), Some(T0));
        assert_eq!(parse_rfc3339_ms("2026-01-01 12:00:00"), None);
        assert_eq!(utc(T0), "2026-01-01 12:00:00 UTC");
    }

    #[test]
    fn folding_merges_numbers_and_ids() {
        assert_eq!(
            fold("run 42 of agent-7 failed after 1500 ms"),
            "run <n> of agent-<n> failed after <n> ms"
        );
        assert_eq!(
            fold("request 6f1c2a9e-0b1d-4c3e-9f00-123456789abc timed out"),
            "request <id> timed out"
        );
        assert_eq!(fold("sha deadbeef12345678 bad"), "sha <id> bad");
        assert_eq!(fold("connection refused"), "connection refused");
    }

    #[test]
    fn planted_bursts_are_found_with_their_extent() {
        let mut analysis = Analysis::new(settings(30));
        // Background: one error every third minute, plus info lines.
        for minute in 0..30 {
            let at = T0 + minute * MINUTE_MS + 1_000;
            analysis.add_line(&line(at, "INFO", "evolve_host::api", "ok", ""));
            if minute % 3 == 0 {
                analysis.add_line(&line(
                    at,
                    "ERROR",
                    "evolve_host::mesh",
                    "backend 10.0.0.1 reset",
                    "",
                ));
            }
        }
        // Burst A: minutes 10-12, 8 errors each; burst B: minute 20, 12 errors.
        for (minute, count) in [(10, 8), (11, 8), (12, 8), (20, 12)] {
            for i in 0..count {
                let at = T0 + minute * MINUTE_MS + 2_000 + i * 100;
                analysis.add_line(&line(
                    at,
                    "ERROR",
                    "evolve::plugin",
                    &format!("run {i} failed: timeout after {} ms", 100 + i),
                    r#","plugin":"echo""#,
                ));
            }
        }
        analysis.add_line("not json at all");
        analysis.add_line(&line(
            T0 + 31 * MINUTE_MS,
            "ERROR",
            "x",
            "outside the window",
            "",
        ));
        let report = analysis.finish(false, 0);
        assert_eq!(report.unparsed, 1);
        assert_eq!(report.burst_threshold, 5);
        let extents: Vec<(String, u64, u64)> = report
            .bursts
            .iter()
            .map(|b| (b.start.clone(), b.minutes, b.errors))
            .collect();
        assert_eq!(
            extents,
            vec![
                // Minute 12 also has one background error.
                ("2026-01-01 12:10:00 UTC".to_owned(), 3, 25),
                ("2026-01-01 12:20:00 UTC".to_owned(), 1, 12),
            ]
        );
        assert_eq!(
            report.bursts[0].top_message,
            "run <n> failed: timeout after <n> ms"
        );
        assert_eq!(report.top_errors[0].count, 36);
        assert_eq!(report.top_errors[0].component, "evolve::plugin");
        assert_eq!(
            report.top_errors[1].message,
            "backend <n>.<n>.<n>.<n> reset"
        );
        assert_eq!(report.by_plugin, vec![("echo".to_owned(), 36)]);
        assert_eq!(report.errors, 36 + 10);
        let md = report.markdown();
        assert!(
            md.contains("- 2026-01-01 12:10:00 UTC to 2026-01-01 12:13:00 UTC: 3 min, 25 errors"),
            "{md}"
        );
        assert!(
            md.contains(&format!("12:20 |{} 12\n", "#".repeat(40))),
            "{md}"
        );
    }

    #[test]
    fn a_quiet_log_has_no_bursts_and_a_flat_chart() {
        let mut analysis = Analysis::new(settings(120));
        analysis.add_line(&line(T0 + 5_000, "WARN", "evolve_host::reload", "slow", ""));
        let report = analysis.finish(false, 10);
        assert!(report.bursts.is_empty());
        assert_eq!(report.chart.bucket_minutes, 2);
        assert_eq!(report.chart.buckets.len(), 60);
        assert!(report.chart.buckets.iter().all(|b| b.1 == 0));
        assert_eq!(report.warnings, 1);
        assert!(report.markdown().contains("_no bursts_"));
    }
}
