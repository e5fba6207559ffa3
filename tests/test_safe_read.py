"""safe_read: every byte of a regular file within its limit, never a link."""

from __future__ import annotations

import os

import pytest

from gateway.errors import Rejected
from gateway.judge import safe_read


@pytest.mark.parametrize("size", [0, 1, 65535, 65536, 65537, 300_001])
def test_reads_the_whole_file(tmp_path, size):
    data = os.urandom(size)
    (tmp_path / "f.pdf").write_bytes(data)
    assert safe_read(tmp_path / "f.pdf") == data
    assert safe_read(tmp_path / "f.pdf", root=tmp_path) == data


@pytest.mark.parametrize("size,limit", [(10, 10), (5, 100_000), (100_000, 100_000)])
def test_a_file_within_the_limit_is_read_whole(tmp_path, size, limit):
    data = os.urandom(size)
    (tmp_path / "f.pdf").write_bytes(data)
    assert safe_read(tmp_path / "f.pdf", limit) == data


def test_a_file_beyond_the_limit_is_too_large(tmp_path):
    (tmp_path / "f.pdf").write_bytes(os.urandom(100_001))
    with pytest.raises(Rejected) as info:
        safe_read(tmp_path / "f.pdf", 100_000)
    assert info.value.reason_code == "too_large"


def test_a_link_is_not_followed(tmp_path):
    (tmp_path / "real.pdf").write_bytes(b"%PDF-1.4")
    (tmp_path / "link.pdf").symlink_to(tmp_path / "real.pdf")
    with pytest.raises(Rejected) as info:
        safe_read(tmp_path / "link.pdf")
    assert info.value.reason_code == "unsafe_file"


def test_read_in_reads_and_refuses_as_safe_read_does(tmp_path):
    """read_in (folder and name apart, issue 12) is safe_read without a Path to take apart."""
    from gateway.judge import read_in

    (tmp_path / "f.pdf").write_bytes(b"%PDF-1.4 x")
    (tmp_path / "link.pdf").symlink_to(tmp_path / "f.pdf")
    assert read_in(tmp_path, "f.pdf") == read_in(str(tmp_path), "f.pdf") == safe_read(tmp_path / "f.pdf")
    for folder in (tmp_path, str(tmp_path)):
        with pytest.raises(Rejected, match=r"link\.pdf is a symbolic link to .*f\.pdf") as exc:
            read_in(folder, "link.pdf")
        assert exc.value.reason_code == "unsafe_file"
        with pytest.raises(Rejected, match="gone.pdf disappeared") as exc:
            read_in(folder, "gone.pdf")
        assert exc.value.reason_code == "unreadable"
