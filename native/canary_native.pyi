# Types of the native batch decoder (native/src/lib.rs); canary.pipeline.decode is its one caller.
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
