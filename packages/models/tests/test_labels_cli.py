"""The ``mlinfra-labels`` command: agreement on any file, merges, the report; exit 2 when bad."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from mlinfra_models.labels import load_taxonomy
from mlinfra_models.labels.cli import main

V1 = Path(__file__).resolve().parents[2] / "features/src/mlinfra_features/taxonomy/v1.yaml"
# Krippendorff (2011)'s example with missing data (observers x units; None = not rated).
RELIABILITY = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
]


def command() -> list[str]:
    """The installed console script, next to this interpreter."""
    script = Path(sys.executable).parent / "mlinfra-labels"
    assert script.is_file(), f"mlinfra-labels is not installed next to {sys.executable}"
    return [str(script)]


@pytest.fixture
def reliability_csv(tmp_path: Path) -> Path:
    rows = [
        (unit + 1, f"obs_{a}", value)
        for a, row in enumerate(RELIABILITY)
        for unit, value in enumerate(row)
        if value is not None
    ]
    path = tmp_path / "reliability.csv"
    pl.DataFrame(rows, schema=["item_id", "annotator_id", "label"], orient="row").write_csv(path)
    return path


@pytest.fixture
def event_csv(tmp_path: Path) -> Path:
    """Annotations of v1 categories: three annotators, the engagement pair often confused."""
    names = load_taxonomy(V1).names
    rows = []
    for event in range(1, 241):
        truth = names[event % len(names)]
        for j, annotator in enumerate(("ann_01", "ann_02", "ann_03")):
            label = truth
            if truth == "user_engagement" and j == 2:
                label = "feature_usage"
            elif event % 7 == j:
                label = names[(event * 5 + j) % len(names)]
            rows.append((event, annotator, label))
    path = tmp_path / "events.csv"
    pl.DataFrame(rows, schema=["event_id", "annotator_id", "label"], orient="row").write_csv(path)
    return path


def test_agreement_json_from_the_installed_script(reliability_csv: Path) -> None:
    proc = subprocess.run(
        [*command(), "agreement", str(reliability_csv), "--json", "--bootstrap", "100"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert round(out["krippendorff_alpha"], 3) == 0.743
    assert out["fleiss_kappa"] is None and "fleiss_kappa" in out["reasons"]
    assert out["n_items"] == 11 and out["n_annotators"] == 4 and out["excluded_items"] == 1
    for key in ("mean_pairwise_cohen_kappa", "observed_agreement"):
        assert isinstance(out[key], float)


def test_a_bad_file_exits_2_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("event,who,what\n1,a,x\n")
    proc = subprocess.run(
        [sys.executable, "-m", "mlinfra_models.labels.cli", "agreement", str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert str(bad) in lines[0] and "missing columns" in lines[0]
    assert proc.stdout == ""


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "no such file"),
        ("item_id,annotator_id,label\n", "the table is empty"),
        ("item_id,annotator_id,label\n1,a,x\n1,a,y\n2,b,x\n", "duplicate (item_id, annotator_id)"),
        ("item_id,annotator_id,label\n1,a,x\n2,b,y\n", "no item has two or more ratings"),
        ('item_id,annotator_id,label\n1,a,"x\n', "cannot read it as a table"),
    ],
)
def test_bad_files_exit_2_naming_file_and_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, problem: str
) -> None:
    path = tmp_path / "annotations.csv"
    if content is not None:
        path.write_text(content)
    assert main(["agreement", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("mlinfra-labels: ") and str(path) in err and problem in err


def test_agreement_text_takes_labels_as_given(
    reliability_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["agreement", str(reliability_csv), "--bootstrap", "50", "--order", "1,2,3,4,5"]) == 0
    )
    out = capsys.readouterr().out
    assert "krippendorff_alpha          0.7434" in out
    assert "fleiss_kappa                undefined" in out


def test_agreement_with_a_taxonomy_adds_the_coarse_level(
    event_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["agreement", str(event_csv), "--taxonomy", str(V1), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["coarse"]["n_items"] == 240 and len(out["coarse"]["categories"]) == 6
    assert out["coarse"]["fleiss_kappa"] > out["fleiss_kappa"]
    assert out["top_confusions"][0]["category_a"] in {"user_engagement", "feature_usage"}


def test_merges_and_report(
    event_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    v2 = tmp_path / "v2.yaml"
    args = ["merges", str(event_csv), "--taxonomy", str(V1), "--target", "20", "--out", str(v2)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "1. " in out and "feature_usage" in out.splitlines()[1]
    proposed = load_taxonomy(v2)
    assert len(proposed) == 20 and proposed.maps_from is not None

    assert (
        main(
            [
                "report",
                str(event_csv),
                "--taxonomy",
                str(V1),
                "--out",
                str(tmp_path / "r"),
                "--bootstrap",
                "50",
            ]
        )
        == 0
    )
    assert {p.name for p in (tmp_path / "r").iterdir()} == {
        "labels.html",
        "labels.json",
        "taxonomy-v2.yaml",
    }
    assert main(["merges", str(event_csv), "--taxonomy", str(V1), "--target", "5"]) == 2
    assert "unreachable" in capsys.readouterr().err
    assert main(["merges", str(event_csv), "--taxonomy", str(tmp_path / "none.yaml")]) == 2
    assert "none.yaml: cannot read the taxonomy" in capsys.readouterr().err
