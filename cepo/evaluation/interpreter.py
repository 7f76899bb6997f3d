"""The interpreter of an external evaluator that lives in a virtualenv of its own (lmms-eval, lm-eval): found from a
command-line option or an environment variable, and asked for the version it has installed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def find_interpreter(explicit: str | None, option: str, env_var: str, name: str, setup_line: str,
                     purpose: str = "") -> str:
    """``explicit`` (the command-line ``option``), else ``$env_var``; it must exist. Raises ``ValueError`` (unset) or
    ``FileNotFoundError`` naming the option and ``setup_line``; ``purpose`` follows "no <name> interpreter"."""
    value = explicit or os.environ.get(env_var)
    if not value:
        raise ValueError(
            f"no {name} interpreter{purpose}: pass {option} PATH or set {env_var} to the python of a separate {name} "
            f"virtualenv (setup: {setup_line}); see docs/evaluation.md"
        )
    path = Path(value).expanduser()
    if not path.exists():
        source = option if explicit else env_var
        raise FileNotFoundError(f"{source}={value!r} does not exist; create it with: {setup_line}")
    return str(path)


def installed_version(python: str, name: str, module: str, setup_line: str) -> str:
    """The version of the distribution ``module`` installed for ``python``; ``ValueError`` (naming ``setup_line``)
    when it cannot be run or has none."""
    probe = f"import importlib.metadata as m, {module}; print(m.version('{module}'))"
    try:
        out = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=300)
    except OSError as err:
        raise ValueError(
            f"cannot run the {name} interpreter {python!r} ({err}); set it up with: {setup_line}"
        ) from None
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise ValueError(f"{python} cannot import {module} ({last}); set it up with: {setup_line}")
    return out.stdout.strip().splitlines()[-1]
