//! `thaw logs`: print a function's recent log lines, oldest first.

use anyhow::Context;
use clap::Args;

use crate::client;

/// Arguments of `thaw logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The function's name.
    pub name: String,
    /// Only the lines of this invocation.
    #[arg(long)]
    pub request_id: Option<String>,
    /// How many lines, at most [default: 100].
    #[arg(long)]
    pub limit: Option<usize>,
}

/// Print `TIMESTAMP REQUEST-ID LINE` per record.
pub fn run(endpoint: &str, args: LogsArgs) -> anyhow::Result<()> {
    let records = client(endpoint)?
        .logs(&args.name, args.request_id.as_deref(), args.limit)
        .with_context(|| format!("cannot read the logs of {}", args.name))?;
    for r in records {
        println!(
            "{} {} {}",
            utc_timestamp(r.ts_ms),
            r.request_id.as_deref().unwrap_or("-"),
            r.line
        );
    }
    Ok(())
}

/// `2024-01-02T03:04:05.678Z` for milliseconds since the Unix epoch.
fn utc_timestamp(ms: u64) -> String {
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01: shift the
/// epoch to 0000-03-01 so that leap days end each 400-year era's years.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month as u32, day as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(utc_timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc_timestamp(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(utc_timestamp(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(utc_timestamp(4_107_542_399_999), "2100-02-28T23:59:59.999Z");
    }
}
