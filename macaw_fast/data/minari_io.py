"""Exchange datasets with Minari (optional extra ``macaw-fast[minari]``, minari 0.5.x).

Minari has no notion of a task, so a macaw-fast dataset becomes one Minari dataset per task under
a namespace: ``<namespace>/task-<id>-v0``. The namespace metadata holds the dataset-level facts
(env id, dims, gamma, split, task order) and every task dataset's metadata holds its task id and
parameters under the key ``"macaw_fast"``.

Episodes. Where a task's trajectory boundaries are known, each trajectory is one Minari episode:
``observations`` = its ``obs`` rows plus the last ``next_obs`` (Minari's T+1 layout, which needs
``next_obs[t] == obs[t+1]`` inside a trajectory), ``terminations`` = ``done``, ``truncations``
= not ``done`` on the last step. Where they are not known (the paper's subsampled buffers), every
row is a one-step episode. The derived fields (``mc_return``, ``terminal_obs``,
``terminal_discount``) travel in the episode ``infos`` so data is used exactly as stored; on
import from a foreign Minari dataset without them they are recomputed (docs/algorithm.md §3).

Observation and action spaces are given explicitly (unbounded float32 Box for observations, the
stored actions' range for actions unless given), so nothing needs our environments importable.
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from typing import Iterator

import numpy as np

from .batch import FIELDS
from .store import (DatasetWriter, compute_derived, install_dir, open_dataset, remove_stale_staging, staging_dir,
                    write_task_arrays)

_DERIVED = ("mc_return", "terminal_obs", "terminal_discount")
_VERSION = 0


def _require_minari():
    try:
        import minari  # noqa: F401
    except ImportError:
        raise ImportError("Minari interop needs minari: pip install 'macaw-fast[minari]'") from None
    import minari

    return minari


@contextlib.contextmanager
def _minari_root(root) -> Iterator[None]:
    """Point Minari at ``root`` (its ``MINARI_DATASETS_PATH``) for the duration of the block."""
    if root is None:
        yield
        return
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = os.path.abspath(os.fspath(root))
    try:
        yield
    finally:
        if old is None:
            del os.environ["MINARI_DATASETS_PATH"]
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def minari_dataset_id(namespace: str, task_id: str) -> str:
    """The Minari dataset id of one task: ``<namespace>/task-<id>-v0`` ('.' in ids becomes '_')."""
    return f"{namespace}/task-{re.sub(r'[^-_0-9A-Za-z]', '_', task_id)}-v{_VERSION}"


#: Random-policy episodes Minari runs per task for ``ref_min_score`` (its default is 100).
REF_EPISODES = 20


def _env_spec(env_id: str, params: dict, obs_dim: int, act_dim: int):
    """A gymnasium EnvSpec that rebuilds the task's env (``recover_environment()``), or None when
    ``env_id`` is not one of the MACAW families or the dims differ from the family's."""
    from gymnasium.envs.registration import EnvSpec

    from ..envs import FAMILIES      # interop: the spec names our env's entry point and its task

    for fam in FAMILIES.values():
        if fam.env_id == env_id and (fam.obs_dim, fam.act_dim) == (obs_dim, act_dim):
            return EnvSpec(id=env_id, entry_point=fam.entry_point, max_episode_steps=fam.max_episode_steps,
                           kwargs={"task": params})
    return None


def _episodes(td):
    lengths = td.episode_lengths
    if lengths is None:
        return [(r, r + 1) for r in range(td.num_rows)], False
    bounds, s = [], 0
    for n in lengths:
        bounds.append((s, s + n))
        s += n
    return bounds, True


def export_minari(dataset, namespace: str, root=None, action_bounds: tuple[float, float] | None = None,
                  overwrite: bool = False, progress: bool = True) -> list[str]:
    """Export every task of a dataset to Minari under ``namespace``; returns the Minari dataset ids.

    ``root`` is the Minari datasets directory (default: ``$MINARI_DATASETS_PATH`` or
    ``~/.minari/datasets``). ``action_bounds`` sets the action Box (default: [-1, 1] when every
    stored action lies in it, else unbounded). ``overwrite`` replaces an existing namespace.
    """
    _require_minari()
    ds = dataset if hasattr(dataset, "tasks") and hasattr(dataset, "split") else open_dataset(dataset)
    if not re.fullmatch(r"[-_\w][-_\w/]*[-_\w]+", namespace):
        raise ValueError(f"namespace {namespace!r}: expected letters, digits, '_', '-' and '/'")
    ids = [minari_dataset_id(namespace, t) for t in ds.tasks]
    if len(set(ids)) != len(ids):
        raise ValueError(f"task ids {ds.tasks} map to clashing Minari names")
    import shutil
    import tempfile

    with _minari_root(root):
        from minari.storage.datasets_root_dir import get_dataset_path

        real_root = os.fspath(get_dataset_path())
        ns_path = os.path.join(real_root, namespace)
        if os.path.exists(ns_path) and not overwrite:
            raise FileExistsError(f"{ns_path}: Minari namespace {namespace!r} already exists (use overwrite)")
    # Written under a staging root beside the real one and moved into place only when complete, so
    # a failed or killed export leaves nothing half-written in the Minari root.
    parent = os.path.dirname(os.path.abspath(real_root))
    remove_stale_staging(parent, "macaw-fast-export")          # left by killed exports
    staging = tempfile.mkdtemp(prefix=f".macaw-fast-export.{os.getpid()}.", suffix=".new", dir=parent)
    try:
        with _minari_root(staging):
            _export_into(ds, namespace, ids, action_bounds, progress)
        old = None
        if os.path.exists(ns_path):
            old = ns_path + f".old-{os.getpid()}"
            os.replace(ns_path, old)
        os.makedirs(os.path.dirname(ns_path), exist_ok=True)
        os.replace(os.path.join(staging, namespace), ns_path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ids


def _export_into(ds, namespace: str, ids: list[str], action_bounds, progress: bool) -> None:
    """Write the namespace and one Minari dataset per task into the current Minari root."""
    import gymnasium as gym
    from minari.data_collector.episode_buffer import EpisodeBuffer

    minari = _require_minari()
    if action_bounds is None:
        inside = all(np.all(np.abs(ds[t]["action"]) <= 1.0) for t in ds.tasks)
        action_bounds = (-1.0, 1.0) if inside else (-np.inf, np.inf)
    obs_space = gym.spaces.Box(-np.inf, np.inf, shape=(ds.obs_dim,), dtype=np.float32)
    act_space = gym.spaces.Box(action_bounds[0], action_bounds[1], shape=(ds.act_dim,), dtype=np.float32)
    from minari.namespace import create_namespace

    create_namespace(namespace, description=f"macaw-fast dataset exported from {ds.env_id}", macaw_fast={
        "env_id": ds.env_id, "obs_dim": ds.obs_dim, "act_dim": ds.act_dim, "gamma": ds.gamma,
        "split": ds.split, "tasks": [{"id": t, "dataset_id": i} for t, i in zip(ds.tasks, ids)]})
    unknown = [t for t in ds.tasks if ds[t].episode_lengths is None]
    if unknown:
        warnings.warn(f"tasks {unknown[:8]}{' ...' if len(unknown) > 8 else ''} do not know their trajectory "
                      f"boundaries (subsampled or imported data): each of their rows is exported as a one-step "
                      f"Minari episode; export the data before subsampling to keep real episodes",
                      UserWarning, stacklevel=3)
    it = list(zip(ds.tasks, ids))
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc=f"export {namespace}", unit="task")
    for tid, mid in it:
        td = ds[tid]
        a = {f: np.asarray(td[f]) for f in FIELDS}
        bounds, known = _episodes(td)
        buffers = []
        for k, (s, e) in enumerate(bounds):
            if known and e - s > 1 and not np.array_equal(a["next_obs"][s : e - 1], a["obs"][s + 1 : e]):
                raise ValueError(f"task {tid}: trajectory {k} (rows {s}..{e - 1}) has next_obs[t] != obs[t+1]; "
                                 f"Minari's episode layout cannot hold it")
            done = a["done"][s:e] != 0
            trunc = np.zeros(e - s, dtype=bool)
            trunc[-1] = not done[-1]
            buffers.append(EpisodeBuffer(
                id=k, observations=np.concatenate([a["obs"][s:e], a["next_obs"][e - 1 : e]]),
                actions=a["action"][s:e], rewards=a["reward"][s:e].astype(np.float64).tolist(),
                terminations=done.tolist(), truncations=trunc.tolist(),
                infos={f: a[f][s:e] for f in _DERIVED}))
        meta = {"task_id": tid, "params": td.params, "env_id": ds.env_id, "gamma": td.gamma,
                "episodes_known": known, "episode_returns": td.episode_returns,
                "source": td.manifest.get("source")}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # author/permalink/... not set
            spec = _env_spec(ds.env_id, td.params, ds.obs_dim, ds.act_dim)
            best = max(td.episode_returns) if spec is not None and td.episode_returns else None
            # ref_max_score = the best trajectory return in the task's data and ref_min_score = a random
            # policy's mean return (Minari runs it in the recovered env): the normalisation macaw-fast
            # uses, so minari.get_normalized_score gives our normalised scores.
            mds = minari.create_dataset_from_buffers(
                mid, buffers, env=spec, eval_env=spec, observation_space=obs_space, action_space=act_space,
                ref_max_score=best, num_episodes_average_score=REF_EPISODES,
                algorithm_name="macaw-fast export", description=f"task {tid} of {ds.env_id}, params {td.params}",
                data_format="hdf5", jpeg_encoding=False)
        mds.storage.update_metadata({"macaw_fast": meta})


def import_minari(namespace: str, out, root=None, overwrite: bool = False, progress: bool = True):
    """Build a macaw-fast dataset at ``out`` from the Minari datasets of ``namespace``.

    Reads the namespace written by :func:`export_minari` (exact round trip). Foreign namespaces
    work too when each dataset has ``macaw_fast`` metadata or, lacking it, the task id is taken
    from the dataset name, params are empty and the derived fields are recomputed with gamma 0.99.
    """
    minari = _require_minari()
    if os.path.exists(out) and not overwrite:
        raise FileExistsError(f"{out}: already exists (use --overwrite to replace it)")
    with _minari_root(root):
        from minari.namespace import get_namespace_metadata

        try:
            ns = get_namespace_metadata(namespace) or {}
        except Exception as e:
            raise FileNotFoundError(f"Minari namespace {namespace!r} not found ({e})") from None
        info = ns.get("macaw_fast")
        if info is None:
            ids = sorted(k for k in minari.list_local_datasets(prefix=namespace))
            if not ids:
                raise FileNotFoundError(f"Minari namespace {namespace!r} holds no datasets")
            entries = [{"id": re.sub(r"-v\d+$", "", i.split("/")[-1]).removeprefix("task-"), "dataset_id": i} for i in ids]
        else:
            entries = info["tasks"]
        loaded = {}
        for e in entries:
            try:
                loaded[e["id"]] = minari.load_dataset(e["dataset_id"])
            except Exception as ex:
                raise FileNotFoundError(f"Minari dataset {e['dataset_id']!r} (task {e['id']}): cannot load ({ex})") from None
        metas = {t: m.storage.metadata.get("macaw_fast", {}) for t, m in loaded.items()}
        for t, m in loaded.items():       # a dataset made by other tooling: its env spec names the task
            spec = m.spec.env_spec
            if not metas[t] and spec is not None:
                metas[t] = {"env_id": spec.id, "params": dict((spec.kwargs or {}).get("task") or {})}
        first = next(iter(loaded.values()))
        obs_dim = int(np.prod(first.observation_space.shape))
        act_dim = int(np.prod(first.action_space.shape))
        gamma = float(info["gamma"]) if info else float(next(iter(metas.values())).get("gamma", 0.99))
        env_ids = {m.get("env_id") for m in metas.values()}
        if not info and len(env_ids) > 1:
            raise ValueError(f"Minari namespace {namespace!r}: its datasets come from different envs {sorted(map(str, env_ids))}")
        env_id = info["env_id"] if info else (next(iter(metas.values())).get("env_id") or f"minari:{namespace}")
        task_ids = [e["id"] for e in entries]
        split = info["split"] if info else {"train": task_ids, "test": task_ids}
        tasks = {t: metas[t].get("params", {}) for t in task_ids}
        tmp = staging_dir(out)
        try:
            w = DatasetWriter.create(os.path.join(tmp, "ds"), env_id=env_id, tasks=tasks, split=split,
                                     obs_dim=obs_dim, act_dim=act_dim, gamma=gamma,
                                     source={"format": "minari", "namespace": namespace})
            it = task_ids
            if progress:
                from tqdm import tqdm

                it = tqdm(task_ids, desc=f"import {namespace}", unit="task")
            with w:
                for tid in it:
                    cols = {f: [] for f in FIELDS}
                    lengths, returns = [], []
                    for ep in loaded[tid].iterate_episodes():
                        o = np.asarray(ep.observations, dtype=np.float32).reshape(len(ep.rewards) + 1, obs_dim)
                        T = len(ep.rewards)
                        rew = np.asarray(ep.rewards)
                        term = np.asarray(ep.terminations, dtype=bool)
                        cols["obs"].append(o[:-1])
                        cols["next_obs"].append(o[1:])
                        cols["action"].append(np.asarray(ep.actions, dtype=np.float32).reshape(T, act_dim))
                        cols["reward"].append(rew.astype(np.float32))
                        cols["done"].append(term.astype(np.float32))
                        infos = ep.infos or {}
                        if all(f in infos for f in _DERIVED):
                            for f in _DERIVED:
                                cols[f].append(np.asarray(infos[f], dtype=np.float32))
                        else:
                            _, mc, tobs, disc = compute_derived(rew, o[1:], bool(term[-1]), gamma)
                            cols["mc_return"].append(mc.astype(np.float32))
                            cols["terminal_obs"].append(tobs.astype(np.float32))
                            cols["terminal_discount"].append(disc.astype(np.float32))
                        lengths.append(T)
                        returns.append(float(np.sum(rew.astype(np.float32), dtype=np.float64)))
                    arrays = {f: (np.concatenate(v) if v else np.empty((0,) if f in ("reward", "done", "mc_return",
                              "terminal_discount") else (0, act_dim if f == "action" else obs_dim), np.float32))
                              for f, v in cols.items()}
                    m = metas[tid]
                    known = m.get("episodes_known", True)
                    eps = {"lengths": lengths if known else None,
                           "returns": m.get("episode_returns") if "episode_returns" in m else returns}
                    write_task_arrays(w, tid, arrays, episodes=eps)
                    if m.get("source") is not None:
                        st = w._state(tid)
                        st.manifest = dict(st.manifest, source=m["source"])
                w.commit()
            install_dir(os.path.join(tmp, "ds"), out, overwrite)
        finally:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return open_dataset(out)


__all__ = ["export_minari", "import_minari", "minari_dataset_id"]
