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


# ----- rows never vanish: strict CSV, duplicates, skipped rows listed, huge integers ------------------------


def twelve_rows_csv(tmp_path, edit):
    lines = ["id,prompt,bound"] + [f"r{i},The number {i} is,{i}" for i in range(12)]
    edit(lines)
    path = tmp_path / "rows.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_csv_quote_left_open_is_an_error_naming_its_line(tmp_path):
    def open_to_the_end(lines):
        lines[4] = 'r3,"The number 3 is,3'  # the reader would take rows 4-11 as one cell

    def closed_far_below(lines):
        lines[4] = 'r3,"The number 3 is,3'
        lines[9] = 'r8,The number 8 is",8'  # a second stray quote closes it: 5 rows swallowed, valid CSV

    def closed_mid_cell(lines):
        lines[4] = 'r3,"The number 3 is,3'
        lines[9] = 'r8,"The number 8 is,8'

    for edit, message in (
        (open_to_the_end, "line 5: a quoted cell opened there is never closed"),
        (closed_far_below, r"line 5: a quoted cell runs to line 10 and holds 4 line\(s\) shaped like rows"),
        (closed_mid_cell, "line 5: a quoted cell opened there is never closed"),
    ):
        with pytest.raises(DatasetError, match=message) as info:
            load_dataset(twelve_rows_csv(tmp_path, edit))
        assert "\n" not in str(info.value)
    assert len(load_dataset(twelve_rows_csv(tmp_path, lambda lines: None))) == 12


def test_a_csv_cell_may_still_hold_line_breaks_and_quotes(tmp_path):
    path = tmp_path / "multi.csv"
    path.write_text('prompt,bound\n"first line\nsecond line, with a comma",9\n"say ""hi"" then",8\n\nlast,7\n')
    data = load_dataset(path)
    assert [it.prompt for it in data] == ["first line\nsecond line, with a comma", 'say "hi" then', "last"]
    assert [it.fields["bound"] for it in data] == ["9", "8", "7"]
    # The same rows through Python's csv module, written and read back, give the same items.
    again = tmp_path / "again.csv"
    with open(again, "w", newline="") as fh:
        csv.writer(fh).writerows([["prompt", "bound"], *[[it.prompt, it.fields["bound"]] for it in data]])
    assert [it.prompt for it in load_dataset(again)] == [it.prompt for it in data]


def test_a_duplicate_id_drops_only_the_later_row(tiny_qwen2, capfd):
    data = rows(bounds=("9",))
    data[0]["id"], data[2]["id"] = "same", "same"
    dataset = from_records(data)
    assert [(b.id, b.row) for b in dataset.bad] == [("same", 2)]
    assert str(dataset.bad[0]).startswith("row 3 (id same): same id as row 1")  # both rows named
    kept = dataset.without(dataset.bad)
    assert [it.row for it in kept] == [0, 1, 3]  # the good first row stays
    assert kept[0].prompt == data[0]["prompt"]
    capfd.readouterr()
    exp = Experiment(
        dataset=dataset, conditions={"zero": [iv.zero("resid_pre", blocks=[0])]}, metrics=["kl"], model="tiny-qwen2"
    )
    run = run_experiment(exp, model=tiny_qwen2, skip_bad_rows=True)
    assert run.summary["n_items"] == len(data) - 1
    assert set(run.frame()["item"]) == {it.id for it in kept}
    err = capfd.readouterr().err.splitlines()
    assert [line for line in err if line.startswith("warning: skipped")] == [
        "warning: skipped row 3 (id same): same id as row 1: give every row its own id "
        "(identical rows get the same derived id; remove the duplicate)"
    ]


def test_every_skipped_row_is_listed_with_its_reason(capfd):
    dataset = from_records([{"prompt": "a"}, {"prompt": ""}, {"prompt": 4}, {"prompt": "b"}])
    capfd.readouterr()
    kept = dataset.without(dataset.bad)
    assert [it.prompt for it in kept] == ["a", "b"]
    lines = capfd.readouterr().err.splitlines()
    assert len(lines) == 2 and lines[0].startswith("warning: skipped row 2 (id ") and "empty prompt" in lines[0]
    assert lines[1].startswith("warning: skipped row 3 (id ") and "not text" in lines[1]


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("big.jsonl", '{"prompt": "a"}\n{"prompt": "b", "n": 18446744073709551616}\n'),
        ("neg.jsonl", '{"prompt": "a", "n": [1, -9223372036854775809]}\n'),
        ("long.jsonl", '{"prompt": "a", "n": ' + "9" * 5000 + "}\n"),
    ],
)
def test_integers_beyond_64_bits_are_one_line_errors(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DatasetError, match="beyond 64 bits|integer too long") as info:
        load_dataset(path)
    assert "\n" not in str(info.value)
    assert from_records([{"prompt": "a", "n": 2**63 - 1}])[0].fields["n"] == 2**63 - 1  # the edge still fits
    with pytest.raises(DatasetError, match="column 'n': an integer beyond 64 bits"):
        from_records([{"prompt": "a", "n": 10**6000}])  # from Python: too long even to print


def test_parquet_unsigned_integers_beyond_int64_are_refused(tmp_path):
    path = tmp_path / "u.parquet"
    pq.write_table(pa.table({"prompt": ["a"], "n": pa.array([2**64 - 1], type=pa.uint64())}), path)
    with pytest.raises(DatasetError, match=r"row 1, column 'n': a 20-digit integer beyond 64 bits"):
        load_dataset(path)


def test_two_column_csv_needs_two_swallowed_rows_to_refuse(tmp_path):
    path = tmp_path / "two.csv"
    path.write_text('prompt,bound\n"a,9\nb,8\nc,7\nd",6\n')
    with pytest.raises(DatasetError, match=r"line 2: a quoted cell runs to line 5 and holds 2 line\(s\)"):
        load_dataset(path)
