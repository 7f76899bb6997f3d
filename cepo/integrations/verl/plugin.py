"""verl plugin: two workarounds for verl 0.9.1, installed in every process that imports verl.

Registered as the ``verl.plugins`` entry point ``cepo`` (``pyproject.toml``); verl loads every such entry point
when it is imported, in the driver and in each Ray worker.

1. **trl 1.x beside verl.** verl 0.9.1 treats any importable ``trl`` as the one it was built with (``trl==0.27.0``,
   its ``fsdp`` extra): if ``trl`` can be imported, ``apply_monkey_patch`` (run on every model the FSDP engine
   builds) imports ``AutoModelForCausalLMWithValueHead`` from it, which trl 1.x no longer has, and the actor fails
   with ImportError. cepo's ``trl`` extra installs trl 1.16. This plugin makes verl's ``is_trl_available`` report
   whether that class can be imported, so actor models build; a value model (a critic, which no cepo method uses)
   still gets verl's own "please install trl" error. Nothing else in verl asks ``is_trl_available``.
2. **M-RoPE position ids of equal-length rows** (verl issue #7899; docs/verl.md, "Known verl issues"). A worker
   reads its rows from TransferQueue, which packs the per-sample ``(4, L)`` position ids with
   ``torch.nested.as_nested_tensor(layout=torch.jagged)``: when every row read has the same length, torch makes
   the 4 channels the ragged dimension (``values`` ``(B*4, L)``) instead of the sequence. verl's
   ``maybe_fix_3d_position_ids``, run first by every engine ``infer_batch``/``train_batch`` and
   ``train_mini_batch``, then sets ``_ragged_idx = 2`` without looking, and the model gets garbage positions (wrong
   log-probs and gradients; a crash with remove-padding or dynamic batching). :func:`fix_3d_position_ids` rebuilds
   such a tensor in verl's layout (``values`` ``(4, sum L)``, ragged sequence dimension) before verl's function
   runs.

verl loads entry points quietly (a load error is logged at DEBUG), ``VERL_USE_EXTERNAL_PLUGINS`` can exclude this
one, and a source checkout that was never pip-installed has no entry point at all. So cepo's configs also name this
module in ``actor_rollout_ref.model.external_lib`` (:func:`cepo.recipes.finalize_config`), which verl imports in
every worker when it builds the model config (``HFModelConfig.__post_init__``, the first thing ``init_model`` does,
before any step); an install that fails there raises one line. :func:`require_workers_fix` refuses, in the driver, a
config for an M-RoPE model whose workers would get the fix from neither path, naming the cause.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import sys
import warnings
from typing import Any

VALUE_HEAD = "AutoModelForCausalLMWithValueHead"
"""The trl class verl 0.9.1 imports when ``is_trl_available()`` is true."""

FIX_3D_USERS = ("verl.workers.engine.base", "verl.workers.engine_workers", "verl.workers.engine_workers_tinker")
"""verl modules that bind ``maybe_fix_3d_position_ids`` by name (patched too if imported before this plugin)."""


@functools.cache
def trl_has_value_head() -> bool:
    """Whether ``AutoModelForCausalLMWithValueHead`` imports from trl where verl looks for it (trl is imported lazily,
    on the first call)."""
    if importlib.util.find_spec("trl") is None:
        return False
    for name in ("trl.experimental.ppo", "trl"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, VALUE_HEAD):
            return True
    return False


def channel_ragged(position_ids: Any, input_ids: Any = None) -> bool:
    """Whether a 3-D jagged ``position_ids`` holds its rows stacked along ``values`` dim 0 (ragged channel dim).

    That is what ``torch.nested.as_nested_tensor`` makes of per-row ``(C, L)`` tensors of one shape: ``values``
    ``(B*C, L)``, offsets ``[0, C, ..., B*C]``. verl's layout is ``values`` ``(C, sum L_i)`` with the sequence
    offsets (those of ``input_ids``). When both readings are possible (one row with ``L == C``) they give the same row.
    """
    import torch

    if not (isinstance(position_ids, torch.Tensor) and position_ids.is_nested and position_ids.dim() == 3
            and position_ids.layout == torch.jagged):
        return False
    values, offsets = position_ids.values(), position_ids.offsets()
    if values.dim() != 2 or offsets.numel() < 2:
        return False
    widths = offsets.diff()
    if int(offsets[0]) != 0 or int(offsets[-1]) != values.shape[0] or not bool((widths == widths[0]).all()):
        return False
    if isinstance(input_ids, torch.Tensor) and input_ids.is_nested and input_ids.layout == torch.jagged:
        seq_offsets = input_ids.offsets().to(offsets.device)
        if torch.equal(seq_offsets, offsets) and values.shape[1] == int(seq_offsets[-1]):
            return False  # verl's layout (its _ragged_idx lost, e.g. by a pickle round trip)
        return bool((seq_offsets.diff() == values.shape[1]).all())
    return values.shape[1] != int(offsets[-1])


def fix_3d_position_ids(data: Any) -> None:
    """Rebuild channel-ragged M-RoPE ``position_ids`` in verl's layout, then run verl's ``maybe_fix_3d_position_ids``.

    Replaces ``verl.utils.tensordict_utils.maybe_fix_3d_position_ids`` (see the module docstring, item 2). Rows in
    verl's layout are left to verl's function unchanged.
    """
    from verl.utils.tensordict_utils import nested_tensor_from_tensor_list

    keys = data.keys()
    if "position_ids" in keys:
        position_ids = data["position_ids"]
        if channel_ragged(position_ids, data["input_ids"] if "input_ids" in keys else None):
            offsets = position_ids.offsets()
            rows = position_ids.values().unflatten(0, (offsets.numel() - 1, int(offsets[1])))  # (B, C, L)
            data["position_ids"] = nested_tensor_from_tensor_list(list(rows.unbind(0)), ragged_idx=2)
    fix_3d_position_ids.verl_fix(data)


def install_position_ids_fix() -> None:
    """Put :func:`fix_3d_position_ids` in place of verl's ``maybe_fix_3d_position_ids`` (idempotent)."""
    import verl.utils.tensordict_utils as tensordict_utils

    current = tensordict_utils.maybe_fix_3d_position_ids
    if current is fix_3d_position_ids:
        return
    fix_3d_position_ids.verl_fix = current
    tensordict_utils.maybe_fix_3d_position_ids = fix_3d_position_ids
    for name in FIX_3D_USERS:
        module = sys.modules.get(name)
        if module is not None and getattr(module, "maybe_fix_3d_position_ids", None) is current:
            module.maybe_fix_3d_position_ids = fix_3d_position_ids


PLUGIN_MODULE = __name__
"""This module, as ``actor_rollout_ref.model.external_lib`` names it (``cepo.recipes.PLUGIN_MODULE``)."""

ENTRY_POINT = "cepo"
"""The name of this plugin's ``verl.plugins`` entry point (``pyproject.toml``)."""


def position_ids_fix_active() -> bool:
    """Whether verl's ``maybe_fix_3d_position_ids`` is :func:`fix_3d_position_ids` here and in every loaded verl
    module that binds it by name (:data:`FIX_3D_USERS`)."""
    import verl.utils.tensordict_utils as tensordict_utils

    modules = [tensordict_utils, *(sys.modules[name] for name in FIX_3D_USERS if name in sys.modules)]
    return all(getattr(module, "maybe_fix_3d_position_ids", None) is fix_3d_position_ids for module in modules)


def uses_mrope(model_path: str) -> bool:
    """Whether the model at ``model_path`` uses multimodal RoPE (``mrope_section`` in its text config's rope
    parameters: Qwen2-VL, Qwen2.5-VL, Qwen3-VL), i.e. 3-D position ids that verl#7899 garbles."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path)
    text = config.get_text_config()
    rope = getattr(text, "rope_parameters", None) or getattr(text, "rope_scaling", None) or {}
    return isinstance(rope, dict) and "mrope_section" in rope


def entry_point_cause() -> str | None:
    """Why verl's own plugin loading would not install this plugin in a fresh process (``None``: it would)."""
    policy = os.getenv("VERL_USE_EXTERNAL_PLUGINS", "auto").strip().lower()
    allowed = {name.strip() for name in policy.split(",") if name.strip()}
    if policy == "none" or (policy != "auto" and ENTRY_POINT not in allowed):
        return f"VERL_USE_EXTERNAL_PLUGINS={policy} excludes cepo's verl plugin (add {ENTRY_POINT} to it, or unset it)"
    from importlib.metadata import entry_points

    found = [ep for ep in entry_points(group="verl.plugins") if ep.name == ENTRY_POINT]
    if not found:
        return ("cepo's verl.plugins entry point is not installed (a source checkout that was not pip-installed: "
                "pip install -e .)")
    try:
        found[0].load()
    except Exception as err:
        return f"cepo's verl plugin fails to load ({type(err).__name__}: {err})"
    return None


def external_libs(value: Any) -> list[str]:
    """``actor_rollout_ref.model.external_lib`` (null, one module name or a list) as a list."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def require_workers_fix(model_path: str, external_lib: Any) -> None:
    """Refuse (one line, naming the cause) an M-RoPE model whose verl workers would run without
    :func:`fix_3d_position_ids`: neither ``external_lib`` names this module nor would verl's entry-point loading
    install it. Models without M-RoPE need no fix and pass."""
    if PLUGIN_MODULE in external_libs(external_lib) or not uses_mrope(model_path):
        return
    cause = entry_point_cause()
    if cause is not None:
        raise RuntimeError(
            f"{model_path} uses M-RoPE, and verl's workers would run without cepo's position-ids fix (verl#7899: "
            f"wrong log-probs when a batch's rows have equal lengths): {cause}; or set "
            f"actor_rollout_ref.model.external_lib={PLUGIN_MODULE} (cepo's configs do)"
        )


def install() -> None:
    """Point verl's ``is_trl_available`` at :func:`trl_has_value_head` and install :func:`fix_3d_position_ids`.

    Must run before ``verl.models.transformers.monkey_patch``, ``verl.utils.model`` and verl's engine modules are
    imported (they bind the names on import); ``import verl`` loads this plugin before any of them. Raises one line
    if the position-ids fix is not in place afterwards (a verl whose modules changed).
    """
    import verl.utils.import_utils as import_utils

    import_utils.is_trl_available = trl_has_value_head
    install_position_ids_fix()
    if not position_ids_fix_active():
        raise RuntimeError(
            "cepo's verl plugin could not install its M-RoPE position-ids fix (verl#7899) in "
            f"{[n for n in ('verl.utils.tensordict_utils', *FIX_3D_USERS) if n in sys.modules]}; this verl is not "
            "the 0.9.1 it was written for"
        )


install()
