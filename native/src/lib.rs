//! canary's native batch decoder for `search_results` values (issue #24, docs/adr/0006-native-batch-core.md).
//!
//! One call takes a fetched batch of raw record values and returns them as columns: event time, latency,
//! recall, error flag, recall source, user group, window key and router codes, and each request's 64-bit
//! identity (the same two checksums as `canary.core.windows.request_key`). No Python object is built per
//! record. The pure-Python decoder stays the reference: a row is accepted here only when it is certain that
//! `canary.pipeline.decode.OutcomeDecoder` accepts it with the same values; anything else (metrics, unknown or
//! duplicate fields, escapes in names, numbers a float cannot hold exactly, tombstones, too large, not JSON)
//! is marked `FALLBACK` and the caller decodes that row in Python, which decides and says why.
//!
//! `scan` reads the ordinary outcome (a flat object of the outcome's fields, no escapes) in one pass, as serde_json
//! reads it into `Outcome`, and hands serde_json every other value (a row's decode 0.60 -> 0.40 µs, in cache).
//!
//! `dedup` is the windows' request memory (which requests a partition already counted), the same answers as
//! `canary.core.dedup.ReferenceRequestMemory` without a Python object per request.
//!
//! `records` reads a fetch response's record bytes into entries (offset, timestamp, where the value lies), so
//! the windows stage decodes values where they lie (`decode_spans`) and replay's reader makes its tuples here
//! (`run_tuples`): no Python object per record anywhere on the way (`canary.kafka.runs`).
//!
//! `fold` counts what a batch of outcome columns adds to a window, `counts` adds two windows' recall histograms up:
//! stand-ins for the core's pure functions (`canary.core.accel`).

mod counts;
mod crc32c;
mod deadline;
mod dedup;
mod fold;
mod json;
mod records;
mod scan;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

const OUTCOME: u8 = 0;
const WATERMARK: u8 = 1;
const FALLBACK: u8 = 2;

/// A JSON string, borrowed from the record when it holds no escape.
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// A float field: a JSON float, or an integer a float holds exactly (|n| <= 2^53); larger integers go to the
/// reference, whose conversion is the contract's.
struct Float(f64);

const EXACT_INT: u64 = 1 << 53;

impl Float {
    /// A JSON float a float field takes here: finite and not a negative zero (serde_json reads the integer `-0` as
    /// the float -0.0, the reference as the integer 0, so 0.0: a negative zero is the reference's to read).
    fn of_float(v: f64) -> Option<Float> {
        (v.is_finite() && !(v == 0.0 && v.is_sign_negative())).then_some(Float(v))
    }

    /// A JSON integer a float field takes here: one a float holds exactly (|n| <= 2^53).
    fn of_int(v: i64) -> Option<Float> {
        (v.unsigned_abs() <= EXACT_INT).then_some(Float(v as f64))
    }
}

impl<'de> Deserialize<'de> for Float {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Float;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Float::of_float(v).ok_or_else(|| E::custom("not finite, or a negative zero"))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                i64::try_from(v)
                    .ok()
                    .and_then(Float::of_int)
                    .ok_or_else(|| E::custom("integer beyond 2^53"))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Float::of_int(v).ok_or_else(|| E::custom("integer beyond 2^53"))
            }
        }
        d.deserialize_any(V)
    }
}

// `deserialize_with` makes a nullable field required (a missing one is the reference's error to word).
fn nullable_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Text<'de>>, D::Error> {
    Option::<Text<'de>>::deserialize(d)
}

fn nullable_float<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Float>, D::Error> {
    Option::<Float>::deserialize(d)
}

/// Accepts only `null` (an absent or empty-of-numbers `metrics`); anything else goes to the reference.
struct Null;

impl<'de> Deserialize<'de> for Null {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Null;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("null")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Null)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, bound(deserialize = "'de: 'a"))]
struct Outcome<'a> {
    event_id: Text<'a>,
    request_id: Text<'a>,
    ts: i64,
    #[serde(deserialize_with = "nullable_text")]
    deployment_id: Option<Text<'a>>,
    config_name: Text<'a>,
    config_version: Text<'a>,
    config_hash: Text<'a>,
    arm: Text<'a>,
    latency_ms: Float,
    #[serde(deserialize_with = "nullable_float")]
    recall_at_10: Option<Float>,
    result_count: i64,
    #[serde(deserialize_with = "nullable_text")]
    error: Option<Text<'a>>,
    router_id: Text<'a>,
    #[serde(default)]
    metrics: Option<Null>,
    #[serde(default)]
    recall_source: Option<Text<'a>>,
    #[serde(default)]
    user_group: Option<i64>,
    #[serde(default)]
    ring: Option<Text<'a>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, bound(deserialize = "'de: 'a"))]
struct Watermark<'a> {
    router_id: Text<'a>,
    watermark_ms: i64,
    status: Text<'a>,
    seq: i64,
    kind: Text<'a>,
}

/// `canary.core.models.SAFE_NAME`: `[A-Za-z0-9][A-Za-z0-9_.-]{0,127}`.
fn safe_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b[0].is_ascii_alphanumeric()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

fn adler32(data: &[u8], start: u32) -> u32 {
    const MOD: u32 = 65521;
    let (mut a, mut b) = (start & 0xffff, start >> 16);
    // 5552 bytes is the most that can be summed before the 32-bit sums must be reduced (zlib's NMAX).
    for chunk in data.chunks(5552) {
        for &c in chunk {
            a += c as u32;
            b += a;
        }
        a %= MOD;
        b %= MOD;
    }
    (b << 16) | a
}

/// One row as `numpy.frombuffer` reads it with `canary.pipeline.decode.ROW` (native-endian, 56 bytes): one
/// buffer for the batch, so the Python side pays one call, not one per column.
#[repr(C)]
#[derive(Clone, Copy)]
struct Row {
    ts: i64,
    latency: f64,
    recall: f64, // NaN: no label
    request: u64,
    user_group: i64, // -1: none
    key: i32,
    router: i32,
    status: u8,
    errored: u8,
    exact_sample: u8,
    _pad: [u8; 5],
}

const EMPTY: Row = Row {
    ts: 0,
    latency: 0.0,
    recall: f64::NAN,
    request: 0,
    user_group: -1,
    key: -1,
    router: -1,
    status: FALLBACK,
    errored: 0,
    exact_sample: 0,
    _pad: [0; 5],
};

/// Everything a batch's rows became.
#[derive(Default)]
struct Columns {
    rows: Vec<Row>,
    // distinct window keys: (deployment_id, config_name, arm, ring)
    keys: Vec<(Option<String>, String, String, Option<String>)>,
    routers: Vec<String>,
    // row, router code, watermark_ms, status, seq
    watermarks: Vec<(usize, i32, i64, String, i64)>,
}

struct Limits {
    max_bytes: usize,
    max_epoch_ms: i64,
    user_groups: i64,
}

impl Columns {
    fn router_code(&mut self, name: &str) -> i32 {
        if let Some(i) = self.routers.iter().rposition(|r| r == name) {
            return i as i32;
        }
        self.routers.push(name.to_owned());
        (self.routers.len() - 1) as i32
    }

    fn key_code(&mut self, dep: Option<&str>, config: &str, arm: &str, ring: Option<&str>) -> i32 {
        let found = self.keys.iter().rposition(|(d, c, a, r)| {
            d.as_deref() == dep && c == config && a == arm && r.as_deref() == ring
        });
        if let Some(i) = found {
            return i as i32;
        }
        self.keys.push((
            dep.map(str::to_owned),
            config.to_owned(),
            arm.to_owned(),
            ring.map(str::to_owned),
        ));
        (self.keys.len() - 1) as i32
    }

    fn push_empty(&mut self, status: u8) {
        self.rows.push(Row { status, ..EMPTY });
    }

    /// One value: an accepted outcome, an accepted watermark record, or a row for the reference.
    fn row(&mut self, raw: Option<&[u8]>, limits: &Limits) {
        let Some(raw) = raw else {
            return self.push_empty(FALLBACK);
        };
        if raw.len() > limits.max_bytes {
            return self.push_empty(FALLBACK);
        }
        // The one-pass reader first; serde_json reads whatever it declines.
        let read = scan::outcome(raw).map_or_else(|| serde_json::from_slice::<Outcome>(raw), Ok);
        match read {
            Ok(o) => {
                if !self.outcome(&o, limits) {
                    self.push_empty(FALLBACK);
                }
            }
            Err(_) => match serde_json::from_slice::<Watermark>(raw) {
                Ok(w) if self.watermark(&w, limits) => {}
                _ => self.push_empty(FALLBACK),
            },
        }
    }

    fn outcome(&mut self, o: &Outcome, limits: &Limits) -> bool {
        let epoch = 0..=limits.max_epoch_ms;
        let dep = o.deployment_id.as_ref().map(|t| t.0.as_ref());
        let ring = o.ring.as_ref().map(|t| t.0.as_ref());
        let arm = o.arm.0.as_ref();
        let recall = o.recall_at_10.as_ref().map(|f| f.0);
        let source = o.recall_source.as_ref().map(|t| t.0.as_ref());
        let valid = !o.event_id.0.is_empty()
            && !o.request_id.0.is_empty()
            && epoch.contains(&o.ts)
            && dep.map_or(true, safe_name)
            && safe_name(&o.config_name.0)
            && (arm == "last_good" || arm == "candidate")
            && o.latency_ms.0 >= 0.0
            && recall.map_or(true, |r| (0.0..=1.0).contains(&r))
            && o.result_count >= 0
            && safe_name(&o.router_id.0)
            && ring.map_or(true, safe_name)
            && o.user_group
                .map_or(true, |g| (0..limits.user_groups).contains(&g))
            && match source {
                None => true,
                Some("labels") | Some("exact_sample") => recall.is_some(),
                Some(_) => false,
            };
        let _ = (&o.config_version, &o.config_hash, &o.metrics); // typed by the parse; values unused here
        if !valid {
            return false;
        }
        let key = self.key_code(dep, &o.config_name.0, arm, ring);
        let router = self.router_code(&o.router_id.0);
        // canary.core.windows.request_keys_of: crc32 and adler32 of "<deployment or ->|<request id>".
        let prefix = dep.unwrap_or("-").as_bytes();
        let request = o.request_id.0.as_bytes();
        let mut crc = crc32fast::Hasher::new();
        crc.update(prefix);
        crc.update(b"|");
        crc.update(request);
        let adler = adler32(request, adler32(b"|", adler32(prefix, 1)));
        self.rows.push(Row {
            ts: o.ts,
            latency: o.latency_ms.0,
            recall: recall.unwrap_or(f64::NAN),
            request: ((crc.finalize() as u64) << 32) | adler as u64,
            user_group: o.user_group.unwrap_or(-1),
            key,
            router,
            status: OUTCOME,
            errored: o.error.is_some() as u8,
            exact_sample: (source == Some("exact_sample")) as u8,
            _pad: [0; 5],
        });
        true
    }

    fn watermark(&mut self, w: &Watermark, limits: &Limits) -> bool {
        let status = w.status.0.as_ref();
        let valid = w.kind.0 == "watermark"
            && safe_name(&w.router_id.0)
            && (0..=limits.max_epoch_ms).contains(&w.watermark_ms)
            && matches!(status, "start" | "running" | "stop")
            && w.seq >= 0;
        if !valid {
            return false;
        }
        let row = self.rows.len();
        let router = self.router_code(&w.router_id.0);
        self.watermarks
            .push((row, router, w.watermark_ms, status.to_owned(), w.seq));
        self.push_empty(WATERMARK);
        true
    }
}

fn bytes_of<T: Copy>(py: Python<'_>, v: &[T]) -> Py<PyBytes> {
    // SAFETY: T is a plain-data #[repr(C)] struct of numbers with explicit padding, so every byte is initialized.
    let raw =
        unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) };
    PyBytes::new_bound(py, raw).unbind()
}

impl Columns {
    /// The Python result: `(rows, keys, routers, watermarks)`.
    fn into_py_tuple(self, py: Python<'_>) -> Py<PyTuple> {
        let keys: Vec<PyObject> = self
            .keys
            .iter()
            .map(|(d, c, a, r)| (d.as_deref(), c.as_str(), a.as_str(), r.as_deref()).into_py(py))
            .collect();
        let marks: Vec<PyObject> = self
            .watermarks
            .iter()
            .map(|(row, router, wm, status, seq)| {
                (*row, *router, *wm, status.as_str(), *seq).into_py(py)
            })
            .collect();
        PyTuple::new_bound(
            py,
            [
                bytes_of(py, &self.rows).into_py(py),
                PyList::new_bound(py, keys).into_py(py),
                PyList::new_bound(py, &self.routers).into_py(py),
                PyList::new_bound(py, marks).into_py(py),
            ],
        )
        .unbind()
    }
}

/// Decode a batch of `search_results` values (bytes or None) into columns; see the module docs.
///
/// Returns `(rows, keys, routers, watermarks)`: the rows as one byte string (56 bytes a row, see `Row`), the
/// distinct window keys `(deployment_id, config_name, arm, ring)`, the distinct router ids, and the watermark
/// rows `(row, router code, watermark_ms, status, seq)`.
#[pyfunction]
#[pyo3(signature = (values, *, max_bytes, max_epoch_ms, user_groups))]
fn decode_batch(
    py: Python<'_>,
    values: &Bound<'_, PyList>,
    max_bytes: usize,
    max_epoch_ms: i64,
    user_groups: i64,
) -> PyResult<Py<PyTuple>> {
    let limits = Limits {
        max_bytes,
        max_epoch_ms,
        user_groups,
    };
    // None, bytearray, memoryview …: a row for the reference. The list's items are held here, so their bytes
    // (immutable) stay valid while the GIL is released.
    let items: Vec<Option<Bound<'_, PyBytes>>> = values
        .iter()
        .map(|v| v.downcast_into::<PyBytes>().ok())
        .collect();
    let raws: Vec<Option<&[u8]>> = items
        .iter()
        .map(|b| b.as_ref().map(|b| b.as_bytes()))
        .collect();
    let cols = parse_rows(py, raws.len(), |cols| {
        for raw in &raws {
            cols.row(*raw, &limits);
        }
        Ok(())
    })?;
    Ok(cols.into_py_tuple(py))
}

/// Rows at least this many are parsed with the GIL released (replay decodes its next chunk in a thread while
/// windowing the last one); fewer are not worth the release's cost.
const RELEASE_ROWS: usize = 512;

fn parse_rows<F>(py: Python<'_>, rows: usize, fill: F) -> PyResult<Columns>
where
    F: FnOnce(&mut Columns) -> PyResult<()> + Send,
{
    let run = move || {
        let mut cols = Columns {
            rows: Vec::with_capacity(rows),
            ..Columns::default()
        };
        fill(&mut cols).map(|()| cols)
    };
    if rows >= RELEASE_ROWS {
        py.allow_threads(run)
    } else {
        run()
    }
}

fn entries_of(raw: &[u8]) -> PyResult<Vec<records::Entry>> {
    const SIZE: usize = std::mem::size_of::<records::Entry>();
    if raw.len() % SIZE != 0 {
        return Err(pyo3::exceptions::PyValueError::new_err(
            "entries: not a whole number of entries",
        ));
    }
    Ok(raw
        .chunks_exact(SIZE)
        .map(|c| {
            let at = |i: usize| i64::from_ne_bytes(c[i * 8..i * 8 + 8].try_into().unwrap());
            records::Entry {
                offset: at(0),
                timestamp: at(1),
                value_at: at(2),
                value_len: at(3),
            }
        })
        .collect())
}

/// An entry's value in the buffer (None: a null value); an error if the entry points outside it.
fn value_of<'b>(b: &'b [u8], e: &records::Entry) -> PyResult<Option<&'b [u8]>> {
    if e.value_len < 0 {
        return Ok(None);
    }
    let (at, len) = (e.value_at as usize, e.value_len as usize);
    match at.checked_add(len).and_then(|end| b.get(at..end)) {
        Some(v) => Ok(Some(v)),
        None => Err(pyo3::exceptions::PyValueError::new_err(
            "an entry lies outside the buffer",
        )),
    }
}

/// Decode the values of `entries` rows `lo..hi` (from :func:`parse_records`) where they lie in `buffer`:
/// the same result as :func:`decode_batch` on those values, without a Python object per value.
#[pyfunction]
#[pyo3(signature = (buffer, entries, lo, hi, *, max_bytes, max_epoch_ms, user_groups))]
#[allow(clippy::too_many_arguments)]
fn decode_spans(
    py: Python<'_>,
    buffer: &Bound<'_, PyBytes>,
    entries: &Bound<'_, PyBytes>,
    lo: usize,
    hi: usize,
    max_bytes: usize,
    max_epoch_ms: i64,
    user_groups: i64,
) -> PyResult<Py<PyTuple>> {
    let limits = Limits {
        max_bytes,
        max_epoch_ms,
        user_groups,
    };
    let b = buffer.as_bytes();
    let all = entries_of(entries.as_bytes())?;
    let rows = all
        .get(lo..hi)
        .ok_or_else(|| pyo3::exceptions::PyIndexError::new_err("rows out of range"))?;
    let cols = parse_rows(py, rows.len(), |cols| {
        for e in rows {
            cols.row(value_of(b, e)?, &limits);
        }
        Ok(())
    })?;
    Ok(cols.into_py_tuple(py))
}

/// Read one partition's fetched record bytes (message format v2) as aiokafka's `PartitionRecords` would:
/// `(entries, next_fetch_offset)` — the entries as one byte string of 32-byte rows (offset, timestamp, value
/// position, value length or -1) — or `None` where aiokafka must read them (see `records`).
#[pyfunction]
#[pyo3(signature = (buffer, fetch_offset, *, read_committed, aborted, check_crcs))]
fn parse_records(
    py: Python<'_>,
    buffer: &Bound<'_, PyBytes>,
    fetch_offset: i64,
    read_committed: bool,
    aborted: Vec<(i64, i64)>,
    check_crcs: bool,
) -> Option<(Py<PyBytes>, i64)> {
    let parsed = records::parse(
        buffer.as_bytes(),
        fetch_offset,
        read_committed,
        &aborted,
        check_crcs,
    )?;
    Some((bytes_of(py, &parsed.entries), parsed.next_fetch_offset))
}

/// The records of a run as `(partition, offset, timestamp, value)` tuples (what a replay keeps of each).
#[pyfunction]
fn run_tuples(
    py: Python<'_>,
    partition: i64,
    buffer: &Bound<'_, PyBytes>,
    entries: &Bound<'_, PyBytes>,
) -> PyResult<Py<PyList>> {
    let b = buffer.as_bytes();
    let all = entries_of(entries.as_bytes())?;
    let mut out: Vec<PyObject> = Vec::with_capacity(all.len());
    for e in &all {
        let value: PyObject = match value_of(b, e)? {
            Some(v) => PyBytes::new_bound(py, v).into_py(py),
            None => py.None(),
        };
        out.push(
            PyTuple::new_bound(
                py,
                [
                    partition.into_py(py),
                    e.offset.into_py(py),
                    e.timestamp.into_py(py),
                    value,
                ],
            )
            .into_py(py),
        );
    }
    Ok(PyList::new_bound(py, out).unbind())
}

/// A list of `(partition, offset, timestamp_ms, value, ...)` records split by partition, what reading each
/// partition from Kafka yields: `[(partition, records, times)]` in partition order, each partition's records in
/// offset order with each offset once (the first of equal offsets in the input's order), their timestamps as one
/// byte string of little-endian i64 (None: `i64::MIN`). None when a record is not a tuple of that shape with int
/// fields (the caller's Python path decides those, as before). Each record is appended to its partition's list as
/// it is read, while it is in the cache: a million records split with numpy and `itemgetter` (a second pass over
/// them) were a sixth of replay's recompute.
#[pyfunction]
#[allow(clippy::type_complexity)]
fn group_records(
    py: Python<'_>,
    records: &Bound<'_, PyList>,
) -> PyResult<Option<Vec<(i64, Py<PyList>, Py<PyBytes>)>>> {
    struct Part<'py> {
        records: Bound<'py, PyList>,
        offsets: Vec<i64>,
        times: Vec<i64>,
        ordered: bool,
    }
    let mut parts: BTreeMap<i64, Part<'_>> = BTreeMap::new();
    for item in records.iter() {
        let Ok(t) = item.downcast::<PyTuple>() else {
            return Ok(None);
        };
        if t.len() < 4 {
            return Ok(None);
        }
        let (Ok(p), Ok(o)) = (
            t.get_item(0)?.extract::<i64>(),
            t.get_item(1)?.extract::<i64>(),
        ) else {
            return Ok(None);
        };
        let ts = t.get_item(2)?;
        let ts = if ts.is_none() {
            i64::MIN
        } else {
            match ts.extract::<i64>() {
                Ok(v) => v,
                Err(_) => return Ok(None),
            }
        };
        let part = parts.entry(p).or_insert_with(|| Part {
            records: PyList::empty_bound(py),
            offsets: Vec::new(),
            times: Vec::new(),
            ordered: true,
        });
        if let Some(&last) = part.offsets.last() {
            part.ordered &= last < o;
        }
        part.records.append(t)?;
        part.offsets.push(o);
        part.times.push(ts);
    }
    let mut out = Vec::with_capacity(parts.len());
    for (p, part) in parts {
        let (list, times) = if part.ordered {
            (part.records, part.times)
        } else {
            // Offset order (a stable sort: equal offsets keep their input order), the first of equal offsets.
            let mut rows: Vec<usize> = (0..part.offsets.len()).collect();
            rows.sort_by_key(|&r| part.offsets[r]);
            rows.dedup_by_key(|r| part.offsets[*r]);
            let mut kept = Vec::with_capacity(rows.len());
            for &r in &rows {
                kept.push(part.records.get_item(r)?);
            }
            (
                PyList::new_bound(py, kept),
                rows.iter().map(|&r| part.times[r]).collect(),
            )
        };
        let raw: Vec<u8> = times.iter().flat_map(|t| t.to_le_bytes()).collect();
        out.push((p, list.unbind(), PyBytes::new_bound(py, &raw).unbind()));
    }
    Ok(Some(out))
}

/// Per value, what `scan` made of it against serde_json (tests): 0 declined, 1 agreed, 2 disagreed (a bug).
#[pyfunction]
fn scan_agrees(values: Vec<Vec<u8>>) -> Vec<u8> {
    values.iter().map(|v| scan::agrees(v)).collect()
}

#[pyfunction]
#[pyo3(name = "crc32c")]
fn crc32c_py(data: &Bound<'_, PyBytes>) -> u32 {
    crc32c::checksum(data.as_bytes())
}

#[pymodule]
fn canary_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(decode_batch, m)?)?;
    m.add_function(wrap_pyfunction!(decode_spans, m)?)?;
    m.add_function(wrap_pyfunction!(parse_records, m)?)?;
    m.add_function(wrap_pyfunction!(crc32c_py, m)?)?;
    m.add_function(wrap_pyfunction!(scan_agrees, m)?)?;
    m.add_function(wrap_pyfunction!(run_tuples, m)?)?;
    m.add_class::<dedup::RequestMemory>()?;
    m.add_function(wrap_pyfunction!(group_records, m)?)?;
    m.add_function(wrap_pyfunction!(fold::fold_parts, m)?)?;
    m.add_function(wrap_pyfunction!(fold::bucket_add, m)?)?;
    m.add_function(wrap_pyfunction!(counts::merge_pairs, m)?)?;
    m.add_function(wrap_pyfunction!(counts::add_counts, m)?)?;
    m.add_function(wrap_pyfunction!(json::all_finite, m)?)?;
    m.add_function(wrap_pyfunction!(json::structure, m)?)?;
    m.add_function(wrap_pyfunction!(deadline::deadline_install, m)?)?;
    m.add_function(wrap_pyfunction!(deadline::deadline_arm, m)?)?;
    m.add_function(wrap_pyfunction!(deadline::deadline_disarm, m)?)?;
    m.add("ENTRY_BYTES", std::mem::size_of::<records::Entry>())?;
    m.add("RELEASE_ROWS", RELEASE_ROWS)?;
    m.add("OUTCOME", OUTCOME)?;
    m.add("WATERMARK", WATERMARK)?;
    m.add("FALLBACK", FALLBACK)?;
    m.add("ROW_BYTES", std::mem::size_of::<Row>())?;
    Ok(())
}
