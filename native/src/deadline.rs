//! The stop deadline's backstop, outside the interpreter (canary.runtime.StopDeadline).
//!
//! Python runs a signal handler only in the main thread, between bytecodes, and a `threading.Timer` needs the
//! GIL to fire: a main thread busy in one long C call (a full garbage collection, a large JSON dump) holds
//! both back. On CI's loaded two cores a service once armed its 6 s deadline 4.4 s after SIGTERM and so broke
//! the 10 s bound. Here a C-level handler, chained in front of Python's own, notes the signal (one byte on a
//! pipe: async-signal-safe) and a plain thread — no GIL — waits the deadline, writes the last words it was
//! given and `_exit`s. Python's handler still runs as before (its clean stop usually wins).
//!
//! The signals are then blocked in the installing (main) thread, and so in every thread it starts after, and taken
//! by this thread, which only ever waits on its pipe or sleeps. The kernel hands a process's signal to one thread
//! that does not block it, and prefers the main thread: a main thread asleep in the kernel in a state a handled
//! signal does not wake (a log write throttled while the disk flushes dirty pages) held SIGTERM undelivered —
//! to Python's handler and to this one alike — for seconds (CI: a worker out 10.7 s after SIGTERM, its Python
//! deadline armed 4.7 s after the signal while another of its threads went on logging). Python runs its
//! handlers in the main thread whichever thread caught the signal (its C handler notes it and writes the
//! event loop's wakeup fd), so nothing else changes.

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const MAX_SIGNAL: usize = 65;
const TS_MARK: &[u8] = b"%TS%";

static PIPE_W: AtomicI32 = AtomicI32::new(-1);
static INSTALLED: AtomicBool = AtomicBool::new(false);
// Armed and not disarmed since: only the first arm writes to the pipe (the signal and Python's arm both arm).
static ARMED: AtomicBool = AtomicBool::new(false);
// A disarm raises the generation: a deadline armed under an earlier one does not fire.
static GENERATION: AtomicU64 = AtomicU64::new(0);
// The handler each signal had before ours (its sa_sigaction and whether it takes siginfo).
static PREVIOUS: [AtomicUsize; MAX_SIGNAL] = [const { AtomicUsize::new(0) }; MAX_SIGNAL];
static PREVIOUS_SIGINFO: [AtomicBool; MAX_SIGNAL] = [const { AtomicBool::new(false) }; MAX_SIGNAL];

extern "C" fn on_signal(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: only async-signal-safe calls (write) and atomics; errno is kept for the code we interrupted.
    unsafe {
        let errno = *libc::__errno_location();
        note_arm();
        let i = sig as usize;
        if i < MAX_SIGNAL {
            let prev = PREVIOUS[i].load(Ordering::Acquire);
            if prev != libc::SIG_DFL && prev != libc::SIG_IGN {
                if PREVIOUS_SIGINFO[i].load(Ordering::Acquire) {
                    let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                        std::mem::transmute(prev);
                    f(sig, info, ctx);
                } else {
                    let f: extern "C" fn(libc::c_int) = std::mem::transmute(prev);
                    f(sig);
                }
            }
        }
        *libc::__errno_location() = errno;
    }
}

fn note_arm() {
    let fd = PIPE_W.load(Ordering::Acquire);
    if fd >= 0 && !ARMED.swap(true, Ordering::AcqRel) {
        let byte = 1u8;
        // SAFETY: a one-byte write to our own non-blocking pipe; a full pipe means a deadline already runs.
        unsafe {
            libc::write(fd, &byte as *const u8 as *const libc::c_void, 1);
        }
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's civil_from_days).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Now as the JSON logs write it, but for its zone letter (the template keeps it): 2026-12-06T21:36:59.980.
fn timestamp() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs() as i64;
    let (y, mo, d) = civil(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:03}",
        s / 3600,
        s % 3600 / 60,
        s % 60,
        now.subsec_millis()
    )
}

/// `template` with each `%TS%` replaced by the time now.
fn with_time(template: &[u8]) -> Vec<u8> {
    let ts = timestamp();
    let mut out = Vec::with_capacity(template.len() + ts.len());
    let mut rest = template;
    while let Some(at) = rest.windows(TS_MARK.len()).position(|w| w == TS_MARK) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(ts.as_bytes());
        rest = &rest[at + TS_MARK.len()..];
    }
    out.extend_from_slice(rest);
    out
}

/// The set of ``signals``.
fn signal_set(signals: &[i32]) -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &sig in signals {
            libc::sigaddset(&mut set, sig);
        }
        set
    }
}

fn watch(read_fd: libc::c_int, seconds: f64, code: i32, template: Vec<u8>, taken: Vec<i32>) {
    // This thread takes the signals the others block (the module's note).
    let set = signal_set(&taken);
    // SAFETY: changes this thread's own signal mask.
    unsafe {
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
    let mut byte = 0u8;
    loop {
        // SAFETY: reading one byte from our own pipe into a local.
        let n = unsafe { libc::read(read_fd, &mut byte as *mut u8 as *mut libc::c_void, 1) };
        if n != 1 {
            // SAFETY: reads errno of this thread.
            if n < 0 && unsafe { *libc::__errno_location() } == libc::EINTR {
                continue;
            }
            return; // the pipe is gone: nothing will arm us
        }
        let armed_in = GENERATION.load(Ordering::Acquire);
        std::thread::sleep(Duration::from_secs_f64(seconds));
        if GENERATION.load(Ordering::Acquire) == armed_in {
            break;
        }
    }
    let words = with_time(&template);
    // SAFETY: a write to stderr and the process's immediate exit, as os._exit does.
    unsafe {
        libc::write(2, words.as_ptr() as *const libc::c_void, words.len());
        libc::_exit(code);
    }
}

/// Chain a C-level handler in front of each signal's current one (a Python handler must be installed: one
/// that kills or ignores is refused) and start the thread that ends the process ``seconds`` after the first
/// of them arrives (or :func:`deadline_arm`), with ``last_words`` on stderr (``%TS%`` becomes the UTC time) and
/// ``code``. Once per process: False when already installed.
#[pyfunction]
pub fn deadline_install(
    signals: Vec<i32>,
    seconds: f64,
    code: i32,
    last_words: Vec<u8>,
) -> PyResult<bool> {
    if !(seconds.is_finite() && seconds > 0.0) {
        return Err(PyValueError::new_err(format!(
            "deadline_install: seconds = {seconds}: must be > 0"
        )));
    }
    for &sig in &signals {
        if sig <= 0 || sig as usize >= MAX_SIGNAL {
            return Err(PyValueError::new_err(format!(
                "deadline_install: signal {sig} out of range"
            )));
        }
    }
    if INSTALLED.swap(true, Ordering::AcqRel) {
        return Ok(false);
    }
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 fills the two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        INSTALLED.store(false, Ordering::Release);
        return Err(PyOSError::new_err(format!(
            "deadline_install: pipe2: {}",
            std::io::Error::last_os_error()
        )));
    }
    // The reader blocks; only the writer (the handler's side) must never.
    // SAFETY: fcntl on our own descriptor.
    unsafe {
        let flags = libc::fcntl(fds[0], libc::F_GETFL);
        libc::fcntl(fds[0], libc::F_SETFL, flags & !libc::O_NONBLOCK);
    }
    let read_fd = fds[0];
    let for_thread = signals.clone();
    // Back only once the thread runs: std names it from inside (before the closure), so a reader of the process's
    // threads right after the install (a test, an operator's ps) saw it still called after the process, and
    // nothing said the backstop was up yet.
    let (started, running) = std::sync::mpsc::sync_channel::<()>(1);
    std::thread::Builder::new()
        .name("canary-stop-deadline".into())
        .spawn(move || {
            let _ = started.send(());
            watch(read_fd, seconds, code, last_words, for_thread)
        })
        .map_err(|e| PyOSError::new_err(format!("deadline_install: thread: {e}")))?;
    let _ = running.recv();
    PIPE_W.store(fds[1], Ordering::Release);
    let mut taken = Vec::with_capacity(signals.len()); // the signals chained: the ones the other threads block
    for sig in signals {
        // SAFETY: reading and replacing the signal's disposition with a handler that only does safe work.
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) != 0 {
                continue;
            }
            if old.sa_sigaction == libc::SIG_DFL || old.sa_sigaction == libc::SIG_IGN {
                continue; // nothing to chain: the signal kills or is ignored as it is
            }
            PREVIOUS[sig as usize].store(old.sa_sigaction, Ordering::Release);
            PREVIOUS_SIGINFO[sig as usize]
                .store(old.sa_flags & libc::SA_SIGINFO != 0, Ordering::Release);
            let mut new: libc::sigaction = std::mem::zeroed();
            new.sa_sigaction = on_signal as *const () as usize;
            new.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | (old.sa_flags & libc::SA_RESTART);
            new.sa_mask = old.sa_mask;
            if libc::sigaction(sig, &new, std::ptr::null_mut()) == 0 {
                taken.push(sig);
            }
        }
    }
    let set = signal_set(&taken);
    // SAFETY: changes the calling thread's own signal mask; threads it starts after inherit it.
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    Ok(true)
}

/// Arm now (a stop that did not begin with a signal).
#[pyfunction]
pub fn deadline_arm() {
    note_arm();
}

/// Forget an armed deadline; a later arm starts a new one.
#[pyfunction]
pub fn deadline_disarm() {
    GENERATION.fetch_add(1, Ordering::AcqRel);
    ARMED.store(false, Ordering::Release);
}
