//! The windows' request memory (`canary.core.dedup`): which requests a partition already counted, by window
//! start, in arrival order. The Python `ReferenceRequestMemory` is the reference; this one answers the same calls
//! the same way (tests/core/test_request_memory.py) without a Python object per request.
//!
//! Keys and starts cross as little-endian byte strings (`numpy.ndarray.tobytes()`), answers go back as one
//! byte a key: one call per batch. Every key is held once (a key is remembered only when it is not), so one hash
//! map from key to start answers membership; `seal_before` has nothing to do here (the map is already compact:
//! ~20 bytes a request). Request ids come from records, so a producer must not be able to choose keys that
//! collide in the table: keys are hashed with a seed drawn from std's `RandomState` (random per process) and
//! mixed by murmur3's 64-bit finalizer, a bijection — without the seed, a key's bucket cannot be predicted. It
//! costs a third of SipHash's time, which was a tenth of replay's recompute.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

fn words<T>(raw: &[u8], what: &str, from: fn([u8; 8]) -> T) -> PyResult<Vec<T>> {
    if raw.len() % 8 != 0 {
        return Err(PyValueError::new_err(format!(
            "{what}: {} bytes is not a whole number of 8-byte words",
            raw.len()
        )));
    }
    Ok(raw
        .chunks_exact(8)
        .map(|c| from(c.try_into().expect("8 bytes")))
        .collect())
}

/// Hashes one u64 key: `fmix64(key ^ seed)`.
#[derive(Default)]
pub struct KeyHasher {
    seed: u64,
    hash: u64,
}

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.hash
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed here; any other input still hashes, byte by byte.
        for &b in bytes {
            self.write_u64(self.hash.rotate_left(8) ^ b as u64);
        }
    }

    fn write_u64(&mut self, key: u64) {
        let mut x = key ^ self.seed;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        x ^= x >> 33;
        self.hash = x;
    }
}

#[derive(Clone)]
pub struct SeededKeys(u64);

impl Default for SeededKeys {
    fn default() -> Self {
        Self(RandomState::new().hash_one(0x5eed_u64))
    }
}

impl BuildHasher for SeededKeys {
    type Hasher = KeyHasher;

    fn build_hasher(&self) -> KeyHasher {
        KeyHasher {
            seed: self.0,
            hash: self.0,
        }
    }
}

#[pyclass(module = "canary_native")]
#[derive(Default)]
pub struct RequestMemory {
    start_of: HashMap<u64, i64, SeededKeys>,
    by_start: BTreeMap<i64, Vec<u64>>,
    seeds: SeededKeys,
}

#[pymethods]
impl RequestMemory {
    #[new]
    fn new() -> Self {
        Self::default()
    }

    fn __len__(&self) -> usize {
        self.start_of.len()
    }

    /// One byte a key: 1 where the key is remembered.
    fn remembered(&self, py: Python<'_>, keys: &[u8]) -> PyResult<Py<PyBytes>> {
        let keys = words(keys, "keys", u64::from_le_bytes)?;
        let out: Vec<u8> = keys
            .iter()
            .map(|k| self.start_of.contains_key(k) as u8)
            .collect();
        Ok(PyBytes::new_bound(py, &out).unbind())
    }

    /// None when no key is remembered and none repeats an earlier one; else one byte a key, 1 where it does.
    fn repeats(&self, py: Python<'_>, keys: &[u8]) -> PyResult<Option<Py<PyBytes>>> {
        let keys = words(keys, "keys", u64::from_le_bytes)?;
        let mut fresh: HashSet<u64, SeededKeys> = HashSet::with_capacity_and_hasher(keys.len(), self.seeds.clone());
        let mut out = vec![0u8; keys.len()];
        let mut any = false;
        for (i, k) in keys.iter().enumerate() {
            if self.start_of.contains_key(k) || !fresh.insert(*k) {
                out[i] = 1;
                any = true;
            }
        }
        Ok(any.then(|| PyBytes::new_bound(py, &out).unbind()))
    }

    /// Remember `keys[i]` at `starts[i]`, in order (none of them remembered, none repeated: the caller asked).
    fn remember(&mut self, keys: &[u8], starts: &[u8]) -> PyResult<()> {
        let keys = words(keys, "keys", u64::from_le_bytes)?;
        let starts = words(starts, "starts", i64::from_le_bytes)?;
        if keys.len() != starts.len() {
            return Err(PyValueError::new_err(format!(
                "{} keys but {} starts",
                keys.len(),
                starts.len()
            )));
        }
        self.start_of.reserve(keys.len());
        let mut i = 0;
        while i < keys.len() {
            // A run of one start (a batch's requests mostly share one window) goes into its bucket at once.
            let s = starts[i];
            let j = i + starts[i..].iter().take_while(|&&t| t == s).count();
            for &k in &keys[i..j] {
                self.start_of.insert(k, s);
            }
            self.by_start.entry(s).or_default().extend_from_slice(&keys[i..j]);
            i = j;
        }
        Ok(())
    }

    /// A checkpoint's keys of one start, in order; a key already remembered keeps its first start.
    fn restore(&mut self, keys: &[u8], start: i64) -> PyResult<()> {
        let keys = words(keys, "keys", u64::from_le_bytes)?;
        let mut taken = Vec::with_capacity(keys.len());
        for k in keys {
            if let std::collections::hash_map::Entry::Vacant(e) = self.start_of.entry(k) {
                e.insert(start);
                taken.push(k);
            }
        }
        if !taken.is_empty() {
            self.by_start.entry(start).or_default().extend(taken);
        }
        Ok(())
    }

    fn forget_before(&mut self, horizon: i64) {
        let kept = self.by_start.split_off(&horizon);
        let gone = std::mem::replace(&mut self.by_start, kept);
        for keys in gone.values() {
            for k in keys {
                self.start_of.remove(k);
            }
        }
        if self.start_of.capacity() > 4 * self.start_of.len().max(1024) {
            self.start_of.shrink_to_fit(); // a burst's table is given back once traffic falls
        }
    }

    fn seal_before(&self, _limit: i64) {}

    fn starts(&self) -> Vec<(i64, usize)> {
        self.by_start
            .iter()
            .filter(|(_, k)| !k.is_empty())
            .map(|(s, k)| (*s, k.len()))
            .collect()
    }

    fn keys_of(&self, py: Python<'_>, start: i64) -> Py<PyBytes> {
        let keys = self.by_start.get(&start).map(Vec::as_slice).unwrap_or(&[]);
        let raw: Vec<u8> = keys.iter().flat_map(|k| k.to_le_bytes()).collect();
        PyBytes::new_bound(py, &raw).unbind()
    }
}
