//! Kafka's record-batch framing (message format v2), read straight from a fetch response's bytes.
//!
//! aiokafka builds a Python `ConsumerRecord` per record (a fifth of a backlog worker's time); this reads the
//! same bytes into fixed-size entries — offset, timestamp, and where the value lies in the buffer — so the
//! windows stage can decode the values without a Python object per record. aiokafka stays the reference:
//! anything but plain v2 batches (compressed, older formats, a CRC that does not match, framing that does not
//! add up) is reported as `None` and the caller lets aiokafka read those bytes, which decides and says why.
//! The read-committed rules (aborted transactions, control batches) are aiokafka's, in the same order:
//! `aiokafka.consumer.fetcher.PartitionRecords._unpack_records`.

use std::collections::HashSet;

const LOG_OVERHEAD: usize = 12; // base offset (8) + batch length (4)
const HEADER: usize = 61; // through the records count
const MAGIC_AT: usize = 16;
const CRC_AT: usize = 17;
const ATTRIBUTES_AT: usize = 21;

const COMPRESSION_MASK: i16 = 0x07;
const LOG_APPEND_TIME: i16 = 0x08;
const TRANSACTIONAL: i16 = 0x10;
const CONTROL: i16 = 0x20;

const NO_PRODUCER: i64 = -1;
const ABORT_MARKER: i16 = 0;

/// One record as the caller reads it (native-endian, 32 bytes): `value_len` -1 is a null value.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Entry {
    pub offset: i64,
    pub timestamp: i64,
    pub value_at: i64,
    pub value_len: i64,
}

/// What a fetch's bytes hold, or `None` where aiokafka must decide.
pub struct Parsed {
    pub entries: Vec<Entry>,
    pub next_fetch_offset: i64,
}

fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}

fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

fn be_i64(b: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

/// A zig-zag varint (Kafka's `varint`/`varlong`) at `*at`, or None when it runs past `end` or beyond 64 bits.
fn varlong(b: &[u8], at: &mut usize, end: usize) -> Option<i64> {
    let mut raw: u64 = 0;
    let mut shift = 0u32;
    loop {
        if *at >= end || shift > 63 {
            return None;
        }
        let byte = b[*at];
        *at += 1;
        raw |= ((byte & 0x7f) as u64) << shift;
        if byte & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    Some(((raw >> 1) as i64) ^ -((raw & 1) as i64))
}

/// A varint that must fit Kafka's 32-bit `varint`.
fn varint(b: &[u8], at: &mut usize, end: usize) -> Option<i64> {
    varlong(b, at, end).filter(|v| i32::try_from(*v).is_ok())
}

/// A length-prefixed field (-1: null): its start and length, the cursor moved past it.
fn field(b: &[u8], at: &mut usize, end: usize) -> Option<(usize, i64)> {
    let len = varint(b, at, end)?;
    if len < -1 {
        return None;
    }
    let start = *at;
    if len > 0 {
        let stop = start.checked_add(len as usize)?;
        if stop > end {
            return None;
        }
        *at = stop;
    }
    Some((start, len))
}

struct Batch {
    base_offset: i64,
    last_offset: i64,
    first_timestamp: i64,
    max_timestamp: i64,
    attributes: i16,
    producer_id: i64,
    count: i32,
    records_at: usize,
    end: usize,
}

/// The reads of `aiokafka.record.memory_records.MemoryRecords`: a batch is read only when all of it is in the
/// buffer (a fetch may end inside one; the rest comes with the next fetch).
fn next_batch(b: &[u8], pos: usize) -> Result<Option<Batch>, ()> {
    if b.len() - pos < LOG_OVERHEAD {
        return Ok(None);
    }
    let length = be_i32(b, pos + 8);
    if length < 0 {
        return Err(());
    }
    let end = pos + LOG_OVERHEAD + length as usize;
    if end > b.len() {
        return Ok(None);
    }
    if end - pos < HEADER || b[pos + MAGIC_AT] != 2 {
        return Err(()); // too small for a v2 header, or an older format: aiokafka's
    }
    let base_offset = be_i64(b, pos);
    let last_offset = base_offset
        .checked_add(be_i32(b, pos + 23) as i64)
        .ok_or(())?;
    last_offset.checked_add(1).ok_or(())?; // the next fetch offset after it
    Ok(Some(Batch {
        base_offset,
        last_offset,
        attributes: be_i16(b, pos + ATTRIBUTES_AT),
        first_timestamp: be_i64(b, pos + 27),
        max_timestamp: be_i64(b, pos + 35),
        producer_id: be_i64(b, pos + 43),
        count: be_i32(b, pos + 57),
        records_at: pos + HEADER,
        end,
    }))
}

struct Record {
    offset: i64,
    timestamp: i64,
    key: (usize, i64),
    value: (usize, i64),
}

/// The records of a plain batch, or Err when its framing does not add up (aiokafka's reading decides).
fn records(b: &[u8], batch: &Batch) -> Result<Vec<Record>, ()> {
    // A record takes at least 7 bytes: the count cannot reserve more than the batch can hold.
    let room = (batch.end - batch.records_at) / 7;
    let mut out = Vec::with_capacity((batch.count.max(0) as usize).min(room));
    let mut at = batch.records_at;
    for _ in 0..batch.count.max(0) {
        let len = varint(b, &mut at, batch.end).ok_or(())?;
        if len < 0 {
            return Err(());
        }
        let start = at;
        let stop = start
            .checked_add(len as usize)
            .filter(|s| *s <= batch.end)
            .ok_or(())?;
        at += 1; // record attributes (unused)
        let ts_delta = varlong(b, &mut at, stop).ok_or(())?;
        let offset_delta = varint(b, &mut at, stop).ok_or(())?;
        let key = field(b, &mut at, stop).ok_or(())?;
        let value = field(b, &mut at, stop).ok_or(())?;
        let headers = varint(b, &mut at, stop).ok_or(())?;
        if headers < 0 {
            return Err(());
        }
        for _ in 0..headers {
            let (_, klen) = field(b, &mut at, stop).ok_or(())?;
            if klen < 0 {
                return Err(());
            }
            field(b, &mut at, stop).ok_or(())?;
        }
        if at != stop {
            return Err(());
        }
        let timestamp = if batch.attributes & LOG_APPEND_TIME != 0 {
            batch.max_timestamp
        } else {
            batch.first_timestamp.checked_add(ts_delta).ok_or(())?
        };
        let offset = batch
            .base_offset
            .checked_add(offset_delta)
            .filter(|o| *o < i64::MAX)
            .ok_or(())?;
        out.push(Record {
            offset,
            timestamp,
            key,
            value,
        });
    }
    if at != batch.end {
        return Err(());
    }
    Ok(out)
}

/// Read a fetch response's record bytes for one partition the way aiokafka's `PartitionRecords` does, or
/// `None` where aiokafka must decide (see the module docs). `aborted`: the fetch response's aborted
/// transactions `(producer id, first offset)`.
pub fn parse(
    b: &[u8],
    fetch_offset: i64,
    read_committed: bool,
    aborted: &[(i64, i64)],
    check_crcs: bool,
) -> Option<Parsed> {
    let mut aborted: Vec<(i64, i64)> = aborted.to_vec();
    aborted.sort_by_key(|a| a.1); // stable, like Python's sorted(key=first offset)
    let mut aborted_at = 0usize;
    let mut aborted_producers: HashSet<i64> = HashSet::new();
    let mut next_fetch_offset = fetch_offset;
    let mut entries = Vec::new();
    let mut pos = 0usize;
    while let Some(batch) = next_batch(b, pos).ok()? {
        let start = pos;
        pos = batch.end;
        if batch.attributes & COMPRESSION_MASK != 0 {
            return None;
        }
        if check_crcs {
            let stored =
                u32::from_be_bytes(b[start + CRC_AT..start + CRC_AT + 4].try_into().unwrap());
            if crate::crc32c::checksum(&b[start + ATTRIBUTES_AT..batch.end]) != stored {
                return None; // aiokafka raises CorruptRecordException for it
            }
        }
        let control = batch.attributes & CONTROL != 0;
        let recs = records(b, &batch).ok()?;
        if read_committed && batch.producer_id != NO_PRODUCER {
            while aborted_at < aborted.len() && aborted[aborted_at].1 <= batch.base_offset {
                aborted_producers.insert(aborted[aborted_at].0);
                aborted_at += 1;
            }
            if control {
                // aiokafka reads the first record's key: version (2 bytes), type (2 bytes); 0 is ABORT.
                let first = recs.first()?;
                let (key_at, key_len) = first.key;
                if key_len < 4 {
                    return None;
                }
                if be_i16(b, key_at + 2) == ABORT_MARKER {
                    aborted_producers.remove(&batch.producer_id);
                }
            }
            if batch.attributes & TRANSACTIONAL != 0
                && aborted_producers.contains(&batch.producer_id)
            {
                next_fetch_offset = batch.last_offset + 1;
                continue;
            }
        }
        if control {
            next_fetch_offset = batch.last_offset + 1;
            continue;
        }
        for r in recs {
            if r.offset < next_fetch_offset {
                continue;
            }
            entries.push(Entry {
                offset: r.offset,
                timestamp: r.timestamp,
                value_at: r.value.0 as i64,
                value_len: r.value.1,
            });
            next_fetch_offset = r.offset + 1;
        }
        next_fetch_offset = batch.last_offset + 1;
    }
    Some(Parsed {
        entries,
        next_fetch_offset,
    })
}
