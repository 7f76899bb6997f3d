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
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
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


def install() -> None:
    """Point verl's ``is_trl_available`` at :func:`trl_has_value_head` and install :func:`fix_3d_position_ids`.

    Must run before ``verl.models.transformers.monkey_patch``, ``verl.utils.model`` and verl's engine modules are
    imported (they bind the names on import); ``import verl`` loads this plugin before any of them.
    """
    import verl.utils.import_utils as import_utils

    import_utils.is_trl_available = trl_has_value_head
    install_position_ids_fix()


install()
