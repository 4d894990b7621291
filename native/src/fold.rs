//! The window aggregator's counts over a batch of outcome columns (`canary.core.aggregations.count_columns`, the
//! reference, in numpy): what `WindowAggregator.agg_columns` adds to a window's aggregate — requests, errors, SLO
//! violations, exceedances of each latency threshold, the sketch's zero bucket and positive latencies, recall's sum
//! in micro-units, its labeled and exact-sample counts and histogram, and the counts per user group. One pass
//! over the rows instead of numpy's ~40 calls (a fold of a few hundred rows: ~80 µs, most of it numpy's fixed
//! cost per call; at 41 window keys the folds were a tenth of a worker's CPU).
//!
//! Every figure is a count or an integer sum, and each element's arithmetic is numpy's own (IEEE comparisons,
//! one product, round half to even), so the answers are the reference's exactly (tests/core/test_fold.py). The
//! logarithms of the sketch stay numpy's (`bucket_add` takes them as numpy computed them): numpy's vectorized
//! `log` and the C library's may differ in the last bit, which could move a value on a bucket's edge.

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict};

fn slice<'a, T: pyo3::buffer::Element>(
    py: Python<'a>,
    buffer: &'a PyBuffer<T>,
    what: &str,
) -> PyResult<&'a [pyo3::buffer::ReadOnlyCell<T>]> {
    buffer
        .as_slice(py)
        .ok_or_else(|| PyTypeError::new_err(format!("{what}: the array is not C-contiguous")))
}

/// numpy's `bincount(..., minlength)`: `by[i] += weight`, the row growing past its initial length when `i` does.
fn bump(by: &mut Vec<i64>, i: usize, weight: i64) {
    if i >= by.len() {
        by.resize(i + 1, 0);
    }
    by[i] += weight;
}

/// `round(x * scale)` half to even, as `numpy.rint(x * scale).astype(numpy.int64)` for the finite, non-negative
/// values a recall is; anything else is refused as numpy's `bincount` refuses a negative bin.
fn scaled(x: f64, scale: f64, what: &str) -> PyResult<i64> {
    let r = (x * scale).round_ties_even();
    if !(0.0..9.0e15).contains(&r) {
        return Err(PyValueError::new_err(format!(
            "{what}: {x:?} is not a recall value"
        )));
    }
    Ok(r as i64)
}

type Groups = (Vec<i64>, Vec<i64>, Vec<Vec<i64>>, Vec<i64>, Vec<i64>);

/// A numpy boolean as its buffer holds it (format `?`, one byte, 0 or 1): the flag columns are read as they are,
/// without a `uint8` view made of each in Python.
#[derive(Clone, Copy)]
#[repr(transparent)]
pub struct Flag(u8);

// SAFETY: `Flag` is one byte with no invalid bit pattern; only buffers of format `?` (one byte each) are taken.
unsafe impl pyo3::buffer::Element for Flag {
    fn is_compatible_format(format: &std::ffi::CStr) -> bool {
        format.to_bytes() == b"?"
    }
}

/// One piece of a window's rows, its columns as numpy arrays (C-contiguous, the flags numpy booleans).
type Part = (
    PyBuffer<f64>,
    PyBuffer<Flag>,
    PyBuffer<f64>,
    PyBuffer<Flag>,
    PyBuffer<i64>,
);

/// The counts of ``agg_columns`` over the rows of ``parts`` (each ``(latency, errored, recall, exact_sample,
/// user_group)``, numpy arrays; the rows are the parts' rows one after the other, as if concatenated): ``(n, errors,
/// breached, exceed, zero, positive, recall_micros, labeled, sampled, hist, groups, bad)`` — `exceed` one count per
/// threshold in the order given, `positive` the effective latencies above 0 as float64 bytes in row order, `hist`
/// the non-zero recall bins ascending as `(bin, count)`, `groups` None when no row has a group, `bad` the first
/// effective latency that is not finite (the sketch refuses the batch), else None. A window's pending pieces are
/// counted where they are: concatenating them first cost more than counting them (~6 pieces a fold at 41 keys).
#[pyfunction]
#[allow(clippy::too_many_arguments)]
#[pyo3(signature = (parts, error_latency_ms, latency_threshold_ms, recall_threshold, thresholds, recall_scale, recall_bins, user_groups))]
pub fn fold_parts(
    py: Python<'_>,
    parts: Vec<Part>,
    error_latency_ms: f64,
    latency_threshold_ms: f64,
    recall_threshold: f64,
    thresholds: Vec<f64>,
    recall_scale: f64,
    recall_bins: f64,
    user_groups: usize,
) -> PyResult<PyObject> {
    let mut columns = Vec::with_capacity(parts.len());
    let mut n = 0usize;
    for (latency, errored, recall, exact_sample, user_group) in &parts {
        let latency = slice(py, latency, "latency")?;
        let errored = slice(py, errored, "errored")?;
        let recall = slice(py, recall, "recall")?;
        let exact_sample = slice(py, exact_sample, "exact_sample")?;
        let user_group = slice(py, user_group, "user_group")?;
        if [
            errored.len(),
            recall.len(),
            exact_sample.len(),
            user_group.len(),
        ]
        .iter()
        .any(|&len| len != latency.len())
        {
            return Err(PyValueError::new_err(
                "fold_parts: the columns differ in length",
            ));
        }
        n += latency.len();
        columns.push((latency, errored, recall, exact_sample, user_group));
    }
    let mut errors = 0i64;
    let mut breached = 0i64;
    let mut exceed = vec![0i64; thresholds.len()];
    let mut zero = 0i64;
    let mut positive: Vec<f64> = Vec::with_capacity(n);
    let mut bad: Option<f64> = None;
    let mut micros_sum = 0i64;
    let mut labeled = 0i64;
    let mut sampled = 0i64;
    let mut hist: Vec<i64> = vec![0; recall_bins as usize + 1];
    // Per group: requests, errors, exceedances per threshold, labeled, micros.
    let mut grouped = false;
    let mut g_n = vec![0i64; user_groups];
    let mut g_errors = vec![0i64; user_groups];
    let mut g_exceed = vec![vec![0i64; user_groups]; thresholds.len()];
    let mut g_labeled = vec![0i64; user_groups];
    let mut g_micros = vec![0i64; user_groups];
    for &(latency, errored, recall, exact_sample, user_group) in &columns {
        for i in 0..latency.len() {
            let err = errored[i].get().0 != 0;
            let raw = latency[i].get();
            // numpy.where(errored, numpy.maximum(latency, error_latency_ms), latency); maximum keeps a NaN (NaN < x is
            // false).
            let lat = if err && raw < error_latency_ms {
                error_latency_ms
            } else {
                raw
            };
            let rec = recall[i].get();
            let is_labeled = !rec.is_nan();
            errors += i64::from(err);
            if err || lat > latency_threshold_ms || rec < recall_threshold {
                breached += 1;
            }
            if !lat.is_finite() {
                bad.get_or_insert(lat);
            } else if lat > 0.0 {
                positive.push(lat);
            } else {
                zero += 1;
            }
            sampled += i64::from(exact_sample[i].get().0 != 0);
            let mut micros = 0i64;
            if is_labeled {
                labeled += 1;
                micros = scaled(rec, recall_scale, "recall")?;
                micros_sum += micros;
                bump(&mut hist, scaled(rec, recall_bins, "recall")? as usize, 1);
            }
            let g = user_group[i].get();
            for (t, &threshold) in thresholds.iter().enumerate() {
                let above = err || lat > threshold;
                exceed[t] += i64::from(above);
                if above && g >= 0 {
                    bump(&mut g_exceed[t], g as usize, 1);
                }
            }
            if g >= 0 {
                let g = g as usize;
                grouped = true;
                bump(&mut g_n, g, 1);
                bump(&mut g_errors, g, i64::from(err));
                if is_labeled {
                    bump(&mut g_labeled, g, 1);
                    bump(&mut g_micros, g, micros);
                }
            }
        }
    }
    // Rows as long as bincount's: the longest group seen among them (every row saw the same groups but the
    // exceedances, errors and labels, whose rows bincount makes as long as their own largest group).
    let groups: Option<Groups> = grouped.then(move || {
        let fit = |mut r: Vec<i64>| {
            let len = r
                .iter()
                .rposition(|&c| c != 0)
                .map_or(0, |i| i + 1)
                .max(user_groups);
            r.truncate(len);
            r
        };
        let labeled = fit(g_labeled);
        // The micros' row is as long as the labeled rows' groups make it, whatever their weights.
        g_micros.resize(labeled.len().max(user_groups), 0);
        (
            fit(g_n),
            fit(g_errors),
            g_exceed.into_iter().map(fit).collect(),
            labeled,
            g_micros,
        )
    });
    let positive_bytes: &[u8] = unsafe {
        // SAFETY: f64 has no padding and any alignment of u8 holds; the bytes live as long as `positive`.
        std::slice::from_raw_parts(positive.as_ptr().cast::<u8>(), positive.len() * 8)
    };
    let hist: Vec<(i64, i64)> = hist
        .into_iter()
        .enumerate()
        .filter(|&(_, c)| c != 0)
        .map(|(b, c)| (b as i64, c))
        .collect();
    Ok((
        n,
        errors,
        breached,
        exceed,
        zero,
        PyBytes::new_bound(py, positive_bytes),
        micros_sum,
        labeled,
        (labeled > 0).then_some(sampled),
        hist,
        groups,
        bad,
    )
        .into_py(py))
}

/// The buckets of positive values from their logarithms (numpy's): `ceil(log / log_gamma)` per value, counted by
/// offset from the lowest index (a value range's indices span a few hundred at most): `(lowest, counts)`, None for
/// no values.
fn dense_buckets(
    logs: &[pyo3::buffer::ReadOnlyCell<f64>],
    log_gamma: f64,
) -> Option<(i64, Vec<i64>)> {
    let idx: Vec<i64> = logs
        .iter()
        .map(|l| (l.get() / log_gamma).ceil() as i64)
        .collect();
    let (Some(&low), Some(&high)) = (idx.iter().min(), idx.iter().max()) else {
        return None;
    };
    let mut counts = vec![0i64; (high - low) as usize + 1];
    for i in idx {
        counts[(i - low) as usize] += 1;
    }
    Some((low, counts))
}

/// The sketch's buckets of positive values from their logarithms (numpy's), added into its `{index: count}` dict in
/// place, ascending: what `QuantileSketch.add_split`'s loop adds of `canary.core.sketch.bucket_counts` (the reference),
/// without a pair built per bucket: answers the batch's `(lowest, highest)` index, None for no values. A
/// count that is not an `i64`, or a sum that would overflow one, is added as Python adds it.
#[pyfunction]
pub fn bucket_add(
    py: Python<'_>,
    bins: &Bound<'_, PyDict>,
    logs: PyBuffer<f64>,
    log_gamma: f64,
) -> PyResult<Option<(i64, i64)>> {
    let Some((low, counts)) = dense_buckets(slice(py, &logs, "logs")?, log_gamma) else {
        return Ok(None);
    };
    let high = low + counts.len() as i64 - 1;
    for (offset, &c) in counts.iter().enumerate() {
        if c == 0 {
            continue;
        }
        let key = (low + offset as i64).into_py(py);
        let total = match bins.get_item(&key)? {
            None => c.into_py(py),
            Some(old) => match old.extract::<i64>().ok().and_then(|v| v.checked_add(c)) {
                Some(sum) if !old.is_instance_of::<PyBool>() => sum.into_py(py),
                _ => old.add(c)?.unbind(),
            },
        };
        bins.set_item(key, total)?;
    }
    Ok(Some((low, high)))
}
