"""Tests of the MACAW task environments (macaw_fast.envs): docs/algorithm.md §7.

Golden trajectories live in tests/golden/envs_golden.npz; regenerate them (after checking that
a dynamics change is expected, e.g. a MuJoCo upgrade) with

    MACAW_REGEN_GOLDEN=1 pytest tests/test_envs.py -k golden
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

gym = pytest.importorskip("gymnasium")
mujoco = pytest.importorskip("mujoco")
pytest.importorskip("imageio")  # gymnasium.envs.mujoco needs it

from gymnasium.utils.env_checker import check_env  # noqa: E402

from macaw_fast import envs  # noqa: E402
from macaw_fast.envs import tasks as T  # noqa: E402

GOLDEN = Path(__file__).parent / "golden" / "envs_golden.npz"
FAMS = list(envs.FAMILY_NAMES)


def _make(family, task=None, **kw):
    """Raw env (no wrappers) of ``family``."""
    kw.setdefault("disable_env_checker", True)
    return envs.make(family, task, **kw).unwrapped


def _actions(n, dim, seed=0, scale=1.0):
    return (scale * np.random.RandomState(seed).uniform(-1.0, 1.0, size=(n, dim))).astype(np.float32)


# ------------------------------------------------------------------------------------------------
# registry, spaces, gymnasium API
# ------------------------------------------------------------------------------------------------


def test_import_does_not_load_mujoco():
    code = "import sys, macaw_fast.envs, gymnasium; assert 'mujoco' not in sys.modules; " "assert 'macaw_fast/AntDir-v0' in gymnasium.registry; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.mark.parametrize("family", FAMS)
def test_families_table_matches_env(family):
    fam = envs.FAMILIES[family]
    env = envs.make(family)
    assert env.spec.id == fam.env_id
    assert env.spec.max_episode_steps == 200
    assert env.observation_space.shape == (fam.obs_dim,)
    assert env.action_space.shape == (fam.act_dim,)
    np.testing.assert_array_equal(env.action_space.low, -1.0)
    np.testing.assert_array_equal(env.action_space.high, 1.0)
    assert env.unwrapped.family == family
    env.close()


@pytest.mark.parametrize("family", FAMS)
def test_check_env(family):
    fam = envs.FAMILIES[family]
    env = _make(family, fam.paper_tasks()[fam.test_indices[0]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gymnasium warns about the unbounded Box
        check_env(env, skip_render_check=True)


@pytest.mark.parametrize(
    "family,dt,frame_skip,timestep",
    [("cheetah_dir", 0.05, 5, 0.01), ("cheetah_vel", 0.05, 5, 0.01), ("ant_dir", 0.05, 5, 0.01), ("walker_param", 0.016, 4, 0.004)],
)
def test_timestep_and_frame_skip(family, dt, frame_skip, timestep):
    env = _make(family)
    assert env.frame_skip == frame_skip
    assert env.model.opt.timestep == pytest.approx(timestep, abs=0)
    assert env.dt == pytest.approx(dt, rel=1e-12)


def test_time_limit_truncates_at_200():
    env = envs.make("cheetah_vel", {"velocity": 1.0})
    env.reset(seed=0)
    zero = np.zeros(6, dtype=np.float32)
    for t in range(200):
        _, _, terminated, truncated, _ = env.step(zero)
        assert not terminated
        assert truncated == (t == 199)


def test_make_rejects_unknown_family():
    with pytest.raises(ValueError, match="unknown task family 'hopper'"):
        envs.make("hopper")


# ------------------------------------------------------------------------------------------------
# rewards recomputed from the simulator state
# ------------------------------------------------------------------------------------------------


def _reward_terms(info):
    return sum(v for k, v in info.items() if k.startswith("reward_"))


@pytest.mark.parametrize("family,task", [("cheetah_dir", {"direction": -1.0}), ("cheetah_vel", {"velocity": 1.3})])
def test_cheetah_reward_formula(family, task):
    env = _make(family, task)
    env.reset(seed=3)
    for a in _actions(30, 6, seed=1):
        x0 = float(env.data.qpos[0])
        _, r, terminated, _, info = env.step(a)
        v = (float(env.data.qpos[0]) - x0) / 0.05
        fwd = task["direction"] * v if family == "cheetah_dir" else -abs(v - task["velocity"])
        ctrl = -0.05 * float(np.sum(a.astype(np.float64) ** 2))
        assert r == pytest.approx(fwd + ctrl, rel=1e-12, abs=1e-12)
        assert info["reward_forward"] == pytest.approx(fwd, rel=1e-12, abs=1e-12)
        assert info["reward_ctrl"] == pytest.approx(ctrl, rel=1e-12, abs=1e-12)
        assert r == pytest.approx(_reward_terms(info), rel=1e-12, abs=1e-12)
        assert not terminated


def test_ant_reward_formula_and_contact_forces():
    goal = 2.2
    env = _make("ant_dir", {"goal": goal})
    env.reset(seed=5)
    contact_seen = False
    for a in _actions(40, 8, seed=2, scale=0.5):
        xy0 = env.data.body("torso").xpos[:2].copy()
        _, r, terminated, _, info = env.step(a)
        v = (env.data.body("torso").xpos[:2] - xy0) / 0.05
        fwd = v[0] * np.cos(goal) + v[1] * np.sin(goal)
        ctrl = -0.5 * float(np.sum(a.astype(np.float64) ** 2))
        contact = -0.5e-3 * float(np.sum(np.clip(env.data.cfrc_ext, -1, 1) ** 2))
        contact_seen |= contact != 0.0
        assert info["reward_forward"] == pytest.approx(fwd, rel=1e-10, abs=1e-12)
        assert info["goal_velocity"] == info["reward_forward"]      # the collector's progress measure
        assert info["reward_ctrl"] == pytest.approx(ctrl, rel=1e-12)
        assert info["reward_contact"] == pytest.approx(contact, rel=1e-12, abs=0)
        assert info["reward_survive"] == 1.0
        assert r == pytest.approx(fwd + ctrl + contact + 1.0, rel=1e-10, abs=1e-12)
        assert r == pytest.approx(_reward_terms(info), rel=1e-12, abs=1e-12)
        if terminated:
            break
    assert contact_seen, "cfrc_ext stayed zero: mj_rnePostConstraint was not applied"


def test_ant_cfrc_ext_matches_fresh_rne_post_constraint():
    env = _make("ant_dir", {"goal": 0.0})
    env.reset(seed=0)
    for a in _actions(10, 8, seed=4):
        env.step(a)
    fresh = np.array(env.data.cfrc_ext)
    env.data.cfrc_ext[:] = 0.0
    mujoco.mj_rnePostConstraint(env.model, env.data)
    np.testing.assert_array_equal(env.data.cfrc_ext, fresh)
    assert np.abs(fresh).sum() > 0


def test_ant_contact_cost_weight_zero_gives_paper_reward():
    a = _actions(15, 8, seed=7)
    env_w = _make("ant_dir", {"goal": 1.0})
    env_0 = _make("ant_dir", {"goal": 1.0}, contact_cost_weight=0.0)
    env_w.reset(seed=1)
    env_0.reset(seed=1)
    for act in a:
        o_w, r_w, *_, i_w = env_w.step(act)
        o_0, r_0, *_, i_0 = env_0.step(act)
        np.testing.assert_array_equal(o_w, o_0)  # cost does not change dynamics
        assert i_0["reward_contact"] == 0.0
        assert r_0 == pytest.approx(r_w - i_w["reward_contact"], rel=1e-12, abs=1e-12)


def test_walker_reward_formula():
    tasks = envs.FAMILIES["walker_param"].paper_tasks()
    env = _make("walker_param", tasks[2])
    env.reset(seed=0)
    for a in _actions(20, 6, seed=3, scale=0.3):
        x0 = float(env.data.qpos[0])
        _, r, terminated, _, info = env.step(a)
        v = (float(env.data.qpos[0]) - x0) / 0.016
        want = v + 1.0 - 1e-3 * float(np.sum(a.astype(np.float64) ** 2))
        assert r == pytest.approx(want, rel=1e-12, abs=1e-12)
        assert r == pytest.approx(_reward_terms(info), rel=1e-12, abs=1e-12)
        h, ang = env.data.qpos[1], env.data.qpos[2]
        assert terminated == (not (0.8 < h < 2.0 and -1.0 < ang < 1.0))
        if terminated:
            break


# ------------------------------------------------------------------------------------------------
# against gymnasium's own v5 envs (same model, same reset noise)
# ------------------------------------------------------------------------------------------------


def test_cheetah_matches_gymnasium_halfcheetah_v5(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MuJoCo logs the v5 XML's settotalmass warning to ./MUJOCO_LOG.TXT
    ours = _make("cheetah_dir", {"direction": 1.0})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = gym.make("HalfCheetah-v5", ctrl_cost_weight=0.05, disable_env_checker=True).unwrapped
    for f in ("body_mass", "body_inertia", "body_subtreemass", "dof_invweight0", "actuator_acc0", "geom_friction"):
        np.testing.assert_array_equal(getattr(ours.model, f), getattr(ref.model, f), err_msg=f)
    o1, _ = ours.reset(seed=11)
    o2, _ = ref.reset(seed=11)
    np.testing.assert_array_equal(o1[:17], o2)
    for a in _actions(25, 6, seed=5):
        o1, r1, *_ = ours.step(a)
        o2, r2, *_ = ref.step(a)
        np.testing.assert_array_equal(o1[:17], o2)
        assert r1 == pytest.approx(r2, rel=0, abs=1e-6)  # gymnasium squares the float32 action in float32, we in float64


def test_ant_matches_gymnasium_ant_v5():
    ours = _make("ant_dir", {"goal": 0.0})
    ref = gym.make("Ant-v5", include_cfrc_ext_in_observation=False, disable_env_checker=True).unwrapped
    o1, _ = ours.reset(seed=2)
    o2, _ = ref.reset(seed=2)
    np.testing.assert_array_equal(o1, o2)
    for a in _actions(30, 8, seed=6, scale=0.6):
        o1, r1, t1, *_ = ours.step(a)
        o2, r2, t2, *_ = ref.step(a)
        np.testing.assert_array_equal(o1, o2)
        assert r1 == pytest.approx(r2, rel=0, abs=1e-6)  # float32 vs float64 control cost
        assert t1 == t2
        if t1:
            break


# ------------------------------------------------------------------------------------------------
# observation layout
# ------------------------------------------------------------------------------------------------


def test_cheetah_observation_layout():
    env = _make("cheetah_vel", {"velocity": 2.0})
    obs, _ = env.reset(seed=0)
    for a in _actions(5, 6):
        obs, *_ = env.step(a)
    d = env.data
    np.testing.assert_array_equal(obs[:8], d.qpos[1:])
    np.testing.assert_array_equal(obs[8:17], d.qvel)
    np.testing.assert_array_equal(obs[17:20], d.body("torso").xpos)
    assert obs.dtype == np.float64 and obs.shape == (20,)
    assert env.observation_structure == {"skipped_qpos": 1, "qpos": 8, "qvel": 9, "torso_xpos": 3}


def test_ant_observation_layout():
    env = _make("ant_dir", {"goal": 0.3})
    env.reset(seed=0)
    obs, *_ = env.step(_actions(1, 8)[0])
    np.testing.assert_array_equal(obs[:13], env.data.qpos[2:])
    np.testing.assert_array_equal(obs[13:], env.data.qvel)
    assert obs.shape == (27,)


def test_walker_observation_clips_qvel():
    env = _make("walker_param")
    env.reset(seed=0)
    qvel = np.linspace(-30.0, 30.0, env.model.nv)
    env.set_state(env.data.qpos.copy(), qvel)
    obs = env._get_obs()
    np.testing.assert_array_equal(obs[:8], env.data.qpos[1:])
    np.testing.assert_array_equal(obs[8:], np.clip(qvel, -10, 10))
    assert obs[8] == -10.0 and obs[-1] == 10.0 and obs.shape == (17,)


# ------------------------------------------------------------------------------------------------
# starting state, determinism
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMS)
def test_determinism_under_seed(family):
    fam = envs.FAMILIES[family]
    task = fam.paper_tasks()[fam.test_indices[-1]]
    acts = _actions(20, fam.act_dim, seed=9, scale=0.4)

    def run(seed):
        env = _make(family, task)
        obs = [env.reset(seed=seed)[0]]
        for a in acts:
            o, _, term, _, _ = env.step(a)
            obs.append(o)
            if term:
                break
        return np.stack(obs)

    a, b, c = run(4), run(4), run(5)
    np.testing.assert_array_equal(a, b)
    assert a.shape != c.shape or not np.array_equal(a, c)


@pytest.mark.parametrize("family,s,gaussian_qvel", [("cheetah_dir", 0.1, True), ("ant_dir", 0.1, True), ("walker_param", 0.005, False)])
def test_reset_noise(family, s, gaussian_qvel):
    env = _make(family)
    dq, dv = [], []
    for seed in range(40):
        env.reset(seed=seed)
        dq.append(env.data.qpos - env.init_qpos)
        dv.append(env.data.qvel - env.init_qvel)
    dq, dv = np.concatenate(dq), np.concatenate(dv)
    assert np.abs(dq).max() <= s and np.abs(dq).max() > 0.8 * s  # uniform in [-s, s]
    if gaussian_qvel:
        assert np.abs(dv).max() > s  # Gaussian tails go beyond s
        assert np.std(dv) == pytest.approx(s, rel=0.2)
    else:
        assert np.abs(dv).max() <= s


# ------------------------------------------------------------------------------------------------
# terminations
# ------------------------------------------------------------------------------------------------


def _ant_after(env, z, qvel=None):
    env.reset(seed=0)
    qpos = env.init_qpos.copy()
    qpos[2] = z
    env.set_state(qpos, np.zeros(env.model.nv) if qvel is None else qvel)
    return env.step(np.zeros(8, dtype=np.float32))


def test_ant_terminations():
    env = _make("ant_dir", {"goal": 0.0})
    *_, terminated, truncated, info = _ant_after(env, 0.75)
    assert not terminated and not truncated
    *_, terminated, _, info = _ant_after(env, 1.6)  # lifted above 1.0
    assert terminated and info["reward_survive"] == 1.0  # the survive bonus is paid on the last step too
    qvel = np.zeros(env.model.nv)
    qvel[2] = -50.0  # slammed into the floor: the torso dips below 0.2
    *_, terminated, _, _ = _ant_after(env, 0.3, qvel)
    assert env.data.qpos[2] < 0.2 and terminated
    # A non-finite state is unhealthy (MuJoCo itself resets data on NaN qvel during mj_step,
    # so this is checked on the rule, not through a step).
    env.reset(seed=0)
    assert env.is_healthy()
    env.data.qvel[3] = np.nan
    assert not env.is_healthy()
    # Over random rollouts the flag is exactly the written rule.
    env.reset(seed=1)
    for a in _actions(60, 8, seed=8):
        *_, terminated, _, _ = env.step(a)
        z = env.data.qpos[2]
        assert terminated == (not (0.2 <= z <= 1.0 and np.isfinite(env.state_vector()).all()))
        if terminated:
            break


def test_walker_terminations():
    env = _make("walker_param")
    for qpos_idx, value, want in [(None, None, False), (1, 0.7, True), (1, 2.2, True), (2, 1.2, True), (2, -1.2, True)]:
        env.reset(seed=0)
        qpos = env.init_qpos.copy()
        if qpos_idx is not None:
            qpos[qpos_idx] = value
        env.set_state(qpos, np.zeros(env.model.nv))
        *_, terminated, _, _ = env.step(np.zeros(6, dtype=np.float32))
        assert terminated == want, (qpos_idx, value)


# ------------------------------------------------------------------------------------------------
# tasks: switching, Walker physics, validation
# ------------------------------------------------------------------------------------------------


def test_reset_options_switch_task():
    env = _make("cheetah_vel", {"velocity": 0.5})
    env.reset(seed=0)
    _, r05, *_ = env.step(np.zeros(6, dtype=np.float32))
    env.reset(seed=0, options={"task": {"velocity": 2.5}})
    assert env.task == {"velocity": 2.5}
    _, r25, _, _, info = env.step(np.zeros(6, dtype=np.float32))
    v = info["x_velocity"]
    assert r25 == pytest.approx(-abs(v - 2.5)) and r05 == pytest.approx(-abs(v - 0.5))
    with pytest.raises(ValueError, match="unknown options"):
        env.reset(options={"tsk": {"velocity": 1.0}})
    with pytest.raises(ValueError, match="cheetah_vel task must have exactly the keys"):
        env.reset(options={"task": {"goal": 1.0}})
    with pytest.raises(ValueError, match="must be finite"):
        env.reset(options={"task": {"velocity": float("nan")}})
    with pytest.raises(ValueError, match=r"must be \+1 or -1"):
        _make("cheetah_dir", {"direction": 0.5})


def _walker_rollout(env, task, n=15):
    obs = [env.reset(seed=1, options={"task": task})[0]]
    for a in _actions(n, 6, seed=1, scale=0.3):
        o, _, term, _, _ = env.step(a)
        obs.append(o)
        if term:
            break
    return np.stack(obs)


def test_walker_params_change_model_and_apply_set_const():
    tasks = envs.FAMILIES["walker_param"].paper_tasks()
    base = T.walker_base_params()
    env = _make("walker_param")
    base_acc0 = env.model.actuator_acc0.copy()
    base_inv = env.model.dof_invweight0.copy()
    for name in T.WALKER_PARAM_BASES:
        np.testing.assert_array_equal(getattr(env.model, name), base[name])
    env.reset(options={"task": tasks[0]})
    for name in T.WALKER_PARAM_BASES:
        np.testing.assert_array_equal(getattr(env.model, name), tasks[0][name])
        assert not np.array_equal(tasks[0][name], tasks[1][name]), name  # tasks differ
    # Derived constants were recomputed: subtree mass, and what a fresh mj_setConst gives.
    np.testing.assert_allclose(env.model.body_subtreemass[0], tasks[0]["body_mass"].sum(), rtol=1e-12)
    from macaw_fast.envs.tasks import walker_model_path

    m2 = mujoco.MjModel.from_xml_path(walker_model_path())
    for name in T.WALKER_PARAM_BASES:
        getattr(m2, name)[...] = tasks[0][name]
    mujoco.mj_setConst(m2, mujoco.MjData(m2))
    for f in ("body_subtreemass", "dof_invweight0", "body_invweight0", "actuator_acc0"):
        np.testing.assert_allclose(getattr(env.model, f), getattr(m2, f), rtol=1e-12, err_msg=f)
    assert not np.allclose(env.model.actuator_acc0, base_acc0)
    assert not np.allclose(env.model.dof_invweight0, base_inv)


def test_walker_tasks_change_dynamics_and_switching_back_is_exact():
    tasks = envs.FAMILIES["walker_param"].paper_tasks()
    env = _make("walker_param")
    base_traj = _walker_rollout(env, T.walker_base_params())
    t0 = _walker_rollout(env, tasks[0])
    t1 = _walker_rollout(env, tasks[1])
    again = _walker_rollout(env, T.walker_base_params())
    fresh = _walker_rollout(_make("walker_param"), T.walker_base_params())
    for a, b in [(base_traj, t0), (t0, t1)]:
        n = min(len(a), len(b))
        assert not np.allclose(a[1:n], b[1:n])
    np.testing.assert_array_equal(base_traj, again)
    np.testing.assert_array_equal(base_traj, fresh)
    # Constructing with the task equals switching to it.
    np.testing.assert_array_equal(t1, _walker_rollout(_make("walker_param", tasks[1]), tasks[1]))


def test_walker_task_validation():
    base = T.walker_base_params()
    bad = dict(base, body_mass=base["body_mass"][:-1])
    with pytest.raises(ValueError, match=r"task\['body_mass'\] must have shape \(8,\)"):
        _make("walker_param", bad)
    with pytest.raises(ValueError, match="non-negative"):
        T.validate_task("walker_param", dict(base, dof_damping=-base["dof_damping"] - 1))
    # (n, 1) arrays from old mujoco_py and JSON lists are accepted.
    ok = T.validate_task("walker_param", dict(base, body_mass=base["body_mass"][:, None].tolist()))
    np.testing.assert_array_equal(ok["body_mass"], base["body_mass"])


def test_env_pickles_with_current_task():
    env = _make("ant_dir", {"goal": 0.1})
    env.reset(options={"task": {"goal": 1.9}})
    env2 = pickle.loads(pickle.dumps(env))
    assert env2.task == {"goal": 1.9}
    wenv = _make("walker_param")
    task = envs.FAMILIES["walker_param"].paper_tasks()[5]
    wenv.reset(options={"task": task})
    w2 = pickle.loads(pickle.dumps(wenv))
    np.testing.assert_array_equal(w2.model.body_mass, task["body_mass"])


# ------------------------------------------------------------------------------------------------
# task sets and sampling
# ------------------------------------------------------------------------------------------------


def test_paper_task_sets_and_splits():
    vel = envs.FAMILIES["cheetah_vel"]
    np.testing.assert_array_equal([t["velocity"] for t in vel.paper_tasks()], np.linspace(0.075, 3.0, 40))
    assert vel.test_indices == (2, 7, 15, 23, 26)
    assert len(vel.train_indices) == 35 and not set(vel.train_indices) & set(vel.test_indices)
    d = envs.FAMILIES["cheetah_dir"]
    assert [t["direction"] for t in d.paper_tasks()] == [1.0, -1.0]
    assert d.train_indices == d.test_indices == (0, 1)
    ant = envs.FAMILIES["ant_dir"]
    goals = np.array([t["goal"] for t in ant.paper_tasks()])
    assert goals.shape == (50,) and goals.min() >= 0 and goals.max() < 2 * np.pi
    assert ant.test_indices == (6, 17, 23, 30, 41) and len(ant.train_indices) == 45
    w = envs.FAMILIES["walker_param"]
    assert w.test_indices == (2, 12, 15, 39, 43) and len(w.train_indices) == 45
    assert [t["goal"] for t in ant.test_tasks()] == [goals[i] for i in ant.test_indices]


def test_walker_sampled_multipliers_in_range():
    tasks = T.sample_tasks("walker_param", 30, seed=0)
    lo_hi = {name: (b**-3, b**3) for name, b in T.WALKER_PARAM_BASES.items()}
    for task in tasks:
        mult = T.walker_multipliers(task)
        for name, m in mult.items():
            lo, hi = lo_hi[name]
            assert np.all(m >= lo * (1 - 1e-12)) and np.all(m <= hi * (1 + 1e-12)), name
    all_mass = np.stack([T.walker_multipliers(t)["body_mass"][1:] for t in tasks])
    logu = np.log(all_mass) / np.log(1.5)  # u ~ U[-3, 3]
    assert logu.min() < -2.0 and logu.max() > 2.0 and abs(logu.mean()) < 0.5


@pytest.mark.parametrize("family", FAMS)
def test_sample_tasks_deterministic_and_valid(family):
    a = T.sample_tasks(family, 6, seed=3)
    b = T.sample_tasks(family, 6, seed=3)
    c = T.sample_tasks(family, 6, seed=4)
    assert len(a) == 6
    for x, y in zip(a, b):
        assert T.task_to_jsonable(x) == T.task_to_jsonable(y)
        assert T.validate_task(family, T.task_to_jsonable(x)).keys() == x.keys()
    assert [T.task_to_jsonable(x) for x in a] != [T.task_to_jsonable(x) for x in c] or family == "cheetah_dir"


# ------------------------------------------------------------------------------------------------
# paper task pickles
# ------------------------------------------------------------------------------------------------


def test_load_paper_task(tmp_path):
    cases = {
        "cheetah_vel": [{"velocity": np.float64(1.2)}],
        "cheetah_dir": [{"direction": np.int64(-1)}],
        "ant_dir": [{"goal": 4.5}],
    }
    for fam, obj in cases.items():
        p = tmp_path / f"env_{fam}_train_task3.pkl"
        p.write_bytes(pickle.dumps(obj))
        task = envs.load_paper_task(p)
        assert T.task_family(task) == fam
        assert list(task.values())[0] == pytest.approx(float(list(obj[0].values())[0]))
    base = T.walker_base_params()
    wobj = [{"body_mass": base["body_mass"][:, None] * 2, "body_inertia": base["body_inertia"], "dof_damping": base["dof_damping"][:, None], "geom_friction": base["geom_friction"]}]
    p = tmp_path / "env_walker_param_train_task0.pkl"
    p.write_bytes(pickle.dumps(wobj, protocol=2))
    task = envs.load_paper_task(p, family="walker_param")
    np.testing.assert_array_equal(task["body_mass"], base["body_mass"] * 2)
    env = _make("walker_param", task)
    np.testing.assert_array_equal(env.model.body_mass, base["body_mass"] * 2)


def test_load_paper_task_errors(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    p = tmp_path / "evil.pkl"
    p.write_bytes(pickle.dumps([Evil()]))
    with pytest.raises(ValueError, match=r"evil\.pkl: not a readable task pickle.*refusing to load"):
        envs.load_paper_task(p)
    p = tmp_path / "two.pkl"
    p.write_bytes(pickle.dumps([{"goal": 1.0}, {"goal": 2.0}]))
    with pytest.raises(ValueError, match=r"two\.pkl: expected a one-element list"):
        envs.load_paper_task(p)
    p = tmp_path / "keys.pkl"
    p.write_bytes(pickle.dumps([{"speed": 1.0}]))
    with pytest.raises(ValueError, match=r"keys\.pkl: task keys \['speed'\] match no family"):
        envs.load_paper_task(p)
    p = tmp_path / "wrongfam.pkl"
    p.write_bytes(pickle.dumps([{"goal": 1.0}]))
    with pytest.raises(ValueError, match="wrongfam.pkl: a cheetah_vel task must have exactly the keys"):
        envs.load_paper_task(p, family="cheetah_vel")


# ------------------------------------------------------------------------------------------------
# golden trajectories: a MuJoCo/gymnasium upgrade that changes dynamics must be noticed
# ------------------------------------------------------------------------------------------------

_GOLDEN_SETUP = {
    # family: (task index in paper_tasks, action scale)
    "cheetah_dir": (1, 1.0),
    "cheetah_vel": (7, 1.0),
    "ant_dir": (6, 0.5),
    "walker_param": (2, 0.2),
}
_GOLDEN_STEPS = 50


def golden_rollout(family):
    """Fixed task, seed and actions -> (obs (n+1, d), rewards (n,), terminated (n,)); stops at termination."""
    idx, scale = _GOLDEN_SETUP[family]
    fam = envs.FAMILIES[family]
    env = _make(family, fam.paper_tasks()[idx])
    obs = [env.reset(seed=123)[0]]
    rews, terms = [], []
    for a in _actions(_GOLDEN_STEPS, fam.act_dim, seed=321, scale=scale):
        o, r, term, _, _ = env.step(a)
        obs.append(o)
        rews.append(r)
        terms.append(term)
        if term:
            break
    return np.stack(obs), np.array(rews), np.array(terms)


def _golden_now():
    out = {}
    for fam in FAMS:
        obs, rew, term = golden_rollout(fam)
        out[f"{fam}/obs"], out[f"{fam}/rewards"], out[f"{fam}/terminated"] = obs, rew, term
    out["ant_dir/paper_goals"] = np.array([t["goal"] for t in envs.FAMILIES["ant_dir"].paper_tasks()])
    for name in T.WALKER_PARAM_BASES:
        out[f"walker_param/paper_{name}"] = np.stack([t[name] for t in envs.FAMILIES["walker_param"].paper_tasks()])
    out["versions"] = np.array([f"mujoco {mujoco.__version__}", f"gymnasium {gym.__version__}"])
    return out


def test_golden_trajectories():
    now = _golden_now()
    if os.environ.get("MACAW_REGEN_GOLDEN") == "1":
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        tmp = GOLDEN.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, **now)
        os.replace(tmp, GOLDEN)
    assert GOLDEN.exists(), f"{GOLDEN} missing; run MACAW_REGEN_GOLDEN=1 pytest tests/test_envs.py -k golden"
    with np.load(GOLDEN) as g:
        made_with = " / ".join(map(str, g["versions"]))
        for key in now:
            if key == "versions":
                continue
            assert now[key].shape == g[key].shape, f"{key}: shape {now[key].shape} != golden {g[key].shape} (golden made with {made_with})"
            # Same machine: bit-identical. Tolerance leaves room for other CPUs/compilers only.
            np.testing.assert_allclose(now[key], g[key], rtol=1e-6, atol=1e-6, err_msg=f"{key} differs from golden made with {made_with}")
    # The trajectories are long enough to mean something.
    assert len(now["cheetah_vel/rewards"]) == _GOLDEN_STEPS and len(now["walker_param/rewards"]) >= 20


# ------------------------------------------------------------------------------------------------
# use from a collector: vector envs with one task per sub-env, make by "module:id"
# ------------------------------------------------------------------------------------------------


def test_sync_vector_env_one_task_per_env():
    fam = envs.FAMILIES["cheetah_vel"]
    tasks = [fam.paper_tasks()[i] for i in (0, 20, 39)]
    vec = gym.vector.SyncVectorEnv([lambda t=t: envs.make("cheetah_vel", t) for t in tasks])
    singles = [_make("cheetah_vel", t) for t in tasks]
    vec.reset(seed=[10, 11, 12])
    for i, e in enumerate(singles):
        e.reset(seed=10 + i)
    for a in _actions(5, 6, seed=2):
        acts = np.stack([a, -a, 0.5 * a])
        _, rew, *_ = vec.step(acts)
        want = [e.step(x)[1] for e, x in zip(singles, acts)]
        np.testing.assert_allclose(rew, want, rtol=1e-12)
    assert [vec.envs[i].unwrapped.task for i in range(3)] == tasks


def test_gymnasium_make_with_module_prefix():
    code = (
        "import gymnasium as gym; env = gym.make('macaw_fast.envs:macaw_fast/AntDir-v0', task={'goal': 1.0}); "
        "print(env.unwrapped.task['goal'], env.spec.max_episode_steps)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1.0", "200"]


@pytest.mark.parametrize("family", ["cheetah_dir", "cheetah_vel", "ant_dir", "walker_param"])
def test_task_is_in_reset_and_step_info(family):
    from macaw_fast import envs as menvs

    task = menvs.FAMILIES[family].paper_tasks()[1]
    env = menvs.make(family, task)
    _, info = env.reset(seed=0)
    for i in (info, env.step(env.action_space.sample())[4]):
        assert set(i["task"]) == set(task)
        for k, v in task.items():
            np.testing.assert_array_equal(i["task"][k], v)
    other = menvs.FAMILIES[family].paper_tasks()[0]
    _, info = env.reset(seed=0, options={"task": other})
    for k, v in other.items():
        np.testing.assert_array_equal(info["task"][k], v)


def test_gymnasium_make_without_importing_macaw_fast_first():
    """gymnasium 1.x has no plugin hook (removed for 1.0), so its 'module:id' form loads our envs."""
    code = ("import gymnasium as gym, sys; assert 'macaw_fast' not in sys.modules; "
            "e = gym.make('macaw_fast.envs:macaw_fast/CheetahVel-v0', task={'velocity': 1.2}); "
            "o, i = e.reset(seed=0); assert i['task'] == {'velocity': 1.2}, i; assert o.shape == (20,); print('ok')")
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr


@pytest.mark.parametrize("family", ["cheetah_vel", "ant_dir", "walker_param"])
def test_full_state_round_trip_is_bit_exact(family):
    from macaw_fast import envs as menvs

    env = menvs.make(family, menvs.FAMILIES[family].paper_tasks()[3]).unwrapped
    env.reset(seed=1)
    rng = np.random.default_rng(0)
    acts = rng.uniform(-1, 1, (30, env.action_space.shape[0]))
    for a in acts[:10]:
        env.step(a)
    st = env.get_full_state()
    first = [env.step(a)[0] for a in acts[10:]] + [env.reset()[0]]
    env.set_full_state(st)
    again = [env.step(a)[0] for a in acts[10:]] + [env.reset()[0]]     # reset noise too: the generator came back
    for x, y in zip(first, again):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError, match="does not match the model"):
        env.set_full_state({**st, "mj_state": st["mj_state"][:-1]})
