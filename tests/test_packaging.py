"""A wheel carries what a non-editable install needs: the method YAMLs compose from the installed package."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

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
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = (
        "from cepo.integrations.verl.hydra_config import compose_method_config, configs_dir;"
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
