"""`macaw-fast data verify | info | import-paper | export-minari | import-minari` through the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from macaw_fast.cli import main
from macaw_fast.data import DatasetWriter, open_dataset


@pytest.fixture
def ds_path(tmp_path):
    p = tmp_path / "vel"
    w = DatasetWriter.create(p, env_id="macaw_fast/CheetahVel-v0", tasks={"0": {"velocity": 0.1}, "2": {"velocity": 0.3}},
                             split={"train": ["0"], "test": ["2"]}, obs_dim=3, act_dim=2)
    rng = np.random.default_rng(0)
    for tid, rets in (("0", [1.0, 2.0, 6.0]), ("2", [-3.0])):
        for r in rets:
            T = 4
            o = rng.normal(size=(T + 1, 3))
            w.append_trajectory(tid, o[:-1], rng.uniform(-1, 1, (T, 2)), np.full(T, r / T), o[1:], False)
    w.commit()
    w.close()
    return p


def test_info_prints_returns_and_writes_png(ds_path, tmp_path, capsys):
    png = tmp_path / "h.png"
    assert main(["data", "info", str(ds_path), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "2 tasks, 16 rows" in out and "train 1 (0); test 1 (2)" in out
    line0 = next(ln for ln in out.splitlines() if ln.split()[:1] == ["0"])
    assert line0.split()[1:6] == ["12", "3", "1.00", "3.00", "6.00"]
    line2 = next(ln for ln in out.splitlines() if ln.split()[:1] == ["2"])
    assert line2.split()[1:6] == ["4", "1", "-3.00", "-3.00", "-3.00"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_info_writes_its_histogram_next_to_the_dataset(ds_path, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path / "..")       # not where the dataset is
    assert main(["data", "info", str(ds_path)]) == 0
    png = ds_path.parent / f"{ds_path.name}_returns.png"
    assert png.exists() and str(png) in capsys.readouterr().out
    assert not (tmp_path / ".." / f"{ds_path.name}_returns.png").exists() or tmp_path.parent == ds_path.parent


def test_verify_ok_and_corrupt(ds_path, capsys):
    assert main(["data", "verify", "-q", str(ds_path)]) == 0
    assert "OK (2 tasks, 16 rows" in capsys.readouterr().out
    with open(ds_path / "2" / "obs.npy", "r+b") as f:
        f.seek(130)
        f.write(b"\x00\x01")
    assert main(["data", "verify", "-q", str(ds_path)]) == 1
    err = capsys.readouterr().err
    assert "task 2, field 'obs'" in err and "SHA-256 mismatch" in err


def test_import_paper_cli(tmp_path, capsys):
    pytest.importorskip("h5py")
    from test_paper_data import paper_trajectories, write_paper_task

    src = tmp_path / "paper"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in (2, 3):
        cols, _ = paper_trajectories(rng, [10, 13], 20, 6)
        write_paper_task(src, "cheetah_vel", i, cols, {"velocity": 0.1 * i})
    out = tmp_path / "out"
    assert main(["data", "import-paper", str(src), "--env", "cheetah_vel", str(out), "--tasks", "2,3", "-q"]) == 0
    ds = open_dataset(out)
    assert ds.split == {"train": ["3"], "test": ["2"]} and ds["2"].num_rows == 3  # 23 rows -> 2, 9, 16
    assert main(["data", "import-paper", str(src), "--env", "cheetah_vel", str(out), "-q"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["data", "import-paper", str(src), "--env", "cheetah_vel", str(tmp_path / "o2"), "-q"]) == 1
    assert "missing 76 file(s) of cheetah_vel" in capsys.readouterr().err


def test_minari_cli_round_trip(ds_path, tmp_path):
    pytest.importorskip("minari")
    root = tmp_path / "m"
    assert main(["data", "export-minari", str(ds_path), "mf/vel", "--root", str(root), "-q"]) == 0
    assert main(["data", "import-minari", "mf/vel", str(tmp_path / "back"), "--root", str(root), "-q"]) == 0
    a, b = open_dataset(ds_path), open_dataset(tmp_path / "back")
    for t in a.tasks:
        np.testing.assert_array_equal(a[t]["mc_return"], b[t]["mc_return"])


def test_entry_point_subprocess(ds_path):
    """The installed entry point runs the command end to end (as a user would)."""
    r = subprocess.run([sys.executable, "-m", "macaw_fast", "data", "info", str(ds_path), "--no-plot"],
                       capture_output=True, text=True, timeout=120, cwd=os.path.dirname(ds_path))
    assert r.returncode == 0, r.stderr
    assert "macaw_fast/CheetahVel-v0" in r.stdout
