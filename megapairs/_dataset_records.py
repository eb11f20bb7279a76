"""MegaPairs records as files: the record schema, normalisation (``q_texts`` accepted),
JSONL (``.gz`` allowed) and Parquet reading and writing, and the images a set of records
refers to. Re-exported by :mod:`megapairs.dataset`.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import pyarrow as pa

from .errors import FormatError
from .limits import loads_json

FIELDS = ("q_img", "q_text", "t_img", "hns")
SCHEMA = pa.schema([
    ("q_img", pa.string()),
    ("q_text", pa.list_(pa.string())),
    ("t_img", pa.string()),
    ("hns", pa.list_(pa.string())),
])
METADATA_KEY = b"megapairs.dataset"
#: Longest JSONL line read (a record is a few KB; a file without newlines is refused, not loaded).
MAX_LINE_BYTES = 64 << 20

PathLike = str | os.PathLike


# --------------------------------------------------------------------------- records


def normalize_record(record: Mapping, where: str = "record") -> dict:
    """A record as ``{"q_img": str, "q_text": list[str], "t_img": str, "hns": list[str]}``.

    ``q_texts`` is accepted for ``q_text``; a missing ``q_text`` becomes ``[]`` (records
    straight from :func:`megapairs.mining.to_records` have none yet). Other keys are dropped.

    Raises
    ------
    ValueError
        Naming ``where`` (e.g. ``"data.jsonl:17"``) and the field, for a missing or
        mistyped field, or both ``q_text`` and ``q_texts``.
    """
    if not isinstance(record, Mapping):
        raise ValueError(f"{where}: a record must be a mapping, got {type(record).__name__}")  # noqa: TRY004 (data)
    if "q_text" in record and "q_texts" in record:
        raise ValueError(f"{where}: has both 'q_text' and 'q_texts'")
    out = {}
    for name in ("q_img", "t_img"):
        value = record.get(name)
        if not isinstance(value, str) or not value:
            raise ValueError(f"{where}: {name!r} must be a non-empty string, got {value!r}")
        out[name] = value
    texts = record.get("q_text", record.get("q_texts", []))
    if texts is None:
        texts = []
    if isinstance(texts, str) or not isinstance(texts, Sequence) and not _is_array(texts):
        raise ValueError(f"{where}: 'q_text' must be a list of strings, got {type(texts).__name__}")
    texts = list(texts)
    if not all(isinstance(t, str) for t in texts):
        raise ValueError(f"{where}: 'q_text' must hold only strings")
    hns = record.get("hns", [])
    if hns is None:
        hns = []
    if isinstance(hns, str) or not isinstance(hns, Sequence) and not _is_array(hns):
        raise ValueError(f"{where}: 'hns' must be a list of strings, got {type(hns).__name__}")
    hns = list(hns)
    if not all(isinstance(h, str) and h for h in hns):
        raise ValueError(f"{where}: 'hns' must hold only non-empty strings")
    return {"q_img": out["q_img"], "q_text": texts, "t_img": out["t_img"], "hns": hns}


def _is_array(value) -> bool:
    return hasattr(value, "__array__") and hasattr(value, "tolist")


def _open_text(path: Path, mode: str, compressed: bool | None = None):
    if path.name.endswith(".gz") if compressed is None else compressed:
        return gzip.open(path, mode + "t", encoding="utf-8")
    return open(path, mode, encoding="utf-8")


def _atomic_target(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_jsonl(records: Iterable[Mapping], path: PathLike) -> int:
    """Write records, one JSON object a line (``.gz`` suffix: gzip).

    The file is written beside ``path`` and renamed into place, so an interrupted write
    never leaves a partial file under the final name. Returns the number of records.
    """
    path = Path(path)
    tmp = _atomic_target(path)
    n = 0
    try:
        with _open_text(tmp, "w", compressed=path.name.endswith(".gz")) as f:
            for n, record in enumerate(records, start=1):
                f.write(json.dumps(normalize_record(record, f"records[{n - 1}]"), ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return n


def iter_jsonl(path: PathLike, max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[dict]:
    """Records of a JSONL file (``.gz`` allowed), normalised; blank lines are skipped.

    Raises
    ------
    ValueError
        Naming ``file:line`` for a line that is not JSON or not a valid record.
    megapairs.FormatError
        Naming ``file:line`` for a line longer than ``max_line_bytes`` (64 MiB; raise it for
        records that really are that large), bytes that are not UTF-8, or a cut gzip stream.
    """
    path = Path(path)
    lineno = 0
    # bytes, decoded line by line, so a bad byte or a cut gzip stream is named by its line
    with gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb") as f:
        while True:
            try:
                raw = f.readline(max_line_bytes + 1)
            except (gzip.BadGzipFile, EOFError, zlib.error) as e:
                raise FormatError(f"{path}: unreadable after line {lineno} ({type(e).__name__}: {e})") from None
            if not raw:
                return
            lineno += 1
            if len(raw) > max_line_bytes:
                raise FormatError(f"{path}:{lineno}: line longer than {max_line_bytes} bytes (max_line_bytes)")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise FormatError(f"{path}:{lineno}: not UTF-8 ({e})") from None
            if not line.strip():
                continue
            obj = loads_json(line, f"{path}:{lineno}")
            yield normalize_record(obj, f"{path}:{lineno}")


def read_jsonl(path: PathLike, max_line_bytes: int = MAX_LINE_BYTES) -> list[dict]:
    """All records of a JSONL file, see :func:`iter_jsonl`."""
    return list(iter_jsonl(path, max_line_bytes))


def records_to_table(records: Iterable[Mapping], metadata: Mapping | None = None) -> pa.Table:
    """A pyarrow table with columns ``q_img`` string, ``q_text`` list<string>, ``t_img``
    string, ``hns`` list<string>. ``metadata`` (JSON-serialisable) goes to the schema
    metadata under ``b"megapairs.dataset"``."""
    columns: dict[str, list] = {name: [] for name in FIELDS}
    for i, record in enumerate(records):
        r = normalize_record(record, f"records[{i}]")
        for name in FIELDS:
            columns[name].append(r[name])
    schema = SCHEMA
    if metadata is not None:
        schema = schema.with_metadata({METADATA_KEY: json.dumps(dict(metadata), ensure_ascii=False)})
    return pa.Table.from_pydict(columns, schema=schema)


def records_from_table(table: pa.Table, where: str = "table", first_row: int = 0) -> list[dict]:
    """Records from a table with columns ``q_img``, ``q_text`` (or ``q_texts``), ``t_img``
    and ``hns``; other columns are ignored. Errors name ``where`` and the row (counted
    from ``first_row``)."""
    names = table.column_names
    text_col = "q_text" if "q_text" in names else "q_texts" if "q_texts" in names else None
    missing = [c for c in ("q_img", "t_img", "hns") if c not in names]
    if missing:
        raise ValueError(f"{where}: no column {missing[0]!r}; columns are {names}")
    cols = {"q_img": table["q_img"].to_pylist(), "t_img": table["t_img"].to_pylist(),
            "hns": table["hns"].to_pylist(),
            "q_text": table[text_col].to_pylist() if text_col else [[]] * table.num_rows}
    return [normalize_record({name: cols[name][i] for name in FIELDS}, f"{where} row {first_row + i}")
            for i in range(table.num_rows)]


def write_parquet(records: Iterable[Mapping], path: PathLike, metadata: Mapping | None = None,
                  row_group_size: int = 100_000) -> int:
    """Write records to Parquet (schema of :func:`records_to_table`), atomically.
    Returns the number of records."""
    import pyarrow.parquet as pq

    table = records_to_table(records, metadata)
    path = Path(path)
    tmp = _atomic_target(path)
    try:
        pq.write_table(table, tmp, row_group_size=row_group_size)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return table.num_rows


@contextlib.contextmanager
def _parquet_errors(path: Path, where: str = ""):
    """pyarrow's errors for a damaged file as :class:`megapairs.FormatError` naming the file
    (and ``where`` in it); a missing or unreadable file stays the OSError it is."""
    try:
        yield
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except (pa.ArrowException, OSError) as e:
        raise FormatError(f"{path}{where}: not a readable Parquet file ({type(e).__name__}: {e})") from None


def open_parquet(path: Path):
    """``pyarrow.parquet.ParquetFile(path)`` for a file from outside, its row counts checked
    first: pyarrow trusts the row count of each row group, and a negative one aborts the
    process (an uncaught C++ ``std::length_error``) instead of raising. FormatError naming
    the file for such a footer. (Column-chunk metadata is not inspected here: pyarrow's
    ``RowGroupMetaData.column`` itself aborts on some damaged footers that reading reports
    as an OSError.)"""
    import pyarrow.parquet as pq

    with _parquet_errors(path):
        pf = pq.ParquetFile(path)
    meta = pf.metadata
    counts = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    if meta.num_rows < 0 or any(n < 0 for n in counts) or sum(counts) != meta.num_rows:
        raise FormatError(f"{path}: damaged Parquet footer: row groups of {counts} rows for {meta.num_rows} in all")
    return pf


def iter_parquet(path: PathLike, batch_size: int = 65_536) -> Iterator[dict]:
    """Records of a Parquet file, read ``batch_size`` rows at a time (the released
    26M-record file need not fit in memory as Python objects).

    Raises
    ------
    megapairs.FormatError
        A damaged file, naming it and the first row of the batch that could not be read.
    ValueError
        A record that is not valid, naming the file and the row.
    """
    path = Path(path)
    pf = open_parquet(path)
    with _parquet_errors(path):
        names = pf.schema_arrow.names
    wanted = [c for c in ("q_img", "q_text", "q_texts", "t_img", "hns") if c in names]
    batches, row = pf.iter_batches(batch_size=batch_size, columns=wanted), 0
    while True:
        with _parquet_errors(path, f" (rows from {row})"):
            try:
                batch = next(batches)
            except StopIteration:
                return
        table = pa.Table.from_batches([batch])
        yield from records_from_table(table, str(path), row)
        row += table.num_rows


def read_parquet(path: PathLike) -> list[dict]:
    """All records of a Parquet file (``q_texts`` accepted); errors as :func:`iter_parquet`."""
    path = Path(path)
    pf = open_parquet(path)
    with _parquet_errors(path):
        table = pf.read()
    return records_from_table(table, str(path))


def read_parquet_metadata(path: PathLike) -> dict | None:
    """The ``megapairs.dataset`` schema metadata of a Parquet file written here, or None."""
    import pyarrow.parquet as pq

    path = Path(path)
    with _parquet_errors(path):
        meta = pq.read_schema(path).metadata or {}
    if METADATA_KEY not in meta:
        return None
    try:
        return json.loads(meta[METADATA_KEY])
    except ValueError as e:
        raise FormatError(f"{path}: its megapairs.dataset metadata is not JSON ({e})") from None


def _format(path: Path) -> str:
    name = path.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz", ".json")):
        return "jsonl"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    raise ValueError(f"{path}: cannot tell the format from the name; use .jsonl, .jsonl.gz or .parquet")


def read_records(path: PathLike) -> list[dict]:
    """Records from ``.jsonl`` / ``.jsonl.gz`` / ``.parquet``, chosen by the file name."""
    path = Path(path)
    return read_jsonl(path) if _format(path) == "jsonl" else read_parquet(path)


def write_records(records: Iterable[Mapping], path: PathLike, metadata: Mapping | None = None) -> int:
    """Write records as ``.jsonl`` / ``.jsonl.gz`` / ``.parquet``, chosen by the file name.
    ``metadata`` is kept in Parquet schema metadata; JSONL holds records only."""
    path = Path(path)
    return write_jsonl(records, path) if _format(path) == "jsonl" else write_parquet(records, path, metadata)


def image_keys(records: Iterable[Mapping]) -> list[str]:
    """Every image a set of records refers to (``q_img``, ``t_img``, ``hns``), once each,
    in order of first appearance."""
    seen: dict[str, None] = {}
    for r in records:
        seen.setdefault(r["q_img"])
        seen.setdefault(r["t_img"])
        for h in r.get("hns") or ():
            seen.setdefault(h)
    return list(seen)
