"""Classification data as CSV, in the shapes IMDB and AG-News are distributed in (written with the csv
module, quoting as they do), and one-line errors for bad rows."""

import csv

import pytest

from gptcore import cli
from gptcore.finetune.classify import load_classification_data


def write_csv(path, rows, quoting=csv.QUOTE_MINIMAL):
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f, quoting=quoting).writerows(rows)
    return path


def test_imdb_review_sentiment_header(tmp_path):
    rows = [
        ["review", "sentiment"],
        ['One of the best, "truly" great.<br /><br />A second paragraph\nover two lines.', "positive"],
        ["Dull, long and loud.", "negative"],
    ]
    data = load_classification_data(write_csv(tmp_path / "IMDB Dataset.csv", rows))
    assert data.texts == [rows[1][0], rows[2][0]]
    assert data.labels == ["positive", "negative"]
    assert data.lines == [2, 4]  # the first review spans lines 2-3


def test_text_label_header_and_headerless(tmp_path):
    data = load_classification_data(
        write_csv(tmp_path / "a.csv", [["text", "label"], ["good, really", "1"], ["bad", "0"]])
    )
    assert (data.texts, data.labels) == (["good, really", "bad"], [1, 0])
    data = load_classification_data(write_csv(tmp_path / "b.csv", [["good film", "1"], ["bad film", "0"]]))
    assert (data.texts, data.labels) == (["good film", "bad film"], [1, 0])
    data = load_classification_data(write_csv(tmp_path / "c.csv", [["2", "great food"], ["1", "cold soup"]]))
    assert (data.texts, data.labels) == (["great food", "cold soup"], [2, 1])


def test_ag_news_headerless_and_kaggle_header(tmp_path):
    rows = [
        [
            "3",
            "Wall St. Bears Claw Back Into the Black (Reuters)",
            "Reuters - Short-sellers, Wall Street's dwindling band.",
        ],
        ["4", "Quantum leap", "Scientists, again, report a result."],
    ]
    data = load_classification_data(write_csv(tmp_path / "train.csv", rows, csv.QUOTE_ALL))
    assert data.texts == [f"{r[1]} {r[2]}" for r in rows]
    assert data.labels == [3, 4]
    kaggle = write_csv(tmp_path / "kaggle.csv", [["Class Index", "Title", "Description"], *rows])
    assert load_classification_data(kaggle).texts == data.texts


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            [["text", "label"], ["ok", "1"], ["too", "many", "cells"]],
            r"bad\.csv:3: 3 comma-separated columns, expected 2",
        ),
        ([["text", "label"], ["", "1"]], r"bad\.csv:2: empty text"),
        ([["words", "more", "words", "x"]], r"bad\.csv:1: expected a header with a label column"),
        ([["text", "label"], ["fine", ""]], r"bad\.csv:2: empty label"),
    ],
)
def test_bad_rows_name_the_line(tmp_path, rows, message):
    with pytest.raises(ValueError, match=message):
        load_classification_data(write_csv(tmp_path / "bad.csv", rows))


def test_unterminated_quote_and_cli_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text('text,label\n"never closed,1\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.csv:2: not valid CSV"):
        load_classification_data(bad)
    bad.write_text("text,label\nok,1\na,b,c\n", encoding="utf-8")
    argv = [
        "finetune",
        "cls",
        "--init-from",
        str(tmp_path / "none"),
        "--train",
        str(bad),
        "--save",
        str(tmp_path / "o"),
    ]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
