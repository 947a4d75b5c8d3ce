"""The restore's tar reader reads what GNU tar and Python's tarfile write, in every format."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from airflow_provider_pgcloud.runner.untar import TarError, TarReader

LONG = "base/16384/" + "d" * 120 + "/" + "f" * 110  # over ustar's 100+155 split


def _tree(root: Path) -> None:
    (root / "base" / "1").mkdir(parents=True)
    (root / "base" / "1" / "1259").write_bytes(os.urandom(20_000))
    (root / "empty").write_bytes(b"")
    (root / "link").symlink_to("base/1/1259")
    long_file = root / LONG
    long_file.parent.mkdir(parents=True)
    long_file.write_bytes(b"long" * 1000)


def _read(data: bytes, piece: int) -> dict[str, tuple[str, bytes, str]]:
    chunks = iter([data[i:i + piece] for i in range(0, len(data), piece)])
    reader = TarReader(chunks)
    found = {}
    for member in reader:
        body = b"".join(bytes(v) for v in reader.data()) if member.kind == "file" else b""
        found[member.name] = (member.kind, body, member.linkname)
    assert reader.ended
    return found


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT],
                         ids=["pax", "gnu"])
@pytest.mark.parametrize("piece", [1, 511, 4096, 1 << 20])
def test_python_tarfile_archives(tmp_path: Path, fmt: int, piece: int) -> None:
    _tree(tmp_path / "src")
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        tar.add(tmp_path / "src", arcname="", recursive=True)
    members = _read(out.getvalue(), piece)
    assert members[LONG] == ("file", b"long" * 1000, "")
    assert members["base/1/1259"][1] == (tmp_path / "src/base/1/1259").read_bytes()
    assert members["empty"] == ("file", b"", "")
    assert members["link"] == ("symlink", b"", "base/1/1259")
    assert members["base/1"][0] == "dir"


def test_gnu_tar_archives(tmp_path: Path) -> None:
    _tree(tmp_path / "src")
    data = subprocess.run(["tar", "-C", str(tmp_path / "src"), "-cf", "-", "."],
                          capture_output=True, check=True).stdout
    members = _read(data, 65536)
    assert members[f"./{LONG}"] == ("file", b"long" * 1000, "")
    assert members["./link"] == ("symlink", b"", "base/1/1259")


def test_damage_is_an_error_not_data(tmp_path: Path) -> None:
    _tree(tmp_path / "src")
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(tmp_path / "src", arcname="", recursive=True)
    data = bytearray(out.getvalue())
    data[data.index(b"base/1/1259\x00") + 2] ^= 0xFF  # a header's name field
    with pytest.raises(TarError, match="checksum"):
        _read(bytes(data), 4096)
    with pytest.raises(TarError, match="ends"):
        _read(out.getvalue()[:5000], 4096)
