"""Packaging: the wheel carries what a non-editable install needs (the method YAMLs compose from the installed
package), and the GPU extra is the stack verl 0.9.1 was tested with (docs/install.md)."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
import zipfile
from importlib.metadata import requires, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_ships_configs_and_composes(tmp_path: Path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next(tmp_path.glob("cepo-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {f"cepo/configs/{m}.yaml" for m in ("paper_base", "grpo", "rlsd", "cepo")} <= set(names)
    assert {f"cepo/configs/text/{m}.yaml" for m in ("math_base", "cepo", "sdpo")} <= set(names)  # the text recipe
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = (
        "from cepo.recipes import compose_method_config, configs_dir;"
        "cfg = compose_method_config('rlsd', ['cepo.eps_w=0.2']);"
        "print(configs_dir()); print(cfg.cepo.method, cfg.cepo.eps_w, cfg.actor_rollout_ref.model.lora_rank)"
    )
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    where, values = done.stdout.strip().splitlines()[-2:]
    assert Path(where) == site / "cepo" / "configs"
    assert values == "rlsd 0.2 16"


# --- the GPU install (docs/install.md); .ci/run resolves it with uv, these checks need no network ---

def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _requirements(section: list[str]) -> dict[str, Requirement]:
    reqs = [Requirement(r) for r in section]
    return {canonicalize_name(r.name): r for r in reqs}


def _ci_lowest_transformers() -> str:
    found = re.findall(r"^LOWEST_TRANSFORMERS=(\S+)$", (ROOT / ".ci" / "run").read_text(), flags=re.M)
    assert len(found) == 1, "LOWEST_TRANSFORMERS=... must appear once in .ci/run"
    return found[0]


def _gpu_verl_pin() -> str:
    """X of the gpu extra, which must be exactly ``verl[vllm]==X``: verl's own pins (vllm, torch, transformers)."""
    gpu = [Requirement(r) for r in _project()["optional-dependencies"]["gpu"]]
    assert len(gpu) == 1 and canonicalize_name(gpu[0].name) == "verl" and gpu[0].extras == {"vllm"}, gpu
    pins = [s.version for s in gpu[0].specifier if s.operator == "=="]
    assert len(gpu[0].specifier) == 1 and len(pins) == 1, f"{gpu[0]}: not pinned with =="
    return pins[0]


def test_gpu_extra_is_verls_own_vllm_stack_without_flash_attn() -> None:
    project = _project()
    assert _gpu_verl_pin() in _requirements(project["dependencies"])["verl"].specifier
    # flash-attn is an sdist whose build imports torch: pip's isolated build fails on a fresh machine
    every = list(project["dependencies"]) + [r for extra in project["optional-dependencies"].values() for r in extra]
    assert not [r for r in every if canonicalize_name(Requirement(r).name) == "flash-attn"]


def test_transformers_floor_is_the_one_ci_tests() -> None:
    spec = _requirements(_project()["dependencies"])["transformers"].specifier
    floors = [Version(s.version) for s in spec if s.operator == ">="]
    assert floors == [Version(_ci_lowest_transformers())], (str(spec), _ci_lowest_transformers())
    assert floors[0] in spec


def test_cepo_admits_the_pins_of_verl_vllm() -> None:
    """Every package verl[vllm] pins, cepo's requirements (and those of trl and peft, installed here) admit."""
    pin = _gpu_verl_pin()
    if version("verl") != pin:
        pytest.skip(f"verl {version('verl')} installed; its metadata says nothing about verl {pin}")
    vllm_pins = {}
    for text in requires("verl") or []:
        r = Requirement(text)
        marker = r.marker
        only_vllm = marker is not None and marker.evaluate({"extra": "vllm"}) and not marker.evaluate({"extra": ""})
        pins = [s.version for s in r.specifier if s.operator == "=="]
        if only_vllm and len(pins) == 1:
            vllm_pins[canonicalize_name(r.name)] = pins[0]
    assert {"vllm", "transformers", "torch"} <= vllm_pins.keys(), vllm_pins
    constraints = [Requirement(r) for r in _project()["dependencies"]]
    constraints += [Requirement(r) for r in _project()["optional-dependencies"]["trl"]]
    for dist in ("trl", "peft"):
        constraints += [Requirement(r) for r in requires(dist) or [] if ";" not in r]
    refused = [f"{c} refuses {c.name}=={vllm_pins[canonicalize_name(c.name)]}" for c in constraints
               if canonicalize_name(c.name) in vllm_pins
               and not c.specifier.contains(vllm_pins[canonicalize_name(c.name)], prereleases=True)]
    assert not refused, refused
    assert Version(vllm_pins["transformers"]) == Version(_ci_lowest_transformers())
