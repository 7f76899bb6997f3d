"""``cepo doctor``: is this node ready for the verl job? One row per check, a verdict and the fix (issue 15 §2).

Checks, in order: Python and the tested stack (torch, vllm, verl, transformers, trl, peft, ray; flash-attn when the
config selects ``flash_attention_2``); CUDA, the GPUs (names, compute capability, count against
``trainer.n_gpus_per_node``) and the driver's CUDA against torch's; the verl plugin (registered, not excluded by
``VERL_USE_EXTERNAL_PLUGINS``, its fix active); the Ray cluster of ``RAY_ADDRESS`` (reachable, its GPUs against the
job's resource pools: :mod:`cepo.integrations.verl.resources`); ``MODEL_PATH`` (config and processor, no weights);
the data files' first rows (the training loader's own checks: file, answers, images, prompt length); free disk
for checkpoints under ``trainer.default_local_dir``.

The versions come from one place, the installed metadata: cepo's own requirements (``pyproject.toml``: the ``gpu``
extra pins ``verl[vllm]==X``) and verl's pins for its ``vllm`` extra (vllm, torch, transformers) and its
flash-attn extra. ``docs/install.md``'s table states the same numbers (checked by ``tests/test_doctor.py``).

Verdicts: ``ok``; ``warn`` (works, but not what was tested); ``FAIL`` (the job would fail or hang); ``skip`` (not
applicable). Exit status 0 when no row fails, 1 otherwise; 2 for bad input (a config that does not compose).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, metadata, requires, version
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

OK, WARN, FAIL, SKIP = "ok", "warn", "FAIL", "skip"
INSTALL_FIX = 'pip install -e ".[gpu,trl]" in a fresh virtualenv (docs/install.md)'
DATA_ROWS = 64
"""Rows of each data file checked (the first ones)."""
MIN_COMPUTE_CAPABILITY = (8, 0)
"""bf16 (the paper config's dtype) needs Ampere or newer."""


@dataclass(frozen=True)
class Row:
    """One check: what, its verdict, what was found, and the fix when it is not ``ok``."""

    check: str
    verdict: str
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class Expected:
    """What a package must be: ``spec`` (what cepo/verl admit) and ``tested`` (the pin of the tested stack)."""

    spec: SpecifierSet
    tested: str | None
    required: bool
    """Needed by the verl job (missing = FAIL); otherwise missing = warn."""


def _requirements(dist: str, extra: str = "") -> list[Requirement]:
    """``dist``'s requirements that apply with ``extra`` selected (and only with it, when ``extra`` is given)."""
    out = []
    for text in requires(dist) or []:
        req = Requirement(text)
        if req.marker is None:
            if not extra:
                out.append(req)
        elif req.marker.evaluate({"extra": extra}) and not req.marker.evaluate({"extra": ""}):
            out.append(req)
    return out


def _pin(req: Requirement) -> str | None:
    pins = [s.version for s in req.specifier if s.operator == "=="]
    return pins[0] if len(pins) == 1 else None


def tested_stack() -> dict[str, Expected]:
    """The stack of ``docs/install.md`` from the installed metadata (cepo's and verl's requirements).

    torch, vllm, transformers: verl's ``vllm`` extra pins (when the installed verl is the one cepo's ``gpu`` extra
    pins); verl: that pin; flash-attn: verl's flash-attn extra; trl, peft, ray: the ranges cepo/verl require.
    """
    base = {canonicalize_name(r.name): r for r in _requirements("cepo")}
    gpu = {canonicalize_name(r.name): r for r in _requirements("cepo", "gpu")}
    trl = {canonicalize_name(r.name): r for r in _requirements("cepo", "trl")}
    verl_pin = _pin(gpu["verl"]) if "verl" in gpu else None
    stack = {
        "verl": Expected(base["verl"].specifier, verl_pin, True),
        "trl": Expected(trl["trl"].specifier if "trl" in trl else SpecifierSet(), None, False),
        "peft": Expected(base["peft"].specifier, None, True),
    }
    verl_base: dict[str, Requirement] = {}
    vllm_pins: dict[str, str] = {}
    flash: str | None = None
    try:
        verl_base = {canonicalize_name(r.name): r for r in _requirements("verl")}
        vllm_pins = {canonicalize_name(r.name): p for r in _requirements("verl", "vllm") if (p := _pin(r))}
        flash_reqs = [r for r in requires("verl") or [] if r.startswith("flash-attn==")]
        flash = _pin(Requirement(flash_reqs[0].split(";")[0])) if flash_reqs else None
    except PackageNotFoundError:
        pass
    same_verl = verl_pin is not None and _installed("verl") == verl_pin
    for name in ("torch", "vllm", "transformers"):
        spec = base[name].specifier if name in base else SpecifierSet()
        stack[name] = Expected(spec, vllm_pins.get(name) if same_verl else None, True)
    stack["ray"] = Expected(verl_base["ray"].specifier if "ray" in verl_base else SpecifierSet(), None, True)
    stack["flash-attn"] = Expected(SpecifierSet(), flash if same_verl else None, False)
    return {name: stack[name] for name in ("torch", "vllm", "verl", "transformers", "trl", "peft", "ray", "flash-attn")}


def python_spec() -> SpecifierSet:
    """cepo's ``Requires-Python`` and verl's together."""
    spec = SpecifierSet(metadata("cepo")["Requires-Python"] or "")
    with contextlib.suppress(PackageNotFoundError):
        spec &= SpecifierSet(metadata("verl")["Requires-Python"] or "")
    return spec


def _installed(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def check_python() -> Row:
    here = ".".join(map(str, sys.version_info[:3]))
    spec = python_spec()
    if spec.contains(here):
        return Row("python", OK, f"{here} ({spec})")
    return Row("python", FAIL, f"{here} is outside {spec}", "use Python 3.11 or 3.12 (docs/install.md)")


def check_package(name: str, expected: Expected) -> Row:
    found = _installed(name)
    label = f"{name}"
    tested = f"tested {expected.tested}" if expected.tested else f"needs {expected.spec or 'any'}"
    if found is None:
        return Row(label, FAIL if expected.required else WARN, f"not installed ({tested})",
                   INSTALL_FIX if name != "trl" else 'pip install -e ".[trl]" (the TRL engine)')
    local = found.split("+")[0]
    if expected.spec and not expected.spec.contains(local, prereleases=True):
        return Row(label, FAIL, f"{found}, outside {expected.spec}", INSTALL_FIX)
    if expected.tested and local != expected.tested:
        return Row(label, WARN, f"{found}; the tested stack has {expected.tested}", INSTALL_FIX)
    return Row(label, OK, found + (f" (needs {expected.spec})" if expected.spec and not expected.tested else ""))


def _driver_cuda() -> str | None:
    """The CUDA version the NVIDIA driver supports (``nvidia-smi``'s "CUDA Version"), or ``None``."""
    try:
        import torch

        value = int(torch._C._cuda_getDriverVersion())
        if value > 0:
            return f"{value // 1000}.{value % 1000 // 10}"
    except Exception:  # no driver, no CUDA build
        pass
    return None


def _as_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".")[:2])


def check_gpus(cfg: Any) -> list[Row]:
    """CUDA, the GPUs (names, compute capability, count) and the driver's CUDA against torch's."""
    import torch

    built = torch.version.cuda
    if not torch.cuda.is_available():
        why = f"torch {torch.__version__} is a CPU build" if built is None else (
            f"torch {torch.__version__} (CUDA {built}) sees no GPU")
        fix = ("run on a GPU node (nvidia-smi must list its GPUs; check CUDA_VISIBLE_DEVICES), or train on CPU with "
               "the TRL engine (cepo train / cepo smoke)")
        return [Row("CUDA", FAIL, f"no GPU: {why}", fix),
                Row("GPUs", SKIP, "no GPU"), Row("driver CUDA", SKIP, "no GPU")]
    rows = [Row("CUDA", OK, f"torch {torch.__version__}, CUDA {built}")]
    count = torch.cuda.device_count()
    names = []
    low = []
    for i in range(count):
        major, minor = torch.cuda.get_device_capability(i)
        names.append(f"{torch.cuda.get_device_name(i)} (sm_{major}{minor})")
        if (major, minor) < MIN_COMPUTE_CAPABILITY:
            low.append(i)
    detail = f"{count} x " + ", ".join(sorted(set(names)))
    per_node = int(cfg.trainer.n_gpus_per_node)
    if low:
        rows.append(Row("GPUs", FAIL, detail + f"; GPU {low} below compute capability 8.0 (no bf16)",
                        "use Ampere (sm_80) or newer GPUs"))
    elif not os.environ.get("RAY_ADDRESS") and count < per_node:
        rows.append(Row("GPUs", FAIL, detail + f"; the config asks trainer.n_gpus_per_node={per_node}",
                        f"NGPUS={count} (trainer.n_gpus_per_node={count})"))
    else:
        rows.append(Row("GPUs", OK, detail + f"; trainer.n_gpus_per_node={per_node}"))
    driver = _driver_cuda()
    if driver is None:
        rows.append(Row("driver CUDA", WARN, "unknown (cannot ask the driver)", "check nvidia-smi's CUDA Version"))
    elif built is not None and _as_tuple(driver) < _as_tuple(built):
        rows.append(Row("driver CUDA", FAIL, f"driver supports CUDA {driver}, torch is built for CUDA {built}",
                        f"update the NVIDIA driver to one that supports CUDA {built}"))
    else:
        rows.append(Row("driver CUDA", OK, f"{driver} (torch's CUDA {built})"))
    return rows


def flash_attn_selected(cfg: Any) -> bool:
    override = cfg.actor_rollout_ref.model.get("override_config", {}) or {}
    return str(override.get("attn_implementation", "")) == "flash_attention_2"


def check_flash_attn(cfg: Any, expected: Expected) -> Row:
    """flash-attn importable with its compiled kernels (built for this torch) when the config selects it."""
    if not flash_attn_selected(cfg):
        return Row("flash-attn", SKIP, "not selected (attn_implementation=sdpa)")
    pinned = f"=={expected.tested}" if expected.tested else ""
    fix = (f"pip install flash-attn{pinned} --no-build-isolation (docs/install.md), or select "
           "actor_rollout_ref.model.override_config.attn_implementation=sdpa")
    row = check_package("flash-attn", Expected(expected.spec, expected.tested, True))
    if row.verdict == FAIL:
        return Row(row.check, FAIL, row.detail, fix)
    try:
        import flash_attn_2_cuda  # noqa: F401  (the compiled extension: fails when built for another torch)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return Row("flash-attn", FAIL, f"{row.detail}; its kernels do not load ({first})", fix)
    return row


def check_plugin(cfg: Any) -> Row:
    """cepo's verl plugin (the M-RoPE position-ids fix, trl 1.x beside verl): importable with its fix in place, and
    reaching verl's workers through the ``verl.plugins`` entry point (registered, not excluded by
    ``VERL_USE_EXTERNAL_PLUGINS``) and/or ``actor_rollout_ref.model.external_lib`` (cepo's configs add it)."""
    try:
        from cepo.integrations.verl.plugin import PLUGIN_MODULE, entry_point_cause, external_libs
    except Exception as err:  # install() raises when the fix is not in place (a verl whose modules changed)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return Row("verl plugin", FAIL, f"cepo's verl plugin does not load: {first}", INSTALL_FIX)
    cause = entry_point_cause()
    named = PLUGIN_MODULE in external_libs(cfg.actor_rollout_ref.model.get("external_lib"))
    if cause is None:
        return Row("verl plugin", OK, "registered, loaded by verl" + (" and named in external_lib" if named else ""))
    fix = "unset VERL_USE_EXTERNAL_PLUGINS or add cepo to it; pip install -e . (cepo pip-installed)"
    if named:
        return Row("verl plugin", WARN, f"{cause}; the workers still import it (actor_rollout_ref.model.external_lib)",
                   fix)
    return Row("verl plugin", FAIL, cause, f"{fix}; or set actor_rollout_ref.model.external_lib={PLUGIN_MODULE}")


def check_ray(cfg: Any) -> Row:
    """The cluster of ``RAY_ADDRESS``: reachable, and its GPUs against the job's resource pools."""
    address = os.environ.get("RAY_ADDRESS", "").strip()
    if not address:
        return Row("Ray cluster", SKIP, "RAY_ADDRESS not set (the job starts a local Ray on this node)")
    from cepo.integrations.verl.resources import cluster_gpus, cluster_gpus_from_dashboard, required_pools, shortage

    fix = "start the head (ray start --head) or fix RAY_ADDRESS (http://head:8265, or the GCS address head:6379)"
    try:
        if address.startswith(("http://", "https://")):
            gpus = cluster_gpus_from_dashboard(address)
        else:
            import ray

            ray.init(address=address, log_to_driver=False, logging_level="ERROR")
            try:
                gpus = cluster_gpus()
            finally:
                ray.shutdown()
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return Row("Ray cluster", FAIL, f"cannot reach RAY_ADDRESS={address}: {first}", fix)
    message = shortage(required_pools(cfg), gpus, available=False)
    if message is not None:
        return Row("Ray cluster", FAIL, f"{address}: {gpus.describe()}", message)
    return Row("Ray cluster", OK, f"{address}: {gpus.describe()} ({gpus.n_available} free)")


def check_model(path: str) -> tuple[Row, Any]:
    """``MODEL_PATH`` (``actor_rollout_ref.model.path``): its config and processor load (no weights).

    A hub id is looked up in this node's cache only (no download, no retries): not cached is a warning, since
    the job downloads it at start when the node has network.
    """
    from cepo.integrations.trl.data import load_processing_class

    source = path
    local = Path(path).expanduser()
    if not local.exists() and not path.startswith(("/", ".", "~")) and path.count("/") == 1:
        from huggingface_hub import snapshot_download

        try:
            source = snapshot_download(path, local_files_only=True)
        except Exception:
            return Row("MODEL_PATH", WARN, f"{path}: not in this node's Hugging Face cache; the job downloads it",
                       f"hf download {path} (or set MODEL_PATH to a local folder) before the job"), None
    try:
        processor = load_processing_class(source)
    except (ValueError, OSError) as err:
        return Row("MODEL_PATH", FAIL, str(err).splitlines()[0].replace(source, path),
                   "set MODEL_PATH to a local model folder or a hub id this node can download"), None
    return Row("MODEL_PATH", OK, f"{path}: config and {type(processor).__name__}"), processor


def _first_rows(file: Path, rows: int, into: Path) -> Path:
    """A parquet holding the first ``rows`` rows of ``file`` (same name, in ``into``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    reader = pq.ParquetFile(file)
    batch = next(reader.iter_batches(batch_size=rows), None)
    table = pa.Table.from_batches([batch]) if batch is not None else reader.schema_arrow.empty_table()
    out = into / file.name
    pq.write_table(table, out)
    return out


def check_data(cfg: Any, processor: Any, rows: int = DATA_ROWS) -> list[Row]:
    """``data.train_files`` / ``data.val_files``: their first ``rows`` rows through the training loader's checks."""
    from cepo.data.files import read_data_file
    from cepo.integrations.trl.data import load_train_dataset

    out = []
    for key in ("train_files", "val_files"):
        files = cfg.data.get(key)
        files = [files] if isinstance(files, str) else list(files or [])
        for name in files:
            label = f"data.{key}"
            path = Path(str(name)).expanduser()
            try:
                read_data_file(path, label=f"data.{key} entry")  # missing, empty, unreadable: named as training does
                with tempfile.TemporaryDirectory(prefix="cepo-doctor-") as tmp:
                    head = _first_rows(path, rows, Path(tmp)) if path.suffix == ".parquet" else path
                    try:
                        data = load_train_dataset(str(head), cfg.data.prompt_key, cfg.data.image_key,
                                                  processing_class=processor,
                                                  max_prompt_length=cfg.data.max_prompt_length if processor else None,
                                                  filter_overlong_prompts=bool(cfg.data.filter_overlong_prompts),
                                                  truncation=str(cfg.data.truncation))
                    except (ValueError, FileNotFoundError) as err:
                        raise type(err)(str(err).replace(str(head), str(path))) from None
            except (ValueError, FileNotFoundError) as err:
                out.append(Row(label, FAIL, str(err).splitlines()[0],
                               "run scripts/prepare_geo3k.py --local-dir $DATA_DIR, or fix the rows named"))
                continue
            lengths = "" if processor is not None else " (prompt lengths not checked: MODEL_PATH failed)"
            out.append(Row(label, OK, f"{path}: first {len(data)} rows pass the training checks{lengths}"))
    return out


def _weights_bytes(model_path: str) -> int | None:
    local = Path(model_path).expanduser()
    if not local.is_dir():
        return None
    return sum(p.stat().st_size for p in local.glob("*.safetensors")) or None


def _size(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.1f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:.0f} MiB"


def check_disk(cfg: Any) -> Row:
    """Free space under ``trainer.default_local_dir`` against the checkpoints the run keeps (an estimate)."""
    target = Path(str(cfg.trainer.default_local_dir)).expanduser().absolute()
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    weights = _weights_bytes(str(cfg.actor_rollout_ref.model.path))
    steps, every = int(cfg.trainer.total_training_steps or 0), int(cfg.trainer.save_freq or 0)
    saves = max(1, steps // every) if every > 0 else 1
    keep = cfg.trainer.get("max_actor_ckpt_to_keep")
    if keep:
        saves = min(saves, int(keep))
    # per checkpoint: the weights in bf16 + the fp32 master/optimizer shards verl's FSDP saves (~3x); unknown: 10 GiB
    per_save = 3 * weights if weights else 10 * 2**30
    need = saves * per_save
    detail = f"{_size(free)} free at {existing}; ~{_size(need)} for {saves} checkpoint(s)"
    if free < need:
        return Row("disk", FAIL, detail, "free space, point trainer.default_local_dir (OUTPUT_DIR) elsewhere, or "
                   "set trainer.max_actor_ckpt_to_keep")
    return Row("disk", OK, detail)


def run_checks(cfg: Any) -> list[Row]:
    """Every row, in the order of the module docstring."""
    stack = tested_stack()
    rows = [check_python()]
    rows += [check_package(name, expected) for name, expected in stack.items() if name != "flash-attn"]
    rows += check_gpus(cfg)
    rows.append(check_flash_attn(cfg, stack["flash-attn"]))
    rows.append(check_plugin(cfg))
    rows.append(check_ray(cfg))
    model_row, processor = check_model(str(cfg.actor_rollout_ref.model.path))
    rows.append(model_row)
    rows += check_data(cfg, processor)
    rows.append(check_disk(cfg))
    return rows


def format_table(rows: list[Row]) -> str:
    """A fixed-width table: check, verdict, what was found; the fix on the next line for a row that is not ok."""
    width = max(len(r.check) for r in rows)
    lines = [f"{'check':<{width}}  {'verdict':<7}  found", f"{'-' * width}  -------  -----"]
    for r in rows:
        lines.append(f"{r.check:<{width}}  {r.verdict:<7}  {r.detail}")
        if r.fix and r.verdict != OK:
            lines.append(f"{'':<{width}}  {'':<7}  fix: {r.fix}")
    failed = [r.check for r in rows if r.verdict == FAIL]
    lines.append("ready" if not failed else f"not ready: {len(failed)} failing row(s): {', '.join(failed)}")
    return "\n".join(lines)


def as_json(rows: list[Row]) -> dict[str, Any]:
    return {"ready": all(r.verdict != FAIL for r in rows), "rows": [asdict(r) for r in rows]}


def doctor(config_name: str, overrides: list[str], *, json_output: bool = False,
           say: Callable[[str], None] = print) -> int:
    """Compose the method config (``MODEL_PATH``, ``DATA_DIR``, ``NGPUS`` from the environment, as the train
    scripts do), run every check, print the table (or JSON). Returns 0 when ready, 1 otherwise.

    Raises:
        ConfigError: the config does not compose (the CLI prints it in one line, exit 2).
    """
    import json

    from cepo.recipes import compose_method_config

    cfg = compose_method_config(config_name, overrides)
    rows = run_checks(cfg)
    say(json.dumps(as_json(rows), indent=2) if json_output else format_table(rows))
    return 0 if all(r.verdict != FAIL for r in rows) else 1


def add_parser(sub: Any) -> None:
    """``cepo doctor [--config-name NAME] [--json] [overrides]`` on the ``cepo`` command line."""
    parser = sub.add_parser(
        "doctor", help="check this node for the verl job in seconds: stack, GPUs, plugin, Ray, model, data, disk",
        description="One row per check with its verdict and the fix; exit 0 when ready, 1 otherwise. MODEL_PATH, "
                    "DATA_DIR, NGPUS and RAY_ADDRESS are read from the environment as the train scripts do.")
    parser.add_argument("--config-name", default="cepo", help="method YAML in cepo/configs (default cepo)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    parser.add_argument("overrides", nargs="*", help="Hydra-style overrides, e.g. trainer.n_gpus_per_node=4")
    parser.set_defaults(func=lambda ns: doctor(ns.config_name, ns.overrides, json_output=ns.json))
