"""Run management behind ``macaw-fast train`` and ``eval``: step timing, seed scheduling, resume
settings, checkpoint sniffing and videos. The CLI module (``train/cli.py``) only parses arguments
and calls these.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

from .config import resolve_config

#: TrainConfig fields a resumed run may change (they do not change what is computed).
RUNTIME_FIELDS = ("steps", "progress", "tensorboard", "threads", "prefetch")


def measure_step_time(data: str, mc, tc, threads: int, steps: int = 3) -> float:
    """Seconds per meta-step of this run's configuration with ``threads`` torch threads (after one warm-up)."""
    import torch

    from .loop import RunSetup, _batches, make_learner

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        setup = RunSetup(data, mc, tc)
        inner_s, outer_s = setup.samplers()
        learner = make_learner(setup)
        it = _batches(setup, inner_s, outer_s, 0)
        times = []
        for k in range(steps + 1):
            inner, outer = next(it)
            inner, outer = inner.to(learner.device, learner.dtype), outer.to(learner.device, learner.dtype)
            t0 = time.perf_counter()
            learner.meta_step(inner, outer)
            if k:
                times.append(time.perf_counter() - t0)
        it.close()
        return min(times)
    finally:
        torch.set_num_threads(old)


def choose_seed_strategy(data: str, mc, tc, n_seeds: int, cores: int | None = None) -> dict:
    """Measure, then pick 'parallel' (one process per seed, 1 thread each) or 'sequential' (in-process, all threads).

    Sequential takes about n_seeds * t(all cores); parallel with P = min(cores, n_seeds) processes
    takes about ceil(n_seeds / P) * t(1 thread) when the processes do not slow each other down.
    """
    cores = cores or os.cpu_count() or 1
    t1 = measure_step_time(data, mc, tc, 1)
    tn = measure_step_time(data, mc, tc, cores) if cores > 1 else t1
    P = max(1, min(cores, n_seeds))
    seq, par = n_seeds * tn, math.ceil(n_seeds / P) * t1
    return {"strategy": "parallel" if P > 1 and par < seq else "sequential", "cores": cores,
            "step_s_1_thread": t1, "step_s_all_threads": tn, "processes": P,
            "estimated_s_per_step_all_seeds": {"sequential": seq, "parallel": par}}


def run_seeds(data: str, out: str, mc, tc, seeds: list[int], presets: list[str] | None = None,
              report=print) -> int:
    """Train ``seeds`` into ``out/seed_<s>``: in this process one after another, or as parallel
    processes of one thread each, whichever :func:`choose_seed_strategy` measures faster here.
    Returns the exit status of the first seed's process that failed (the others are stopped then;
    no process outlives this one), 0 when all finished."""
    from .loop import RunSetup, atomic_write_json, train

    RunSetup(data, mc, tc)  # validate before creating anything
    out = os.path.abspath(out)
    for s in seeds:
        if os.path.exists(os.path.join(out, f"seed_{s}", "config.json")):
            raise FileExistsError(f"{out}/seed_{s}: a run already exists here (resume it with --resume {out}/seed_{s})")
    os.makedirs(out, exist_ok=True)
    decision = choose_seed_strategy(data, mc, tc, len(seeds))
    atomic_write_json(os.path.join(out, "seeds_strategy.json"), decision)
    print(f"seeds {seeds}: {decision['strategy']} (1 thread {1000 * decision['step_s_1_thread']:.1f} ms/step, "
          f"{decision['cores']} threads {1000 * decision['step_s_all_threads']:.1f} ms/step)", file=sys.stderr)
    if decision["strategy"] == "sequential":
        for s in seeds:
            tc_s = type(tc).from_dict({**tc.to_dict(), "seed": s})
            report(train(data, os.path.join(out, f"seed_{s}"), mc, tc_s, presets=presets), f"seed {s}: ")
        return 0
    from .._procs import Job, JobFailed, run_jobs

    cfg_file = os.path.join(out, "seeds_config.json")
    atomic_write_json(cfg_file, {"macaw": mc.to_dict(), "train": {**tc.to_dict(), "threads": 1, "progress": False}})
    jobs = [Job(f"seed {s}", [sys.executable, "-m", "macaw_fast", "train", "--data", data, "--out",
                              os.path.join(out, f"seed_{s}"), "--config-file", cfg_file, "--seed", str(s)])
            for s in seeds]
    try:
        run_jobs(jobs, decision["processes"], on_end=lambda job, sec: print(f"{job.name}: finished ({sec / 60:.1f} min)",
                                                                            file=sys.stderr))
    except JobFailed as e:
        print(f"{e} (the other seeds were stopped; resume each with --resume {out}/seed_N)", file=sys.stderr)
        return e.returncode
    return 0


#: What a run directory holds (``train.loop``); ``clear_run`` removes only these.
RUN_ENTRIES = ("config.json", "checkpoints", "metrics.jsonl", "tb", "curves.png")


def clear_run(run: str) -> bool:
    """Delete the run in ``run`` (for ``train --overwrite``); returns whether there was one.

    Only a run directory's own entries are removed, and only when it holds nothing else: a
    directory with other files is refused, so a mistyped ``--out`` cannot delete unrelated data.
    """
    import shutil

    if not os.path.exists(run):
        return False
    if not os.path.isdir(run):
        raise FileExistsError(f"--out {run}: exists and is not a directory")
    entries = os.listdir(run)
    others = [e for e in entries if e not in RUN_ENTRIES and not (e.startswith(".") and e.endswith(".tmp"))
              and not e.startswith("seed_")]
    if others:
        raise FileExistsError(f"--out {run}: not a run directory (it holds {sorted(others)[:5]}); --overwrite "
                              f"deletes only runs")
    for e in entries:
        p = os.path.join(run, e)
        if e.startswith("seed_"):            # a directory of seeds (train --seeds)
            clear_run(p)
            os.rmdir(p)
        elif os.path.isdir(p):
            shutil.rmtree(p)
        else:
            os.unlink(p)
    return bool(entries)


def resume_settings(run: str, macaw_over: dict, train_over: dict) -> tuple:
    """(run description, MacawConfig, TrainConfig) to continue the run in ``run``.

    The newest intact checkpoint is the truth: its configuration is used, and where the editable
    ``config.json`` disagrees the difference is reported (on stderr) and ignored. Only the
    :data:`RUNTIME_FIELDS` may be overridden. A run with no intact checkpoint yet (an
    interrupted start) continues from ``config.json``.
    """
    from ..checkpoint import intact_checkpoints, load_checkpoint

    extra = {k: v for k, v in train_over.items() if k not in RUNTIME_FIELDS}
    if macaw_over or extra:
        raise ValueError(f"--resume continues a run with its own configuration; only --steps, --progress, "
                         f"--threads, --prefetch and --tensorboard may be given (got {sorted(macaw_over) + sorted(extra)})")
    cfg_path = os.path.join(run, "config.json")
    cfg = None
    if os.path.isfile(cfg_path):
        try:
            with open(cfg_path) as f:
                cfg = json.load(f)
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            print(f"macaw-fast train: {cfg_path} is not readable ({e}); using the checkpoint's configuration",
                  file=sys.stderr)
    good = intact_checkpoints(os.path.join(run, "checkpoints"))
    if good:
        st = load_checkpoint(good[0][1])
        truth = {"data": st["data"], "macaw": st["macaw"], "train": st["train"]}
        if isinstance(cfg, dict):
            diffs = _differences(cfg, truth)
            if diffs:
                print(f"macaw-fast train: {cfg_path} differs from the checkpoint {good[0][1]} ({'; '.join(diffs)}); "
                      f"resuming with the checkpoint's settings", file=sys.stderr)
        desc = {**(cfg if isinstance(cfg, dict) else {}), **truth}
    elif isinstance(cfg, dict):
        desc = cfg
    else:
        raise FileNotFoundError(f"{run}: not a run directory (no readable config.json and no intact checkpoint)")
    mc, tc = resolve_config([], desc["macaw"], {**desc["train"], **train_over})
    return desc, mc, tc


def _differences(cfg: dict, truth: dict) -> list[str]:
    out = []
    if cfg.get("data") != truth["data"]:
        out.append(f"data: {cfg.get('data')!r} vs {truth['data']!r}")
    for part in ("macaw", "train"):
        a, b = cfg.get(part) or {}, truth[part]
        for k in sorted(set(a) | set(b)):
            if part == "train" and k in RUNTIME_FIELDS:
                continue
            if a.get(k) != b.get(k):
                out.append(f"{part}.{k}: {a.get(k)!r} in config.json, {b.get(k)!r} in the checkpoint")
    return out


def learner_from_state_dict(state: dict, **kw):
    """A learner of whichever algorithm wrote ``state`` (its "format")."""
    from ..macaw import MetaLearner
    from ..meta_bc import MetaBC
    from ..focal import FOCAL
    from ..mt_ft import MTFT

    classes = (MetaLearner, MetaBC, MTFT, FOCAL)
    for cls in classes:
        if state.get("format") == cls.state_format:
            return cls.from_state_dict(state, **kw)
    raise ValueError(f"unknown learner state format {state.get('format')!r} (expected one of "
                     f"{', '.join(repr(c.state_format) for c in classes)})")


def load_any_checkpoint(path: str, data: str | None, backend: str = "auto"):
    """(learner, dataset path, family or None, step or None): a macaw-fast checkpoint (file or run
    directory) or the paper's ``archive_*.pt`` (which needs ``data`` for its test tasks and N_train)."""
    import torch

    from ..checkpoint import CHECKPOINT_FORMAT, unreadable, verify_checkpoint

    if os.path.isdir(path):
        path = os.path.join(path, "checkpoints", "latest.pt")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise unreadable(path, e) from None
    if isinstance(raw, dict) and raw.get("format") == CHECKPOINT_FORMAT:
        st = verify_checkpoint(raw, path)       # read once: the same checks as load_checkpoint
        learner = learner_from_state_dict(st["learner"], backend=backend)
        return learner, data or st["data"], st["family"], int(st["step"])
    if not data:
        raise ValueError(f"{path}: a paper archive needs --data DATASET (its test tasks and n_train)")
    from ..data.store import open_dataset
    from ..paper import load_archive

    ds = open_dataset(data)
    return load_archive(raw, len(ds.train_tasks), backend=backend), data, None, None


def render_videos(ev, learner, out: str, seed: int = 0) -> list[str]:
    """One adapted rollout per task of the Evaluator ``ev`` rendered to ``out/task_<id>.gif``, where
    a renderer and imageio are available (otherwise a message and no files). Returns the paths."""
    import numpy as np
    import torch

    from ..envs import make

    try:
        import imageio.v2 as imageio
    except ImportError:
        print("--video: needs the 'imageio' package (pip install imageio); skipped", file=sys.stderr)
        return []
    adapted = learner.adapt(ev.adaptation_batch(0, 1, learner.dtype, learner.device))
    os.makedirs(out, exist_ok=True)
    paths = []
    for k, t in enumerate(ev.tasks):
        try:
            env = make(ev.family, t.task, render_mode="rgb_array", disable_env_checker=True)
            o, _ = env.reset(seed=seed)
            frames = [env.render()]
        except Exception as e:  # noqa: BLE001 - no OpenGL context etc.
            print(f"--video: no renderer available ({type(e).__name__}: {e}); skipped "
                  "(try MUJOCO_GL=egl or MUJOCO_GL=osmesa)", file=sys.stderr)
            return paths
        for _ in range(200):
            with torch.no_grad():
                a = learner.act(torch.as_tensor(o, dtype=learner.dtype).view(1, 1, -1), adapted, tasks=[k])[0, 0].numpy()
            o, _, term, trunc, _ = env.step(np.clip(a, env.action_space.low, env.action_space.high))
            frames.append(env.render())
            if term or trunc:
                break
        path = os.path.join(out, f"task_{t.id}.gif")
        imageio.mimsave(path, frames, duration=0.05)
        env.close()
        paths.append(path)
        print(f"video: {path}")
    return paths


__all__ = ["measure_step_time", "choose_seed_strategy", "run_seeds", "resume_settings", "clear_run", "load_any_checkpoint",
           "render_videos", "RUNTIME_FIELDS"]
