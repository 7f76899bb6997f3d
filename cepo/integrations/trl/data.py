"""Training data for the TRL engine: verl data files or Geo3k columns -> TRL's conversational layout.

``load_train_dataset`` reads ``data.train_files`` (``.parquet``, ``.json``/``.jsonl``, ``.arrow`` or a
``save_to_disk`` directory, see ``cepo.data.files``) and checks every row before any model is loaded:

* answers follow ``cepo.data.answers`` (a one-element list is its element; several answers or none fail,
  naming the file and rows);
* images that cannot be opened (random bytes, a missing file) fail naming the file, row and column, or
  are dropped with a count when ``on_bad_image="skip"`` (``cepo train --on-bad-image skip``);
* prompts longer than ``data.max_prompt_length`` tokens, counted as TRL will feed them (chat template with
  the run's ``chat_template_kwargs``, e.g. Qwen3's ``enable_thinking=false`` and its empty think block,
  generation prompt and image tokens), follow verl's ``data.filter_overlong_prompts``: ``true`` drops them
  and prints how many; ``false`` fails naming the rows. verl 0.9.1's ``RLHFDataset`` reads
  ``data.truncation`` but no longer applies it (its rollout refuses over-long multimodal prompts and
  left-truncates text ones); the TRL engine never cuts a prompt (image tokens and the teacher contexts
  are rebuilt from the messages), so any ``truncation`` value fails over-long prompts naming them.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from cepo.data.answers import answer_problems, answer_text, describe_answer_problems
from cepo.data.files import read_data_file
from cepo.data.geo3k import IMAGE_PLACEHOLDER, student_prompt
from cepo.data.images import describe_bad_images, image_problems

TRUNCATION_VALUES = ("error", "left", "right", "middle")
_ROW, _FILE = "_cepo_row", "_cepo_file"  # where each row came from, for messages; removed before training
"""verl's ``data.truncation`` values (``verl.utils.torch_functional.postprocess_data``)."""



def _without_rows(dataset: Any, rows: Sequence[int], if_empty: str) -> Any:
    """``dataset`` without ``rows``; ``ValueError(if_empty)`` when nothing is left."""
    dropped = set(rows)
    out = dataset.select([i for i in range(len(dataset)) if i not in dropped])
    if len(out) == 0:
        raise ValueError(if_empty)
    return out

def _answer(row: dict[str, Any]) -> Any:
    value = row.get("answer")
    if value is not None and not (isinstance(value, str) and not value.strip()):
        return value
    reward_model = row.get("reward_model") or {}
    return reward_model.get("ground_truth") if isinstance(reward_model, dict) else None


def _strip_placeholders(messages: Any) -> list[dict[str, Any]]:
    if isinstance(messages, str):
        return [{"role": "user", "content": student_prompt(messages)}]
    out = []
    for message in messages:
        content = message["content"]
        if isinstance(content, str):
            content = content.replace(IMAGE_PLACEHOLDER, "").strip()
        out.append({"role": message["role"], "content": content})
    return out


def _decoded_images(dataset: Any, column: str) -> Any:
    """Cast paths / ``{"bytes", "path"}`` structs to ``datasets`` images, so TRL receives PIL images."""
    import datasets

    feature = dataset.features[column]
    inner = feature.feature if isinstance(feature, datasets.List) else feature
    if isinstance(inner, datasets.Image):
        return dataset
    target = datasets.List(datasets.Image()) if isinstance(feature, datasets.List) else datasets.Image()
    return dataset.cast_column(column, target)


def _load_one(file: str, prompt_key: str, image_key: str, on_bad_image: str) -> Any:
    """One data file in the conversational layout, its answers and images checked."""
    dataset = read_data_file(file, label="data.train_files entry")
    key = prompt_key
    if key not in dataset.column_names and "problem" in dataset.column_names:
        key = "problem"
    if key not in dataset.column_names:
        raise ValueError(
            f"data.prompt_key={prompt_key!r} is not a column of {file} (columns: {dataset.column_names}); "
            "set data.prompt_key to the prompt column"
        )
    if "answer" not in dataset.column_names and "reward_model" not in dataset.column_names:
        raise ValueError(
            f"{file} has no 'answer' column (nor verl's reward_model.ground_truth); columns: {dataset.column_names}; "
            "add the verifiable final answer of every row as an 'answer' column"
        )
    problems = answer_problems(_answer(row) for row in dataset.select_columns(
        [c for c in ("answer", "reward_model") if c in dataset.column_names]))
    if problems:
        raise ValueError(
            f"{file}: {len(problems)} row(s) without a usable answer (answer or reward_model.ground_truth): "
            f"{describe_answer_problems(problems)}; fix or remove those rows"
        )
    dataset = dataset.add_column(_ROW, list(range(len(dataset)))).add_column(_FILE, [file] * len(dataset))
    if image_key in dataset.column_names:
        bad = image_problems(dataset, image_key)
        if bad:
            rows = sorted({b.row for b in bad})
            if on_bad_image != "skip":
                raise ValueError(
                    f"{file}: {len(rows)} row(s) with an image that cannot be opened: {describe_bad_images(bad)}; "
                    "fix or remove them, or drop them with --on-bad-image skip"
                )
            print(
                f"data: {file}: skipped {len(rows)} of {len(dataset)} row(s) whose image cannot be opened "
                f"(--on-bad-image skip): {describe_bad_images(bad)}",
                file=sys.stderr,
            )
            dataset = _without_rows(dataset, rows, f"{file}: no row is left after skipping the rows with unreadable "
                                    "images")
        dataset = _decoded_images(dataset, image_key)

    def convert(row: dict[str, Any]) -> dict[str, Any]:
        return {"prompt": _strip_placeholders(row[key]), "answer": answer_text(_answer(row))}

    keep = (image_key, _ROW, _FILE)
    out = dataset.map(convert, remove_columns=[c for c in dataset.column_names if c not in keep])
    if image_key in out.column_names and image_key != "images":
        out = out.rename_column(image_key, "images")
    return out


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """No ``datasets`` progress bars ("Generating train split", "Map") while loading: our lines say what matters."""
    from datasets.utils import logging as ds_logging

    was_enabled = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            ds_logging.enable_progress_bar()


def _where(dataset: Any, i: int) -> str:
    """``"train.parquet row 3"`` for row ``i`` (its index in its own file), or ``"row 3"``."""
    if _ROW in dataset.column_names:
        return f"{dataset[i][_FILE]} row {dataset[i][_ROW]}"
    return f"row {i}"


def prompt_length(
    processing_class: Any,
    prompt: list[dict[str, Any]],
    images: Sequence[Any] | None,
    chat_template_kwargs: dict[str, Any] | None = None,
) -> int:
    """Tokens of one prompt as TRL feeds it: chat template with the generation prompt and the run's
    ``chat_template_kwargs`` (TRL's ``GRPOConfig.chat_template_kwargs``; Qwen3's ``enable_thinking=False`` appends
    an empty ``<think>\n\n</think>\n\n`` block), image tokens included."""
    from transformers import ProcessorMixin

    extra = dict(chat_template_kwargs or {})
    if isinstance(processing_class, ProcessorMixin):
        from trl.data_utils import prepare_multimodal_messages

        messages = prepare_multimodal_messages(prompt, images=list(images or []))
        out = processing_class.apply_chat_template(
            conversation=[messages], add_generation_prompt=True, tokenize=True, return_dict=True, **extra
        )
        return len(out["input_ids"][0])
    out = processing_class.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True,
                                               **extra)
    return len(out["input_ids"])


def apply_max_prompt_length(
    dataset: Any,
    processing_class: Any,
    max_prompt_length: int,
    filter_overlong_prompts: bool,
    truncation: str = "error",
    source: str = "data.train_files",
    chat_template_kwargs: dict[str, Any] | None = None,
) -> Any:
    """Drop (``filter_overlong_prompts``) or refuse prompts longer than ``max_prompt_length`` tokens, counted
    with the run's ``chat_template_kwargs`` (:func:`prompt_length`)."""
    if truncation not in TRUNCATION_VALUES:
        raise ValueError(f"data.truncation={truncation!r} is not one of {', '.join(TRUNCATION_VALUES)}")
    if int(max_prompt_length) <= 0:
        raise ValueError(f"data.max_prompt_length={max_prompt_length} must be a positive number of tokens")
    lengths = []
    for i, row in enumerate(dataset):
        try:
            lengths.append(prompt_length(processing_class, row["prompt"], row.get("images"), chat_template_kwargs))
        except Exception as err:  # a chat template or processor that cannot take this row
            raise ValueError(f"{source}: cannot count the prompt tokens of {_where(dataset, i)}: {err}") from None
    long_rows = [i for i, n in enumerate(lengths) if n > max_prompt_length]
    if not long_rows:
        return dataset
    shown = ", ".join(f"{_where(dataset, i)} ({lengths[i]} tokens)" for i in long_rows[:3])
    more = f" and {len(long_rows) - 3} more" if len(long_rows) > 3 else ""
    if filter_overlong_prompts:
        print(
            f"data: dropped {len(long_rows)} of {len(dataset)} prompt(s) longer than data.max_prompt_length="
            f"{max_prompt_length} tokens (data.filter_overlong_prompts=true): {shown}{more}",
            file=sys.stderr,
        )
        out = _without_rows(dataset, long_rows, f"{source}: every prompt is longer than data.max_prompt_length="
                            f"{max_prompt_length} tokens (longest {max(lengths)}); raise data.max_prompt_length")
        return out
    cut = "" if truncation == "error" else (
        f" (data.truncation={truncation} is not applied on the TRL engine: a prompt is never cut)"
    )
    raise ValueError(
        f"{source}: {len(long_rows)} prompt(s) longer than data.max_prompt_length={max_prompt_length} tokens: "
        f"{shown}{more}{cut}; raise data.max_prompt_length or drop them with data.filter_overlong_prompts=true"
    )


def check_dataset_size(num_rows: int, args: Any, fix: str = "per_device_train_batch_size") -> None:
    """Fail unless the data fills one generation batch: TRL's sampler drops an incomplete batch, so fewer
    prompts than one step needs would train 0 steps and save an untrained model. ``fix`` names the option."""
    need = int(args.generation_batch_size) // int(args.num_generations)
    if num_rows < need:
        raise ValueError(
            f"the training data has {num_rows} prompt(s), fewer than one step needs ({need} prompts x "
            f"{args.num_generations} generations); add rows or lower {fix}"
        )


def load_processing_class(path: str, key: str = "actor_rollout_ref.model.path") -> Any:
    """The processor of a vision-language model, or the tokenizer of a text-only one (cheap: no weights)."""
    from transformers import AutoConfig, AutoProcessor, AutoTokenizer

    shown = str(path)
    local = Path(shown).expanduser()
    if shown.startswith(("/", ".", "~")) and not local.exists():
        raise FileNotFoundError(f"{key}={shown!r} does not exist")
    source = str(local) if local.exists() else shown
    try:
        if getattr(AutoConfig.from_pretrained(source), "vision_config", None) is not None:
            return AutoProcessor.from_pretrained(source)
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as err:  # ValueError: a folder that is no checkpoint ("Unrecognized model in ...")
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"cannot load {key}={shown!r}: {first}") from None


def load_train_dataset(
    files: str | Sequence[str] | None,
    prompt_key: str = "prompt",
    image_key: str = "images",
    *,
    processing_class: Any = None,
    max_prompt_length: int | None = None,
    filter_overlong_prompts: bool = False,
    truncation: str = "error",
    on_bad_image: str = "fail",
    chat_template_kwargs: dict[str, Any] | None = None,
) -> Any:
    """The ``data.train_files`` in TRL's conversational layout (``prompt``, ``images``, ``answer``).

    Accepts verl's layout (``prompt`` messages with ``<image>`` placeholders and
    ``reward_model.ground_truth``) or Geo3k's own columns (``problem``/``answer``), in any format of
    ``cepo.data.files``. Every check (module docstring) runs here, before any model is loaded; the prompt
    length is checked only when ``processing_class`` (the processor / tokenizer, or a function returning it,
    called only after the file, answer and image checks pass) and ``max_prompt_length`` are given; it is counted
    with ``chat_template_kwargs`` (``data.apply_chat_template_kwargs``), as the trainer renders the prompts.
    """
    import datasets

    if on_bad_image not in ("fail", "skip"):
        raise ValueError(f"on_bad_image={on_bad_image!r} must be 'fail' or 'skip'")
    if files is None or (not isinstance(files, str) and not list(files)):
        raise ValueError("data.train_files is not set; point it at the parquet from scripts/prepare_geo3k.py")
    files = [files] if isinstance(files, str | Path) else [str(f) for f in files]
    for file in files:
        if not Path(file).expanduser().exists():
            raise FileNotFoundError(
                f"data.train_files entry {file!r} does not exist; run scripts/prepare_geo3k.py or fix the path"
            )
    with _quiet_datasets():
        parts = [_load_one(str(file), prompt_key, image_key, on_bad_image) for file in files]
    if len(parts) == 1:
        dataset = parts[0]
    else:
        try:
            dataset = datasets.concatenate_datasets(parts)
        except ValueError as err:
            columns = {file: part.column_names for file, part in zip(files, parts, strict=True)}
            raise ValueError(f"data.train_files cannot be combined ({err}); columns per file: {columns}") from None
    if max_prompt_length is not None and processing_class is not None:
        if not hasattr(processing_class, "apply_chat_template"):  # a function that loads it, called only now
            processing_class = processing_class()
        dataset = apply_max_prompt_length(
            dataset, processing_class, int(max_prompt_length), bool(filter_overlong_prompts), str(truncation),
            chat_template_kwargs=chat_template_kwargs,
        )
    return dataset.remove_columns([_ROW, _FILE])
