//! Parsing of human units on the command line: durations (`5s`, `250ms`, `2m`, `1h`) and sizes
//! (`64MiB`, `1GiB`, `512` = MiB).

/// Parses a duration into milliseconds.
pub fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3_600_000)
    } else {
        (s, 1000)
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: use e.g. 500ms, 5s or 2m"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("duration {s:?} is too large"))
}

/// Parses a memory size into MiB.
pub fn parse_size_mb(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let (num, mult_mb) = if let Some(n) = lower
        .strip_suffix("gib")
        .or(lower.strip_suffix("gb"))
        .or(lower.strip_suffix('g'))
    {
        (n.to_owned(), 1024)
    } else if let Some(n) = lower
        .strip_suffix("mib")
        .or(lower.strip_suffix("mb"))
        .or(lower.strip_suffix('m'))
    {
        (n.to_owned(), 1)
    } else {
        (lower.clone(), 1)
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("invalid size {t:?}: use e.g. 64MiB or 1GiB"))?;
    n.checked_mul(mult_mb)
        .ok_or_else(|| format!("size {t:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("5s").unwrap(), 5000);
        assert_eq!(parse_duration_ms("250ms").unwrap(), 250);
        assert_eq!(parse_duration_ms("2m").unwrap(), 120_000);
        assert_eq!(parse_duration_ms("3").unwrap(), 3000);
        assert_eq!(parse_duration_ms("1h").unwrap(), 3_600_000);
        assert!(parse_duration_ms("fast").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size_mb("64MiB").unwrap(), 64);
        assert_eq!(parse_size_mb("1GiB").unwrap(), 1024);
        assert_eq!(parse_size_mb("128").unwrap(), 128);
        assert!(parse_size_mb("lots").is_err());
    }
}
