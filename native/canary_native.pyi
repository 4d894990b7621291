# Types of the native batch core (native/src/lib.rs): canary.pipeline.decode and canary.kafka.runs call it.
OUTCOME: int
WATERMARK: int
FALLBACK: int
ROW_BYTES: int

def decode_batch(
    values: list[bytes | None], *, max_bytes: int, max_epoch_ms: int, user_groups: int
) -> tuple[
    bytes,
    list[tuple[str | None, str, str, str | None]],
    list[str],
    list[tuple[int, int, int, str, int]],
]: ...

ENTRY_BYTES: int

def decode_spans(
    buffer: bytes, entries: bytes, lo: int, hi: int, *, max_bytes: int, max_epoch_ms: int, user_groups: int
) -> tuple[
    bytes,
    list[tuple[str | None, str, str, str | None]],
    list[str],
    list[tuple[int, int, int, str, int]],
]: ...
def parse_records(
    buffer: bytes, fetch_offset: int, *, read_committed: bool, aborted: list[tuple[int, int]], check_crcs: bool
) -> tuple[bytes, int] | None: ...
def crc32c(data: bytes) -> int: ...
def run_tuples(partition: int, buffer: bytes, entries: bytes) -> list[tuple[int, int, int, bytes | None]]: ...
def all_finite(value: object) -> bool: ...
def structure(raw: bytes) -> tuple[int, int]: ...
def deadline_install(signals: list[int], seconds: float, code: int, last_words: bytes) -> bool: ...
def deadline_arm() -> None: ...
def deadline_disarm() -> None: ...
