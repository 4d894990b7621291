//! A one-pass reader of the ordinary `search_results` value: a flat JSON object of the outcome's fields, strings
//! without escapes, plain numbers, `null`s. It reads what serde_json reads into `Outcome` with the same values, or
//! declines (None) and serde_json reads the value as before — so it can only be faster, never different.
//!
//! Why not serde_json alone: with its derived reader (a visitor call per token, a field-name match per key through
//! `deny_unknown_fields`) a row of `decode_batch` cost ~0.60 µs in cache, with this one 0.40 (1,400 bench outcomes
//! of ~360 bytes, 41 window keys); from values scattered in memory add ~0.4 either way. The values the router writes
//! are all of one shape; this reads that shape (strings eight bytes at a time) and hands everything else — escapes,
//! control characters, unknown or repeated fields, floats written as large integers, `-0` and `-0.0`, exponents
//! that overflow, nested values, bad UTF-8 — to serde.
//!
//! Floats: `str::parse::<f64>` (core's `dec2flt`: correctly rounded, as serde_json's `float_roundtrip` and the
//! Python reference are) on tokens that match JSON's number grammar, which it checks first (`parse` alone also
//! takes `inf`, `+1`, `.5`).

use std::borrow::Cow;

use crate::{Float, Null, Outcome, Text};

/// The outcome's fields, by their bit in the reader's `seen` mask.
const FIELDS: [&[u8]; 17] = [
    b"event_id",
    b"request_id",
    b"ts",
    b"deployment_id",
    b"config_name",
    b"config_version",
    b"config_hash",
    b"arm",
    b"latency_ms",
    b"recall_at_10",
    b"result_count",
    b"error",
    b"router_id",
    b"metrics",
    b"recall_source",
    b"user_group",
    b"ring",
];

/// The fields serde requires (those without `#[serde(default)]`): 0..=12.
const REQUIRED: u32 = (1 << 13) - 1;

/// A scalar as the reader saw it.
enum Value<'a> {
    Str(&'a str),
    Null,
    /// A JSON integer that fits i64 (at most 18 digits, no `-0`).
    Int(i64),
    /// A JSON number with a fraction or an exponent.
    Float(f64),
}

struct Reader<'a> {
    b: &'a [u8],
    i: usize,
}

/// Bytes checked to be UTF-8 (or ASCII) as a str.
fn as_str(b: &[u8]) -> &str {
    // SAFETY: callers pass only bytes they checked: all ASCII, or passed by `std::str::from_utf8`.
    unsafe { std::str::from_utf8_unchecked(b) }
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Where the first `"`, `\\`, control character (< 0x20) or non-ASCII byte (>= 0x80) of `b` is: eight bytes at a
/// time. A byte's high bit in `(v - ONES) & !v & HIGHS` is set when that byte of `v` is zero — exactly for the
/// lowest such byte (a borrow can only mark bytes above a true one), so the lowest bit found is a true match.
#[inline]
fn special(b: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(chunk) = b.get(i..i + 8) {
        let x = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
        let quote = x ^ (ONES * b'"' as u64);
        let backslash = x ^ (ONES * b'\\' as u64);
        let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS;
        // bytes below 0x20 among those below 0x80 (the others are marked by `x & HIGHS`)
        let control = x.wrapping_sub(ONES * 0x20) & !x & HIGHS;
        let found = zero(quote) | zero(backslash) | control | (x & HIGHS);
        if found != 0 {
            return Some(i + (found.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    b[i..]
        .iter()
        .position(|&c| c == b'"' || c == b'\\' || !(0x20..0x80).contains(&c))
        .map(|j| i + j)
}

/// `a == b` for the short field names, without a call to memcmp.
#[inline]
fn same(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    if n >= 8 {
        let word =
            |s: &[u8], at: usize| u64::from_le_bytes(s[at..at + 8].try_into().unwrap_or_default());
        // the first eight bytes and the last eight (overlapping below 16: names are at most 14 long)
        return n <= 16 && word(a, 0) == word(b, 0) && word(a, n - 8) == word(b, n - 8);
    }
    a.iter().zip(b).all(|(x, y)| x == y)
}

impl<'a> Reader<'a> {
    #[inline]
    fn ws(&mut self) {
        while let Some(&c) = self.b.get(self.i) {
            if !matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
                break;
            }
            self.i += 1;
        }
    }

    #[inline]
    fn eat(&mut self, c: u8) -> Option<()> {
        self.ws();
        if self.b.get(self.i) == Some(&c) {
            self.i += 1;
            Some(())
        } else {
            None
        }
    }

    /// The string's bytes after its opening quote, up to the closing one; None at an escape, a control character
    /// or bytes that are not UTF-8 (the JSON outside strings is ASCII, so only strings are checked).
    #[inline]
    fn string(&mut self) -> Option<&'a str> {
        let start = self.i;
        let rest = &self.b[start..];
        let stop = special(rest)?;
        if rest[stop] == b'"' {
            self.i = start + stop + 1;
            return Some(as_str(&rest[..stop])); // ASCII up to the quote
        }
        if rest[stop] < 0x80 {
            return None; // an escape or a control character
        }
        let len = stop
            + rest[stop..]
                .iter()
                .position(|&c| c == b'"' || c == b'\\' || c < 0x20)?;
        if rest[len] != b'"' {
            return None;
        }
        self.i = start + len + 1;
        std::str::from_utf8(&rest[..len]).ok()
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while self.b.get(self.i).is_some_and(u8::is_ascii_digit) {
            self.i += 1;
        }
        self.i - start
    }

    /// A JSON number: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
    fn number(&mut self) -> Option<Value<'a>> {
        let start = self.i;
        let negative = self.b.get(self.i) == Some(&b'-');
        if negative {
            self.i += 1;
        }
        let int_start = self.i;
        let int_digits = self.digits();
        if int_digits == 0 || (int_digits > 1 && self.b[int_start] == b'0') {
            return None;
        }
        let mut float = false;
        if self.b.get(self.i) == Some(&b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return None;
            }
            float = true;
        }
        if matches!(self.b.get(self.i), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.b.get(self.i), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if self.digits() == 0 {
                return None;
            }
            float = true;
        }
        let token = as_str(&self.b[start..self.i]); // sign, digits, '.', 'e', 'E', '+': ASCII
        if float {
            return token.parse().ok().map(Value::Float);
        }
        // -0 and integers of 19 digits or more (i64's edge, floats' 2^53) are serde's to read.
        if int_digits > 18 || (negative && self.b[int_start] == b'0') {
            return None;
        }
        // at most 18 digits: no overflow
        let magnitude = self.b[int_start..self.i]
            .iter()
            .fold(0i64, |n, &d| n * 10 + (d - b'0') as i64);
        Some(Value::Int(if negative { -magnitude } else { magnitude }))
    }

    fn value(&mut self) -> Option<Value<'a>> {
        self.ws();
        match *self.b.get(self.i)? {
            b'"' => {
                self.i += 1;
                self.string().map(Value::Str)
            }
            b'n' if self.b[self.i..].starts_with(b"null") => {
                self.i += 4;
                Some(Value::Null)
            }
            b'-' | b'0'..=b'9' => self.number(),
            _ => None, // true, false, objects, arrays, anything else
        }
    }
}

fn text(v: Value<'_>) -> Option<Text<'_>> {
    match v {
        Value::Str(s) => Some(Text(Cow::Borrowed(s))),
        _ => None,
    }
}

fn nullable_text(v: Value<'_>) -> Option<Option<Text<'_>>> {
    match v {
        Value::Null => Some(None),
        v => text(v).map(Some),
    }
}

fn int(v: Value<'_>) -> Option<i64> {
    match v {
        Value::Int(n) => Some(n),
        _ => None,
    }
}

/// As `Float`'s visitor takes them (its `of_float`, `of_int`).
fn float(v: Value<'_>) -> Option<Float> {
    match v {
        Value::Float(f) => Float::of_float(f),
        Value::Int(n) => Float::of_int(n),
        _ => None,
    }
}

fn nullable_float(v: Value<'_>) -> Option<Option<Float>> {
    match v {
        Value::Null => Some(None),
        v => float(v).map(Some),
    }
}

/// `raw` read as serde_json reads it into `Outcome`, or None: serde_json must read it.
pub(crate) fn outcome(raw: &[u8]) -> Option<Outcome<'_>> {
    let mut r = Reader { b: raw, i: 0 };
    r.eat(b'{')?;
    let mut o = Outcome {
        event_id: Text(Cow::Borrowed("")),
        request_id: Text(Cow::Borrowed("")),
        ts: 0,
        deployment_id: None,
        config_name: Text(Cow::Borrowed("")),
        config_version: Text(Cow::Borrowed("")),
        config_hash: Text(Cow::Borrowed("")),
        arm: Text(Cow::Borrowed("")),
        latency_ms: Float(0.0),
        recall_at_10: None,
        result_count: 0,
        error: None,
        router_id: Text(Cow::Borrowed("")),
        metrics: None,
        recall_source: None,
        user_group: None,
        ring: None,
    };
    let mut seen: u32 = 0;
    let mut last = FIELDS.len() - 1;
    loop {
        r.eat(b'"')?;
        let key = r.string()?.as_bytes();
        // The router writes the fields in FIELDS' order: the one after the last is tried first.
        let next = (last + 1) % FIELDS.len();
        let field = if same(FIELDS[next], key) {
            next
        } else {
            FIELDS.iter().position(|f| same(f, key))?
        };
        last = field;
        if seen & (1 << field) != 0 {
            return None; // a repeated field: serde's error to word
        }
        seen |= 1 << field;
        r.eat(b':')?;
        let v = r.value()?;
        match field {
            0 => o.event_id = text(v)?,
            1 => o.request_id = text(v)?,
            2 => o.ts = int(v)?,
            3 => o.deployment_id = nullable_text(v)?,
            4 => o.config_name = text(v)?,
            5 => o.config_version = text(v)?,
            6 => o.config_hash = text(v)?,
            7 => o.arm = text(v)?,
            8 => o.latency_ms = float(v)?,
            9 => o.recall_at_10 = nullable_float(v)?,
            10 => o.result_count = int(v)?,
            11 => o.error = nullable_text(v)?,
            12 => o.router_id = text(v)?,
            13 => match v {
                Value::Null => o.metrics = None::<Null>,
                _ => return None,
            },
            14 => o.recall_source = nullable_text(v)?,
            15 => {
                o.user_group = match v {
                    Value::Null => None,
                    v => Some(int(v)?),
                }
            }
            16 => o.ring = nullable_text(v)?,
            _ => unreachable!("FIELDS has 17 names"),
        }
        r.ws();
        match *r.b.get(r.i)? {
            b',' => r.i += 1,
            b'}' => {
                r.i += 1;
                break;
            }
            _ => return None,
        }
    }
    r.ws();
    (r.i == raw.len() && seen & REQUIRED == REQUIRED).then_some(o)
}

/// What the reader made of `raw` against serde_json's reading (tests): 0 it declined, 1 it read what serde reads,
/// 2 it read something serde reads otherwise or refuses — a bug.
pub(crate) fn agrees(raw: &[u8]) -> u8 {
    let Some(fast) = outcome(raw) else {
        return 0;
    };
    let Ok(slow) = serde_json::from_slice::<Outcome>(raw) else {
        return 2;
    };
    let t = |a: &Text, b: &Text| a.0 == b.0;
    let ot = |a: &Option<Text>, b: &Option<Text>| match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a.0 == b.0,
        _ => false,
    };
    let f = |a: &Float, b: &Float| a.0.to_bits() == b.0.to_bits();
    let same = t(&fast.event_id, &slow.event_id)
        && t(&fast.request_id, &slow.request_id)
        && fast.ts == slow.ts
        && ot(&fast.deployment_id, &slow.deployment_id)
        && t(&fast.config_name, &slow.config_name)
        && t(&fast.config_version, &slow.config_version)
        && t(&fast.config_hash, &slow.config_hash)
        && t(&fast.arm, &slow.arm)
        && f(&fast.latency_ms, &slow.latency_ms)
        && match (&fast.recall_at_10, &slow.recall_at_10) {
            (None, None) => true,
            (Some(a), Some(b)) => f(a, b),
            _ => false,
        }
        && fast.result_count == slow.result_count
        && ot(&fast.error, &slow.error)
        && t(&fast.router_id, &slow.router_id)
        && fast.metrics.is_none() == slow.metrics.is_none()
        && ot(&fast.recall_source, &slow.recall_source)
        && fast.user_group == slow.user_group
        && ot(&fast.ring, &slow.ring);
    if same {
        1
    } else {
        2
    }
}
