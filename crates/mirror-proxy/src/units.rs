//! Human units for sizes (`4MiB`, `512KB`, `1048576`) and durations (`750ms`, `5s`, `1m30s`).

use std::time::Duration;

/// Parses a size: a whole number of bytes, optionally followed by a unit (`B`, `KB`, `MB`,
/// `GB` in powers of 1000; `KiB`, `MiB`, `GiB` in powers of 1024; any letter case).
pub(crate) fn parse_size(text: &str) -> Result<usize, String> {
    let invalid = || {
        format!("invalid size {text:?}: use a number of bytes with B, KiB, MiB, GiB, KB, MB or GB")
    };
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(split);
    let number: u64 = digits.parse().map_err(|_| invalid())?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "mb" => 1000 * 1000,
        "gb" => 1000 * 1000 * 1000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        _ => return Err(invalid()),
    };
    number
        .checked_mul(multiplier)
        .and_then(|bytes| usize::try_from(bytes).ok())
        .ok_or_else(|| format!("invalid size {text:?}: too large"))
}

/// Parses a duration: one or more numbers, each with a unit (`ns`, `us`, `ms`, `s`, `m`, `h`),
/// such as `750ms`, `1.5s` or `1m30s`.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = || {
        format!("invalid duration {text:?}: use a number with a unit, such as 750ms, 5s or 1m30s")
    };
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(invalid)?;
        let (number, after) = rest.split_at(number_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let number: f64 = number.parse().map_err(|_| invalid())?;
        let seconds_per_unit = match unit.trim() {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(invalid()),
        };
        let part = Duration::try_from_secs_f64(number * seconds_per_unit).map_err(|_| invalid())?;
        total = total.checked_add(part).ok_or_else(invalid)?;
        rest = after.trim_start();
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        let cases = [
            ("4MiB", 4 << 20),
            ("4 MiB", 4 << 20),
            ("512kib", 512 << 10),
            ("1GiB", 1 << 30),
            ("4096", 4096),
            ("10B", 10),
            ("2KB", 2000),
            ("3mb", 3_000_000),
            ("0", 0),
        ];
        for (text, bytes) in cases {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
        for bad in ["", "MiB", "4XB", "-1", "1.5MiB", "99999999999999999999"] {
            let err = parse_size(bad).unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{bad}: {err}");
        }
    }

    #[test]
    fn durations() {
        let cases = [
            ("750ms", Duration::from_millis(750)),
            ("5s", Duration::from_secs(5)),
            ("1.5s", Duration::from_millis(1500)),
            ("1m30s", Duration::from_secs(90)),
            ("2h", Duration::from_secs(7200)),
            ("250us", Duration::from_micros(250)),
            (" 10 ms ", Duration::from_millis(10)),
        ];
        for (text, duration) in cases {
            assert_eq!(parse_duration(text), Ok(duration), "{text}");
        }
        for bad in ["", "5", "ms", "5 parsecs", "1..5s", "-5s"] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{bad}: {err}");
        }
    }
}
