"""Validation: every rule counted with line numbers, bad rows quarantined, nothing silently lost."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta
from pathlib import Path

import polars as pl
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from forecasting.common.config import DataConfig
from forecasting.data.validation import load_canonical, validate, write_reports
from shelfcast.cli import cli

NOW = datetime(2024, 6, 1)
BAD_CSV = """store_id,item_id,category,ds,y,is_holiday
S1,I1,food,2024-01-01,5,false
S1,I1,food,2024-01-02,6,false
S1,I1,food,2024-01-04,7,false
S1,I1,food,2024-01-04,9,false
S1,I1,food,2024-01-05,-2,true
S1,I2,food,not-a-date,3,false
S1,I2,food,2024-01-01,abc,false
S1,I2,food,2024-01-02,,false
,I2,food,2024-01-03,4,false
S1,I2,food,2030-01-01,4,false
S1,I2,food,2024-01-03,4,maybe
S1,I3,toys,2024-01-01,4,false
S1,I4,food,2024-01-01,1,false
S1,I4,food,2024-01-02,2,false
S1,I5,food,2024-01-01,1,false
"""


def _write(tmp_path: Path, text: str = BAD_CSV) -> Path:
    path = tmp_path / "sales.csv"
    path.write_text(text)
    return path


def test_each_rule_counted_with_first_line_numbers(tmp_path: Path) -> None:
    """Each broken rule is counted and its examples name the offending line numbers."""
    cfg = DataConfig(known_categories=["food"])
    result = load_canonical(_write(tmp_path), cfg, now=NOW)
    rules = {r.rule: r for r in result.report.rules}
    lines = {name: [ex["line"] for ex in r.examples if "line" in ex] for name, r in rules.items()}
    assert lines["duplicate_key"] == [5]
    assert lines["bad_date"] == [7]
    assert lines["bad_number"] == [8]
    assert lines["missing_value"] == [9]
    assert lines["missing_key"] == [10]
    assert lines["future_date"] == [11]
    assert lines["bad_flag"] == [12]
    assert lines["unknown_category"] == [13]
    assert lines["too_short"] == [16]
    assert rules["negative_value"].action == "kept"
    assert rules["gap"].count == 1 and rules["gap"].examples[0]["missing_ds"] == "2024-01-03"


def test_nothing_lost_accepted_plus_quarantined_equals_read(tmp_path: Path) -> None:
    """Every input row is either accepted or quarantined (with its rule); gap rows are added, not lost."""
    result = load_canonical(_write(tmp_path), DataConfig(known_categories=["food"]), now=NOW)
    rep = result.report
    assert rep.rows_accepted + rep.rows_quarantined == rep.rows_read == 15
    assert result.quarantine.height == rep.rows_quarantined
    assert result.quarantine["rule"].null_count() == 0
    assert result.frame.height == rep.rows_accepted + rep.rows_filled
    i1 = result.frame.filter(pl.col("item_id") == "I1")
    assert i1["ds"].to_list() == [date(2024, 1, d) for d in range(1, 6)]
    assert i1.filter(pl.col("ds") == date(2024, 1, 3))["y"].item() == 0.0
    assert i1.filter(pl.col("ds") == date(2024, 1, 4))["y"].item() == 7.0


def test_reports_written_as_json_text_and_quarantine_csv(tmp_path: Path) -> None:
    """validation.json (machine), validation.txt (people) and quarantine.csv with line and rule columns."""
    result = load_canonical(_write(tmp_path), DataConfig(), now=NOW)
    paths = write_reports(result, tmp_path / "out")
    report = json.loads(paths["json"].read_text())
    assert report["rows_read"] == 15 and report["usable"] is True
    text = paths["text"].read_text()
    assert "duplicate_key" in text and "line 5" in text
    quarantine = pl.read_csv(paths["quarantine"])
    assert quarantine.columns[:3] == ["line", "rule", "reason"]
    assert 5 in quarantine["line"].to_list()


def test_negative_values_policy_quarantine_or_zero(tmp_path: Path) -> None:
    """negative_values = quarantine moves returns to quarantine; zero sets them to 0."""
    path = _write(tmp_path)
    quarantined = load_canonical(path, DataConfig(negative_values="quarantine"), now=NOW)
    assert "negative_value" in quarantined.quarantine["rule"].to_list()
    zeroed = load_canonical(path, DataConfig(negative_values="zero"), now=NOW)
    assert zeroed.frame["y"].min() == 0.0


def test_cli_validate_exit_codes(tmp_path: Path) -> None:
    """data validate exits 0 with quarantined rows, 1 with --strict, 1 when nothing usable remains."""
    runner = CliRunner()
    path = _write(tmp_path)
    ok = runner.invoke(cli, ["data", "validate", "--data", str(path), "--out", str(tmp_path / "r")])
    assert ok.exit_code == 0, ok.output
    assert "quarantined" in ok.output
    assert (tmp_path / "r" / "quarantine.csv").is_file()
    strict = runner.invoke(
        cli, ["data", "validate", "--data", str(path), "--out", str(tmp_path / "r2"), "--strict"]
    )
    assert strict.exit_code == 1
    empty = _write(tmp_path, "store_id,item_id,category,ds,y\nS1,I1,a,bad,1\n")
    none_left = runner.invoke(cli, ["data", "validate", "--data", str(empty), "--out", str(tmp_path / "r3")])
    assert none_left.exit_code == 1
    assert "no usable rows" in none_left.output


@settings(max_examples=30, deadline=None)
@given(
    values=st.lists(
        st.one_of(
            st.floats(allow_nan=False, allow_infinity=False, width=32).map(str),
            st.sampled_from(["", "x", "nan"]),
        ),
        min_size=1,
        max_size=40,
    ),
    dup_every=st.integers(min_value=2, max_value=7),
)
def test_property_rows_are_conserved(values: list[str], dup_every: int) -> None:
    """For any mix of good and bad values and duplicates, accepted + quarantined == read."""
    start = date(2024, 1, 1)
    days = [start + timedelta(days=i - (1 if i % dup_every == 0 and i else 0)) for i in range(len(values))]
    raw = pl.DataFrame(
        {
            "line": list(range(2, len(values) + 2)),
            "store_id": ["S"] * len(values),
            "item_id": ["I"] * len(values),
            "category": ["c"] * len(values),
            "ds": [d.isoformat() for d in days],
            "y": values,
        }
    )
    result = validate(raw, DataConfig(min_series_length=1), now=NOW)
    rep = result.report
    assert rep.rows_accepted + rep.rows_quarantined == rep.rows_read
    assert result.frame.select("store_id", "item_id", "ds").is_duplicated().sum() == 0
