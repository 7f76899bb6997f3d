"""Peak memory of the OPSD / SDPO divergence losses per ``cepo.distill.mode`` (issue 16, item 5), on CPU.

Each measurement runs in a fresh subprocess: it allocates the inputs the loss receives (the student forward's
(B, T, V) bf16 logits with ``requires_grad``, the teacher forward's (B, T, V) bf16 logits or the teacher's (B, T, k)
top-k), resets the process's peak RSS (``/proc/self/clear_refs``), runs the loss and its backward, and reports
the peak RSS above the inputs (``VmHWM``; glibc's mmap threshold is fixed so that freed tensors leave the RSS).
That extra memory is the loss's: the student logits' gradient (bf16, the backward's own) plus the loss's
temporaries.

Model of the extra memory: ``extra = a·(B·T·V) + c·E`` with ``E`` the elements of one (B, chunk, V) chunk
(``cepo.algorithms.token_chunk_size``). Two shapes with the same chunk and different T give ``a`` and ``c``; the
table extrapolates to Qwen3-VL-2B (V = 151,936, T = 2048, micro-batch 4, the default chunk budget). The unchunked
reference (``full_unchunked``: log-softmax of float32 copies of both logit sets, TRL's ``full_logits`` form) shows
what chunking saves.

    python benchmarks/distill_memory.py            # writes benchmarks/results/distill_memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "distill_memory.json"
MODES = ("topk_teacher", "topk_student", "full", "full_unchunked")
QWEN = {"batch": 4, "length": 2048, "vocab": 151_936, "k": 100}


def _vm_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure(mode: str, batch: int, length: int, vocab: int, k: int, chunk: int) -> dict[str, Any]:
    """One measurement (run it in a fresh process): peak RSS above the inputs during loss + backward, in MiB."""
    import torch

    from cepo.algorithms import logits_distillation_loss, topk_distillation_loss

    torch.manual_seed(0)
    student = torch.randn(batch, length, vocab, dtype=torch.bfloat16).requires_grad_()
    mask = torch.ones(batch, length)
    teacher = torch.randn(batch, length, vocab, dtype=torch.bfloat16) if mode != "topk_teacher" else None
    top = None
    if mode == "topk_teacher":
        top = (torch.randn(batch, length, k).log_softmax(-1), torch.randint(0, vocab, (batch, length, k)))
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    base = _vm_kib("VmRSS")
    if mode == "topk_teacher":
        loss, _ = topk_distillation_loss(student, top[0], top[1], mask, 0.5, True, float(batch * length),
                                         chunk_size=chunk)
    elif mode == "full_unchunked":
        s = torch.log_softmax(student.float(), -1)
        t = torch.log_softmax(teacher.float(), -1)
        m = torch.logaddexp(s + torch.log(torch.tensor(0.5)), t + torch.log(torch.tensor(0.5)))
        loss = (0.5 * (s.exp() * (s - m)).sum(-1) + 0.5 * (t.exp() * (t - m)).sum(-1)).mean()
    else:
        loss, _ = logits_distillation_loss(student, teacher, mask, 0.5, float(batch * length),
                                           topk=k if mode == "topk_student" else None, support="student",
                                           tail=True, chunk_size=chunk)
    loss.backward()
    peak = _vm_kib("VmHWM")
    return {"mode": mode, "batch": batch, "length": length, "vocab": vocab, "k": k, "chunk": chunk,
            "extra_mib": (peak - base) / 1024, "logits_mib": batch * length * vocab * 2 / 2**20}


def _run(mode: str, batch: int, length: int, vocab: int, k: int, chunk: int) -> dict[str, Any]:
    code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); "
            f"import distill_memory as d; print(json.dumps(d.measure({mode!r}, {batch}, {length}, {vocab}, {k}, "
            f"{chunk})))")
    # a fixed mmap threshold: every large tensor is its own mapping, returned to the OS when freed (glibc's dynamic
    # threshold would otherwise keep freed blocks in the heap and inflate the peak)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 17), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--lengths", type=int, nargs=2, default=(256, 512))
    parser.add_argument("--chunk", type=int, default=32)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    from cepo.algorithms import token_chunk_size

    rows = [_run(mode, args.batch, length, args.vocab, QWEN["k"], args.chunk)
            for mode in MODES for length in args.lengths]
    qwen_chunk = token_chunk_size(QWEN["batch"], QWEN["vocab"])
    qwen_btv = QWEN["batch"] * QWEN["length"] * QWEN["vocab"]
    table = {}
    for mode in MODES:
        small, large = (r for r in rows if r["mode"] == mode)
        btv = [r["batch"] * r["length"] * r["vocab"] for r in (small, large)]
        a = (large["extra_mib"] - small["extra_mib"]) / (btv[1] - btv[0])  # MiB per (B, T, V) element
        chunk_elements = args.batch * args.chunk * args.vocab
        c = max(0.0, small["extra_mib"] - a * btv[0]) / chunk_elements
        per_chunk = c * QWEN["batch"] * qwen_chunk * QWEN["vocab"] if mode != "full_unchunked" else 0.0
        table[mode] = {"bytes_per_btv_element": a * 2**20, "extra_mib_qwen": a * qwen_btv + per_chunk}
    logits = qwen_btv * 2 / 2**20
    result = {
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
        "measured": rows,
        "qwen3_vl_2b": {**QWEN, "chunk": qwen_chunk, "logits_bf16_mib": logits, "modes": table,
                        "note": "extra = the loss + backward above the forwards' own bf16 logits (student, and the "
                                "teacher's in the topk_student / full modes: add logits_bf16_mib for it)"},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for mode, entry in table.items():
        print(f"{mode:15s} {entry['bytes_per_btv_element']:5.2f} B/elt  Qwen3-VL-2B extra "
              f"{entry['extra_mib_qwen']:9.0f} MiB (one bf16 logits tensor {logits:.0f} MiB)")


if __name__ == "__main__":
    main()
