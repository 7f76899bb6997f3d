"""verl 0.9.1 builds actor models beside trl 1.x, through cepo's ``verl.plugins`` entry point (verl/plugin.py).

Without it, ``apply_monkey_patch`` (run by verl's FSDP engine on every model it builds) imports
``AutoModelForCausalLMWithValueHead`` from any importable trl and fails with ImportError on trl 1.16, which the
``trl`` extra installs: ``pip install -e ".[gpu,trl]"`` could not start a verl run. The same plugin puts the
M-RoPE position-ids fix (test_verl_equal_length.py) into verl's engine modules of a fresh interpreter.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("verl")
pytest.importorskip("trl")

# A fresh interpreter outside the source tree (as a Ray worker: the installed package metadata, not a stale
# cepo.egg-info that a source-tree build may have left in the working directory).
PROBE = """
import sys
from importlib.metadata import entry_points

import verl  # loads the verl.plugins entry points, as in every Ray worker
from transformers import AutoModelForImageTextToText
from verl.models.transformers.monkey_patch import apply_monkey_patch

print({ep.name: ep.value for ep in entry_points(group="verl.plugins")}.get("cepo"))
model = AutoModelForImageTextToText.from_pretrained(sys.argv[1])
apply_monkey_patch(model=model, use_remove_padding=True)
import verl.workers.engine.base as engine_base  # the engine calls the plugin's M-RoPE position-ids fix
import verl.workers.engine_workers as engine_workers

print([f.__module__ for f in (engine_base.maybe_fix_3d_position_ids, engine_workers.maybe_fix_3d_position_ids)])
print("patched")
"""


def test_actor_monkey_patch_runs_with_trl_installed(tiny_vl_dir, tmp_path):
    done = subprocess.run([sys.executable, "-c", PROBE, str(tiny_vl_dir)], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert "cepo.integrations.verl.plugin" in lines
    assert lines[-2] == str(["cepo.integrations.verl.plugin"] * 2)  # verl issue #7899 workaround (docs/verl.md)
    assert lines[-1] == "patched"
