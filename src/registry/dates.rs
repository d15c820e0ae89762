//! Calendar dates with the precision the source gave (`google.type.Date` with a
//! year, a year and month, or a full date), and the arithmetic the status rules
//! need. A partial date names a period; it counts from the period's first day.

use prost_reflect::{DynamicMessage, ReflectMessage};

use crate::error::Violations;
use crate::pb::google::r#type::Date;

/// The full name of `google.type.Date`, the message every date field has.
pub const DATE_MESSAGE: &str = "google.type.Date";

/// The `google.type.Date` a dynamic message holds, read field by field (a
/// transcode encodes and decodes it: most of what indexing a date cost);
/// `None` when the message is not a date.
pub fn from_dynamic(message: &DynamicMessage) -> Option<Date> {
    if message.descriptor().full_name() != DATE_MESSAGE {
        return None;
    }
    let int = |number| message.get_field_by_number(number).and_then(|v| v.as_i32());
    Some(Date { year: int(1)?, month: int(2)?, day: int(3)? })
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
pub fn days_from_civil(year: i32, month: u32, day: u32) -> i64 {
    let y = i64::from(year) - i64::from(month <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number from [`days_from_civil`].
pub fn civil_from_days(days: i64) -> (i32, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as i32;
    (year, month, day)
}

pub fn is_leap_year(year: i32) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

pub fn days_in_month(year: i32, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap_year(year) => 29,
        _ => 28,
    }
}

/// Today in UTC.
pub fn today() -> Date {
    let secs =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    Date { year, month: month as i32, day: day as i32 }
}

/// Checks a date field: a year from 1 to 9999, then optionally a month, then
/// optionally a day that exists in that month.
pub fn check(date: &Date, field: &str, violations: &mut Violations) {
    if !(1..=9999).contains(&date.year) {
        violations.add(
            field,
            format!("year must be from 1 to 9999 (got {}); a date without a year is not accepted", date.year),
        );
        return;
    }
    if !(0..=12).contains(&date.month) {
        violations.add(field, format!("month must be from 1 to 12, or 0 for a year-only date (got {})", date.month));
        return;
    }
    if date.month == 0 && date.day != 0 {
        violations.add(field, "a day needs a month: give year, year-month or year-month-day");
        return;
    }
    if date.day != 0 {
        let last = days_in_month(date.year, date.month as u32) as i32;
        if !(1..=last).contains(&date.day) {
            violations.add(
                field,
                format!("day must be from 1 to {last} in {}-{:02} (got {})", date.year, date.month, date.day),
            );
        }
    }
}

/// Day number of the first day of the period a (valid) date names.
pub fn first_day(date: &Date) -> i64 {
    days_from_civil(date.year, date.month.max(1) as u32, date.day.max(1) as u32)
}

/// Day number of the last day of the period a (valid) date names.
pub fn last_day(date: &Date) -> i64 {
    let month = if date.month == 0 { 12 } else { date.month as u32 };
    let day = if date.day == 0 { days_in_month(date.year, month) } else { date.day as u32 };
    days_from_civil(date.year, month, day)
}

/// The first day after a term of `years` and `months` that starts on day `start`.
/// When the same day does not exist in the end month (29 February, 31 April) the
/// term runs out on the first day of the next month.
pub fn add_term(start: i64, years: i32, months: i32) -> i64 {
    let (y, m, d) = civil_from_days(start);
    let total = i64::from(y) * 12 + i64::from(m - 1) + i64::from(years) * 12 + i64::from(months);
    let (year, month) = (total.div_euclid(12) as i32, (total.rem_euclid(12) + 1) as u32);
    if d <= days_in_month(year, month) {
        days_from_civil(year, month, d)
    } else {
        days_from_civil(year, month, days_in_month(year, month)) + 1
    }
}

/// A date as the caller wrote it: `2011`, `2011-08`, `2020-09-10`.
pub fn display(date: &Date) -> String {
    match (date.month, date.day) {
        (0, _) => format!("{:04}", date.year),
        (m, 0) => format!("{:04}-{m:02}", date.year),
        (m, d) => format!("{:04}-{m:02}-{d:02}", date.year),
    }
}

/// A date from its parts, for tests.
#[cfg(test)]
pub fn date(year: i32, month: i32, day: i32) -> Date {
    Date { year, month, day }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_date_is_read_from_a_dynamic_message_as_a_transcode_reads_it() {
        for d in [date(2020, 9, 9), date(2020, 9, 0), date(2020, 0, 0), date(0, 0, 0), date(-1, 13, 40)] {
            let dynamic = d.transcode_to_dynamic();
            assert_eq!(from_dynamic(&dynamic), Some(dynamic.transcode_to::<Date>().unwrap()));
        }
        let timestamp = prost_types::Timestamp { seconds: 1, nanos: 2 }.transcode_to_dynamic();
        assert_eq!(from_dynamic(&timestamp), None, "a message that is not a date");
    }

    #[test]
    fn day_numbers_round_trip() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        for n in [-800_000, -1, 0, 1, 11_016, 18_515, 2_000_000] {
            let (y, m, d) = civil_from_days(n);
            assert_eq!(days_from_civil(y, m, d), n);
        }
    }

    #[test]
    fn partial_dates_cover_their_period() {
        assert_eq!(first_day(&date(2011, 8, 0)), days_from_civil(2011, 8, 1));
        assert_eq!(last_day(&date(2011, 8, 0)), days_from_civil(2011, 8, 31));
        assert_eq!(first_day(&date(2019, 0, 0)), days_from_civil(2019, 1, 1));
        assert_eq!(last_day(&date(2019, 0, 0)), days_from_civil(2019, 12, 31));
        assert_eq!(last_day(&date(2024, 2, 0)), days_from_civil(2024, 2, 29));
    }

    #[test]
    fn terms_end_on_the_anniversary() {
        let start = days_from_civil(2020, 9, 10);
        assert_eq!(add_term(start, 10, 0), days_from_civil(2030, 9, 10));
        assert_eq!(add_term(start, 0, 4), days_from_civil(2021, 1, 10));
        assert_eq!(add_term(days_from_civil(2020, 2, 29), 1, 0), days_from_civil(2021, 3, 1));
        assert_eq!(add_term(days_from_civil(2021, 1, 31), 0, 3), days_from_civil(2021, 5, 1));
    }

    #[test]
    fn impossible_dates_are_named() {
        let mut v = Violations::new();
        check(&date(2020, 13, 1), "a", &mut v);
        check(&date(2021, 2, 29), "b", &mut v);
        check(&date(0, 1, 1), "c", &mut v);
        check(&date(2020, 0, 5), "d", &mut v);
        check(&date(2024, 2, 29), "ok", &mut v);
        check(&date(2011, 8, 0), "ok", &mut v);
        let err = v.into_result().unwrap_err();
        let crate::error::Error::InvalidArgument { violations } = err else { panic!() };
        let fields: Vec<_> = violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["a", "b", "c", "d"]);
        assert!(violations[0].description.contains("month must be from 1 to 12"));
    }
}
