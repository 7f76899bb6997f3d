"""TEST-ONLY: run verl 0.9.1's real training loop (``PPOTrainer.fit``) on a machine without a GPU.

Never imported by product code. ``tests/verl/test_verl_main_job.py`` loads it in the driver and in every Ray worker
through verl's own hook: ``VERL_USE_EXTERNAL_MODULES=cepo.testing.verl_cpu`` (``import verl`` imports the listed
modules) with ``VERL_PLATFORM=cepo_cpu``. It adds three things to verl's registries, and changes nothing that
an unregistered name (the GPU path: ``nvidia`` platform, ``vllm`` rollout) runs:

* :class:`PlatformCPU`, verl platform ``cepo_cpu``: device ``cpu``, collective backend ``gloo``, and Ray's ``GPU``
  resource, so verl's resource pools and placement groups are satisfied by *logical* GPUs
  (``ray.init(num_gpus=N)``) while every tensor stays on the CPU.
* rollout ``cepo_cpu_hf``: :class:`HFRolloutServer`, a Ray actor with the surface verl's ``LLMServerClient`` and
  ``CheckpointEngineManager`` call on a vLLM server (``generate``, ``sleep``/``wake_up``, abort/resume, KV-cache
  calls), generating with Hugging Face ``generate`` on its own copy of the model;
  :class:`HFRolloutReplica` launches it (``RolloutReplicaRegistry``), and :class:`HFServerAdapter` is the
  rollout object inside the hybrid actor worker (verl's ``_ROLLOUT_REGISTRY``), through which the worker's
  ``update_weights`` (checkpoint backend ``naive``) pushes the actor's current weights into the server after
  every step, as the vLLM adapter does.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import ray
import torch
from verl.plugin.platform.platform_base import PlatformBase
from verl.plugin.platform.platform_manager import PlatformRegistry
from verl.workers.rollout import base as rollout_base
from verl.workers.rollout.base import BaseRollout
from verl.workers.rollout.replica import RolloutReplica, RolloutReplicaRegistry, TokenOutput

PLATFORM = "cepo_cpu"
"""``VERL_PLATFORM`` value of :class:`PlatformCPU`."""

ROLLOUT = "cepo_cpu_hf"
"""``actor_rollout_ref.rollout.name`` of the Hugging Face ``generate`` rollout."""


BOXED_EVERY_ENV = "CEPO_CPU_ROLLOUT_BOXED_EVERY"
"""Every k-th request for the same prompt (k = this variable, 0 = never; the 1st, (k+1)-th, ...) is answered with
``\\boxed{<request count>}`` + EOS instead of a sample, so a group of ``rollout.n = k`` holds one such answer.
A random tiny model never writes a boxed answer: without these every reward would be 0, every group advantage 0,
and no CEPO/RLSD negative hint r- would exist. Their log-probs are the model's own (one forward)."""


def _prompt_key(prompt_ids: list[int], images: list[Any] | None) -> str:
    """One prompt, as the counter of :data:`BOXED_EVERY_ENV` sees it: its tokens *and* its images (Geo3k prompts
    share their text, "Find x.", and differ only in the figure)."""
    digest = hashlib.sha1(repr(list(prompt_ids)).encode())
    for image in images or []:
        digest.update(image.tobytes() if hasattr(image, "tobytes") else repr(image).encode())
    return digest.hexdigest()


def _server_name(replica_rank: int) -> str:
    return f"cepo_cpu_hf_server_{replica_rank}"


class _CPUDeviceModule:
    """What verl calls on ``get_torch_device()`` (``torch.cuda`` on GPUs): memory queries, caches, RNG, sync."""

    def __getattr__(self, name: str) -> Any:
        if hasattr(torch.cpu, name):
            return getattr(torch.cpu, name)
        if name.startswith(("memory_", "max_memory_", "reset_")) or name in ("empty_cache", "ipc_collect"):
            return lambda *a, **k: 0
        raise AttributeError(f"torch.cpu has no {name!r} (verl_cpu shim)")

    @staticmethod
    def get_device_name(*_: Any) -> str:
        return "CPU"

    @staticmethod
    def mem_get_info(*_: Any) -> tuple[int, int]:
        return 1 << 34, 1 << 34

    @staticmethod
    def manual_seed(seed: int) -> None:
        torch.manual_seed(seed)

    manual_seed_all = manual_seed

    @staticmethod
    def get_rng_state(*_: Any) -> torch.Tensor:
        return torch.get_rng_state()

    @staticmethod
    def set_rng_state(state: torch.Tensor, *_: Any) -> None:
        torch.set_rng_state(state)

    @staticmethod
    def set_device(*_: Any) -> None:
        return None


@PlatformRegistry.register(platform=PLATFORM)
class PlatformCPU(PlatformBase):
    """verl platform for CPU-only test runs: device ``cpu``, ``gloo``, Ray's (logical) ``GPU`` resource."""

    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self) -> ModuleType:
        return _CPUDeviceModule()  # type: ignore[return-value]

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check: bool = False) -> bool:
        return os.environ.get("VERL_PLATFORM", "") == PLATFORM

    def current_device(self) -> Any:
        return "cpu"  # verl moves tensors with .to(get_device_id()) and hands it to FSDP as device_id

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        return None

    def synchronize(self, device_index: int | None = None) -> None:
        return None

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        return None

    def empty_cache(self) -> None:
        return None

    def get_device_capability(self, device_index: int = 0) -> tuple[int | None, int | None]:
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        return "CUDA_VISIBLE_DEVICES"

    def ray_resource_name(self) -> str:
        return "GPU"

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self) -> Any:
        return None

    @contextmanager
    def nvtx_range(self, msg: str) -> Iterator[None]:
        yield

    def profiler_start(self) -> None:
        return None

    def profiler_stop(self) -> None:
        return None


@ray.remote
class HFRolloutServer:
    """A rollout "server" on the CPU: Hugging Face ``generate`` with the surface verl calls on a vLLM server."""

    def __init__(self, model_path: str, response_length: int, seed: int = 0) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.processor = AutoProcessor.from_pretrained(model_path)
        self.model = AutoModelForImageTextToText.from_pretrained(model_path, dtype=torch.float32).eval()
        self.response_length = response_length
        # a random tiny model can sample vision tokens, which no trained VLM emits; verl's position ids (and a
        # vLLM server) would then expect an image that isn't there
        tokenizer = self.processor.tokenizer
        self.suppress = [tokenizer.convert_tokens_to_ids(t) for t in
                         ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
                         if tokenizer.convert_tokens_to_ids(t) is not None]
        self.generator_seed = seed
        self.weight_versions = 0
        self.global_steps: int | None = None
        self.calls: dict[str, int] = {}
        self.boxed_every = int(os.environ.get(BOXED_EVERY_ENV, "0") or 0)
        self.lock = asyncio.Lock()

    async def generate(self, request_id: str, prompt_ids: list[int], sampling_params: dict[str, Any],
                       image_data: list[Any] | None = None, video_data: Any = None, **_: Any) -> TokenOutput:
        """One completion of ``prompt_ids`` (image pads already expanded) with the rollout's sampling params."""
        params = dict(sampling_params)
        max_tokens = int(params.get("max_tokens", params.get("max_new_tokens", self.response_length)))
        max_tokens = max(1, min(max_tokens, self.response_length))
        temperature = float(params.get("temperature", 1.0))
        inputs: dict[str, Any] = {"input_ids": torch.tensor([prompt_ids])}
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
        if image_data:
            vision = self.processor.image_processor(images=list(image_data), return_tensors="pt")
            inputs.update(pixel_values=vision["pixel_values"], image_grid_thw=vision["image_grid_thw"])
        top_k = int(params.get("top_k", -1) or -1)
        generate_kwargs: dict[str, Any] = {"max_new_tokens": max_tokens, "do_sample": temperature > 0,
                                           "pad_token_id": self.processor.tokenizer.pad_token_id,
                                           "output_scores": True, "return_dict_in_generate": True,
                                           "suppress_tokens": self.suppress}
        if temperature > 0:
            generate_kwargs.update(temperature=temperature, top_p=float(params.get("top_p", 1.0)),
                                   top_k=top_k if top_k > 0 else 0)
        async with self.lock:
            key = _prompt_key(prompt_ids, image_data)
            self.calls[key] = count = self.calls.get(key, 0) + 1
            if self.boxed_every and count % self.boxed_every == 1 % self.boxed_every:
                tokens = self.processor.tokenizer(rf"\boxed{{{count}}}", add_special_tokens=False)["input_ids"]
                tokens = [*tokens[:max_tokens - 1], self.processor.tokenizer.eos_token_id]
                logprobs = await asyncio.to_thread(self._score, inputs, tokens)
            else:
                with torch.no_grad():
                    out = await asyncio.to_thread(self.model.generate, **inputs, **generate_kwargs)
                tokens = out.sequences[0, len(prompt_ids):].tolist()
                logprobs = [torch.log_softmax(score[0].float(), -1)[tok].item()
                            for score, tok in zip(out.scores, tokens, strict=False)]
        return TokenOutput(token_ids=tokens, log_probs=logprobs, stop_reason="completed",
                           extra_fields={"global_steps": self.global_steps,
                                         "weight_version": self.weight_versions})

    @torch.no_grad()
    def _score(self, inputs: dict[str, Any], tokens: list[int]) -> list[float]:
        """Log-probs of a scripted response under the server's current weights (what vLLM would report)."""
        prompt = inputs["input_ids"]
        ids = torch.cat([prompt, torch.tensor([tokens])], dim=1)
        kwargs = {**inputs, "input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if "image_grid_thw" in inputs:
            kwargs["mm_token_type_ids"] = (ids == self.model.config.image_token_id).int()
        logits = self.model(**kwargs).logits[0].float()
        logps = torch.log_softmax(logits[prompt.shape[1] - 1:-1], -1)
        return logps.gather(-1, torch.tensor(tokens).unsqueeze(-1)).squeeze(-1).tolist()

    def load_weights(self, named: dict[str, torch.Tensor], global_steps: int | None = None) -> int:
        """Load the actor's weights (HF names) of step ``global_steps`` (the step the next rollouts are tagged
        with, as vLLM's server does); refuses names the model doesn't have. Returns the weight version."""
        own = self.model.state_dict()
        unknown = sorted(set(named) - set(own))
        if unknown:
            raise KeyError(f"weights unknown to the rollout model: {unknown[:5]} (of {len(unknown)})")
        self.model.load_state_dict({k: v.to(own[k].dtype) for k, v in named.items()}, strict=False)
        self.weight_versions += 1
        self.global_steps = global_steps
        return self.weight_versions

    def state(self) -> dict[str, torch.Tensor]:
        """The server model's current weights (for the test's weight-sync check)."""
        return {k: v.clone() for k, v in self.model.state_dict().items()}

    # control calls of verl's CheckpointEngineManager / LLMServerManager: nothing to free on the CPU
    def wake_up(self) -> None: ...
    def sleep(self) -> None: ...
    def abort_all_requests(self, reject_request: bool = False) -> None: ...
    def resume_generation(self) -> None: ...
    def clear_kv_cache(self) -> None: ...
    def release_kv_cache(self) -> None: ...
    def resume_kv_cache(self) -> None: ...
    def start_profile(self, **_: Any) -> None: ...
    def stop_profile(self) -> None: ...


class HFRolloutReplica(RolloutReplica):
    """verl rollout replica whose server is :class:`HFRolloutServer` (one per replica, hybrid mode)."""

    async def launch_servers(self) -> None:
        server = HFRolloutServer.options(name=_server_name(self.replica_rank), num_cpus=0,
                                         max_concurrency=self.max_concurrency).remote(
            self.model_config.local_path if hasattr(self.model_config, "local_path") else self.model_config.path,
            self.config.response_length, self.config.seed)
        self.servers = [server]
        self._server_handle = server
        self._server_address = f"cpu-hf-rollout-{self.replica_rank}"


class HFServerAdapter(BaseRollout):
    """The rollout object in the hybrid actor worker: sends the actor's weights to its replica's server."""

    def __init__(self, config: Any, model_config: Any, device_mesh: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, model_config, device_mesh)
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        world = (self.config.tensor_model_parallel_size * self.config.data_parallel_size
                 * self.config.pipeline_model_parallel_size)
        self.replica_rank, self.is_leader = rank // world, rank % world == 0
        self.sleep_level = 2

    async def resume(self, tags: list[str]) -> None:
        return None

    async def release(self) -> None:
        return None

    async def update_weights(self, weights: Iterable[tuple[str, torch.Tensor]], wire_format: str = "named_tensors",
                             **kwargs: Any) -> None:
        """Every rank drains the generator (FSDP gathers are collective); the replica's leader ships them."""
        named = {name: tensor.detach().to("cpu", copy=True) for name, tensor in weights}
        if kwargs.get("peft_config") is not None:
            raise NotImplementedError("verl_cpu's HF rollout takes merged weights: set actor_rollout_ref.model."
                                      "lora.merge=true or lora_rank=0")
        if self.is_leader:
            server = ray.get_actor(_server_name(self.replica_rank))
            await server.load_weights.remote(named, kwargs.get("global_steps"))


def _patch_process_group_init() -> None:
    """verl's worker init asks for ``cpu:gloo,<device>:<backend>``; with device ``cpu`` that names ``cpu`` twice,
    which torch rejects. On this platform only, ask for ``cpu:gloo`` once."""
    import sys

    import verl.utils.distributed as distributed

    original = distributed.initialize_global_process_group_ray
    if getattr(original, "_cepo_cpu", False):
        return

    def initialize(timeout_second: int | None = None, backend: str | None = None) -> Any:
        if backend is None and os.environ.get("VERL_PLATFORM", "") == PLATFORM:
            backend = "cpu:gloo"
        return original(timeout_second=timeout_second, backend=backend)

    initialize._cepo_cpu = True  # type: ignore[attr-defined]
    distributed.initialize_global_process_group_ray = initialize
    for name in ("verl.workers.engine_workers", "verl.checkpoint_engine.base"):
        module = sys.modules.get(name)
        if module is not None:
            module.initialize_global_process_group_ray = initialize


_patch_process_group_init()
RolloutReplicaRegistry.register(ROLLOUT, lambda: HFRolloutReplica)
rollout_base._ROLLOUT_REGISTRY[(ROLLOUT, "async")] = f"{__name__}.HFServerAdapter"
