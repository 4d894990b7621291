"""The windows stage's request memory checkpointed by what changed (issue #24; docs/adr/0006-native-batch-core.md).

A windows-stage checkpoint used to carry every request key its partition remembers for dedup (60 s after the
request's window: ~1M keys, 8 MB at 16k outcomes/s) in every transaction — two or more a second per partition, so
the state topic took about as many bytes as ``search_results`` itself, and moving them was ~15 % of a backlog
worker's CPU. A window start's keys only grow, in arrival order, until the start is forgotten, so they are written
as *segments*: each transaction writes, per start that grew since the last one, the keys it gained, as one side
record of the state (:meth:`streams.transactional.TransactionalStage.state_side_records`, raw little-endian
``uint64``), named ``seen/<start>/<unique id>``; the state record lists each start's segments ``[name, keys]`` in
order under ``seen_segments``; a forgotten start's segments are deleted (tombstones). A name is written once, so
compaction keeps every segment a committed state record lists; segments and the record that lists them commit in
one transaction, so a reader sees both or neither.

After a failed transaction the stage goes back to its committed state (the partition is acquired again), and the
bookkeeping here is rebuilt from the restored record with it: a segment written in an aborted transaction is listed
by no committed record. Segments no committed record lists (left by a crash between two owners, or written by
someone else) are deleted with the partition's next commit.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Mapping
from typing import Any, Protocol

from canary.errors import InvalidEvent

PREFIX = "seen/"
KEY_BYTES = 8


class RequestKeys(Protocol):
    """What a windows finalizer tells of its request memory (canary.core.windows.WindowFinalizer)."""

    def seen_starts(self) -> list[tuple[int, int]]: ...

    def seen_keys(self, start: int) -> bytes: ...


class SeenSegments:
    """One partition's segments: which side records hold each window start's keys (see the module docstring)."""

    __slots__ = ("by_start", "orphans", "written")

    def __init__(self) -> None:
        self.by_start: dict[int, list[tuple[str, int]]] = {}  # start -> [(name, keys)] in order
        self.written: dict[int, int] = {}  # start -> keys in its segments
        self.orphans: list[str] = []  # side records no committed state lists: deleted with the next commit

    def side_records(self, memory: RequestKeys) -> list[tuple[str, bytes | None]]:
        """The side records of the next commit: the keys each start gained, deletions of forgotten starts'
        segments and of orphans. The bookkeeping moves on as if the commit succeeds (if it fails, the stage drops
        this with the state and restores both)."""
        out: list[tuple[str, bytes | None]] = [(name, None) for name in self.orphans]
        self.orphans = []
        sizes = dict(memory.seen_starts())
        for start, size in sizes.items():
            have = self.written.get(start, 0)
            if size == have:
                continue
            if size < have:  # keys only grow; if not, the start is written again whole rather than wrongly
                out += [(name, None) for name, _ in self.by_start.pop(start, [])]
                have = 0
            name = f"{PREFIX}{start}/{uuid.uuid4().hex}"
            out.append((name, memory.seen_keys(start)[have * KEY_BYTES :]))
            self.by_start.setdefault(start, []).append((name, size - have))
            self.written[start] = size
        for start in [s for s in self.by_start if s not in sizes]:
            out += [(name, None) for name, _ in self.by_start.pop(start)]
            self.written.pop(start, None)
        return out

    def listing(self) -> dict[str, list[list[Any]]]:
        """The state record's ``seen_segments``: ``{start: [[name, keys], …]}``."""
        return {str(s): [[name, n] for name, n in segs] for s, segs in sorted(self.by_start.items())}

    @classmethod
    def restore(cls, listing: Any, side: Mapping[str, bytes]) -> tuple[SeenSegments, dict[str, str]]:
        """The bookkeeping of a restored state record's ``seen_segments`` and its ``seen`` for
        :meth:`canary.core.windows.WindowFinalizer.from_dict` (base64 of each start's keys). ``InvalidEvent`` when
        the listing is malformed or a segment it lists is missing or not its length; every side record of this
        partition's that it does not list becomes an orphan."""
        out = cls()
        seen: dict[str, str] = {}
        if not isinstance(listing, dict):
            raise InvalidEvent(f"seen_segments: expected an object, got {type(listing).__name__}")
        listed: set[str] = set()
        for start_text, segs in listing.items():
            try:
                start = int(start_text)
            except (TypeError, ValueError):
                raise InvalidEvent(f"seen_segments: window start {start_text!r} is not an integer") from None
            if start in out.by_start:  # "5" and "05": one start's keys would be lost, its segments never deleted
                raise InvalidEvent(f"seen_segments: window start {start} listed twice")
            if not isinstance(segs, list) or not segs:
                raise InvalidEvent(f"seen_segments[{start_text}]: expected a non-empty list of [name, keys]")
            parts: list[bytes] = []
            kept: list[tuple[str, int]] = []
            for seg in segs:
                if not (
                    isinstance(seg, list)
                    and len(seg) == 2
                    and isinstance(seg[0], str)
                    and type(seg[1]) is int
                    and seg[1] > 0
                ):
                    raise InvalidEvent(f"seen_segments[{start_text}]: {seg!r} is not [name, keys > 0]")
                name, n = seg
                if name in listed:  # its keys would count twice
                    raise InvalidEvent(f"seen_segments[{start_text}]: segment {name!r} listed twice")
                raw = side.get(name)
                if raw is None:
                    raise InvalidEvent(f"seen_segments[{start_text}]: segment {name!r} is missing")
                if len(raw) != n * KEY_BYTES:
                    raise InvalidEvent(
                        f"seen_segments[{start_text}]: segment {name!r} holds {len(raw)} bytes, not {n} keys"
                    )
                parts.append(raw)
                kept.append((name, n))
                listed.add(name)
            out.by_start[start] = kept
            out.written[start] = sum(n for _, n in kept)
            seen[str(start)] = base64.b64encode(b"".join(parts)).decode("ascii")
        out.orphans = sorted(name for name in side if name not in listed)
        return out, seen

    @classmethod
    def fresh(cls, side: Mapping[str, bytes] | None) -> SeenSegments:
        """A partition starting without a state: every side record found is an orphan."""
        out = cls()
        out.orphans = sorted(side or ())
        return out
