"""`trainguard.scan` and `scan_bytes` through the native module, on tg-scan's fixture corpus."""

from __future__ import annotations

from pathlib import Path

import pytest

import trainguard
from support import FIXTURES, expected_rows

ROWS = expected_rows()


def test_the_corpus_is_there():
    assert len(ROWS) >= 60
    assert {r["expected_verdict"] for r in ROWS} >= {"clean", "malicious", "suspicious"}


@pytest.mark.parametrize("row", ROWS, ids=[r["file"] for r in ROWS])
def test_every_fixture_gets_its_expected_verdict_and_evidence(row):
    report = trainguard.scan(FIXTURES / row["file"])
    assert report.verdict == row["expected_verdict"], report.findings
    assert report.is_clean == (row["expected_verdict"] == "clean")
    if row["evidence"]:
        assert any(
            row["evidence"] in f.message or row["evidence"] in (f.evidence or "")
            for f in report.findings
        ), report.findings


def test_malicious_torch_zip_report_names_the_call_and_where_it_is():
    path = FIXTURES / "torch_zip_malicious.pt"
    report = trainguard.scan(path)
    assert isinstance(report, trainguard.Report)
    assert report.path == str(path)
    assert report.format == "pytorch-zip"
    assert report.verdict == "malicious"
    assert not report.is_clean
    assert report.size == path.stat().st_size
    (finding,) = [f for f in report.findings if f.verdict == "malicious"]
    assert isinstance(finding, trainguard.Finding)
    assert finding.rule.startswith("TG-")
    assert "os.system" in (finding.evidence or "")
    assert finding.member is not None and finding.member.endswith("data.pkl")
    assert isinstance(finding.offset, int)
    assert finding.location == f"{finding.member}@{finding.offset}"
    assert "os.system" in repr(finding)


def test_clean_torch_zip_has_no_findings():
    report = trainguard.scan(str(FIXTURES / "torch_zip_benign.pt"))
    assert report.verdict == "clean"
    assert report.is_clean
    assert report.findings == ()


def test_reports_are_immutable():
    report = trainguard.scan(FIXTURES / "torch_zip_benign.pt")
    with pytest.raises(AttributeError):
        report.verdict = "clean"  # type: ignore[misc]


@pytest.mark.parametrize(
    "name", ["torch_zip_malicious.pt", "torch_zip_benign.pt", "proto0_inst.pkl", "model.pt"]
)
def test_scan_bytes_agrees_with_scan(name):
    path = FIXTURES / name
    on_disk = trainguard.scan(path)
    in_memory = trainguard.scan_bytes(path.read_bytes(), name=name)
    assert in_memory.path == name
    assert in_memory.verdict == on_disk.verdict
    assert [(f.rule, f.evidence, f.location) for f in in_memory.findings] == [
        (f.rule, f.evidence, f.location) for f in on_disk.findings
    ]
    assert trainguard.scan_bytes(bytearray(path.read_bytes())).verdict == on_disk.verdict


def test_a_missing_file_is_inconclusive_not_an_exception(tmp_path: Path):
    report = trainguard.scan(tmp_path / "absent.pt")
    assert report.verdict == "inconclusive"
    assert report.findings


def test_allow_entries_extend_the_policy():
    path = FIXTURES / "unknown_global_mypkg.pkl"
    assert trainguard.scan(path).verdict == "suspicious"
    assert trainguard.scan(path, allow=["mypkg.helpers.build:function"]).is_clean
    assert trainguard.scan(path, allow="mypkg.helpers.build:function").is_clean


def test_weights_only_policy_is_stricter_than_default():
    path = FIXTURES / "numpy_array.pkl"
    assert trainguard.scan(path).is_clean
    assert trainguard.scan(path, policy="default").is_clean
    assert trainguard.scan(path, policy="weights-only").verdict == "suspicious"


@pytest.mark.parametrize(
    "kwargs", [{"policy": "permissive"}, {"allow": ["nodots"]}, {"allow": ["a.b:method"]}]
)
def test_bad_policies_raise_policy_error(kwargs):
    with pytest.raises(trainguard.PolicyError) as info:
        trainguard.scan(FIXTURES / "model.pt", **kwargs)
    assert isinstance(info.value, trainguard.TrainguardError)

