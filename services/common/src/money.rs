//! Money: integer minor units inside the system, exact decimal strings at the
//! edge. Input text is parsed exactly (never through `f64`) and anything that
//! would need rounding is refused.

use std::fmt;

use serde::{Deserialize, Serialize};

/// An ISO 4217 currency code with its number of minor digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency([u8; 3]);

impl Currency {
    pub const USD: Currency = Currency(*b"USD");

    pub fn parse(code: &str) -> Result<Self, String> {
        let b = code.as_bytes();
        if b.len() != 3 || !b.iter().all(u8::is_ascii_uppercase) {
            return Err(format!("{code:?} is not an ISO 4217 currency code"));
        }
        Ok(Currency([b[0], b[1], b[2]]))
    }

    pub fn code(&self) -> &str {
        // Only ASCII upper-case letters are ever stored.
        std::str::from_utf8(&self.0).unwrap_or("XXX")
    }

    /// Minor digits per ISO 4217 (the common exceptions; 2 otherwise).
    pub fn digits(&self) -> u32 {
        match self.code() {
            "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF" | "UGX" | "UYI" | "VND"
            | "VUV" | "XAF" | "XOF" | "XPF" => 0,
            "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
            _ => 2,
        }
    }
}

impl TryFrom<String> for Currency {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Currency::parse(&s)
    }
}

impl From<Currency> for String {
    fn from(c: Currency) -> String {
        c.code().to_string()
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// Renders minor units as a decimal string with exactly the currency's digits.
pub fn format_minor(minor: i64, currency: Currency) -> String {
    let digits = currency.digits();
    if digits == 0 {
        return minor.to_string();
    }
    let scale = 10i128.pow(digits);
    let v = minor as i128;
    let sign = if v < 0 { "-" } else { "" };
    let a = v.abs();
    format!("{sign}{}.{:0width$}", a / scale, a % scale, width = digits as usize)
}

/// Why an amount was refused; the message is meant for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AmountError(pub String);

/// Parses a positive amount written as plain decimal text (`50`, `50.5`,
/// `"50.25"`) into minor units, refusing signs, exponents, NaN, too many
/// decimals, zero and anything above `max_minor`.
pub fn parse_amount(text: &str, currency: Currency, max_minor: i64) -> Result<i64, AmountError> {
    match parse_non_negative(text, currency, max_minor)? {
        0 => Err(AmountError("must be greater than zero".into())),
        minor => Ok(minor),
    }
}

/// Like [`parse_amount`] but zero is allowed (configuration such as the sign-up credit).
pub fn parse_non_negative(text: &str, currency: Currency, max_minor: i64) -> Result<i64, AmountError> {
    let err = |m: &str| Err(AmountError(m.to_string()));
    let (int, frac) = match text.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (text, None),
    };
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
        return err("must be a plain decimal number such as 50 or 50.25");
    }
    if int.len() > 1 && int.starts_with('0') {
        return err("must not have leading zeros");
    }
    let frac = frac.unwrap_or("");
    if text.ends_with('.') || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return err("must be a plain decimal number such as 50 or 50.25");
    }
    let digits = currency.digits() as usize;
    if frac.len() > digits {
        return Err(AmountError(format!("must have at most {digits} decimal places for {currency}")));
    }
    // 18 integer digits already exceed any sane maximum; refuse before overflow.
    if int.len() > 18 {
        return err("is too large");
    }
    let scale = 10i64.pow(digits as u32);
    let int_part: i64 = int.parse().map_err(|_| AmountError("is too large".into()))?;
    let frac_part: i64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<digits$}").parse().map_err(|_| AmountError("is invalid".into()))?
    };
    let minor = int_part
        .checked_mul(scale)
        .and_then(|v| v.checked_add(frac_part))
        .ok_or_else(|| AmountError("is too large".into()))?;
    if minor > max_minor {
        return Err(AmountError(format!("must be at most {}", format_minor(max_minor, currency))));
    }
    Ok(minor)
}

/// Parses an amount given in JSON as a number or a string, from its raw text.
pub fn parse_json_amount(
    raw: &serde_json::value::RawValue,
    currency: Currency,
    max_minor: i64,
) -> Result<i64, AmountError> {
    let text = raw.get().trim();
    if text.starts_with('"') {
        let s: String = serde_json::from_str(text).map_err(|_| AmountError("is not a valid string".into()))?;
        parse_amount(s.trim(), currency, max_minor)
    } else if text.starts_with(|c: char| c.is_ascii_digit() || c == '-') {
        parse_amount(text, currency, max_minor)
    } else {
        Err(AmountError("must be a number or a decimal string".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: i64 = 100_000_000;

    #[test]
    fn formats_with_the_currency_digits() {
        assert_eq!(format_minor(100_000, Currency::USD), "1000.00");
        assert_eq!(format_minor(5, Currency::USD), "0.05");
        assert_eq!(format_minor(-150, Currency::USD), "-1.50");
        assert_eq!(format_minor(0, Currency::USD), "0.00");
        assert_eq!(format_minor(1234, Currency::parse("JPY").unwrap()), "1234");
        assert_eq!(format_minor(1234, Currency::parse("KWD").unwrap()), "1.234");
    }

    #[test]
    fn parses_exactly() {
        let ok = |t: &str| parse_amount(t, Currency::USD, MAX).unwrap();
        assert_eq!(ok("50"), 5000);
        assert_eq!(ok("50.5"), 5050);
        assert_eq!(ok("50.25"), 5025);
        assert_eq!(ok("0.01"), 1);
        assert_eq!(ok("1000000.00"), MAX);
    }

    #[test]
    fn refuses_what_would_need_rounding_or_is_odd() {
        for bad in [
            "",
            "0",
            "0.00",
            "-1",
            "+1",
            "1e3",
            "1E3",
            "NaN",
            "Infinity",
            "0.001",
            "1.",
            ".5",
            "01",
            "1,5",
            " 1",
            "1000000.01",
            "99999999999999999999",
            "1.2.3",
            "１",
        ] {
            assert!(parse_amount(bad, Currency::USD, MAX).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn json_numbers_and_strings() {
        let raw = |s: &str| serde_json::from_str::<Box<serde_json::value::RawValue>>(s).unwrap();
        assert_eq!(parse_json_amount(&raw("50.25"), Currency::USD, MAX), Ok(5025));
        assert_eq!(parse_json_amount(&raw("\"50.25\""), Currency::USD, MAX), Ok(5025));
        assert!(parse_json_amount(&raw("5e1"), Currency::USD, MAX).is_err());
        assert!(parse_json_amount(&raw("true"), Currency::USD, MAX).is_err());
        assert!(parse_json_amount(&raw("null"), Currency::USD, MAX).is_err());
        assert!(parse_json_amount(&raw("-5"), Currency::USD, MAX).is_err());
    }
}
