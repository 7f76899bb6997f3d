"""verl's real training loop (``PPOTrainer.fit``), end to end on the CPU, through the train scripts' entry point.

Each case runs ``python -m cepo.integrations.verl.main --config-name <method>`` in a subprocess, for all six method
YAMLs (grpo, rlsd, cepo, opsd, sdpo, conspo):

1. 2 training steps on the tiny Qwen3-VL (``cepo.testing.save_tiny_qwen3vl``) and a tiny Geo3k-shaped parquet
   written by ``scripts/prepare_geo3k.py`` (from ``cepo.testing.write_geo3k_parquet``). Everything the GPU job runs
   runs here: verl's ``run_ppo`` starts Ray; ``CEPOTaskRunner`` starts TransferQueue and ``CEPOTrainerSync``; the
   actor is verl's ``ActorRolloutRefWorker`` in a Ray worker process (FSDP2 engine, gloo process group); the
   agent-loop and reward-loop workers are verl's; each step is verl's ``_step_once`` with the rollout, the
   reward (``cepo/integrations/verl/reward.py`` through verl's custom reward manager), the student and teacher
   passes (``compute_log_prob``), the advantages, the actor update and the weight sync to the rollout; the
   validation pass (before training and at the end); the console and file loggers; a checkpoint after each step.
2. For the methods whose resume restores state of their own (:data:`RESUMED`: ``cepo``, the λ schedule, the same
   code as ``rlsd``'s; ``sdpo``, the EMA teacher saved beside verl's checkpoint), the same command with
   ``trainer.total_training_steps=3``: verl's ``resume_mode=auto`` loads the step-2 checkpoint, the run continues at
   step 3, ``cepo/lambda`` there is the schedule's value at step 3, and SDPO distils from the loaded EMA teacher.
   For the other four a resume restores only verl's own state, which the ``cepo`` case checks; skipping their
   second run keeps the six cases inside the CI budget (each run is ~70 s of process start-up on 2 cores).

Test-only shims (``cepo/testing/verl_cpu.py``, loaded in every process through verl's own
``VERL_USE_EXTERNAL_MODULES`` hook; nothing the GPU path runs is changed):

* ``VERL_PLATFORM=cepo_cpu``: a verl platform with device ``cpu``, backend ``gloo`` and Ray's ``GPU`` resource;
  Ray is started with one *logical* GPU (``+ray_kwargs.ray_init.num_gpus=1``), which satisfies verl's resource
  pools. ``VERL_ENGINE_DEVICE=cuda`` makes verl pick its FSDP engine class (registered for cuda/npu only) on it.
  verl's worker process-group init names ``cpu`` twice on this platform (``cpu:gloo,cpu:gloo``); the shim asks
  for ``cpu:gloo`` once.
* ``rollout.name=cepo_cpu_hf``: the rollout server is a Ray actor running Hugging Face ``generate`` on its own copy
  of the model, instead of vLLM (which needs CUDA). verl's naive checkpoint engine pushes the actor's weights into
  it after every step, as it does into vLLM. A random tiny model never writes ``\\boxed{}``, so every second
  request per prompt is answered with a scripted ``\\boxed{n}`` (``CEPO_CPU_ROLLOUT_BOXED_EVERY=2``): rewards
  then differ within a group, and CEPO/RLSD have a rejected rollout with an answer (r-).

Deviations from the paper config, all set by overrides here: ``actor.strategy=fsdp2`` (FSDP1 refuses CPU
parameters with ``sync_module_states``), LoRA only for OPSD and SDPO (whose YAMLs' fixed / EMA teachers need it),
merged into the weights the HF rollout takes (``lora.merge=true``), ``use_remove_padding=false``, tiny
batch/lengths, one TransferQueue storage unit and one agent/reward worker, and no Ray dashboard.

With the scripted answers wrong and the samples unboxed, no rollout reaches reward 0.5. SDPO (a successful peer) and
ConSPO (a positive) need one, so they train on ``data_successes`` (every answer 1, which the shim's first scripted
answer per prompt gets right): each of their groups holds a success and a failure.

Wall time on a 2-core CPU, quiet machine: ~75 s per run (~2.5 min for ``cepo`` and ``sdpo``, which resume). All six
run in the default test command; ``tests/conftest.py`` schedules them first so that pytest-xdist's two workers run
them side by side (one run leaves ~40% of the two cores idle: Ray actors start one after another).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
METHODS = ("cepo", "grpo", "sdpo", "rlsd", "opsd", "conspo")  # this order balances two xdist workers
RESUMED = ("cepo", "sdpo")  # resumed from their step-2 checkpoint: state of their own (λ schedule, EMA teacher)
LAM0, WARMUP = 0.5, 25  # paper_base.yaml: cepo.lam0, cepo.warmup_steps (linear schedule)
RUN_TIMEOUT_S = 900
NEED_A_SUCCESS = ("sdpo", "conspo")  # their signal needs a rollout with reward >= 0.5: they train on data_successes
LORA = ("opsd", "sdpo")  # their YAMLs' teachers (fixed, EMA) are the LoRA adapter disabled / averaged


@pytest.fixture(scope="module")
def job_inputs(tmp_path_factory) -> dict[str, Path]:
    """The tiny Qwen3-VL checkpoint and the Geo3k-shaped parquet files, written by ``scripts/prepare_geo3k.py``;
    ``data_successes``: the same problems with every training answer set to 1, which the rollout shim's first scripted
    answer per prompt (``\\boxed{1}``) gets right: every step's 2 prompts are new to the shim's server (4 problems, 2
    per step; a resumed run starts a new server), so each group has a success and a failure (SDPO's demonstrations,
    ConSPO's positives)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cepo.testing import save_tiny_qwen3vl, write_geo3k_parquet

    root = tmp_path_factory.mktemp("verl_main_job")
    model = save_tiny_qwen3vl(root / "model")
    source = write_geo3k_parquet(root / "source", n_train=4, n_test=2)
    spec = importlib.util.spec_from_file_location("prepare_geo3k", REPO / "scripts" / "prepare_geo3k.py")
    assert spec is not None and spec.loader is not None
    prepare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prepare)
    data = root / "data"
    assert prepare.main(["--dataset", str(source), "--local-dir", str(data)]) == 0
    table = pq.read_table(source / "train.parquet")
    column = table.schema.get_field_index("answer")
    pq.write_table(table.set_column(column, "answer", pa.array(["1"] * table.num_rows)), source / "train.parquet")
    successes = root / "data_successes"
    assert prepare.main(["--dataset", str(source), "--local-dir", str(successes)]) == 0
    return {"model": model, "data": data, "data_successes": successes}


def _run(method: str, inputs: dict[str, Path], run_dir: Path, steps: int, log: Path) -> list[dict]:
    """One ``python -m cepo.integrations.verl.main`` run; returns the file logger's records. OPSD and SDPO run their
    YAMLs' fixed / EMA teachers, which need LoRA: merged into the weights the HF rollout gets (``lora.merge``)."""
    data = inputs["data_successes" if method in NEED_A_SUCCESS else "data"]
    lora = (["actor_rollout_ref.model.lora_rank=4", "actor_rollout_ref.model.lora_alpha=8",
             "actor_rollout_ref.model.lora.merge=true"] if method in LORA else ["actor_rollout_ref.model.lora_rank=0"])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "VERL_USE_EXTERNAL_MODULES": "cepo.testing.verl_cpu", "VERL_PLATFORM": "cepo_cpu",
           "VERL_ENGINE_DEVICE": "cuda", "VERL_ENGINE_VENDOR": "nvidia", "CEPO_CPU_ROLLOUT_BOXED_EVERY": "2",
           "VERL_FILE_LOGGER_PATH": str(log), "RAY_DEDUP_LOGS": "0", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("RAY_ADDRESS", None)
    overrides = [
        f"actor_rollout_ref.model.path={inputs['model']}",
        f"data.train_files={data / 'train.parquet'}", f"data.val_files={data / 'test.parquet'}",
        "data.train_batch_size=2", "data.max_prompt_length=256", "data.max_response_length=16",
        "data.shuffle=false", "data.dataloader_num_workers=0",
        "actor_rollout_ref.rollout.n=2", "actor_rollout_ref.actor.ppo_mini_batch_size=2",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=2",
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=2",
        "actor_rollout_ref.model.use_remove_padding=false",
        "actor_rollout_ref.model.enable_gradient_checkpointing=false",
        "actor_rollout_ref.actor.use_torch_compile=false", *lora,
        "actor_rollout_ref.actor.strategy=fsdp2", "actor_rollout_ref.ref.strategy=fsdp2",
        "actor_rollout_ref.rollout.name=cepo_cpu_hf", "actor_rollout_ref.rollout.agent.num_workers=1",
        "actor_rollout_ref.actor.optim.lr_warmup_steps=1", "actor_rollout_ref.actor.optim.lr=1e-3",
        "reward.num_workers=1", "transfer_queue.backend.SimpleStorage.num_data_storage_units=1",
        "trainer.device=cpu", "trainer.n_gpus_per_node=1", f"trainer.total_training_steps={steps}",
        "trainer.test_freq=100", "trainer.save_freq=1", f"trainer.default_local_dir={run_dir}",
        "trainer.logger=[console,file]", "+ray_kwargs.ray_init.num_gpus=1", "ray_kwargs.ray_init.num_cpus=16",
        "+ray_kwargs.ray_init.include_dashboard=false",  # ~10 processes per run that nothing here reads
    ]
    cmd = [sys.executable, "-m", "cepo.integrations.verl.main", "--config-name", method, *overrides]
    res = subprocess.run(cmd, cwd=run_dir.parent, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert res.returncode == 0, f"{method} ({steps} steps) failed:\n{res.stdout[-6000:]}\n{res.stderr[-6000:]}"
    assert log.is_file(), res.stdout[-3000:]
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def _train_steps(records: list[dict]) -> dict[int, dict]:
    return {r["step"]: r["data"] for r in records if "actor/grad_norm" in r["data"]}


def _val(records: list[dict]) -> list[dict]:
    return [r["data"] for r in records if any(k.startswith("val-core/") for k in r["data"])]


def _lambda(step: int) -> float:
    """Eq. 7's linear schedule at verl step ``step`` (1-based; the schedule's step is ``step - 1``)."""
    return LAM0 * max(0.0, 1.0 - (step - 1) / WARMUP)


def _check_job(method: str, inputs: dict[str, Path], tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    first = _run(method, inputs, run_dir, steps=2, log=tmp_path / "first.jsonl")
    steps = _train_steps(first)
    assert sorted(steps) == [1, 2]
    assert len(_val(first)) == 2  # before training (val_before_train) and after the last step
    for step, data in steps.items():
        assert data["training/global_step"] == step
        assert data["response_length/mean"] > 0
        assert data["critic/score/mean"] > 0  # the scripted \boxed{n} answers earn the format reward
        success = method in NEED_A_SUCCESS  # \boxed{1} is right on data_successes
        assert (data["critic/score/max"] >= 0.9) if success else (data["critic/score/max"] < 0.5)
        if method == "sdpo":  # pure distillation (top-k, EMA teacher) on the rows whose group has a success
            assert data["actor/cepo_distill_loss"] > 0 and "actor/pg_loss" not in data
            assert data["cepo/has_teacher_frac"] == 0.5  # the failure sees the success; the success itself, nothing
        else:
            assert data["critic/advantages/max"] > 0 and data["critic/advantages/min"] < 0
            assert data["actor/grad_norm"] > 0  # a real update happened
        if method == "opsd":  # full-vocabulary JSD against the initial policy (the LoRA adapter disabled)
            assert data["actor/cepo_distill_loss"] > 0 and "actor/pg_loss" not in data
    for step in (1, 2):
        actor = run_dir / f"global_step_{step}" / "actor"
        assert (actor / "model_world_size_1_rank_0.pt").is_file() and (actor / "optim_world_size_1_rank_0.pt").is_file()
        assert (actor / "cepo_ema_teacher_rank0.pt").is_file() == (method == "sdpo")  # the EMA teacher is saved
    assert (run_dir / "latest_checkpointed_iteration.txt").read_text().strip() == "2"

    if method in ("rlsd", "cepo"):
        for step, data in steps.items():
            assert data["cepo/lambda"] == pytest.approx(_lambda(step), abs=1e-9)
            assert data["cepo/token_adv_abs_mean"] > 0
    if method == "cepo":  # the teacher pass ran with r- hints: a rejected rollout with a boxed answer exists
        assert all(data["cepo/has_negative_frac"] > 0 for data in steps.values())
    if method == "opsd":  # r+ on every rollout: every row got its teacher log-probs
        assert all(data["cepo/has_teacher_frac"] == 1.0 for data in steps.values())

    if method not in RESUMED:
        return
    second = _run(method, inputs, run_dir, steps=3, log=tmp_path / "resumed.jsonl")
    resumed = _train_steps(second)
    assert sorted(resumed) == [3], "the resumed run must continue at step 3, not restart"
    assert resumed[3]["training/global_step"] == 3
    if method in ("rlsd", "cepo"):
        assert resumed[3]["cepo/lambda"] == pytest.approx(_lambda(3), abs=1e-9)
    if method == "sdpo":  # the resumed run loaded the EMA teacher and distils again
        assert resumed[3]["actor/cepo_distill_loss"] > 0
    assert (run_dir / "global_step_3" / "actor" / "model_world_size_1_rank_0.pt").is_file()
    assert (run_dir / "latest_checkpointed_iteration.txt").read_text().strip() == "3"


@pytest.mark.parametrize("method", METHODS)
def test_main_job_trains_validates_checkpoints_and_resumes(method, job_inputs, tmp_path):
    _check_job(method, job_inputs, tmp_path)
