//! Human units for sizes (`4MiB`, `512KB`, `1048576`) and durations (`750ms`, `5s`, `1m30s`),
//! read by `bytesize` and `humantime`; the errors here are one line that quotes the text, so
//! that the caller can put the flag, key or target in front.

use std::time::Duration;

/// Parses a size: a number of bytes, optionally followed by a unit (`B`; `KB`, `MB`, `GB`
/// or `K`, `M`, `G` in powers of 1000; `KiB`, `MiB`, `GiB` in powers of 1024; any letter
/// case, a space allowed before the unit, a fraction allowed with one: `1.5MiB`).
pub(crate) fn parse_size(text: &str) -> Result<usize, String> {
    let trimmed = text.trim();
    let bytes = trimmed
        .parse::<bytesize::ByteSize>()
        .map_err(|_| {
            format!(
                "invalid size {text:?}: use a number of bytes with B, KiB, MiB, GiB, KB, MB or GB"
            )
        })?
        .as_u64();
    // bytesize saturates instead of failing: u64::MAX is taken for an overflow.
    if bytes == u64::MAX {
        return Err(format!("invalid size {text:?}: too large"));
    }
    usize::try_from(bytes).map_err(|_| format!("invalid size {text:?}: too large"))
}

/// Parses a duration: one or more numbers, each with a unit (`ns`, `us`, `ms`, `s`, `m`,
/// `h`, `d`, and their long forms such as `sec` or `min`), such as `750ms`, `1.5s` or
/// `1m30s`.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|_| {
        format!("invalid duration {text:?}: use a number with a unit, such as 750ms, 5s or 1m30s")
    })
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
            ("1.5MiB", 3 << 19),
            (" 64KiB ", 64 << 10),
        ];
        for (text, bytes) in cases {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
        for bad in [
            "",
            "MiB",
            "4XB",
            "-1",
            "99999999999999999999",
            "99999999999EiB",
            "4 parsecs",
        ] {
            let err = parse_size(bad).unwrap_err();
            assert!(
                err.contains(&format!("{bad:?}")) && !err.contains('\n'),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn durations() {
        let cases = [
            ("750ms", Duration::from_millis(750)),
            ("5s", Duration::from_secs(5)),
            ("1.5s", Duration::from_millis(1500)),
            ("1m30s", Duration::from_secs(90)),
            ("1m 30s", Duration::from_secs(90)),
            ("2h", Duration::from_secs(7200)),
            ("250us", Duration::from_micros(250)),
            (" 10 ms ", Duration::from_millis(10)),
            ("1d", Duration::from_secs(86_400)),
        ];
        for (text, duration) in cases {
            assert_eq!(parse_duration(text), Ok(duration), "{text}");
        }
        for bad in ["", "5", "ms", "5 parsecs", "1..5s", "-5s"] {
            let err = parse_duration(bad).unwrap_err();
            assert!(
                err.contains(&format!("{bad:?}")) && !err.contains('\n'),
                "{bad}: {err}"
            );
        }
    }
}
