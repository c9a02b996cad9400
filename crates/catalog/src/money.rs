//! Money in integer minor units with the currency's own exponent (ISO 4217):
//! 12.50 EUR is 1250 cents, 1,500 JPY is 1500 yen. The one place that knows
//! how many minor units a major unit has; nothing else multiplies by 100.

/// Currencies the catalogue accepts, with their ISO 4217 exponent (minor
/// units per major unit = 10^exponent).
pub const CURRENCIES: &[(&str, u32)] = &[
    ("USD", 2),
    ("EUR", 2),
    ("GBP", 2),
    ("CHF", 2),
    ("CAD", 2),
    ("AUD", 2),
    ("JPY", 0),
    ("SEK", 2),
    ("NOK", 2),
    ("DKK", 2),
    ("PLN", 2),
    ("CZK", 2),
    ("NZD", 2),
    ("SGD", 2),
    ("HKD", 2),
    ("INR", 2),
    ("BRL", 2),
    ("MXN", 2),
];

/// Exponent used for a code the catalogue does not list (ISO 4217's most
/// common; an unknown currency is refused where products enter through a
/// feed, and kept as sent where a trusted caller applies a change).
const DEFAULT_EXPONENT: u32 = 2;

/// A currency code and its exponent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Currency {
    code: &'static str,
    exponent: u32,
}

/// An amount or currency the catalogue cannot hold.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MoneyError {
    /// Not one of [`CURRENCIES`].
    #[error("currency {0:?} is not one of {list}", list = codes())]
    UnknownCurrency(String),
    /// Negative, not finite, or too large for minor units.
    #[error("price {0} must be a finite amount of 0 or more")]
    BadAmount(String),
}

fn codes() -> String {
    CURRENCIES
        .iter()
        .map(|(c, _)| *c)
        .collect::<Vec<_>>()
        .join(", ")
}

impl Currency {
    /// A listed currency.
    pub fn parse(code: &str) -> Result<Self, MoneyError> {
        CURRENCIES
            .iter()
            .find(|(c, _)| *c == code)
            .map(|&(code, exponent)| Self { code, exponent })
            .ok_or_else(|| MoneyError::UnknownCurrency(code.chars().take(8).collect()))
    }

    /// ISO code.
    pub fn code(self) -> &'static str {
        self.code
    }

    /// Minor units per major unit, as a power of ten.
    pub fn exponent(self) -> u32 {
        self.exponent
    }

    /// The exponent of any code: a listed currency's, else the default.
    pub fn exponent_of(code: &str) -> u32 {
        Self::parse(code).map_or(DEFAULT_EXPONENT, Self::exponent)
    }
}

/// An amount in a currency's minor units. Never negative.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Money {
    minor: i64,
    exponent: u32,
}

impl Money {
    /// Nothing, in a currency of `exponent`.
    pub const fn zero(exponent: u32) -> Self {
        Self { minor: 0, exponent }
    }

    /// From minor units in a currency of `exponent`.
    pub fn from_minor(minor: i64, exponent: u32) -> Result<Self, MoneyError> {
        if minor < 0 {
            return Err(MoneyError::BadAmount(minor.to_string()));
        }
        Ok(Self { minor, exponent })
    }

    /// From a major-unit amount (as feeds and the stored `price` carry it),
    /// rounded to the currency's minor unit.
    pub fn from_major(amount: f64, exponent: u32) -> Result<Self, MoneyError> {
        let minor = (amount * 10f64.powi(exponent as i32)).round();
        if !amount.is_finite() || amount < 0.0 || minor >= i64::MAX as f64 {
            return Err(MoneyError::BadAmount(amount.to_string()));
        }
        Ok(Self {
            minor: minor as i64,
            exponent,
        })
    }

    /// Minor units.
    pub fn minor(self) -> i64 {
        self.minor
    }

    /// Major units (the stored `price`).
    pub fn major(self) -> f64 {
        self.minor as f64 / 10f64.powi(self.exponent as i32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_currency_has_its_own_minor_unit() {
        let eur = Currency::parse("EUR").unwrap();
        let jpy = Currency::parse("JPY").unwrap();
        assert_eq!(
            Money::from_major(12.5, eur.exponent()).unwrap().minor(),
            1_250
        );
        // Yen have no minor unit: 1,500 JPY is 1,500, not 150,000.
        assert_eq!(
            Money::from_major(1_500.0, jpy.exponent()).unwrap().minor(),
            1_500
        );
        assert_eq!(Money::from_minor(1_500, 0).unwrap().major(), 1_500.0);
        assert_eq!(Money::from_minor(1_999, 2).unwrap().major(), 19.99);
        // Cents survive the round trip through the major-unit `price`.
        for minor in [0, 1, 99, 10_001, 123_456_789] {
            let m = Money::from_minor(minor, 2).unwrap();
            assert_eq!(Money::from_major(m.major(), 2).unwrap(), m);
        }
        assert_eq!(Currency::exponent_of("XXX"), 2);
    }

    #[test]
    fn what_money_cannot_be_is_refused() {
        assert!(Money::from_minor(-1, 2).is_err());
        for bad in [-0.01, f64::NAN, f64::INFINITY, 1e300] {
            assert!(Money::from_major(bad, 2).is_err(), "{bad}");
        }
        let e = Currency::parse("eur").unwrap_err().to_string();
        assert!(e.contains("\"eur\"") && e.contains("EUR, "), "{e}");
    }
}
