//! Byte sizes and CPU counts as admins write them ("16G", "512M", 1.5) and as mlenv
//! prints them back.

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// A size in bytes. Written as an integer of bytes or a string with a binary suffix:
/// `"512M"`, `"16G"`, `"1.5G"`, `"64Ki"`, `"2TB"` (K, M, G, T are powers of 1024, as
/// in Docker's `-m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid size {input:?}: {why}; write bytes or a number with K, M, G or T, like \"512M\" or \"16G\"")]
pub struct SizeError {
    pub input: String,
    pub why: &'static str,
}

impl FromStr for ByteSize {
    type Err = SizeError;

    fn from_str(s: &str) -> Result<Self, SizeError> {
        let err = |why| SizeError {
            input: s.to_string(),
            why,
        };
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        if num.is_empty() {
            return Err(err("no number"));
        }
        let shift = match unit.trim().to_ascii_uppercase().as_str() {
            "" | "B" => 0,
            "K" | "KB" | "KI" | "KIB" => 10,
            "M" | "MB" | "MI" | "MIB" => 20,
            "G" | "GB" | "GI" | "GIB" => 30,
            "T" | "TB" | "TI" | "TIB" => 40,
            _ => return Err(err("unknown unit")),
        };
        let value: f64 = num.parse().map_err(|_| err("not a number"))?;
        let bytes = value * (1u64 << shift) as f64;
        if !bytes.is_finite() || bytes >= i64::MAX as f64 {
            return Err(err("too large"));
        }
        if bytes.fract() != 0.0 {
            return Err(err("not a whole number of bytes"));
        }
        Ok(ByteSize(bytes as u64))
    }
}

impl fmt::Display for ByteSize {
    /// The largest unit that prints exactly, or one decimal place above 1 GiB.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
            let unit_bytes = 1u64 << shift;
            if b >= unit_bytes && b.is_multiple_of(unit_bytes) {
                return write!(f, "{}{}", b / unit_bytes, unit);
            }
        }
        if b >= 1 << 30 {
            return write!(f, "{:.1}G", b as f64 / (1u64 << 30) as f64);
        }
        if b >= 1 << 20 {
            return write!(f, "{:.1}M", b as f64 / (1u64 << 20) as f64);
        }
        write!(f, "{b}")
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as \"512M\" or \"16G\", or a number of bytes")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("invalid size {v}: must not be negative")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A number of CPUs, as Docker's `--cpus`: fractional, above zero.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Cpus(pub f64);

/// The largest CPU count accepted in a policy: beyond any real host, small enough that
/// quota arithmetic cannot overflow.
pub const MAX_CPUS: f64 = 4096.0;

impl fmt::Display for Cpus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Three decimals at most, trailing zeros dropped: 1.5, 0.25, 4.
        let s = format!("{:.3}", self.0);
        let s = s.trim_end_matches('0').trim_end_matches('.');
        f.write_str(s)
    }
}

impl Serialize for Cpus {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.0)
    }
}

impl<'de> Deserialize<'de> for Cpus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Cpus;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number of CPUs such as 4 or 0.5")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Cpus, E> {
                if v.is_finite() && v > 0.0 && v <= MAX_CPUS {
                    Ok(Cpus(v))
                } else {
                    Err(E::custom(format!(
                        "invalid cpu count {v}: must be above 0 and at most {MAX_CPUS}"
                    )))
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Cpus, E> {
                self.visit_f64(v as f64)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Cpus, E> {
                self.visit_f64(v as f64)
            }
        }
        d.deserialize_any(V)
    }
}

/// A process count limit: at least 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Pids(pub i64);

impl fmt::Display for Pids {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl<'de> Deserialize<'de> for Pids {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = i64::deserialize(d)?;
        if v >= 1 {
            Ok(Pids(v))
        } else {
            Err(de::Error::custom(format!(
                "invalid pids limit {v}: must be at least 1"
            )))
        }
    }
}

/// A size for messages, to one decimal in G or whole M: `2.1G`, `512M`.
pub fn rounded(b: u64) -> String {
    let g = b as f64 / (1u64 << 30) as f64;
    if g >= 1.0 {
        format!("{}G", Cpus((g * 10.0).round() / 10.0))
    } else {
        format!("{}M", (b as f64 / (1u64 << 20) as f64).round())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes() {
        for (input, bytes) in [
            ("0", 0),
            ("512", 512),
            ("64K", 64 << 10),
            ("512M", 512 << 20),
            ("512m", 512 << 20),
            ("16G", 16 << 30),
            ("16GiB", 16 << 30),
            ("1.5G", 3 << 29),
            ("2T", 2 << 40),
            (" 8G ", 8 << 30),
        ] {
            assert_eq!(input.parse::<ByteSize>(), Ok(ByteSize(bytes)), "{input}");
        }
    }

    #[test]
    fn rejects_bad_sizes() {
        for input in ["", "G", "16Q", "-1G", "1.5", "abc", "1e3G", "99999999T"] {
            let err = input.parse::<ByteSize>().unwrap_err();
            assert!(err.to_string().contains("invalid size"), "{input}: {err}");
        }
    }

    #[test]
    fn prints_sizes() {
        for (bytes, text) in [
            (512u64 << 20, "512M"),
            (16 << 30, "16G"),
            (3 << 29, "1536M"),
            (1 << 40, "1T"),
            (1000, "1000"),
            (1536, "1536"),
        ] {
            assert_eq!(ByteSize(bytes).to_string(), text);
        }
    }

    #[test]
    fn prints_cpus() {
        assert_eq!(Cpus(1.5).to_string(), "1.5");
        assert_eq!(Cpus(4.0).to_string(), "4");
        assert_eq!(Cpus(0.25).to_string(), "0.25");
    }
}

/// A positive number (a ratio such as an overcommit factor, or load per CPU).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize)]
pub struct Positive(pub f64);

/// A percentage, 0 to 100.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize)]
pub struct Percent(pub f64);

macro_rules! bounded_float {
    ($t:ident, $expect:literal, $ok:expr, $why:literal) => {
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl Visitor<'_> for V {
                    type Value = $t;
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        f.write_str($expect)
                    }
                    fn visit_f64<E: de::Error>(self, v: f64) -> Result<$t, E> {
                        let ok: fn(f64) -> bool = $ok;
                        if v.is_finite() && ok(v) {
                            Ok($t(v))
                        } else {
                            Err(E::custom(format!(concat!("invalid value {}: ", $why), v)))
                        }
                    }
                    fn visit_i64<E: de::Error>(self, v: i64) -> Result<$t, E> {
                        self.visit_f64(v as f64)
                    }
                    fn visit_u64<E: de::Error>(self, v: u64) -> Result<$t, E> {
                        self.visit_f64(v as f64)
                    }
                }
                d.deserialize_any(V)
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&Cpus(self.0), f)
            }
        }
    };
}

bounded_float!(Positive, "a number above 0", |v| v > 0.0, "must be above 0");
bounded_float!(
    Percent,
    "a percentage from 0 to 100",
    |v| (0.0..=100.0).contains(&v),
    "must be from 0 to 100"
);

/// A threshold an admin can switch off: a value, or `false`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Switch<T> {
    Off,
    On(T),
}

impl<T: Copy> Switch<T> {
    pub fn get(&self) -> Option<T> {
        match self {
            Switch::Off => None,
            Switch::On(v) => Some(*v),
        }
    }
}

impl<T> Switch<T> {
    pub fn as_ref(&self) -> Option<&T> {
        match self {
            Switch::Off => None,
            Switch::On(v) => Some(v),
        }
    }
}

impl<T: Serialize> Serialize for Switch<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Switch::Off => s.serialize_bool(false),
            Switch::On(v) => v.serialize(s),
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Switch<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::value::{
            F64Deserializer, I64Deserializer, StrDeserializer, U64Deserializer,
        };
        use std::marker::PhantomData;
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Switch<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a threshold, or false to switch the check off")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Switch<T>, E> {
                if v {
                    Err(E::custom(
                        "true is not a threshold: write a value, or false to switch the check off",
                    ))
                } else {
                    Ok(Switch::Off)
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Switch<T>, E> {
                T::deserialize(I64Deserializer::<E>::new(v)).map(Switch::On)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Switch<T>, E> {
                T::deserialize(U64Deserializer::<E>::new(v)).map(Switch::On)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Switch<T>, E> {
                T::deserialize(F64Deserializer::<E>::new(v)).map(Switch::On)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Switch<T>, E> {
                T::deserialize(StrDeserializer::<E>::new(v)).map(Switch::On)
            }
            // Lists: `allowed_bind_roots = ["/home"]` or `false`.
            fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<Switch<T>, A::Error> {
                T::deserialize(de::value::SeqAccessDeserializer::new(seq)).map(Switch::On)
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

#[cfg(test)]
mod switch_tests {
    use super::*;

    #[derive(Deserialize, Serialize, Debug)]
    struct T {
        a: Switch<ByteSize>,
        b: Switch<Percent>,
        c: Switch<Positive>,
    }

    #[test]
    fn switches_parse_values_and_false() {
        let t: T = toml::from_str("a = \"4G\"\nb = 85\nc = 1.5\n").unwrap();
        assert_eq!(t.a, Switch::On(ByteSize(4 << 30)));
        assert_eq!(t.b, Switch::On(Percent(85.0)));
        assert_eq!(t.c, Switch::On(Positive(1.5)));
        let t: T = toml::from_str("a = false\nb = false\nc = false\n").unwrap();
        assert_eq!((t.a, t.b, t.c), (Switch::Off, Switch::Off, Switch::Off));
        let back: toml::Table = toml::from_str(&toml::to_string(&t).unwrap()).unwrap();
        assert_eq!(back["a"], toml::Value::Boolean(false));
        for (text, want) in [
            ("a = true\nb = 1\nc = 1\n", "true is not a threshold"),
            ("a = \"4Q\"\nb = 1\nc = 1\n", "invalid size \"4Q\""),
            ("a = 1\nb = 101\nc = 1\n", "must be from 0 to 100"),
            ("a = 1\nb = 1\nc = 0\n", "must be above 0"),
        ] {
            let err = toml::from_str::<T>(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
    }
}
