"""Reading files safely (``normshape_core.base.files``): anything that is not a regular file of
bounded size is refused with one line before a byte is read; a FIFO never blocks."""
from __future__ import annotations

import os
import threading

import pytest

from normshape_core.base import files


def _in_thread(fn):
    """Run ``fn`` in a thread; a read that blocked would leave it running (the test then
    says so instead of hanging)."""
    out = {}

    def target():
        try:
            out["value"] = fn()
        except Exception as e:  # noqa: BLE001 - handed to the test
            out["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "the read blocked"
    return out


@pytest.mark.parametrize("reader", [
    lambda p: files.read_bytes(p, 1 << 20), lambda p: files.read_json(p, 1 << 20),
    lambda p: files.read_head(p, 2), lambda p: files.read_tail(p, 10),
    lambda p: files.check_file(p, 1 << 20)])
def test_a_fifo_a_device_and_a_folder_are_refused_without_reading(tmp_path, reader):
    os.mkfifo(tmp_path / "fifo")
    os.symlink("/dev/zero", tmp_path / "zero")
    for path, kind in ((tmp_path / "fifo", "FIFO"), (tmp_path / "zero", "character device"),
                       (tmp_path, "folder")):
        out = _in_thread(lambda: reader(path))
        e = out.get("error")
        assert isinstance(e, files.UnreadableFile) and kind in str(e), out
        assert str(path) in str(e) and "\n" not in str(e)


def test_sizes_are_bounded_before_reading_and_missing_files_say_so(tmp_path):
    p = tmp_path / "f.json"
    p.write_text('{"a": 1}' + " " * 100)
    assert files.read_json(p, 1000) == {"a": 1}
    with pytest.raises(files.UnreadableFile, match="more than the 10 bytes"):
        files.read_bytes(p, 10)
    with pytest.raises(files.UnreadableFile) as e:
        files.read_bytes(tmp_path / "nope", 10)
    assert e.value.missing
    assert files.read_json_or_none(tmp_path / "nope", 10) is None
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(files.UnreadableFile, match="not valid JSON"):
        files.read_json(tmp_path / "bad.json", 100)
    (tmp_path / "bin").write_bytes(b"\xff\xfe")
    with pytest.raises(files.UnreadableFile, match="not UTF-8"):
        files.read_text(tmp_path / "bin", 100)


def test_the_tail_of_a_large_file_reads_only_its_end(tmp_path):
    p = tmp_path / "log"
    p.write_bytes(b"x" * (3 << 20) + b"THE END")
    assert files.read_tail(p, 7) == b"THE END"
    assert files.read_head(p, 3) == b"xxx"
