"""`macaw-fast data subsample`: the paper loader's buffer_skip applied to a stored dataset."""

from __future__ import annotations

import numpy as np
import pytest

from macaw_fast.cli import main
from macaw_fast.data import DatasetWriter, open_dataset
from macaw_fast.data.paper import skip_rows
from macaw_fast.data.store import FIELDS, verify_dataset
from macaw_fast.data.subsample import subsample_dataset


@pytest.fixture
def ds_path(tmp_path):
    p = tmp_path / "src"
    w = DatasetWriter.create(p, env_id="macaw_fast/CheetahVel-v0", tasks={"0": {"velocity": 0.1}, "3": {"velocity": 0.4}},
                             split={"train": ["0"], "test": ["3"]}, obs_dim=3, act_dim=2, gamma=0.9)
    rng = np.random.default_rng(1)
    for tid, lengths in (("0", [5, 9, 4]), ("3", [11, 12])):
        for i, T in enumerate(lengths):
            o = rng.normal(size=(T + 1, 3))
            w.append_trajectory(tid, o[:-1], rng.uniform(-1, 1, (T, 2)), rng.normal(size=T), o[1:], i == 0)
    w.commit()
    w.close()
    return p


@pytest.mark.parametrize("skip", [1, 3, 7])
def test_keeps_the_paper_rows_of_every_field(ds_path, tmp_path, skip):
    src = open_dataset(ds_path)
    out = subsample_dataset(ds_path, tmp_path / f"s{skip}", skip=skip, progress=False)
    assert out.tasks == src.tasks and out.split == src.split and out.gamma == src.gamma
    assert out.env_id == src.env_id
    for t in src.tasks:
        rows = skip_rows(src[t].num_rows, skip)
        assert out[t].num_rows == rows.size == src[t].num_rows // skip
        assert out[t].params == src[t].params
        for f in FIELDS:
            np.testing.assert_array_equal(out[t][f], src[t][f][rows])
        # returns carried over (normalised scores need the best), trajectory boundaries unknown
        assert out[t].episode_returns == pytest.approx(src[t].episode_returns)
        assert out[t].episode_lengths is None
        assert out[t].manifest["source"]["buffer_skip"] == skip
    verify_dataset(out.path, progress=False)


def test_cli_and_errors(ds_path, tmp_path, capsys):
    out = tmp_path / "s7"
    assert main(["data", "subsample", str(ds_path), str(out), "--quiet"]) == 0
    assert "skip 7" in capsys.readouterr().out
    assert open_dataset(out)["3"].num_rows == 23 // 7
    before = open_dataset(out)["0"]["obs"].copy()
    with pytest.raises(FileExistsError, match="already exists"):
        subsample_dataset(ds_path, out, skip=2, progress=False)
    np.testing.assert_array_equal(open_dataset(out)["0"]["obs"], before)   # nothing overwritten
    with pytest.raises(ValueError, match="skip: expected an integer >= 1"):
        subsample_dataset(ds_path, tmp_path / "x", skip=0, progress=False)
    with pytest.raises(ValueError, match="fewer than skip=30 rows"):
        subsample_dataset(ds_path, tmp_path / "y", skip=30, progress=False)
    assert not (tmp_path / "y").exists()
    with pytest.raises(ValueError, match="must differ"):
        subsample_dataset(ds_path, ds_path, skip=2, overwrite=True, progress=False)
    with pytest.raises(ValueError, match="missing: no such dataset directory"):
        subsample_dataset(tmp_path / "missing", tmp_path / "z", progress=False)


def test_staging_directories_of_killed_writers_are_removed(tmp_path):
    """A subsample/import killed mid-write leaves `.OUT.<pid>.*.new`; the next write removes it
    (only when its process is gone)."""
    import os
    import subprocess
    import sys

    from macaw_fast.data.store import staging_dir

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = tmp_path / f".out.{dead}.abc123.new"
    (stale / "ds").mkdir(parents=True)
    (stale / "ds" / "half.npy").write_bytes(b"x" * 100)
    live = tmp_path / f".out.{os.getppid()}.def456.new"      # a running process's: kept
    live.mkdir()
    new = staging_dir(tmp_path / "out")
    assert not stale.exists() and live.exists() and os.path.isdir(new)
    assert f".out.{os.getpid()}." in new
