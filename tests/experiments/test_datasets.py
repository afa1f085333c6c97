"""Datasets: the same rows read from JSONL, CSV or Parquet are the same items with the same hash; ids come
from the row when absent; templates expand a grid; bad rows are named by id and never dropped silently;
unreadable files end in one line of the package's own error."""

from __future__ import annotations

import csv
import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from workbench import interventions as iv
from workbench.datasets import check_items, from_records, from_template, load_dataset
from workbench.errors import DatasetError, WorkbenchError
from workbench.experiments import Experiment, run_experiment

from .helpers import rows


def write(folder, data, kind):
    path = folder / f"rows.{kind}"
    if kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in data))
    elif kind == "csv":
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(data[0]))
            writer.writeheader()
            writer.writerows(data)
    else:
        pq.write_table(pa.Table.from_pylist(data), path)
    return path


def test_jsonl_csv_and_parquet_give_the_same_items_and_hash(tmp_path):
    data = [{k: str(v) for k, v in r.items()} for r in rows()]  # CSV holds text only
    loaded = [load_dataset(write(tmp_path, data, kind)) for kind in ("jsonl", "csv", "parquet")]
    assert len({d.sha256 for d in loaded}) == 1
    assert [it.id for it in loaded[0]] == [it.id for it in loaded[1]] == [it.id for it in loaded[2]]
    first = loaded[0][0]
    assert first.prompt == data[0]["prompt"] and first.source == data[0]["source"]
    assert first.extras() == {"bound": "9", "source_bound": "5", "paraphrase": "0"}
    assert loaded[0].columns == ["bound", "source_bound", "paraphrase"]
    assert len(first.id) == 12 and len({it.id for it in loaded[0]}) == len(data)
    edited = [dict(r) for r in data]
    edited[3]["bound"] = "x"
    assert from_records(edited).sha256 != loaded[0].sha256  # any edited cell changes the hash
    assert from_records(edited)[0].id == loaded[0][0].id  # and only that row's derived id
    assert from_records(edited)[3].id != loaded[0][3].id


def test_explicit_ids_targets_and_csv_lists(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('id,prompt,targets\na,"The number is ","[""5"", ""9""]"\nb,"Hello ",7\n')
    data = load_dataset(path)
    assert [it.id for it in data] == ["a", "b"]
    assert data[0].targets == ("5", "9") and data[1].targets == ("7",)


def test_templates_expand_a_grid_or_a_list():
    grid = from_template("between [0, {bound}] by {who}", {"bound": ["9", "8"], "who": ["me", "you"]})
    assert [it.prompt for it in grid] == [
        "between [0, 9] by me",
        "between [0, 9] by you",
        "between [0, 8] by me",
        "between [0, 8] by you",
    ]
    assert grid[0].fields["bound"] == "9"
    listed = from_template("[0, {b}]", [{"b": 9, "s": 5}], source="[0, {s}]", targets=["{s}"])
    assert listed[0].source == "[0, 5]" and listed[0].targets == ("5",)
    with pytest.raises(DatasetError, match="names the field .bond."):
        from_template("[0, {bond}]", {"bound": ["9"]})
    with pytest.raises(DatasetError, match="has no values"):
        from_template("[0, {bound}]", {"bound": []})


def test_bad_rows_are_reported_by_id(tiny_qwen2):
    data = rows(bounds=("9",))
    data += [
        {"id": "empty", "prompt": "", "bound": "9"},
        {
            "id": "misaligned",
            "prompt": data[0]["prompt"],
            "source": "Something much longer than the prompt it patches",
            "bound": "9",
            "source_bound": "5",
        },
        {
            "id": "two-token-target",
            "prompt": data[0]["prompt"] + "x",
            "targets": ["hello world"],
            "bound": "9",
            "source_bound": "5",
            "source": data[0]["source"] + "x",
        },
        {"id": "no-field", "prompt": data[1]["prompt"] + " ", "source": data[1]["source"] + " ", "source_bound": "5"},
        {
            "id": "not-there",
            "prompt": data[2]["prompt"] + "!",
            "source": data[2]["source"] + "!",
            "bound": "3",
            "source_bound": "1",
        },
        {"id": "not-text", "prompt": 42},
        {
            "id": "long-bound",
            "prompt": data[3]["prompt"].replace("[0, 9]", "[0, 99999]"),
            "bound": "99999",
            "source_bound": "5",
        },
    ]
    dataset = from_records(data)
    assert [b.id for b in dataset.bad] == ["empty", "not-text"]
    interventions = [iv.patch("kv", "{source}", blocks=[0], positions="{bound}")]
    bad = check_items(tiny_qwen2, dataset, interventions, ["digits_above:{source_bound}", "prob:{bound}"])
    reasons = {b.id: b.reason for b in bad}
    assert set(reasons) == {
        "empty",
        "misaligned",
        "two-token-target",
        "no-field",
        "not-there",
        "not-text",
        "long-bound",
    }
    assert "empty prompt" in reasons["empty"]
    assert "do not align" in reasons["misaligned"]
    assert "not one" in reasons["two-token-target"]
    assert "'bound'" in reasons["no-field"]
    assert "'3' is not in the prompt" in reasons["not-there"]
    assert "not text" in reasons["not-text"]
    assert re.search(r"Target '99999' is \d+ tokens", reasons["long-bound"])
    assert str(bad[0]).startswith(f"row {len(rows(bounds=('9',))) + 1} (id empty): ")
    exp = Experiment(
        dataset=dataset,
        conditions={"patch": interventions},
        metrics=["digits_above:{source_bound}"],
        model="tiny-qwen2",
        resamples=999,
    )
    with pytest.raises(
        DatasetError, match=r"^7 bad rows: row \d+ \(id empty\): empty prompt.*and 4 more.*--skip-bad-rows"
    ):
        run_experiment(exp, model=tiny_qwen2)
    skipped = run_experiment(exp, model=tiny_qwen2, skip_bad_rows=True)
    assert len(skipped.skipped) == 7 and skipped.summary["n_items"] == len(rows(bounds=("9",)))
    assert skipped.manifest["dataset"]["skipped_rows"] == sorted(reasons)


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        (b"\xff\xfe not utf8", "rows.jsonl", "is not UTF-8 text"),
        (b'{"prompt": "a"}\n{"prompt": ', "rows.jsonl", "line 2 is not JSON"),
        (b'["a list"]\n', "rows.jsonl", "line 1 is a JSON list, not an object"),
        (b"text,other\nhello,1\n", "rows.csv", "has no 'prompt' column"),
        (b"not parquet at all", "rows.parquet", "is not a readable Parquet file"),
        (b"prompt\n", "rows.csv", "holds no rows"),
        (b"x", "rows.txt", "not a dataset format"),
        (b'{"prompt": "a", "value": 1}\n', "rows.jsonl", "a name the results table uses"),
    ],
)
def test_unreadable_files_are_one_line_errors(tmp_path, content, name, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DatasetError, match=message) as info:
        load_dataset(path)
    assert "\n" not in str(info.value) and isinstance(info.value, WorkbenchError)
    with pytest.raises(DatasetError, match="No dataset at"):
        load_dataset(tmp_path / "missing.jsonl")
    with pytest.raises(DatasetError, match="is a folder"):
        load_dataset(tmp_path)
