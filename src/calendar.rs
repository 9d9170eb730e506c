//! The wall-clock calendar in UTC: the current month for expiry checks, and civil dates for
//! file names. The only place outside the drivers' timers that reads the system clock.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::capture::card::YearMonth;

/// The current month in UTC, for expiry checks (days-from-civil inverse, H. Hinnant).
pub fn current_month() -> YearMonth {
    let days = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() / 86_400) as i64;
    month_of_day(days)
}

fn month_of_day(days_since_epoch: i64) -> YearMonth {
    let (year, month, _) = civil_from_days(days_since_epoch);
    YearMonth { year: year as u16, month }
}

/// (year, month, day) of a day counted from 1970-01-01 (H. Hinnant's civil_from_days).
pub fn civil_from_days(days_since_epoch: i64) -> (i64, u8, u8) {
    let z = days_since_epoch + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month as u8, day as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_months() {
        assert_eq!(month_of_day(0), YearMonth { year: 1970, month: 1 });
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(month_of_day(20_454), YearMonth { year: 2026, month: 1 }); // 2026-01-01
        assert_eq!(month_of_day(20_453), YearMonth { year: 2025, month: 12 });
        assert_eq!(month_of_day(11_016), YearMonth { year: 2000, month: 2 }); // 2000-02-29
    }
}
