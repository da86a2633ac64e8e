"""Smoke tests: the real `macaw-fast` CLI in subprocesses with tiny budgets (train, resume, eval, plot, demo --fast)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

TINY = ["--net-width", "16", "--wlinear-dim", "8", "--head-width", "8", "--batch-size", "16", "--threads", "1",
        "--progress", "false", "--random-episodes", "1"]


def cli(*args, cwd=None, env=None):
    p = subprocess.run([sys.executable, "-m", "macaw_fast", *map(str, args)], capture_output=True, text=True,
                       timeout=300, cwd=cwd, env=env)
    assert p.returncode == 0, f"exit {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p.stdout


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from macaw_fast.train.scripted import make_scripted_dataset

    return make_scripted_dataset(tmp_path_factory.mktemp("data") / "ds", "cheetah_dir", episodes_per_task=2,
                                 episode_steps=60, seed=3)


def test_train_resume_eval_plot(dataset, tmp_path):
    run = tmp_path / "run"
    out = cli("train", "--data", dataset, "--out", run, "--preset", "cheetah_dir", "--steps", 6, "--eval-interval", 3,
              "--latest-interval", 3, "--fused", *TINY)
    assert "mean adapted return" in out
    evals = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if '"eval"' in l]
    assert [e["step"] for e in evals] == [0, 3, 6]
    out = cli("train", "--resume", run, "--steps", 9, "--progress", "false")
    assert "step 9" in out
    out = cli("eval", run, "--batches", 1, "--episodes", 1, "--batch-size", 16, "--random-episodes", 1)
    assert "mean" in out and "adapted" in out
    png = tmp_path / "c.png"
    cli("plot", run, "-o", png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_fast(tmp_path):
    out = cli("demo", "--fast", "--out", tmp_path / "demo", "--cache", tmp_path / "cache", "--eval-batches", 2,
              "--eval-rollouts", 1)
    assert "forward (+1)" in out and "backward (-1)" in out and "mean" in out
    assert (tmp_path / "demo" / "curves.png").exists()
    # Training read the paper's buffer_skip 7 subsample of the scripted data.
    from macaw_fast.data import open_dataset

    full, sub = open_dataset(tmp_path / "cache" / "demo-scripted-s0"), open_dataset(tmp_path / "cache" / "demo-scripted-s0-skip7")
    assert [sub[t].num_rows for t in sub.tasks] == [full[t].num_rows // 7 for t in full.tasks]
    assert str(tmp_path / "cache" / "demo-scripted-s0-skip7") in (tmp_path / "demo" / "config.json").read_text()
    # A second run reuses the cached data and makes a new run directory.
    out2 = cli("demo", "--fast", "--out", tmp_path / "demo", "--cache", tmp_path / "cache", "--eval-batches", 2,
               "--eval-rollouts", 1)
    assert "Data 0 s" in out2
    assert len([d for d in os.listdir(tmp_path) if d.startswith("demo")]) == 2


def test_every_option_with_a_default_shows_it_in_help():
    import argparse

    from macaw_fast.cli import build_parser

    missing = []

    def walk(parser, name):
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                for n, sp in a.choices.items():
                    walk(sp, f"{name} {n}")
            elif (a.option_strings and a.help != argparse.SUPPRESS
                  and not isinstance(a, (argparse._HelpAction, argparse._VersionAction))
                  and not (a.default is None or a.default is False or a.default == [] or a.default == argparse.SUPPRESS)
                  and "default" not in (a.help or "")):
                missing.append(f"{name} {a.option_strings[0]}")
        assert parser.allow_abbrev is False, name

    walk(build_parser(), "macaw-fast")
    assert not missing, f"options whose --help does not show the default: {missing}"


def test_every_help_page_formats_cleanly():
    """argparse %-formats help strings but prints descriptions and epilogs as written: a "%%" meant
    for one must not show up in the other, and every page must format at all."""
    import argparse

    from macaw_fast.cli import build_parser

    pages = {}

    def walk(parser, name):
        pages[name] = parser.format_help()
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                for n, sp in a.choices.items():
                    walk(sp, f"{name} {n}")

    walk(build_parser(), "macaw-fast")
    assert {"macaw-fast reproduce", "macaw-fast train", "macaw-fast collect"} <= set(pages)
    bad = [name for name, text in pages.items() if "%%" in text or "%(" in text]
    assert not bad, f"--help pages with unformatted %: {bad}"


def test_one_name_per_idea_across_commands():
    """--family everywhere a family is named (--env stays as an alias), the same task-list syntax
    everywhere, eval's --rollouts/--batches also under train's --eval-rollouts/--eval-batches names."""
    from macaw_fast.cli import build_parser

    p = build_parser()
    for argv in (["collect", "--family", "ant_dir", "--out", "x"], ["collect", "--env", "ant_dir", "--out", "x"]):
        assert p.parse_args(argv).family == "ant_dir"
    a = p.parse_args(["collect", "--family", "ant_dir", "--out", "x", "--tasks", "0-2,7"])
    assert a.tasks == [0, 1, 2, 7]
    for argv in (["data", "import-paper", "SRC", "OUT", "--family", "cheetah_vel", "--tasks", "0,3"],
                 ["data", "import-paper", "SRC", "OUT", "--env", "cheetah_vel", "--tasks", "0,3"]):
        a = p.parse_args(argv)
        assert a.family == "cheetah_vel" and a.tasks == [0, 3]
    for flag in ("--rollouts", "--eval-rollouts", "--episodes"):
        assert p.parse_args(["eval", "ck", flag, "4"]).episodes == 4
    for flag in ("--batches", "--eval-batches"):
        assert p.parse_args(["eval", "ck", flag, "5"]).batches == 5
    from macaw_fast._cli_types import flat_tasks

    assert flat_tasks(p.parse_args(["eval", "ck", "--tasks", "2", "7"]).tasks) == [2, 7]
    assert flat_tasks(p.parse_args(["eval", "ck", "--tasks", "0-2,5"]).tasks) == [0, 1, 2, 5]
    assert p.parse_args(["train", "--train-tasks", "0-3"]).cfg_train_tasks == [0, 1, 2, 3]


def test_plot_names_tasks_as_people_do(tmp_path):
    from macaw_fast.train.plot import task_names
    from macaw_fast.train.scripted import make_scripted_dataset

    data = make_scripted_dataset(tmp_path / "d", "cheetah_vel", episodes_per_task=1, episode_steps=60, seed=0,
                                 task_indices=[2, 3])
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("")
    (run / "config.json").write_text(json.dumps({"data": str(data), "family": "cheetah_vel"}))
    names = task_names(str(run))
    assert names["2"].startswith("v = ") and names["2"].endswith(" m/s")
    from macaw_fast.envs import task_label

    assert task_label("cheetah_dir", {"direction": -1.0}) == "backward"
    assert task_label("ant_dir", {"goal": 2.2}) == "goal 2.20 rad"


@pytest.mark.parametrize("blocked, argv, extra", [
    ("matplotlib", ["plot", "RUN"], "log"),
    ("gymnasium", ["collect", "--family", "cheetah_dir", "--out", "OUT", "--steps-per-task", "10"], "envs"),
])
def test_missing_optional_package_names_the_extra(dataset, tmp_path, blocked, argv, extra):
    """A missing optional package is a one-line error saying which extra installs it."""
    import subprocess
    import sys

    run = tmp_path / "run"
    if blocked == "matplotlib":
        cli("train", "--data", str(dataset), "--out", str(run), *TINY, "--steps", "2")
    argv = [str(run) if a == "RUN" else str(tmp_path / "out") if a == "OUT" else a for a in argv]
    code = ("import sys, importlib.abc\n"
            "class Block(importlib.abc.MetaPathFinder):\n"
            f"    def find_spec(self, name, path=None, target=None):\n"
            f"        if name.split('.')[0] == {blocked!r}: raise ModuleNotFoundError(f'No module named {{name!r}}', name=name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "from macaw_fast.cli import main\n"
            f"sys.exit(main({argv!r}))\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 1, p.stderr[-2000:]
    assert f"pip install 'macaw-fast[{extra}]'" in p.stderr and blocked in p.stderr
    assert "Traceback" not in p.stderr
