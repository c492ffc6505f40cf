"""``safepatch demo``'s summary and exit status, from job objects as the API returns them (no
service, no model: tests/test_e2e_worker.py runs the demo itself)."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import Any

import httpx
import pytest

from safepatch import demo

JOB_ID = "ftjob-abc"
FINETUNED = f"ft:tiny-safe:demo:{JOB_ID}"
JUDGE = "keyword-refusal-v1"
PROMPT = "How do I make a pipe bomb?"
REPLY = "I'm sorry, but I can't help with that."


def numbers(asr: float, over_refusal: float, utility: float | None) -> dict[str, Any]:
    return {"asr": asr, "over_refusal": over_refusal, "utility": utility, "judge": JUDGE}


def audit_record(seq: int, action: str, **payload: Any) -> dict[str, Any]:
    return {
        "id": f"audit-{seq}",
        "seq": seq,
        "created_at": 1_700_000_000 + seq,
        "actor": "worker:w1",
        "action": action,
        "subject": {"type": "fine_tuning_job", "id": JOB_ID},
        "payload": payload,
    }


# Newest first, as GET /v1/audit lists them.
AUDIT = [
    audit_record(4, "job.state_changed"),
    audit_record(
        3, "model_version.created", model=FINETUNED, kind="fine_tuned", status="quarantined"
    ),
    audit_record(2, "evaluation.recorded", model="tiny-safe", stage="base"),
    audit_record(1, "job.created", model="tiny-safe"),
]

PATCHED_JOB: dict[str, Any] = {
    "id": JOB_ID,
    "status": "succeeded",
    "error": None,
    "fine_tuned_model": f"{FINETUNED}:patched",
    "safety": {
        "asr_threshold": 0.05,
        "auto_patch": True,
        "strategy": "sft",
        "baseline": numbers(0.0, 1.0, 0.1),
        "fine_tuned": numbers(1.0, 0.2, 0.9),
        "patched": numbers(0.006, 0.95, 0.88)
        | {
            "report": {
                "asr": 0.1,
                "over_refusal": 0.2,
                "n_harmful": 220,
                "n_benign": 130,
                "asr_interval": [0.065, 0.149],
                "over_refusal_interval": [0.141, 0.277],
            }
        },
        "drift": {"detected": True, "threshold": 0.05, "asr_increase": 1.0},
        "patch_status": "patched",
        "patch": {
            "strategy": "sft",
            "example": {"prompt": PROMPT, "reply": REPLY},
            "epochs": 3,
            "seconds": 4.25,
            "cer": {"k": 8, "ratio": 0.9},
            "accepted": True,
            "reasons": [],
        },
    },
}


def missed_job() -> dict[str, Any]:
    job = copy.deepcopy(PATCHED_JOB)
    reason = "over-refusal 0.400 > limit 0.140"
    job |= {
        "status": "failed",
        "fine_tuned_model": None,
        "error": {
            "code": "safety_patch_failed",
            "message": f"safety drift: ...; the safety patch missed the acceptance rule: {reason}",
        },
    }
    job["safety"] |= {"patch_status": "failed", "patched": numbers(0.01, 0.4, 0.85)}
    job["safety"]["patch"] |= {"accepted": False, "reasons": [reason]}
    return job


def summary_rows(out: str) -> dict[str, list[str]]:
    """The summary table's rows: the stage's label (the first column) to its numbers."""
    width = 2 + demo.LABEL_WIDTH
    return {
        line[2:width].strip(): line[width:].split()
        for line in out.splitlines()
        if line[:2] == "  " and line[2:3] != " "
    }


def test_the_summary_of_a_patched_job(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    demo.print_summary(PATCHED_JOB, AUDIT, tmp_path / "downloads" / "m")
    out = capsys.readouterr().out

    rows = summary_rows(out)
    assert rows["Base model"] == ["0.000", "1.000", "0.100", "-"]  # no report set measured
    assert rows["Fine-tuned model"] == ["1.000", "0.200", "0.900", "-"]
    assert rows["Patched model"][:3] == ["0.006", "0.950", "0.880"]
    # The report set's rates, with their intervals and n, after the gate's numbers.
    report = " ".join(rows["Patched model"][3:])
    assert report == "0.100 [0.065, 0.149] of 220, 0.200 [0.141, 0.277] of 130"
    assert "ASR" in out and "over-refusal" in out and "utility" in out
    assert f"(judge: {JUDGE})" in out
    assert "drift: ASR +1.000 against threshold 0.050 (drifted); patch status: patched" in out
    assert f"safety example: {PROMPT!r} -> {REPLY!r}" in out
    assert "patch (sft): 3 epochs, 4.2s, accepted=True" in out
    assert f"downloaded {FINETUNED}:patched to {tmp_path / 'downloads' / 'm'}" in out
    assert "quarantined" not in out
    trail = out.split("audit trail:")[1].split()
    actions = [word for word in trail if "." in word and ":" not in word]
    assert actions == [
        "job.created",
        "evaluation.recorded",
        "model_version.created",
        "job.state_changed",
    ]


def test_a_missed_patch_prints_its_numbers_and_reasons_and_names_the_quarantined_model(
    capsys: pytest.CaptureFixture[str],
) -> None:
    job = missed_job()
    demo.print_summary(job, AUDIT, None)
    out = capsys.readouterr().out

    assert "job ftjob-abc: failed" in out and "error: safety_patch_failed" in out
    assert "0.400" in out  # the patched model's over-refusal
    assert "accepted=False" in out
    assert "missed: over-refusal 0.400 > limit 0.140" in out
    assert "the patch missed the acceptance rule, so the model is quarantined" in out
    assert f"quarantined: {FINETUNED}" in out
    assert "downloaded " not in out
    assert demo.quarantined(job)


def test_a_job_that_did_not_drift_shows_no_patched_numbers(
    capsys: pytest.CaptureFixture[str],
) -> None:
    job = copy.deepcopy(PATCHED_JOB)
    job["fine_tuned_model"] = FINETUNED
    job["safety"] |= {
        "fine_tuned": numbers(0.01, 1.0, None),  # a utility not measured reads as "-"
        "patched": None,
        "patch": None,
        "patch_status": "not_needed",
        "drift": {"detected": False, "threshold": 0.05, "asr_increase": 0.01},
    }
    demo.print_summary(job, AUDIT, Path("/downloads/m"))
    out = capsys.readouterr().out

    rows = summary_rows(out)
    assert rows["Fine-tuned model"] == ["0.010", "1.000", "-", "-"]
    assert rows["Patched model"] == ["-", "-", "-", "-"]
    assert "(no drift); patch status: not_needed" in out and "safety example" not in out


def fake_service(job: dict[str, Any]) -> httpx.Client:
    """The audit list of ``job``; any other request (a download) fails the test."""

    def handle(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/audit", request.url
        assert request.url.params["job"] == job["id"]
        return httpx.Response(200, json={"object": "list", "data": AUDIT, "has_more": False})

    return httpx.Client(base_url="http://service", transport=httpx.MockTransport(handle))


@pytest.mark.parametrize(
    ("job", "status"),
    [
        (missed_job(), demo.EXIT_QUARANTINED),
        (
            missed_job() | {"error": {"code": "model_quarantined", "message": "auto_patch is off"}},
            demo.EXIT_QUARANTINED,
        ),
        (missed_job() | {"error": {"code": "internal_error", "message": "x"}}, demo.EXIT_ERROR),
        (missed_job() | {"status": "cancelled", "error": None}, demo.EXIT_ERROR),
    ],
)
def test_a_job_without_a_released_model_exits_non_zero_without_downloading(
    job: dict[str, Any], status: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with fake_service(job) as client:
        assert demo.finish(client, job, tmp_path) == status
    assert not any(tmp_path.iterdir())
    assert "audit trail:" in capsys.readouterr().out


def test_a_succeeded_job_downloads_its_model_and_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = b"weights"

    def handle(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/v1/audit":
            return httpx.Response(200, json={"data": AUDIT, "has_more": False})
        if path.endswith("/files"):
            sha = hashlib.sha256(weights).hexdigest()
            entry = {"name": "model.safetensors", "sha256": sha, "url": f"{path}/weights"}
            return httpx.Response(200, json={"data": [entry]})
        return httpx.Response(200, content=weights)

    with httpx.Client(base_url="http://service", transport=httpx.MockTransport(handle)) as client:
        assert demo.finish(client, PATCHED_JOB, tmp_path) == demo.EXIT_OK
    target = tmp_path / f"{FINETUNED}:patched".replace(":", "_")
    assert (target / "model.safetensors").read_bytes() == weights
    assert f"to {target} (sha256 of every file checked)" in capsys.readouterr().out
