//! The windows' request memory (`canary.core.dedup`): which requests a partition already counted, by window
//! start, in arrival order. The Python `ReferenceRequestMemory` is the reference; this one answers the same calls
//! the same way (tests/core/test_request_memory.py) without a Python object per request.
//!
//! Keys and starts cross as little-endian byte strings (`numpy.ndarray.tobytes()`), answers go back as one
//! byte a key: one call per batch. Every key is held once (a key is remembered only when it is not). As in the
//! reference, the starts the watermark has passed are *sealed*: their keys leave the hash map for one sorted
//! vector (8 bytes a request, and 1 of index on its leading bits; a hash map holding 60 s of requests costs ~20–50
//! and, churned, grew the worker's memory for minutes at 16k outcomes/s), so the map holds only the open windows'
//! requests. Request ids come from records, so a producer must not be able to choose keys that
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

/// One window start's requests, in arrival order: the first `sealed` are in the sorted vector, the rest in the map.
#[derive(Default)]
struct Start {
    keys: Vec<u64>,
    sealed: usize,
}

/// The sealed starts' keys, sorted, with an index of where each run of leading bits begins: a look-up reads one
/// index pair and a few neighbouring keys instead of binary-searching the whole vector (at a million keys that
/// was ~20 dependent cache misses, 295 ns a key; the index costs 1 B a key). Keys are checksums, spread over the
/// leading bits; keys a producer made share leading bits on purpose only narrow no range: the search within a
/// bucket is still binary. Keys sealed since the last rebuild wait in a small sorted vector of their own
/// (`recent`), merged in once it holds an eighth of the rest: a seal that moves a few late keys no longer re-sorts
/// and re-indexes the whole memory (that was 4 % of a backlog worker's main thread).
#[derive(Default)]
struct SortedKeys {
    keys: Vec<u64>,
    index: Vec<u32>, // index[b]: the first position whose key's leading `bits` bits are >= b; len 2^bits + 1
    bits: u32,
    recent: Vec<u64>, // sorted; no key in both
}

impl SortedKeys {
    const KEYS_PER_BUCKET: usize = 4;
    const MAX_BITS: u32 = 26;
    const RECENT_MIN: usize = 1024;

    fn len(&self) -> usize {
        self.keys.len() + self.recent.len()
    }

    fn contains(&self, key: &u64) -> bool {
        let found = if self.bits == 0 {
            self.keys.binary_search(key).is_ok()
        } else {
            let b = (key >> (64 - self.bits)) as usize;
            let (lo, hi) = (self.index[b] as usize, self.index[b + 1] as usize);
            self.keys[lo..hi].binary_search(key).is_ok()
        };
        found || self.recent.binary_search(key).is_ok()
    }

    /// Add keys (sorted, none held).
    fn add(&mut self, moved: &[u64]) {
        merge_into(&mut self.recent, moved);
        if self.recent.len() > Self::RECENT_MIN.max(self.keys.len() / 8) {
            merge_into(&mut self.keys, &self.recent);
            self.recent.clear(); // its buffer kept for the next keys
            self.reindex();
        }
    }

    /// Drop keys (sorted; any not held are passed over).
    fn remove(&mut self, gone: &[u64]) {
        remove_sorted(&mut self.recent, gone);
        remove_sorted(&mut self.keys, gone);
        // A burst's buffer is given back once traffic falls; otherwise the buffer stays and is reused.
        if self.keys.capacity() > 4 * self.keys.len().max(1 << 16) {
            self.keys.shrink_to_fit();
        }
        self.reindex();
    }

    /// Index the keys (after they changed).
    fn reindex(&mut self) {
        let n = self.keys.len();
        let buckets = n / Self::KEYS_PER_BUCKET;
        self.bits = if buckets < 2 || n > u32::MAX as usize {
            0
        } else {
            buckets.ilog2().min(Self::MAX_BITS)
        };
        self.index.clear(); // its buffer kept: the same size again unless the keys doubled or halved
        if self.bits == 0 {
            self.index.shrink_to_fit();
            return;
        }
        let count = 1usize << self.bits;
        self.index.reserve_exact(count + 1);
        let mut at = 0usize;
        for b in 0..count {
            while at < n && ((self.keys[at] >> (64 - self.bits)) as usize) < b {
                at += 1;
            }
            self.index.push(at as u32);
        }
        self.index.push(n as u32);
    }
}

#[pyclass(module = "canary_native")]
#[derive(Default)]
pub struct RequestMemory {
    open: HashMap<u64, i64, SeededKeys>,
    sealed: SortedKeys, // the sealed starts' keys
    starts: BTreeMap<i64, Start>,
}

impl RequestMemory {
    fn has(&self, key: &u64) -> bool {
        self.open.contains_key(key) || self.sealed.contains(key)
    }
}

// The sealed keys are the worker's largest blocks (8 B a request: ~8 MB at 16k outcomes/s) and change every window
// (a start sealed, one forgotten). Built anew each time (a merged copy, a filtered copy, the sort's scratch), blocks
// of a few MB were freed and allocated again every few seconds below glibc's mmap threshold, and the heap grew
// around them for minutes (the 10-minute RSS run: +10 % after the request memory was full, its free space
// fragmented). Merged and filtered in place, each buffer keeps its size and place.

/// Merge sorted `more` into sorted `into` (no key in both), in place from the back: no buffer but `into`'s growth.
fn merge_into(into: &mut Vec<u64>, more: &[u64]) {
    let old = into.len();
    into.resize(old + more.len(), 0);
    let (mut i, mut j, mut k) = (old, more.len(), old + more.len());
    while j > 0 {
        k -= 1;
        if i > 0 && into[i - 1] > more[j - 1] {
            i -= 1;
            into[k] = into[i];
        } else {
            j -= 1;
            into[k] = more[j];
        }
    }
}

/// `sorted` without the keys of `gone` (both sorted; keys of `gone` not in `sorted` are passed over), in place.
fn remove_sorted(sorted: &mut Vec<u64>, gone: &[u64]) {
    let mut j = 0;
    // retain visits the keys once each, in order.
    sorted.retain(|&k| {
        while j < gone.len() && gone[j] < k {
            j += 1;
        }
        let drop = j < gone.len() && gone[j] == k;
        j += usize::from(drop);
        !drop
    });
}

#[pymethods]
impl RequestMemory {
    #[new]
    fn new() -> Self {
        Self::default()
    }

    fn __len__(&self) -> usize {
        self.open.len() + self.sealed.len()
    }

    /// One byte a key: 1 where the key is remembered.
    fn remembered(&self, py: Python<'_>, keys: &[u8]) -> PyResult<Py<PyBytes>> {
        let keys = words(keys, "keys", u64::from_le_bytes)?;
        let out: Vec<u8> = keys.iter().map(|k| self.has(k) as u8).collect();
        Ok(PyBytes::new_bound(py, &out).unbind())
    }

    /// None when no key is remembered and none repeats an earlier one; else one byte a key, 1 where it does.
    fn repeats(&self, py: Python<'_>, keys: &[u8]) -> PyResult<Option<Py<PyBytes>>> {
        let keys = words(keys, "keys", u64::from_le_bytes)?;
        let mut fresh: HashSet<u64, SeededKeys> =
            HashSet::with_capacity_and_hasher(keys.len(), self.open.hasher().clone());
        let mut out = vec![0u8; keys.len()];
        let mut any = false;
        for (i, k) in keys.iter().enumerate() {
            if self.has(k) || !fresh.insert(*k) {
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
        let mut i = 0;
        while i < keys.len() {
            // A run of one start (a batch's requests mostly share one window) goes into its bucket at once.
            let s = starts[i];
            let j = i + starts[i..].iter().take_while(|&&t| t == s).count();
            for &k in &keys[i..j] {
                self.open.insert(k, s);
            }
            self.starts
                .entry(s)
                .or_default()
                .keys
                .extend_from_slice(&keys[i..j]);
            i = j;
        }
        Ok(())
    }

    /// A checkpoint's keys of one start, in order; a key already remembered keeps its first start.
    fn restore(&mut self, keys: &[u8], start: i64) -> PyResult<()> {
        let keys = words(keys, "keys", u64::from_le_bytes)?;
        let mut taken = Vec::with_capacity(keys.len());
        for k in keys {
            if !self.has(&k) {
                self.open.insert(k, start);
                taken.push(k);
            }
        }
        if !taken.is_empty() {
            self.starts.entry(start).or_default().keys.extend(taken);
        }
        Ok(())
    }

    fn forget_before(&mut self, horizon: i64) {
        let kept = self.starts.split_off(&horizon);
        let gone = std::mem::replace(&mut self.starts, kept);
        let mut unsealed: Vec<u64> = Vec::new();
        for st in gone.values() {
            for k in &st.keys[st.sealed..] {
                self.open.remove(k);
            }
            unsealed.extend_from_slice(&st.keys[..st.sealed]);
        }
        if !unsealed.is_empty() {
            unsealed.sort_unstable();
            self.sealed.remove(&unsealed);
        }
    }

    fn seal_before(&mut self, limit: i64) {
        let mut moved: Vec<u64> = Vec::new();
        for st in self.starts.range_mut(..limit).map(|(_, st)| st) {
            if st.sealed < st.keys.len() {
                for k in &st.keys[st.sealed..] {
                    self.open.remove(k);
                }
                moved.extend_from_slice(&st.keys[st.sealed..]);
                st.sealed = st.keys.len();
            }
        }
        if !moved.is_empty() {
            moved.sort_unstable();
            self.sealed.add(&moved);
        }
        if self.open.capacity() > 4 * self.open.len().max(1024) {
            self.open.shrink_to_fit(); // a burst's table is given back once traffic falls
        }
    }

    fn starts(&self) -> Vec<(i64, usize)> {
        self.starts
            .iter()
            .filter(|(_, st)| !st.keys.is_empty())
            .map(|(s, st)| (*s, st.keys.len()))
            .collect()
    }

    fn keys_of(&self, py: Python<'_>, start: i64) -> Py<PyBytes> {
        let keys = self
            .starts
            .get(&start)
            .map(|st| st.keys.as_slice())
            .unwrap_or(&[]);
        let raw: Vec<u8> = keys.iter().flat_map(|k| k.to_le_bytes()).collect();
        PyBytes::new_bound(py, &raw).unbind()
    }
}
