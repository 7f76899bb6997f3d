"""The verl entry point checks the Ray cluster's GPUs and the rollout engine before any worker (issue 19, 17 §3).

Fast tests: the resource pools read from composed configs, the placement check against a brute-force search over
every assignment of placement groups to nodes, the refusal texts, the rollout-parallelism and vLLM checks.
Slow tests (``-m slow``): the entry point itself on a real local Ray with 0 GPUs (this machine), with one logical
GPU declared through ``ray_kwargs`` (then the vLLM line), and inside a job submitted with ``submit_ray_job.sh`` to
a Ray head on 127.0.0.1 with 0 GPUs (the bounded wait, then the same refusal).
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cepo.integrations.verl.resources import (
    ClusterGPUs,
    PoolNeed,
    _placeable,
    check_parallelism,
    check_rollout_engine,
    required_pools,
    shortage,
    start_ray_checked,
    wait_s_from_env,
)
from cepo.recipes import ConfigError, compose_method_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the Ray head fixture of the submission tests
from test_ray_submission import SCRIPT, RayHead, _run, ray_head  # noqa: F401


def _cfg(*overrides: str, name: str = "cepo"):
    return compose_method_config(name, list(overrides))


def _gpus(*per_node: int, available: tuple[int, ...] | None = None) -> ClusterGPUs:
    nodes = [f"node{i}" for i in range(len(per_node))]
    free = per_node if available is None else available
    total = dict(zip(nodes, map(float, per_node), strict=True))
    return ClusterGPUs(total, dict(zip(nodes, map(float, free), strict=True)), "10.0.0.1:6379")


# --- the pools of the config ---------------------------------------------------------------------------------------

def test_pools_of_the_paper_config_follow_ngpus_and_nnodes() -> None:
    assert required_pools(_cfg("trainer.n_gpus_per_node=4", "trainer.nnodes=2")) == [
        PoolNeed("global", 4, 2, "trainer.n_gpus_per_node x trainer.nnodes")
    ]


def test_reward_model_pool_and_standalone_rollout_pool_are_counted() -> None:
    cfg = _cfg("trainer.n_gpus_per_node=4", "reward.reward_model.enable_resource_pool=true",
               "reward.reward_model.n_gpus_per_node=2", "reward.reward_model.nnodes=1",
               "trainer.v1.trainer_mode=separate_async", "actor_rollout_ref.rollout.n_gpus_per_node=2",
               "actor_rollout_ref.rollout.nnodes=1", name="grpo")
    assert [(p.name, p.gpus_per_node, p.nnodes) for p in required_pools(cfg)] == [
        ("global", 4, 1), ("reward", 2, 1), ("standalone rollout", 2, 1)]


# --- placement: exact, against brute force ---------------------------------------------------------------------------

def _brute_force(groups: list[int], nodes: list[int]) -> bool:
    """Every assignment of groups to nodes, checking each node's sum: the definition of feasible."""
    for assignment in itertools.product(range(len(nodes)), repeat=len(groups)):
        used = [0] * len(nodes)
        for group, node in zip(groups, assignment, strict=True):
            used[node] += group
        if all(u <= n for u, n in zip(used, nodes, strict=True)):
            return True
    return False


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(st.integers(0, 8), min_size=1, max_size=4),
       st.lists(st.tuples(st.integers(1, 8), st.integers(1, 2)), min_size=1, max_size=3))
def test_placement_check_is_exact(nodes: list[int], pools: list[tuple[int, int]]) -> None:
    needs = [PoolNeed(f"p{i}", g, n, "a x b") for i, (g, n) in enumerate(pools)]
    groups = [g for g, n in pools for _ in range(n)]
    assert _placeable(needs, {f"n{i}": float(c) for i, c in enumerate(nodes)}) == _brute_force(groups, nodes)


def test_greedy_counterexample_is_placeable() -> None:
    """Nodes 6 + 4, groups 4, 3, 3: first-fit decreasing puts 4 on the 6-GPU node and fails; 3+3 | 4 fits."""
    pools = [PoolNeed("a", 4, 1, "a x b"), PoolNeed("b", 3, 2, "c x d")]
    assert _placeable(pools, {"x": 6.0, "y": 4.0})


# --- the refusal lines -----------------------------------------------------------------------------------------------

def test_no_gpu_cluster_names_count_keys_and_fixes() -> None:
    line = shortage(required_pools(_cfg()), _gpus(0), available=False)
    assert line is not None and "\n" not in line
    assert "needs 8 GPUs (trainer.n_gpus_per_node=8 x trainer.nnodes=1)" in line
    assert "has 0 GPUs on 1 node" in line and "ENGINE=trl" in line and "ray start --address=10.0.0.1:6379" in line


def test_local_ray_refusal_names_no_workers_to_start() -> None:
    """A Ray this process started on this node has no workers to start: the fixes are NGPUS or the TRL engine."""
    none = shortage(required_pools(_cfg()), _gpus(0), available=True, local=True)
    assert none is not None and "the Ray this process started on this node has 0 GPUs" in none
    assert "ray start" not in none and "ENGINE=trl" in none
    four = shortage(required_pools(_cfg()), _gpus(4), available=True, local=True)
    assert four is not None and "NGPUS=4" in four and "ray start" not in four


def test_gpus_spread_over_small_nodes_suggest_ngpus_and_nnodes() -> None:
    """8 GPUs in total but 4 per node: verl's own check (totals) passes and its STRICT_PACK group never places."""
    pools = required_pools(_cfg("trainer.n_gpus_per_node=8"))
    line = shortage(pools, _gpus(4, 4), available=False)
    assert line is not None and "has 8 GPUs on 2 nodes (4 + 4)" in line
    assert "NGPUS=4 (trainer.n_gpus_per_node=4) with NNODES=" in line
    assert shortage(required_pools(_cfg("trainer.n_gpus_per_node=4", "trainer.nnodes=2")), _gpus(4, 4),
                    available=False) is None


def test_too_few_gpus_on_one_node_suggests_ngpus() -> None:
    line = shortage(required_pools(_cfg()), _gpus(4), available=False)
    assert line is not None and "NGPUS=4 (trainer.n_gpus_per_node=4)" in line and "NNODES" not in line


def test_gpus_held_by_other_jobs_are_named() -> None:
    pools = required_pools(_cfg("trainer.n_gpus_per_node=8"))
    assert shortage(pools, _gpus(8, available=(2,)), available=False) is None  # the cluster has them ...
    line = shortage(pools, _gpus(8, available=(2,)), available=True)  # ... but 6 are busy
    assert line is not None and "6 of them held by other jobs or actors" in line and "ray status" in line


def test_rollout_replica_larger_than_a_node_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"tensor_model_parallel_size=4 needs 4 GPUs on one node but "
                                          r"trainer.n_gpus_per_node=2"):
        check_parallelism(_cfg("trainer.n_gpus_per_node=2", "actor_rollout_ref.rollout.tensor_model_parallel_size=4"))
    with pytest.raises(ConfigError, match=r"does not divide the job's 8 GPUs"):
        check_parallelism(_cfg("actor_rollout_ref.rollout.tensor_model_parallel_size=3"))
    check_parallelism(_cfg("actor_rollout_ref.rollout.tensor_model_parallel_size=4"))


def test_unreachable_ray_address_fails_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing listens on a free port: one line in well under Ray's minutes of GCS retries, no Ray started."""
    import socket
    import time

    import ray

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again when the block ends: nothing listens there
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    cfg = _cfg("trainer.n_gpus_per_node=1")
    start = time.monotonic()
    with pytest.raises(ConfigError, match=rf"RAY_ADDRESS=127.0.0.1:{port}: no Ray head answers there"):
        start_ray_checked(cfg)
    assert time.monotonic() - start < 10 and not ray.is_initialized()


@pytest.mark.parametrize("text", ["-1", "soon", "nan"])
def test_bad_wait_is_refused(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setenv("CEPO_WAIT_FOR_GPUS_S", text)
    with pytest.raises(ConfigError, match="CEPO_WAIT_FOR_GPUS_S"):
        wait_s_from_env()


# --- the rollout engine (issue 17 §3) ------------------------------------------------------------------------------

@pytest.mark.skipif(find_spec("vllm") is not None, reason="vLLM is installed here")
def test_missing_vllm_is_one_line_naming_the_install() -> None:
    from cepo.integrations.verl.main import prepare

    with pytest.raises(ConfigError) as err:
        prepare(_cfg())  # the entry point's check, before verl's ("vllm version None not supported")
    line = str(err.value)
    assert "\n" not in line and "not supported" not in line
    assert "actor_rollout_ref.rollout.name=vllm" in line and 'pip install -e ".[gpu,trl]"' in line
    assert "GPU node" in line and "ENGINE=trl" in line
    check_rollout_engine(_cfg("actor_rollout_ref.rollout.name=hf"))  # other engines: nothing to import


# --- the entry point on a real Ray (slow) --------------------------------------------------------------------------

def _entry_point(tmp_path: Path, *overrides: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "NGPUS")}
    data = tmp_path.parent / f"{tmp_path.name}-data"  # outside tmp_path, which the tests expect to stay empty
    data.mkdir(exist_ok=True)
    for split in ("train", "test"):
        (data / f"{split}.parquet").touch()
    environ.update({"DATA_DIR": str(data), "RAY_USAGE_STATS_ENABLED": "0", **(env or {})})
    return subprocess.run(
        [sys.executable, "-m", "cepo.integrations.verl.main", "--config-name", "cepo",
         f"trainer.default_local_dir={tmp_path / 'run'}", "+ray_kwargs.ray_init.include_dashboard=false", *overrides],
        cwd=tmp_path, env=environ, capture_output=True, text=True, timeout=300,
    )


def _one_error_line(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("cepo (verl): error:")]
    assert len(errors) == 1 and stderr.rstrip().endswith(errors[0]), stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    return errors[0]


@pytest.mark.slow
def test_entry_point_refuses_on_a_cluster_without_gpus(tmp_path: Path) -> None:
    """The issue's command on this machine: Ray starts (0 GPUs), one line, exit 2, no run directory."""
    done = _entry_point(tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    line = _one_error_line(done.stderr)
    assert "needs 8 GPUs (trainer.n_gpus_per_node=8 x trainer.nnodes=1)" in line and "has 0 GPUs" in line
    assert "ENGINE=trl" in line and "started on this node" in line
    assert not (tmp_path / "run").exists() and sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.skipif(find_spec("vllm") is not None, reason="vLLM is installed here")
def test_entry_point_with_a_logical_gpu_then_names_missing_vllm(tmp_path: Path) -> None:
    """One logical GPU (as the CPU loop tests declare) passes the check; then the missing vLLM is one line."""
    done = _entry_point(tmp_path, "trainer.n_gpus_per_node=1", "+ray_kwargs.ray_init.num_gpus=1")
    assert done.returncode == 2, done.stderr[-3000:]
    line = _one_error_line(done.stderr)
    assert 'vLLM is not installed' in line and 'pip install -e ".[gpu,trl]"' in line
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_job_on_a_gpu_less_cluster_waits_then_refuses(ray_head: RayHead, tmp_path: Path) -> None:  # noqa: F811
    """``submit_ray_job.sh`` (verl) to a real head on 127.0.0.1 with 0 GPUs: the job waits (progress), then fails
    with the one line; nothing is written to OUTPUT_DIR."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.parquet").write_bytes(b"")
    (data / "test.parquet").write_bytes(b"")
    run = tmp_path / "run"
    out = _run(["bash", str(SCRIPT), "--wait", "cepo"],
               {**ray_head.env, "SUBMISSION_ID": "cepo-test-no-gpu", "DATA_DIR": str(data), "OUTPUT_DIR": str(run),
                "NGPUS": "2", "CEPO_WAIT_FOR_GPUS_S": "3"}, 300)
    assert out.returncode == 1, out.stdout[-4000:]
    logs = ray_head.ray("logs", "cepo-test-no-gpu").stdout
    assert "cepo (verl): waiting for 2 GPUs (trainer.n_gpus_per_node=2 x trainer.nnodes=1)" in logs, logs[-3000:]
    errors = [line for line in logs.splitlines() if line.startswith("cepo (verl): error:")]
    assert len(errors) == 1 and "has 0 GPUs" in errors[0] and "$CEPO_WAIT_FOR_GPUS_S=3" in errors[0], logs[-3000:]
    assert "Traceback" not in logs
    assert not run.exists()
