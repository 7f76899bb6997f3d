"""verl's worker path on data-parallel shards whose rows all have one length (verl issue #7899; docs/verl.md,
"Known verl issues").

A worker reads its shard from TransferQueue, which packs the per-sample (4, L) M-RoPE position ids with
``torch.nested.as_nested_tensor(layout=torch.jagged)``; rows of one length come back ragged on the 4 channels, and
verl's ``maybe_fix_3d_position_ids`` (first line of every engine ``infer_batch``) relabels them ragged on the sequence
without rebuilding them: the model got garbage positions and the log-probs of such a shard were off by 0.04-0.1
(student pass and teacher pass alike). cepo's verl plugin (cepo/integrations/verl/plugin.py) rebuilds such tensors.

Checked here: the layouts the fix sees (no Ray), and the student pass (verl's own ``_compute_old_log_prob``) plus an
OPSD teacher pass through the worker harness (_harness.py) on two shards of 4 equal-length rows each, against a
direct forward (1e-4), with the padded forward and with the packed one (``use_remove_padding=true``: verl's monkey
patch on the model, sdpa attention on CPU).
"""

from __future__ import annotations

import contextlib
import pickle

import pytest
import torch

ray = pytest.importorskip("ray")
tq = pytest.importorskip("transfer_queue")

import _harness as h  # noqa: E402
from _harness import N  # noqa: E402
from tensordict import TensorDict  # noqa: E402

from cepo.integrations.verl.credit import POS_KEY  # noqa: E402
from cepo.integrations.verl.trainer import TEACHER_PARTITION  # noqa: E402
from cepo.teacher import STUDENT_TEMPLATE, build_teacher_inputs, teacher_logprobs  # noqa: E402

# every response of a group has the same number of tokens (asserted below), so each DP rank's shard (one group of
# N rollouts, and for OPSD the group's N r+ teacher rows) is a single sequence length
EQUAL_RESPONSES = [[r"so \boxed{ANS}", r"it is \boxed{17}", "no box at all", r"thus \boxed{ANS}"],
                   [r"so \boxed{ANS}", r"it is \boxed{ANS}", r"hence \boxed{ANS}", r"thus \boxed{ANS}"]]
EQUAL_SCORES = [[1.0, 0.1, 0.0, 1.0], [1.0, 0.9, 1.0, 0.9]]


def _rows(lengths, channels=4):
    return [torch.stack([torch.arange(n) + 1000 * i + 100 * c for c in range(channels)]) for i, n in enumerate(lengths)]


def _as_read_from_tq(rows):
    """What a worker's TransferQueue read gives for these per-sample rows (AsyncSimpleStorageManager packing)."""
    from transfer_queue.storage.managers.simple_storage_manager import AsyncSimpleStorageManager

    pack = AsyncSimpleStorageManager._pack_field_values
    return TensorDict({"position_ids": pack(rows), "input_ids": pack([torch.arange(r.shape[1]) for r in rows])},
                      batch_size=[len(rows)])


@pytest.mark.parametrize("lengths", [[23, 23, 23, 23], [16, 16, 16, 16], [23], [4], [23, 25, 24]],
                         ids=["equal", "equal-L=4B", "one-row", "one-row-L=4", "unequal"])
def test_position_ids_reach_the_engine_in_verl_layout(lengths):
    """After the engine's ``maybe_fix_3d_position_ids`` the rows are intact in verl's layout: ``values`` (4, sum L)
    (what the packed forward reads) and ``to_padded_tensor`` (what the padded forward reads)."""
    import verl.workers.engine.base as engine_base
    import verl.workers.engine_workers as engine_workers

    rows = _rows(lengths)
    data = _as_read_from_tq(rows)
    if len(set(lengths)) == 1:
        assert data["position_ids"]._ragged_idx == 1  # the TransferQueue layout this is about
    engine_base.maybe_fix_3d_position_ids(data)  # infer_batch / train_batch
    pos = data["position_ids"]
    assert pos._ragged_idx == 2
    torch.testing.assert_close(pos.values(), torch.cat(rows, dim=1), rtol=0, atol=0)
    padded = torch.nested.to_padded_tensor(pos, padding=0, output_size=(len(rows), 4, max(lengths)))
    torch.testing.assert_close(padded, torch.nested.as_nested_tensor(rows, layout=torch.jagged).to_padded_tensor(0)
                               if len(set(lengths)) > 1 else torch.stack(rows), rtol=0, atol=0)
    assert [tuple(r.shape) for r in pos.unbind()] == [(4, n) for n in lengths]
    engine_workers.maybe_fix_3d_position_ids(data)  # train_mini_batch: idempotent
    torch.testing.assert_close(data["position_ids"].values(), torch.cat(rows, dim=1), rtol=0, atol=0)


def test_verl_layout_after_a_pickle_round_trip_is_kept():
    """The case verl's function exists for: a consolidated, pickled TensorDict loses ``_ragged_idx`` (2 -> 1) but
    keeps verl's values/offsets; it is relabelled, not rebuilt, including for equal lengths."""
    from verl.utils.tensordict_utils import maybe_fix_3d_position_ids, nested_tensor_from_tensor_list

    for lengths in ([5, 7, 6], [5, 5, 5]):
        rows = _rows(lengths)
        ids = torch.nested.as_nested_tensor([torch.arange(n) for n in lengths], layout=torch.jagged)
        td = TensorDict({"position_ids": nested_tensor_from_tensor_list(rows, ragged_idx=2), "input_ids": ids},
                        batch_size=[len(rows)])
        td = pickle.loads(pickle.dumps(td.consolidate()))
        maybe_fix_3d_position_ids(td)
        assert [tuple(r.shape) for r in td["position_ids"].unbind()] == [(4, n) for n in lengths]
        torch.testing.assert_close(td["position_ids"].values(), torch.cat(rows, dim=1), rtol=0, atol=0)


@contextlib.contextmanager
def _packed_forward(model):
    """verl's ``apply_monkey_patch(model, use_remove_padding=True)`` (what the FSDP engine applies when it builds the
    actor), undone on exit: it patches the Qwen3-VL classes, which the session's other tests use unpatched."""
    from transformers.integrations import flash_attention
    from transformers.models.qwen3_vl import modeling_qwen3_vl as qwen3_vl
    from transformers.models.qwen3_vl_moe import modeling_qwen3_vl_moe as qwen3_vl_moe
    from verl.models.transformers.monkey_patch import apply_monkey_patch

    assert model.config._attn_implementation == "sdpa"  # the packed path needs flash-attn on GPU, sdpa here
    mp = pytest.MonkeyPatch()
    try:
        for module, prefix in ((qwen3_vl, "Qwen3VL"), (qwen3_vl_moe, "Qwen3VLMoe")):
            for cls in ("Model", "ForConditionalGeneration"):
                mp.setattr(getattr(module, prefix + cls), "forward", getattr(module, prefix + cls).forward)
            vision = getattr(module, prefix + "VisionModel")
            mp.setattr(vision, "fast_pos_embed_interpolate", vision.fast_pos_embed_interpolate)
        mp.setattr(flash_attention, "_flash_attention_forward", flash_attention._flash_attention_forward)
        apply_monkey_patch(model=model, use_remove_padding=True)
        yield
    finally:
        mp.undo()


@pytest.mark.parametrize("use_remove_padding", [False, True], ids=["padded", "packed"])
def test_equal_length_shards_through_verl_workers(use_remove_padding, verl_cpu, tiny_vl_dir, vl_processor, vl_model,
                                                  geo):
    cfg = h.config(tiny_vl_dir, method="opsd", use_remove_padding=use_remove_padding,  # its sampled-token teacher pass
                   overrides=["cepo.distill.mode=sampled_token", "cepo.distill.teacher=live",
                              "cepo.distill.loss_agg=token-mean"])
    wg = h.worker_group(cfg, vl_model)
    meta, rows = h.put_rollouts(vl_processor, vl_processor.tokenizer, geo, f"eq{int(use_remove_padding)}",
                                responses=EQUAL_RESPONSES, scores=EQUAL_SCORES)
    trainer = h.trainer(cfg, vl_processor, wg, global_steps=1)
    with _packed_forward(vl_model) if use_remove_padding else contextlib.nullcontext():
        trainer._compute_old_log_prob(meta, {})  # verl's student pass, then the OPSD teacher pass (r+ on every row)

    assert [partition for partition, _ in wg.log_prob_calls] == ["train", TEACHER_PARTITION]
    assert len(wg.log_prob_calls[1][1]) == 2 * N  # no padding rows: rank r scores group r's teacher rows
    out = tq.kv_batch_get(keys=meta.keys, partition_id="train", select_fields=["old_log_probs", POS_KEY])
    resp = h.padded(r["response_ids"] for r in rows).long()
    mask = h.padded(torch.ones_like(r["response_ids"]) for r in rows).long()
    messages, images = [r["messages"] for r in rows], [[r["image"]] for r in rows]
    student_inputs = build_teacher_inputs(vl_processor, messages, [""] * len(rows), resp, mask, images,
                                          template=STUDENT_TEMPLATE)
    teacher_inputs = build_teacher_inputs(vl_processor, messages, [r["answer"] for r in rows], resp, mask, images,
                                          template=trainer.cepo.teacher_template)
    for inputs in (student_inputs, teacher_inputs):  # each shard (group) is one length, in both passes
        lengths = inputs.attention_mask.sum(-1)
        assert all(len(set(lengths[g * N:(g + 1) * N].tolist())) == 1 for g in range(2)), lengths
    torch.testing.assert_close(h.padded(out["old_log_probs"].unbind()), teacher_logprobs(vl_model, student_inputs),
                               rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(h.padded(out[POS_KEY].unbind()), teacher_logprobs(vl_model, teacher_inputs),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("use_remove_padding", [False, True], ids=["padded", "packed"])
def test_shard_of_padding_rows_through_verl_workers(use_remove_padding, verl_cpu, tiny_vl_dir, vl_processor,
                                                    vl_model, geo):
    """CEPO with 4 teacher rows (group 0's r+; its only rejected rollout has no answer, so no r-; group 1 has A = 0):
    the trainer pads the teacher batch with 4 two-token rows, which all land on DP rank 1. That shard was one length
    too, and crashed the worker (padded and packed)."""
    cfg = h.config(tiny_vl_dir, method="cepo", use_remove_padding=use_remove_padding)
    wg = h.worker_group(cfg, vl_model)
    responses = [[r"so \boxed{ANS}", "no box at all", r"\boxed{ANS}", r"it is \boxed{ANS}"], h.RESPONSES[0]]
    meta, rows = h.put_rollouts(vl_processor, vl_processor.tokenizer, geo, f"pad{int(use_remove_padding)}",
                                responses=responses, scores=[[1.0, 0.0, 1.0, 1.0], [1.0] * N])
    trainer = h.trainer(cfg, vl_processor, wg, global_steps=1)
    with _packed_forward(vl_model) if use_remove_padding else contextlib.nullcontext():
        trainer._compute_old_log_prob(meta, {})

    keys = wg.log_prob_calls[1][1]
    assert len(keys) == 2 * N and all("::pad" in k for k in keys[N:])  # rank 1: padding rows only
    stored = h.padded(tq.kv_batch_get(keys=meta.keys[:N], partition_id="train", select_fields=[POS_KEY])[POS_KEY]
                      .unbind())
    resp = h.padded(r["response_ids"] for r in rows[:N]).long()
    mask = h.padded(torch.ones_like(r["response_ids"]) for r in rows[:N]).long()
    direct = teacher_logprobs(vl_model, build_teacher_inputs(
        vl_processor, [r["messages"] for r in rows[:N]], [r["answer"] for r in rows[:N]], resp, mask,
        [[r["image"]] for r in rows[:N]], template=trainer.cepo.teacher_template))
    torch.testing.assert_close(stored, direct, rtol=1e-4, atol=1e-4)
