"""macaw_fast._io: the atomic writers leave ordinary files (readable by others, as open() would
make them), not the private 0600 of their temporary files, and nothing behind on error."""

from __future__ import annotations

import os
import stat

import pytest

from macaw_fast._io import atomic_torch_save, atomic_write_json, atomic_write_text, save_figure


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_every_atomic_writer_leaves_a_0644_file(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    atomic_write_text(tmp_path / "a.txt", "x")
    atomic_write_json(tmp_path / "b.json", {"x": 1})
    atomic_torch_save({"x": 1}, tmp_path / "c.pt")
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    save_figure(fig, str(tmp_path / "sub" / "d.png"))
    files = ["a.txt", "b.json", "c.pt", "sub/d.png"]
    assert {f: _mode(tmp_path / f) for f in files} == {f: 0o644 for f in files}
    assert sorted(os.listdir(tmp_path)) == ["a.txt", "b.json", "c.pt", "sub"]   # no temporary file left
    assert os.listdir(tmp_path / "sub") == ["d.png"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    from macaw_fast._io import atomic_write_bytes

    atomic_write_text(tmp_path / "a.txt", "old")

    def boom(f):
        f.write(b"half")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        atomic_write_bytes(str(tmp_path / "a.txt"), boom)
    assert (tmp_path / "a.txt").read_text() == "old"
    assert os.listdir(tmp_path) == ["a.txt"]
