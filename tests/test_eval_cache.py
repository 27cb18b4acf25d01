"""The evaluation cache under concurrent writers: every entry survives (issue 12, point 10).

Four processes add different entries to one cache file at the same moment, many times
over; the lock on the cache's folder plus re-read-and-merge must keep every one of them.
"""
import json
import multiprocessing as mp

import pytest

from normshape_core.measuring.evaluation import CACHE_FORMAT, _read_cache, update_cache

WRITERS = 4
ENTRIES = 25


def _writer(path, who, barrier):
    barrier.wait()  # all four start together: the writes overlap
    for i in range(ENTRIES):
        update_cache(path, f"w{who}-e{i}", {"who": who, "i": i})


@pytest.mark.parametrize("trial", range(3))
def test_four_concurrent_writers_lose_no_entry(tmp_path, trial):
    path = tmp_path / "cache" / "0123.eval.json"
    update_cache(path, "before", {"kept": True})  # an entry from before stays too
    ctx = mp.get_context("fork")  # the children only read and write JSON (no torch work)
    barrier = ctx.Barrier(WRITERS)
    procs = [ctx.Process(target=_writer, args=(path, w, barrier)) for w in range(WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    cache = json.loads(path.read_text())
    assert cache["format"] == CACHE_FORMAT
    want = {"before"} | {f"w{w}-e{i}" for w in range(WRITERS) for i in range(ENTRIES)}
    assert set(cache["entries"]) == want
    assert not list(path.parent.glob(".*.tmp"))  # every write replaced the file whole


def test_a_corrupt_cache_file_is_replaced_not_fatal(tmp_path):
    path = tmp_path / "c.eval.json"
    for text in ("{cut", "[1, 2]", json.dumps({"format": CACHE_FORMAT, "entries": [1]})):
        path.write_text(text)
        assert _read_cache(path)["entries"] == {}
        update_cache(path, "k", {"v": 1})
        assert json.loads(path.read_text())["entries"] == {"k": {"v": 1}}
