//! Two recall histograms (ascending `(bin, count)` pairs) added up. A fold adds a batch's ~100 bins to a window's
//! ~450, and the merge step six partials' into one; as a dict and a sort (the Python reference,
//! `canary.core.aggregations.merged_pairs`) that was ~90 of a fold's ~160 µs at 41 window keys, where the windows
//! stage folds every open window at each checkpoint. The sum of two counts is Python's own addition of the values
//! given, so the answer is the reference's (tests/core/test_fold.py).

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyLong, PyTuple};

/// Pairs with their keys read as numbers.
type Keyed<'py> = Vec<(i64, Bound<'py, PyTuple>)>;

fn ascending<'py>(seq: &Bound<'py, PyAny>) -> PyResult<Option<Keyed<'py>>> {
    let mut out = Vec::with_capacity(seq.len().unwrap_or(0));
    let mut last: Option<i64> = None;
    for item in seq.iter()? {
        let item = item?;
        let Ok(pair) = item.downcast_exact::<PyTuple>() else {
            return Ok(None);
        };
        if pair.len() != 2 {
            return Ok(None);
        }
        let (k, c) = (pair.get_borrowed_item(0)?, pair.get_borrowed_item(1)?);
        if !k.is_exact_instance_of::<PyLong>() || !c.is_exact_instance_of::<PyLong>() {
            return Ok(None);
        }
        let Ok(key) = k.extract::<i64>() else {
            return Ok(None);
        };
        if last.is_some_and(|l| key <= l) {
            return Ok(None);
        }
        last = Some(key);
        out.push((key, pair.clone()));
    }
    Ok(Some(out))
}

/// Two histograms' ascending `(key, count)` pairs added up, ascending: what `tuple(sorted(d.items()))` gives for `d`
/// the dict of `a` with `b`'s counts added in. A pair only one side has is passed on as it is (tuples are
/// immutable). None unless both are pairs of exact ints with strictly ascending keys (see `ascending`).
#[pyfunction]
pub fn merge_pairs<'py>(
    a: &Bound<'py, PyAny>,
    b: &Bound<'py, PyAny>,
) -> PyResult<Option<Bound<'py, PyTuple>>> {
    let py = a.py();
    let (Some(a), Some(b)) = (ascending(a)?, ascending(b)?) else {
        return Ok(None);
    };
    let mut out: Vec<Bound<'py, PyTuple>> = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let (ka, pa) = &a[i];
        let (kb, pb) = &b[j];
        if ka < kb {
            out.push(pa.clone());
            i += 1;
        } else if kb < ka {
            out.push(pb.clone());
            j += 1;
        } else {
            let total = pa.get_item(1)?.add(pb.get_item(1)?)?;
            out.push(PyTuple::new_bound(py, [pa.get_item(0)?, total]));
            i += 1;
            j += 1;
        }
    }
    out.extend(a[i..].iter().map(|(_, p)| p.clone()));
    out.extend(b[j..].iter().map(|(_, p)| p.clone()));
    Ok(Some(PyTuple::new_bound(py, out)))
}

/// `into[k] = into.get(k, 0) + c` for every `(k, c)` of `other`, in `other`'s order: `QuantileSketch.merge`'s loop
/// (the merge step adds six partials' sketches of a few hundred buckets for every window; ~50 µs each in Python).
/// Two exact ints whose sum fits an `i64` are added here; anything else is added as Python adds it, so `into` ends
/// as the loop leaves it (tests/core/test_fold.py).
#[pyfunction]
pub fn add_counts(into: &Bound<'_, PyDict>, other: &Bound<'_, PyDict>) -> PyResult<()> {
    let py = into.py();
    let exact = |v: &Bound<'_, PyAny>| -> Option<i64> {
        if v.is_exact_instance_of::<PyLong>() {
            v.extract::<i64>().ok()
        } else {
            None
        }
    };
    for (key, count) in other.iter() {
        let total = match into.get_item(&key)? {
            None if count.is_exact_instance_of::<PyLong>() => count,
            None => 0i64.into_py(py).into_bound(py).add(&count)?,
            Some(old) => match (exact(&old), exact(&count)) {
                (Some(a), Some(b)) if a.checked_add(b).is_some() => {
                    (a + b).into_py(py).into_bound(py)
                }
                _ => old.add(&count)?,
            },
        };
        into.set_item(key, total)?;
    }
    Ok(())
}
