"""The aggregator's state on disk: one RocksDB database (rocksdict) per assigned partition, under
the instance's state directory, with calls.sessions as its changelog.

A partition's database holds, in one key space:
- `s` + session_key → the session: its latest record as calls.sessions carries it (JSON), or,
  once evicted, `EVICTED` + the received time it was evicted at (a big-endian double);
- `d` + due time (µs, biased big-endian) + session_key → nothing: when each session is due,
  in time order, for the sweeps;
- `m:position` → the offset of calls.sessions up to which (exclusive) the state reflects the
  changelog, written in the same WriteBatch as the state it goes with.

Durability: writes skip RocksDB's write-ahead log (as Kafka Streams' stores do): calls.sessions
is the log. The database is flushed to its files when a partition is closed and at every sweep
(`Store.flush`); a process killed between two flushes loses only the memtable, and RocksDB then
opens at its last flush, the position written with it, so the restore reads the changelog from
there: a longer tail, never a wrong state.

Memory: one block cache for every database of the process (`cache_mb`), which the write buffers
(memtables) are charged to through one write buffer manager, so the state takes that much
whatever the number of sessions; the rest is on disk, read through the cache.
"""

from __future__ import annotations

import fcntl
import math
import os
import shutil
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path

import rocksdict
import structlog

from foundation.errors import Unavailable

SESSION = b"s"
DUE = b"d"
POSITION = b"m:position"
EVICTED = b"\0"
"""The first byte of an evicted session's value (a record's JSON starts with `{`)."""
_DUE_END = b"e"
_US = struct.Struct(">Q")
_BIAS = 1 << 63
_WHEN = struct.Struct(">d")
LOCK_FILE = "aggregator.lock"

log = structlog.get_logger("callstream.aggregator")


class StateDirInUse(Unavailable):
    """Another process runs an aggregator on this state directory."""


def due_us(when: float) -> int:
    """A due time (epoch seconds) as the index orders it: whole microseconds."""
    return math.floor(when * 1_000_000)


def due_entry(us: int, key: str) -> bytes:
    return DUE + _US.pack(us + _BIAS) + key.encode()


def session_entry(key: str) -> bytes:
    return SESSION + key.encode()


def evicted_value(when: float) -> bytes:
    return EVICTED + _WHEN.pack(when)


def evicted_when(value: bytes) -> float:
    return float(_WHEN.unpack_from(value, 1)[0])


class StateDir:
    """The state directory of one aggregator instance, locked (flock) while it runs: two
    instances on one directory would open each other's partitions."""

    def __init__(self, path: Path, cache_mb: int) -> None:
        self.path = path
        cache = rocksdict.Cache(cache_mb << 20)
        table = rocksdict.BlockBasedOptions()
        table.set_block_cache(cache)
        table.set_bloom_filter(10, False)
        table.set_cache_index_and_filter_blocks(True)
        table.set_pin_l0_filter_and_index_blocks_in_cache(True)
        options = rocksdict.Options(raw_mode=True)
        options.create_if_missing(True)
        options.set_block_based_table_factory(table)
        options.set_compression_type(rocksdict.DBCompressionType.lz4())
        # Every batch writes its sessions anew: universal compaction rewrites them fewer times
        # than levels do (1,000,000 sessions: a third less CPU, and no slowdown as they grow).
        options.set_compaction_style(rocksdict.DBCompactionStyle.universal())
        buffers = cache_mb << 19  # half the cache
        options.set_write_buffer_manager(
            rocksdict.WriteBufferManager.new_write_buffer_manager_with_cache(buffers, False, cache)
        )
        options.set_write_buffer_size(max(buffers // 4, 1 << 20))
        # A session's first report looks up a key that is not there: bloom filters on the
        # memtables too, not only on the files, answer that without a search.
        options.set_memtable_whole_key_filtering(True)
        options.set_memtable_prefix_bloom_ratio(0.1)
        self.options = options
        self.write_options = rocksdict.WriteOptions()
        self.write_options.disable_wal = True
        self._lock: int | None = None

    def __enter__(self) -> StateDir:
        """Lock the directory. Raises StateDirInUse when another process holds it."""
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise StateDirInUse(
                f"the aggregator state directory {self.path} is in use by process {holder}: "
                "give each aggregator instance a state directory of its own "
                "(AGGREGATOR__STATE_DIR, --state-dir)"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock = fd
        return self

    def __exit__(self, *_: object) -> None:
        if self._lock is not None:
            os.close(self._lock)  # releases the flock
            self._lock = None

    def open(self, name: str) -> Store:
        return Store(self.path / name, self.options, self.write_options)

    def destroy(self, name: str) -> None:
        """Remove a partition's database (it is closed)."""
        shutil.rmtree(self.path / name, ignore_errors=True)


class Store:
    """One partition's database: what the aggregator reads and the WriteBatch it writes."""

    def __init__(
        self, path: Path, options: rocksdict.Options, write_options: rocksdict.WriteOptions
    ) -> None:
        self.path = path
        self.db = rocksdict.Rdict(str(path), options)
        self.db.set_write_options(write_options)
        self.bounds = rocksdict.ReadOptions()
        self.bounds.set_iterate_upper_bound(_DUE_END)

    @property
    def position(self) -> int | None:
        """The changelog offset the state reflects up to (exclusive); None for a new database."""
        value = self.db.get(POSITION)
        return None if value is None else int(value)

    def get(self, entry: bytes) -> bytes | None:
        value: bytes | None = self.db.get(entry)
        return value

    def get_sessions(self, keys: Iterable[bytes]) -> dict[bytes, bytes | None]:
        """The stored values of the sessions whose keys (encoded) are `keys`, by their entries
        (`session_entry`; None where absent), in one lookup: RocksDB's MultiGet reads the
        files' indexes and blocks once for all of them."""
        entries = list(dict.fromkeys(SESSION + key for key in keys))
        values: list[bytes | None] = self.db.get(entries)
        return dict(zip(entries, values, strict=True))

    def due(self, start: bytes = DUE) -> Iterator[tuple[int, str, bytes]]:
        """The due index from `start` on, in time order: (µs, session_key, entry). Reads the
        database as it is when the iteration starts."""
        cursor = self.db.iter(self.bounds)
        cursor.seek(start)
        while cursor.valid():
            entry: bytes = cursor.key()
            yield _US.unpack_from(entry, 1)[0] - _BIAS, entry[9:].decode(), entry
            cursor.next()

    def write(self, batch: rocksdict.WriteBatch, position: int | None) -> None:
        """`batch` (`WriteBatch(raw_mode=True)`) and the position, atomically."""
        if position is not None:
            batch.put(POSITION, str(position).encode())
        self.db.write(batch)

    def size(self) -> int:
        """Bytes of the database's files (SST files; the write-ahead log aside)."""
        return self.db.property_int_value("rocksdb.total-sst-files-size") or 0

    def flush(self) -> None:
        """What was written, to the database's files: a crash from now on restarts from here."""
        self.db.flush()

    def close(self) -> None:
        """Flush and close."""
        self.db.flush()
        self.db.close()
