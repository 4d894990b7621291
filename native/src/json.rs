//! The checks canary makes on JSON going out and coming in, each answering as its Python reference does.
//!
//! `all_finite`: the check `canary.core.jsonio.dumps` makes before it writes JSON that holds `null` — is there a
//! NaN or an infinity anywhere in the value (orjson writes those as `null`, which a reader would take for a value
//! that was absent). The same answers as `canary.core.jsonio._finite`, the reference: floats in dicts' values,
//! lists and tuples, subclasses included; everything else (keys, ints, strings, None) is not looked at. The walk
//! is the windows stage's checkpoint's largest cost after the encoding itself (its state holds `null`s, so it is
//! walked every time): ~4 % of a live worker's CPU in Python.

//!
//! `structure`: `canary.core.wire.structure_of` — the deepest nesting and the number of arrays and objects of a
//! record, brackets inside strings ignored — which every bounded decode of a record with more openers than its
//! depth bound runs (each partial and merged window: thousands of `[index, count]` pairs). One pass over the
//! bytes instead of numpy's dozen array passes.

use pyo3::ffi;
use pyo3::prelude::*;

/// What one object is to the walk.
enum Kind {
    Float,
    Dict,
    List,
    Tuple,
    Other,
}

/// SAFETY: ``v`` is a live object (the GIL is held).
unsafe fn kind(v: *mut ffi::PyObject) -> Kind {
    let t = ffi::Py_TYPE(v);
    // The exact types first: a pointer comparison each; subclasses (rare) through the type checks.
    if t == std::ptr::addr_of_mut!(ffi::PyLong_Type)
        || t == std::ptr::addr_of_mut!(ffi::PyUnicode_Type)
        || v == ffi::Py_None()
    {
        Kind::Other
    } else if t == std::ptr::addr_of_mut!(ffi::PyFloat_Type) || ffi::PyFloat_Check(v) != 0 {
        Kind::Float
    } else if t == std::ptr::addr_of_mut!(ffi::PyList_Type) || ffi::PyList_Check(v) != 0 {
        Kind::List
    } else if t == std::ptr::addr_of_mut!(ffi::PyDict_Type) || ffi::PyDict_Check(v) != 0 {
        Kind::Dict
    } else if t == std::ptr::addr_of_mut!(ffi::PyTuple_Type) || ffi::PyTuple_Check(v) != 0 {
        Kind::Tuple
    } else {
        Kind::Other
    }
}

/// Whether no float in ``value`` is NaN or infinite. A loop over a stack (no recursion): the caller has
/// already encoded the value with orjson, so it holds no cycle and is at most orjson's 255 levels deep. Borrowed
/// pointers only: the containers are not changed while the GIL is held and no Python code runs here
/// (``PyFloat_AsDouble`` of a float, subclass or not, reads its value without calling ``__float__``).
#[pyfunction]
pub fn all_finite(value: &Bound<'_, PyAny>) -> bool {
    let mut stack: Vec<*mut ffi::PyObject> = vec![value.as_ptr()];
    // SAFETY: every pointer is the argument or a borrowed item of a container reachable from it, all alive for
    // the call (see above).
    unsafe {
        while let Some(v) = stack.pop() {
            match kind(v) {
                Kind::Float => {
                    if !ffi::PyFloat_AsDouble(v).is_finite() {
                        return false;
                    }
                }
                Kind::Dict => {
                    let mut pos: ffi::Py_ssize_t = 0;
                    let mut key: *mut ffi::PyObject = std::ptr::null_mut();
                    let mut item: *mut ffi::PyObject = std::ptr::null_mut();
                    while ffi::PyDict_Next(v, &mut pos, &mut key, &mut item) != 0 {
                        stack.push(item);
                    }
                }
                Kind::List => {
                    for i in 0..ffi::PyList_Size(v) {
                        stack.push(ffi::PyList_GetItem(v, i));
                    }
                }
                Kind::Tuple => {
                    for i in 0..ffi::PyTuple_Size(v) {
                        stack.push(ffi::PyTuple_GetItem(v, i));
                    }
                }
                Kind::Other => {}
            }
        }
    }
    true
}

/// ``(deepest nesting, arrays and objects)`` of ``raw``, brackets inside strings ignored: a quote toggles
/// "inside a string" unless an odd run of backslashes precedes it (anywhere, as the reference counts it).
#[pyfunction]
pub fn structure(raw: &[u8]) -> (i64, i64) {
    let mut inside = false;
    let mut backslashes = 0usize;
    let (mut depth, mut deepest, mut containers) = (0i64, 0i64, 0i64);
    for &b in raw {
        match b {
            b'"' => {
                if backslashes % 2 == 0 {
                    inside = !inside;
                }
                backslashes = 0;
            }
            b'\\' => backslashes += 1,
            b'[' | b'{' => {
                backslashes = 0;
                if !inside {
                    depth += 1;
                    containers += 1;
                    deepest = deepest.max(depth);
                }
            }
            b']' | b'}' => {
                backslashes = 0;
                if !inside {
                    depth -= 1;
                }
            }
            _ => backslashes = 0,
        }
    }
    (deepest, containers)
}
