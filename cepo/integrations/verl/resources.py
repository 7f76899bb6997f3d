"""What a verl job needs from the Ray cluster, checked before any worker is created (issue 19).

verl's own check (``ResourcePoolManager._check_resource_available`` in ``verl/single_controller/ray/base.py``)
runs inside the task runner, after the whole config is printed, and only compares totals: a cluster with too
few GPUs (or GPUs spread over nodes that each hold fewer than ``trainer.n_gpus_per_node``) leaves verl's
placement groups pending for ever, silently. Here the entry point starts Ray exactly as verl's ``run_ppo`` does
(it *is* ``run_ppo``, with a probe in place of the task runner, so every ``ray_kwargs`` setting applies), then:

- counts Ray's ``GPU`` resource per alive node (``NPU`` when ``trainer.device=npu``), logical GPUs included;
- compares it with the resource pools of the trainer mode (:func:`required_pools`): ``trainer.n_gpus_per_node``
  GPUs on each of ``trainer.nnodes`` nodes, plus the reward-model pool, the distillation teacher pool and the
  standalone rollout pool of ``trainer.v1.trainer_mode=separate_async`` when enabled;
- refuses with one line (:class:`ResourceShortage`, exit 2) naming the keys and the fix; on a cluster that this
  process joined (``RAY_ADDRESS``, a job of ``scripts/submit_ray_job.sh``) nodes may still be joining or other
  jobs may hold GPUs, so it waits up to ``$CEPO_WAIT_FOR_GPUS_S`` seconds (default 300; 0 = refuse at once),
  printing what it waits for, before the same refusal. A cluster that this process started refuses at once.

The rollout engine is checked by the entry point's ``prepare`` (:func:`check_rollout_engine`): ``rollout.name=vllm``
without vLLM installed fails in one line instead of verl's ``vllm version None not supported``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from cepo.recipes import ConfigError

WAIT_ENV = "CEPO_WAIT_FOR_GPUS_S"
"""Seconds to wait for GPUs on a cluster this process joined (nodes still joining, GPUs held by other jobs)."""

DEFAULT_WAIT_S = 300.0
PROGRESS_EVERY_S = 15.0
POLL_S = 1.0

MIN_VLLM = "0.18.0"
"""verl 0.9.1's oldest supported vLLM (``verl/third_party/vllm/__init__.py``)."""

TRL_FIX = ("or train on one GPU or CPU with the TRL engine (ENGINE=trl, or "
           "cepo train --config cepo/configs/<method>.yaml)")


class ResourceShortage(ConfigError):
    """The Ray cluster cannot hold the job's resource pools; ``str(err)`` is the one-line refusal."""


@dataclass(frozen=True)
class PoolNeed:
    """One verl resource pool: ``gpus_per_node`` GPUs (one STRICT_PACK placement group) on each of ``nnodes`` nodes."""

    name: str
    gpus_per_node: int
    nnodes: int
    keys: str
    """The config keys that set it, as the refusal names them."""

    @property
    def total(self) -> int:
        return self.gpus_per_node * self.nnodes


@dataclass(frozen=True)
class ClusterGPUs:
    """Ray's GPU resource per alive node: ``total`` (declared) and ``available`` (not held by actors/jobs)."""

    total: dict[str, float]
    available: dict[str, float]
    address: str

    @property
    def n_total(self) -> int:
        return int(sum(self.total.values()))

    @property
    def n_available(self) -> int:
        return int(sum(self.available.values()))

    def describe(self) -> str:
        counts = sorted((int(v) for v in self.total.values()), reverse=True)
        nodes = f"{len(counts)} node" + ("s" if len(counts) != 1 else "")
        per_node = "" if len(counts) <= 1 else f" ({' + '.join(str(c) for c in counts)})"
        return f"{self.n_total} GPU{'s' if self.n_total != 1 else ''} on {nodes}{per_node}"


def required_pools(cfg: Any) -> list[PoolNeed]:
    """The resource pools verl's v1 trainer will ask Ray for (``PPOTrainer._init_resource_pool_mgr``)."""
    trainer = cfg.trainer
    pools = [PoolNeed("global", int(trainer.n_gpus_per_node), int(trainer.nnodes),
                      "trainer.n_gpus_per_node x trainer.nnodes")]
    reward_model = cfg.get("reward", {}).get("reward_model", {})
    if reward_model.get("enable_resource_pool", False):
        pools.append(PoolNeed("reward", int(reward_model.n_gpus_per_node), int(reward_model.nnodes),
                              "reward.reward_model.n_gpus_per_node x reward.reward_model.nnodes"))
    distillation = cfg.get("distillation") or {}
    if distillation.get("enabled", False):
        pools.append(PoolNeed("teacher", int(distillation.n_gpus_per_node), int(distillation.nnodes),
                              "distillation.n_gpus_per_node x distillation.nnodes"))
    if trainer.get("v1", {}).get("trainer_mode") == "separate_async":
        rollout = cfg.actor_rollout_ref.rollout
        pools.append(PoolNeed("standalone rollout", int(rollout.n_gpus_per_node), int(rollout.nnodes),
                              "actor_rollout_ref.rollout.n_gpus_per_node x actor_rollout_ref.rollout.nnodes"))
    return pools


def check_parallelism(cfg: Any) -> None:
    """The rollout's replicas must fit the trainer's GPUs (verl: ``num_replicas = world_size // replica size``).

    Raises:
        ConfigError: a replica (tensor x data x pipeline parallel) larger than a node or not dividing the GPUs.
    """
    for pool in required_pools(cfg):
        if pool.gpus_per_node < 1 or pool.nnodes < 1:
            raise ConfigError(f"{pool.keys} = {pool.gpus_per_node} x {pool.nnodes}: both must be at least 1 "
                              "for the verl engine (NGPUS=..., NNODES=...); " + TRL_FIX)
    rollout = cfg.actor_rollout_ref.rollout
    tp = int(rollout.tensor_model_parallel_size)
    replica = tp * int(rollout.get("data_parallel_size", 1)) * int(rollout.get("pipeline_model_parallel_size", 1))
    per_node, n_gpus = int(cfg.trainer.n_gpus_per_node), int(cfg.trainer.n_gpus_per_node) * int(cfg.trainer.nnodes)
    if tp > per_node:
        raise ConfigError(
            f"actor_rollout_ref.rollout.tensor_model_parallel_size={tp} needs {tp} GPUs on one node but "
            f"trainer.n_gpus_per_node={per_node}; set actor_rollout_ref.rollout.tensor_model_parallel_size={per_node} "
            f"(or fewer) or NGPUS={tp}"
        )
    if n_gpus % replica:
        raise ConfigError(
            f"a rollout replica (actor_rollout_ref.rollout tensor x data x pipeline parallel = {replica} GPUs) does "
            f"not divide the job's {n_gpus} GPUs (trainer.n_gpus_per_node x trainer.nnodes): set the rollout's "
            f"parallel sizes to a divisor of {n_gpus}"
        )


def cluster_gpus(resource: str = "GPU") -> ClusterGPUs:
    """Ray's ``resource`` per alive node of the cluster this process is connected to (``ray.init`` done)."""
    import ray
    from ray._private import state

    total = {n["NodeID"]: float(n["Resources"].get(resource, 0.0)) for n in ray.nodes() if n.get("Alive")}
    available_per_node = state.available_resources_per_node()
    available = {node: float(available_per_node.get(node, {}).get(resource, 0.0)) for node in total}
    return ClusterGPUs(total=total, available=available, address=ray.get_runtime_context().gcs_address)


def cluster_gpus_from_dashboard(address: str, resource: str = "GPU") -> ClusterGPUs:
    """Ray's ``resource`` per alive node from a cluster's dashboard / job server (``http://head:8265``, the
    ``RAY_ADDRESS`` of ``scripts/submit_ray_job.sh``), without joining the cluster; ``available`` = ``total``."""
    from ray.util.state import list_nodes

    nodes = list_nodes(address=address, filters=[("state", "=", "ALIVE")], timeout=10)
    total = {n.node_id: float((n.resources_total or {}).get(resource, 0.0)) for n in nodes}
    return ClusterGPUs(total=total, available=dict(total), address=address)


def _placeable(pools: list[PoolNeed], capacity: dict[str, float]) -> bool:
    """Whether every pool's placement groups fit on the nodes' GPUs (an exact search, not a greedy guess).

    Each of a pool's ``nnodes`` placement groups needs ``gpus_per_node`` GPUs on one node (verl's STRICT_PACK);
    groups may share a node. Refusing only what no placement can hold, the check never blocks a feasible job.
    """
    groups = sorted((p.gpus_per_node for p in pools for _ in range(p.nnodes)), reverse=True)
    seen: set[tuple[int, tuple[int, ...]]] = set()

    def fits(index: int, free: tuple[int, ...]) -> bool:
        if index == len(groups):
            return True
        if (index, free) in seen:
            return False
        seen.add((index, free))
        for i, have in enumerate(free):
            if have >= groups[index] and (i == 0 or free[i - 1] != have):  # equal nodes: try one of them
                rest = tuple(sorted((*free[:i], have - groups[index], *free[i + 1:]), reverse=True))
                if fits(index + 1, rest):
                    return True
        return False

    return fits(0, tuple(sorted((int(v) for v in capacity.values()), reverse=True)))


def _need_text(pools: list[PoolNeed]) -> str:
    """``8 GPUs (trainer.n_gpus_per_node=8 x trainer.nnodes=1)``; several pools are listed with their share."""
    def keys(p: PoolNeed) -> str:
        per_node, nodes = p.keys.split(" x ")
        return f"{per_node}={p.gpus_per_node} x {nodes}={p.nnodes}"

    total = sum(p.total for p in pools)
    inside = keys(pools[0]) if len(pools) == 1 else " + ".join(f"{p.total} for {keys(p)}" for p in pools)
    return f"{total} GPU{'s' if total != 1 else ''} ({inside})"


def shortage(pools: list[PoolNeed], gpus: ClusterGPUs, *, available: bool, local: bool = False) -> str | None:
    """The one-line refusal if the cluster's GPUs (``available`` ones, or all of them) cannot hold ``pools``.

    ``local``: a Ray this process started on this node (no workers to start: the fixes are the config or ENGINE=trl).
    """
    capacity = gpus.available if available else gpus.total
    if _placeable(pools, capacity):
        return None
    need = sum(p.total for p in pools)
    where = (f"the Ray this process started on this node has {gpus.describe()}" if local
             else f"the Ray cluster at {gpus.address} has {gpus.describe()}")
    head = f"the job needs {_need_text(pools)}, but {where}"
    if gpus.n_total == 0:
        workers = "" if local else f"start the cluster's GPU workers (ray start --address={gpus.address} on each " \
            "GPU node), "
        return f"{head}; run it on a GPU node, {workers}{TRL_FIX}"
    biggest = max(int(v) for v in gpus.total.values())
    if gpus.n_total >= need and _placeable(pools, gpus.total):
        busy = gpus.n_total - gpus.n_available
        return (f"{head}, {busy} of them held by other jobs or actors (see `ray status`); wait for them or stop "
                f"those jobs, or ask for fewer: NGPUS={min(gpus.n_available, biggest)} "
                f"(trainer.n_gpus_per_node={min(gpus.n_available, biggest)})")
    nnodes = int(pools[0].nnodes)
    fix = f"NGPUS={biggest} (trainer.n_gpus_per_node={biggest})"
    if len(gpus.total) > 1 or nnodes > 1:
        fix += f" with NNODES={max(1, min(nnodes, len(gpus.total)))} (trainer.nnodes)"
    workers = "" if local else f", or start more GPU workers (ray start --address={gpus.address})"
    return f"{head}; set {fix}{workers}, {TRL_FIX}"


def wait_s_from_env() -> float:
    """``$CEPO_WAIT_FOR_GPUS_S`` (seconds, >= 0), default :data:`DEFAULT_WAIT_S`.

    Raises:
        ConfigError: not a non-negative number.
    """
    text = os.environ.get(WAIT_ENV, "").strip()
    if not text:
        return DEFAULT_WAIT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise ConfigError(f"${WAIT_ENV}={text!r} must be a number of seconds >= 0 (0 = do not wait for GPUs)")
    return value


def wait_for_gpus(
    pools: list[PoolNeed],
    *,
    wait_s: float,
    resource: str = "GPU",
    local: bool = False,
    say: Callable[[str], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> ClusterGPUs:
    """Poll the cluster until its free GPUs hold ``pools``, for at most ``wait_s`` seconds.

    Prints (``say``) what it waits for when it starts waiting and every :data:`PROGRESS_EVERY_S` seconds;
    ``local`` words the refusal for a Ray this process started (:func:`shortage`).

    Returns:
        The cluster's GPUs once they suffice.

    Raises:
        ResourceShortage: still short after ``wait_s`` (the one-line refusal of :func:`shortage`).
    """
    say = say or (lambda text: print(text, file=sys.stderr, flush=True))
    start = clock()
    last_said = None
    while True:
        gpus = cluster_gpus(resource)
        message = shortage(pools, gpus, available=True, local=local)
        if message is None:
            return gpus
        waited = clock() - start
        if waited >= wait_s:
            raise ResourceShortage(message + (f" (waited {waited:.0f} s, ${WAIT_ENV}={wait_s:g})" if wait_s else ""))
        if last_said is None or clock() - last_said >= PROGRESS_EVERY_S:
            say(f"cepo (verl): waiting for {_need_text(pools)}; the cluster offers {gpus.n_available} free of "
                f"{gpus.describe()}; {waited:.0f} s of at most {wait_s:g} s (${WAIT_ENV})")
            last_said = clock()
        time.sleep(min(POLL_S, max(0.0, wait_s - waited)))


def check_rollout_engine(cfg: Any) -> None:
    """The rollout engine ``actor_rollout_ref.rollout.name`` must be importable here (vLLM >= 0.18 / SGLang).

    Raises:
        ConfigError: one line naming the engine, this Python and the install command.
    """
    name = str(cfg.actor_rollout_ref.rollout.name)
    package = {"vllm": "vllm", "sglang": "sglang"}.get(name)
    if package is None:
        return
    try:
        installed: str | None = version(package)
    except PackageNotFoundError:
        installed = None
    label = "vLLM" if name == "vllm" else "SGLang"
    if installed is None:
        raise ConfigError(
            f"actor_rollout_ref.rollout.name={name} but {label} is not installed in {sys.executable}: install the GPU "
            f"stack on a GPU node (pip install -e \".[gpu,trl]\", docs/install.md), {TRL_FIX}"
        )
    if name == "vllm":
        from packaging.version import Version

        if Version(installed) < Version(MIN_VLLM):
            raise ConfigError(
                f"actor_rollout_ref.rollout.name=vllm needs vLLM >= {MIN_VLLM} (verl 0.9.1) but {installed} is "
                f"installed: pip install -e \".[gpu,trl]\" (docs/install.md)"
            )


class _FinishedRunner:
    """What ``run_ppo`` gets back from the probe: ``runner.run.remote(config)`` is an already-finished ref."""

    class _Run:
        @staticmethod
        def remote(_config: Any) -> Any:
            import ray

            return ray.put(None)

    run = _Run()


class _Probe:
    """Stands in for verl's task runner class in ``run_ppo``: checks the cluster where the runner would start."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    def options(self, **_: Any) -> _Probe:
        return self

    def remote(self) -> _FinishedRunner:
        check_cluster(self.cfg)
        return _FinishedRunner()


def check_cluster(cfg: Any, *, wait_s: float | None = None) -> ClusterGPUs:
    """Check the connected Ray cluster against the job's pools: at once if this process started it, else wait.

    Args:
        cfg: the composed verl config.
        wait_s: the longest wait on a cluster this process joined (default ``$CEPO_WAIT_FOR_GPUS_S``).

    Raises:
        ResourceShortage: the one-line refusal.
    """
    import ray

    pools = required_pools(cfg)
    resource = "NPU" if str(cfg.trainer.get("device", "cuda")) == "npu" else "GPU"
    started_here = bool(getattr(ray._private.worker.global_worker.node, "head", False))
    limit = 0.0 if started_here else (wait_s_from_env() if wait_s is None else wait_s)
    return wait_for_gpus(pools, wait_s=limit, resource=resource, local=started_here)


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """A GCS address (``host:port``) that nothing answers at fails at once, not after Ray's minutes of retries.

    Raises:
        ConfigError: naming ``RAY_ADDRESS`` and the fix. ``http://`` addresses are Ray's own one-line error;
            ``auto`` and an empty address are left to ``ray.init``.
    """
    import socket

    host, _, port = address.rpartition(":")
    if not host or "://" in address or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise ConfigError(
            f"RAY_ADDRESS={address}: no Ray head answers there ({err.strerror or err}); start it (ray start --head "
            f"--port={port}) or fix RAY_ADDRESS (ray_kwargs.ray_init.address), or unset it to start Ray on this node"
        ) from None


def start_ray_checked(cfg: Any) -> None:
    """Start (or join) Ray exactly as verl's ``run_ppo`` does, then check the cluster's GPUs.

    ``run_ppo`` is called with a probe in place of the task runner: it initialises Ray from ``cfg.ray_kwargs``
    with verl's runtime env, then "starts" the probe, which runs :func:`check_cluster`; Ray stays initialised,
    so the real ``run_ppo`` call that follows skips its ``ray.init`` and creates the workers.

    Raises:
        ConfigError: :func:`check_parallelism`, :func:`check_reachable` or :class:`ResourceShortage`.
    """
    check_parallelism(cfg)
    ray_init = cfg.get("ray_kwargs", {}).get("ray_init", {}) or {}
    check_reachable(str(ray_init.get("address") or os.environ.get("RAY_ADDRESS", "")).strip())
    from verl.trainer.main_ppo import run_ppo

    run_ppo(cfg, task_runner_class=_Probe(cfg))
