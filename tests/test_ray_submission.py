"""``scripts/submit_ray_job.sh`` against a real Ray cluster.

A module fixture starts a Ray head on 127.0.0.1 (``ray start --head``, every port free-picked, token auth with
a throw-away token, its own ``--temp-dir``) and stops exactly that cluster afterwards, even when a test fails.
The jobs run on CPU: ``ENGINE=trl`` trains a tiny Qwen3-VL with LoRA for two steps, the verl mode composes
its config (``--cfg job``; a verl training step needs GPUs). Each test follows its job to the end with the
script's ``--wait``, then reads ``ray job status``/``ray job logs`` and the files the job wrote.
The bad-input checks run no cluster.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "submit_ray_job.sh"
BIN = Path(sys.executable).parent  # this environment's `ray` and `python`: the cluster's jobs run this python
JOB_TIMEOUT_S = 420
STOP_TIMEOUT_S = 5


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(cmd: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` in its own process group; on timeout kill that group (the script's ``ray job logs -f`` too)."""
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{' '.join(cmd)} did not finish within {timeout} s:\n{out[-4000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, "")


@dataclass(frozen=True)
class RayHead:
    """A running head: its job server ``address`` and the environment that reaches it (PATH, auth token)."""

    address: str
    temp_dir: Path
    env: dict[str, str]

    def ray(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``ray job ...`` against this head."""
        return _run([str(BIN / "ray"), "job", *args, "--address", self.address], self.env, timeout)

    def working_dir_package(self, name: str) -> Path:
        """Where the head unpacked the uploaded working dir ``gcs://<name>.zip`` for its jobs."""
        return self.temp_dir / "session_latest" / "runtime_resources" / "working_dir_files" / name


def _cluster_processes(pgid: int, temp_dir: Path) -> list[psutil.Process]:
    """This cluster's processes only: the process group `ray start` created (GCS, raylet, dashboard, agents) and
    every process whose command line or environment names its temp dir (workers, job drivers in their own
    sessions: their PYTHONPATH holds the unpacked working dir). ``ray stop`` would kill every Ray on the machine."""
    mine = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid or str(temp_dir) in " ".join(proc.cmdline()) or any(
                str(temp_dir) in value for value in proc.environ().values()
            ):
                mine.append(proc)
        except (psutil.Error, ProcessLookupError):
            continue
    return [p for p in mine if p.pid != os.getpid()]


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _stop_cluster(pgid: int, temp_dir: Path) -> None:
    """SIGTERM this cluster's processes, SIGKILL what is left after a grace period, then check none is left."""
    procs = _cluster_processes(pgid, temp_dir)
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=STOP_TIMEOUT_S)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=STOP_TIMEOUT_S)
    left = [p.pid for p in _cluster_processes(pgid, temp_dir) if _alive(p)]
    assert not left, f"Ray processes still running after the stop: {left}"


@pytest.fixture(scope="module")
def ray_head() -> Iterator[RayHead]:
    # Ray's unix sockets live under --temp-dir/session_<date>_<pid>/sockets/: keep the prefix short (107 chars)
    temp_dir = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    dashboard = _free_port()
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # as on a node: ray started from the cepo env
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # a single-machine cluster: every server on 127.0.0.1
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),  # this cluster's own token; ~/.ray is not touched
        "DASHBOARD_METRIC_PORT": str(_free_port()),
        "AUTOSCALER_METRIC_PORT": str(_free_port()),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    env.pop("RAY_ADDRESS", None)
    cmd = [
        str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={_free_port()}",
        "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
        f"--ray-client-server-port={_free_port()}", f"--dashboard-agent-listen-port={_free_port()}",
        f"--dashboard-agent-grpc-port={_free_port()}", f"--metrics-export-port={_free_port()}",
        f"--runtime-env-agent-port={_free_port()}", f"--node-manager-port={_free_port()}",
        f"--object-manager-port={_free_port()}", "--num-cpus=2", "--object-store-memory=100000000",
        "--disable-usage-stats", f"--temp-dir={temp_dir}",
    ]
    # its own session: every daemon `ray start` leaves behind keeps this process group, which the stop targets
    start = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    try:
        out, _ = start.communicate(timeout=180)
        assert start.returncode == 0, f"ray start failed:\n{out[-4000:]}"
        yield RayHead(f"http://127.0.0.1:{dashboard}", temp_dir, {**env, "RAY_ADDRESS": f"http://127.0.0.1:{dashboard}"})
    finally:
        if start.poll() is None:
            start.kill()
        _stop_cluster(start.pid, temp_dir)
        subprocess.run(["rm", "-rf", str(temp_dir)], check=False)


def _submit(head: RayHead, submission_id: str, env: dict[str, str], args: list[str]) -> str:
    """Run the script with ``--wait``; returns its output. The job is stopped if the script fails."""
    try:
        out = _run(["bash", str(SCRIPT), "--wait", *args], {**head.env, "SUBMISSION_ID": submission_id, **env},
                   JOB_TIMEOUT_S)
    except BaseException:
        head.ray("stop", submission_id)
        raise
    if out.returncode != 0:
        logs = head.ray("logs", submission_id).stdout
        head.ray("stop", submission_id)
        pytest.fail(f"script failed ({out.returncode}):\n{out.stdout[-6000:]}\njob logs:\n{logs[-6000:]}")
    assert f"submission id: {submission_id}" in out.stdout
    assert f"ray job logs -f {submission_id} --address {head.address}" in out.stdout
    status = head.ray("status", submission_id, "--log-color=false")
    assert f"Job '{submission_id}' succeeded" in status.stdout, status.stdout
    return out.stdout


@pytest.mark.slow
def test_trl_job_trains_on_the_cluster(ray_head: RayHead, tmp_path: Path) -> None:
    from cepo.testing import save_tiny_qwen3vl, write_geo3k_parquet

    model = save_tiny_qwen3vl(tmp_path / "model")
    data = write_geo3k_parquet(tmp_path / "data", n_train=4, n_test=2)
    run = tmp_path / "run"
    env = {
        "ENGINE": "trl", "NGPUS": "0", "MODEL_PATH": str(model), "DATA_DIR": str(data), "OUTPUT_DIR": str(run),
        # only the script's own excludes keep .venv/.git/build out of the upload (no .gitignore, no Ray defaults)
        "RAY_RUNTIME_ENV_IGNORE_GITIGNORE": "1", "RAY_OVERRIDE_RUNTIME_ENV_DEFAULT_EXCLUDES": "",
    }
    out = _submit(ray_head, "cepo-test-trl", env, [
        "cepo", "data.train_batch_size=2", "actor_rollout_ref.actor.ppo_mini_batch_size=2",
        "actor_rollout_ref.rollout.n=2", "data.max_response_length=8", "trainer.total_training_steps=2",
        "actor_rollout_ref.actor.optim.lr_warmup_steps=0",
    ])

    logs = ray_head.ray("logs", "cepo-test-trl").stdout
    assert "python -m cepo.cli train --config cepo/configs/cepo.yaml" in logs
    assert re.search(r"step\s+1 \| reward .* lambda 0\.500", logs) and re.search(r"step\s+2 \| reward", logs), logs
    assert f"training finished; run directory: {run}" in logs

    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and rows[0]["cepo/lambda"] == 0.5
    assert json.loads((run / "config.json").read_text())  # every setting of the run
    assert (run / "final" / "adapter_model.safetensors").is_file()  # the LoRA adapter (paper_base: rank 16)
    assert json.loads((run / "final" / "adapter_config.json").read_text())["r"] == 16

    # what reached the node: the repository with cepo and its YAMLs, without the local heavy directories
    package = re.search(r"gcs://(_ray_pkg_[0-9a-f]+)\.zip", out)
    assert package, out
    unpacked = ray_head.working_dir_package(package.group(1))
    assert (unpacked / "cepo" / "configs" / "cepo.yaml").is_file() and (unpacked / "scripts").is_dir()
    for heavy in (".venv", ".git", "build", "runs", "outputs", "cepo.egg-info"):
        if (REPO / heavy).exists():
            assert not (unpacked / heavy).exists(), f"{heavy} was uploaded"
    size = sum(f.stat().st_size for f in unpacked.rglob("*") if f.is_file())
    assert size < 20 * 2**20, f"working_dir upload is {size / 2**20:.1f} MiB"


@pytest.mark.slow
def test_verl_job_composes_its_config_on_the_cluster(ray_head: RayHead, tmp_path: Path) -> None:
    """The default engine's entry point runs on the cluster from the uploaded repository; ``--cfg job`` makes it
    print the composed config and exit before it asks Ray for GPUs."""
    (tmp_path / "train.parquet").touch()
    env = {"NGPUS": "4", "NNODES": "1", "DATA_DIR": str(tmp_path), "OUTPUT_DIR": str(tmp_path / "run")}
    _submit(ray_head, "cepo-test-verl", env, ["rlsd", "cepo.eps_w=0.2", "--cfg", "job"])

    logs = ray_head.ray("logs", "cepo-test-verl").stdout
    _, sep, printed = logs.partition("Running entrypoint for job cepo-test-verl: ")
    assert sep and printed.startswith("python -m cepo.integrations.verl.main --config-name rlsd "), logs
    yaml_start = re.search(r"^[a-z_]+:( |$)", printed, flags=re.MULTILINE)  # the first top-level key
    assert yaml_start, logs
    cfg = OmegaConf.create(printed[yaml_start.start():])
    assert cfg.algorithm.adv_estimator == "rlsd" and cfg.cepo.method == "rlsd" and cfg.cepo.eps_w == 0.2
    assert cfg.trainer.n_gpus_per_node == 4 and cfg.trainer.nnodes == 1
    assert cfg.trainer.default_local_dir == str(tmp_path / "run")
    assert cfg.data.train_files == f"{tmp_path}/train.parquet" and cfg.data.val_files == f"{tmp_path}/test.parquet"
    assert cfg.actor_rollout_ref.model.path == "Qwen/Qwen3-VL-2B-Instruct"


@pytest.mark.slow
def test_wait_fails_when_the_job_fails(ray_head: RayHead, tmp_path: Path) -> None:
    """``--wait`` exits 1 when the job ends FAILED (here ``cepo train`` rejects a misspelt key, exit status 2)."""
    (tmp_path / "train.parquet").touch()
    env = {"ENGINE": "trl", "NGPUS": "0", "DATA_DIR": str(tmp_path), "OUTPUT_DIR": str(tmp_path / "run"),
           "SUBMISSION_ID": "cepo-test-failing"}
    out = _run(["bash", str(SCRIPT), "--wait", "grpo", "cepo.nope=1"], {**ray_head.env, **env}, JOB_TIMEOUT_S)
    assert out.returncode == 1, out.stdout
    assert "job cepo-test-failing did not succeed" in out.stdout
    status = ray_head.ray("status", "cepo-test-failing", "--log-color=false").stdout
    assert "Job 'cepo-test-failing' failed" in status and "exit code 2" in status, status
    logs = ray_head.ray("logs", "cepo-test-failing").stdout
    assert re.search(r"cepo train: error: .*cepo\.nope", logs), logs
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("env", "args", "message"), [
    ({"RAY_ADDRESS": ""}, ["cepo"], "set RAY_ADDRESS"),
    ({}, ["ppo"], "unknown method 'ppo'; one of: cepo conspo grpo opsd rlsd sdpo"),
    ({}, [], "no method given"),
    ({}, ["--bogus", "cepo"], "unknown option --bogus"),
    ({"ENGINE": "jax"}, ["cepo"], "ENGINE must be verl or trl"),
    ({"DATA_DIR": "{tmp}/missing"}, ["cepo"], "no {tmp}/missing/train.parquet"),
    ({"DATA_DIR": "data/geo3k"}, ["cepo"], "DATA_DIR must be an absolute path"),
    ({"OUTPUT_DIR": ""}, ["cepo"], "set OUTPUT_DIR"),
    ({"OUTPUT_DIR": "runs/x"}, ["cepo"], "OUTPUT_DIR must be an absolute path"),
    ({"ENGINE": "trl", "NGPUS": "2"}, ["cepo"], "NGPUS must be 1 (one GPU) or 0 (CPU)"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, env: dict[str, str], args: list[str], message: str) -> None:
    """Bad input fails before anything is submitted: one line on stderr, exit status 2. The address points at a
    port nobody listens on, so reaching ``ray job submit`` would fail differently."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.parquet").touch()
    base = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "RAY_ADDRESS": f"http://127.0.0.1:{_free_port()}", "DATA_DIR": str(tmp_path / "data"),
            "OUTPUT_DIR": str(tmp_path / "run")}
    base.update({key: value.replace("{tmp}", str(tmp_path)) for key, value in env.items()})
    out = subprocess.run(["bash", str(SCRIPT), *args], env=base, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.count("\n") == 1 and message.replace("{tmp}", str(tmp_path)) in out.stderr, out.stderr
    assert out.stdout == ""
