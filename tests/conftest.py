import json
import struct

import pytest


def safetensors_bytes(header, data=b"", *, header_len=None, pad_to=8):
    """Raw safetensors bytes from a header (dict, str or bytes) and a data section.

    Built by hand so that tests can write every malformed variant; `header_len`
    overrides the length field.
    """
    if isinstance(header, dict):
        header = json.dumps(header, separators=(",", ":"))
    if isinstance(header, str):
        header = header.encode("utf-8")
    if pad_to and header_len is None:
        header += b" " * (-len(header) % pad_to)
    length = len(header) if header_len is None else header_len
    return struct.pack("<Q", length) + header + data


@pytest.fixture
def write_safetensors(tmp_path):
    counter = iter(range(10**6))

    def write(header, data=b"", **kwargs):
        path = tmp_path / f"file{next(counter)}.safetensors"
        path.write_bytes(safetensors_bytes(header, data, **kwargs))
        return path

    return write
