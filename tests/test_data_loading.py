"""Training-data checks shared by `cepo train`, prepare_geo3k.py and to_conversational: answers, images,
file formats, empty files, prompt length (verl's data.max_prompt_length / filter_overlong_prompts), one batch.
No model is loaded here: every case must fail (or filter) before one would be."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import datasets
import pytest

from cepo.data import answer_text, image_problems, read_data_file, to_conversational
from cepo.data.answers import AnswerError
from cepo.integrations.trl.data import apply_max_prompt_length, check_dataset_size, load_train_dataset, prompt_length
from cepo.testing import GEO3K_FEATURES, build_qwen_tokenizer, build_tiny_processor, make_geo3k_like


@pytest.fixture(scope="module")
def processor() -> Any:
    return build_tiny_processor(build_qwen_tokenizer())


def _geo(n: int = 4, **columns: list[Any]) -> datasets.Dataset:
    ds = make_geo3k_like(n)
    for name, values in columns.items():
        ds = ds.remove_columns(name).add_column(name, values)
    return ds


def test_answer_rule() -> None:
    assert answer_text(" 24 ") == "24"
    assert answer_text(24) == "24"
    assert answer_text(["24"]) == "24"
    assert answer_text(("3.5",)) == "3.5"
    for missing in (None, "", "  ", []):
        with pytest.raises(AnswerError) as err:
            answer_text(missing)
        assert err.value.missing
    with pytest.raises(AnswerError, match=r"2 answers \['24', 'x'\]") as err:
        answer_text(["24", "x"])
    assert not err.value.missing
    with pytest.raises(AnswerError, match="type dict"):
        answer_text({"a": 1})


def test_list_answers_in_loader_and_to_conversational(tmp_path: Path) -> None:
    single = _geo(3, answer=[["24"], ["7"], ["9"]])
    single.to_parquet(str(tmp_path / "single.parquet"))
    assert load_train_dataset(str(tmp_path / "single.parquet"))["answer"] == ["24", "7", "9"]
    assert to_conversational(single)["answer"] == ["24", "7", "9"]
    several = _geo(3, answer=[["24"], ["24", "x"], ["9"]])
    several.to_parquet(str(tmp_path / "several.parquet"))
    with pytest.raises(ValueError, match=r"several\.parquet: 1 row\(s\) without a usable answer .*row 1: 2 answers"):
        load_train_dataset(str(tmp_path / "several.parquet"))
    with pytest.raises(ValueError, match=r"row 1: 2 answers \['24', 'x'\]"):
        to_conversational(several)


def test_formats_by_extension(tmp_path: Path) -> None:
    ds = make_geo3k_like(3)
    rows = []
    for i, row in enumerate(ds):
        row["images"][0].save(tmp_path / f"fig{i}.png")
        rows.append({"problem": row["problem"], "answer": row["answer"], "images": [str(tmp_path / f"fig{i}.png")]})
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "d.json").write_text(json.dumps(rows))
    ds.to_parquet(str(tmp_path / "d.parquet"))
    ds.save_to_disk(str(tmp_path / "disk"))
    arrow = next((tmp_path / "disk").glob("*.arrow"))
    for source in ("d.jsonl", "d.json", "d.parquet", "disk", arrow.relative_to(tmp_path)):
        loaded = load_train_dataset(str(tmp_path / source))
        assert loaded["answer"] == ds["answer"], source
        assert loaded[0]["images"][0].size == ds[0]["images"][0].size, source
    (tmp_path / "d.csv").write_text("problem,answer\nx,1\n")
    with pytest.raises(ValueError, match=r"d\.csv'?: unsupported format '\.csv'; supported: \.parquet, \.json"):
        load_train_dataset(str(tmp_path / "d.csv"))
    (tmp_path / "plain").mkdir()
    with pytest.raises(ValueError, match=r"not a datasets\.save_to_disk one"):
        read_data_file(tmp_path / "plain")


def test_empty_files_are_named(tmp_path: Path) -> None:
    (tmp_path / "zero.parquet").write_bytes(b"")
    (tmp_path / "blank.jsonl").write_text("\n\n")
    make_geo3k_like(2).select([]).to_parquet(str(tmp_path / "norows.parquet"))
    (tmp_path / "junk.parquet").write_bytes(b"not a parquet file at all")
    expected = {
        "zero.parquet": r"zero\.parquet' is empty \(0 bytes\)",
        "blank.jsonl": r"blank\.jsonl' is empty",
        "norows.parquet": r"norows\.parquet' has no rows",
        "junk.parquet": r"junk\.parquet' is not a readable parquet file",
    }
    for name, message in expected.items():
        with pytest.raises(ValueError, match=message):
            load_train_dataset(str(tmp_path / name))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_train_dataset(str(tmp_path / "absent.parquet"))


def test_read_data_file_prints_nothing_of_its_own(tmp_path: Path, capfd: pytest.CaptureFixture[str],
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """The error is the caller's one line: ``datasets`` neither logs its own copy of a JSON parse error (on stderr and
    again through the root logger, which verl configures) nor draws a "Generating train split" bar on a first read."""
    (tmp_path / "broken.jsonl").write_text('{"problem": "x", "answer": "1"}\n{"problem": \n')
    make_geo3k_like(2).to_parquet(str(tmp_path / "first_read.parquet"))  # a new file: not in datasets' cache
    capfd.readouterr()
    with caplog.at_level("DEBUG"), pytest.raises(ValueError, match=r"broken\.jsonl' could not be read as json"):
        read_data_file(tmp_path / "broken.jsonl", label="data file")
    assert len(read_data_file(tmp_path / "first_read.parquet")) == 2
    assert capfd.readouterr().err == ""
    assert not [r.getMessage() for r in caplog.records if r.levelno >= 30], caplog.records


def _bad_image_files(tmp_path: Path) -> tuple[Path, Path]:
    """A parquet whose row 1 holds random bytes as its image, and a JSONL whose row 3 names a missing file."""
    ds = make_geo3k_like(4)
    images = []
    for i, row in enumerate(ds):
        row["images"][0].save(tmp_path / f"ok{i}.png")
        images.append([{"bytes": (tmp_path / f"ok{i}.png").read_bytes(), "path": None}])
    images[1] = [{"bytes": b"\x89random bytes, not an image", "path": None}]
    bad = datasets.Dataset.from_dict({"images": images, "problem": ds["problem"], "answer": ds["answer"]},
                                     features=GEO3K_FEATURES)
    bad.to_parquet(str(tmp_path / "bad.parquet"))
    rows = [{"problem": r["problem"], "answer": r["answer"], "images": [str(tmp_path / f"ok{i}.png")]}
            for i, r in enumerate(ds)]
    rows[3]["images"] = [str(tmp_path / "missing.png")]
    (tmp_path / "bad.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path / "bad.parquet", tmp_path / "bad.jsonl"


def test_bad_images_fail_naming_row_and_column_or_skip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parquet, jsonl = _bad_image_files(tmp_path)
    problems = image_problems(read_data_file(parquet), "images")
    assert [(b.row, b.column, b.position) for b in problems] == [(1, "images", 0)]
    assert "not a decodable image" in problems[0].reason
    missing = image_problems(read_data_file(jsonl), "images")
    assert [(b.row, b.column) for b in missing] == [(3, "images")] and "does not exist" in missing[0].reason
    with pytest.raises(ValueError, match=r"bad\.parquet: 1 row\(s\) with an image that cannot be opened: "
                                         r"row 1 \(images\[0\]\): not a decodable image.*--on-bad-image skip"):
        load_train_dataset(str(parquet))
    with pytest.raises(ValueError, match=r"bad\.jsonl: 1 row\(s\) .*row 3 \(images\[0\]\): image file .*missing"):
        load_train_dataset(str(jsonl))
    answers = make_geo3k_like(4)["answer"]
    assert load_train_dataset(str(parquet), on_bad_image="skip")["answer"] == [answers[i] for i in (0, 2, 3)]
    assert "skipped 1 of 4 row(s) whose image cannot be opened" in capsys.readouterr().err
    both = load_train_dataset([str(parquet), str(jsonl)], on_bad_image="skip")
    assert both["answer"] == [answers[i] for i in (0, 2, 3, 0, 1, 2)]


def test_prompt_length_counts_image_tokens(processor: Any) -> None:
    row = to_conversational(make_geo3k_like(1))[0]
    with_image = prompt_length(processor, row["prompt"], row["images"])
    text_only = prompt_length(processor, row["prompt"], [])
    assert with_image > text_only
    # as TRL feeds it: the processor's chat template with the generation prompt and the image's tokens
    from trl.data_utils import prepare_multimodal_messages

    messages = prepare_multimodal_messages(row["prompt"], images=row["images"])
    ids = processor.apply_chat_template(conversation=[messages], add_generation_prompt=True, tokenize=True,
                                        return_dict=True)["input_ids"][0]
    assert with_image == len(ids)


def test_max_prompt_length_filter_or_fail(tmp_path: Path, processor: Any, capsys: pytest.CaptureFixture[str]) -> None:
    ds = make_geo3k_like(4)
    problems = list(ds["problem"])
    problems[2] = problems[2] + " word" * 300
    ds.remove_columns("problem").add_column("problem", problems).to_parquet(str(tmp_path / "long.parquet"))
    file = str(tmp_path / "long.parquet")
    lengths = [prompt_length(processor, r["prompt"], r["images"]) for r in load_train_dataset(file)]
    limit = sorted(lengths)[-2]  # every prompt but row 2 fits
    kept = load_train_dataset(file, processing_class=processor, max_prompt_length=limit, filter_overlong_prompts=True)
    assert len(kept) == 3
    assert f"dropped 1 of 4 prompt(s) longer than data.max_prompt_length={limit} tokens" in capsys.readouterr().err
    with pytest.raises(ValueError, match=rf"1 prompt\(s\) longer than data.max_prompt_length={limit} tokens: "
                                         rf".*long\.parquet row 2 \({lengths[2]} tokens\); raise"):
        load_train_dataset(file, processing_class=processor, max_prompt_length=limit, filter_overlong_prompts=False)
    with pytest.raises(ValueError, match=r"data\.truncation=left is not applied on the TRL engine"):
        load_train_dataset(file, processing_class=lambda: processor, max_prompt_length=limit, truncation="left")
    with pytest.raises(ValueError, match="every prompt is longer"):
        apply_max_prompt_length(load_train_dataset(file), processor, 5, True)
    with pytest.raises(ValueError, match=r"data\.truncation='cut' is not one of"):
        apply_max_prompt_length(load_train_dataset(file), processor, 5, True, truncation="cut")


def test_dataset_smaller_than_one_batch() -> None:
    args = SimpleNamespace(generation_batch_size=8, num_generations=4)
    check_dataset_size(2, args)
    with pytest.raises(ValueError, match=r"has 1 prompt\(s\), fewer than one step needs \(2 prompts x 4 generations\)"
                                         r"; add rows or lower data.train_batch_size"):
        check_dataset_size(1, args, "data.train_batch_size")
