"""The official ``openai`` client against the app in process (httpx transport of TestClient)."""

from __future__ import annotations

import json
from collections.abc import Callable

import openai
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from tests import api_checks
from tests.conftest import RecordingQueue
from tests.factories import BASE_MODEL, Caller, create_caller

TRAIN = b"".join(
    json.dumps(
        {
            "messages": [
                {"role": "user", "content": f"Question {i}?"},
                {"role": "assistant", "content": f"Answer {i}."},
            ]
        }
    ).encode()
    + b"\n"
    for i in range(3)
)

MakeClient = Callable[[Caller], openai.OpenAI]


@pytest.fixture
def make_client(client: TestClient) -> MakeClient:
    def make(caller: Caller) -> openai.OpenAI:
        return openai.OpenAI(
            api_key=caller.key, base_url="http://testserver/v1", http_client=client, max_retries=0
        )

    return make


def test_upload_create_retrieve_list_events_and_cancel(
    make_client: MakeClient, caller: Caller, task_queue: RecordingQueue
) -> None:
    sdk = make_client(caller)
    uploaded = sdk.files.create(file=("train.jsonl", TRAIN), purpose="fine-tune")
    assert uploaded.id.startswith("file-") and uploaded.bytes == len(TRAIN)
    assert sdk.files.retrieve(uploaded.id).filename == "train.jsonl"
    assert sdk.files.content(uploaded.id).content == TRAIN
    assert [f.id for f in sdk.files.list()] == [uploaded.id]

    job = sdk.fine_tuning.jobs.create(
        model="smollm2-135m-instruct",
        training_file=uploaded.id,
        hyperparameters={"n_epochs": 2},
        suffix="sdk",
        seed=7,
        extra_body={"safety": {"asr_threshold": 0.1, "auto_patch": True, "strategy": "sft"}},
    )
    assert job.id.startswith("ftjob-") and job.status == "queued"
    assert job.hyperparameters.n_epochs == 2 and job.seed == 7
    assert task_queue.job_ids == [job.id]
    extra = job.model_extra or {}
    assert extra["safety"]["asr_threshold"] == 0.1

    assert sdk.fine_tuning.jobs.retrieve(job.id).id == job.id
    assert [j.id for j in sdk.fine_tuning.jobs.list()] == [job.id]
    events = list(sdk.fine_tuning.jobs.list_events(job.id))
    assert [e.message for e in events][-1].startswith("Created fine-tuning job")

    cancelled = sdk.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled"

    assert sdk.files.delete(uploaded.id).deleted is True


def test_files_list_pages_in_either_order(make_client: MakeClient, caller: Caller) -> None:
    sdk = make_client(caller)
    ids = [sdk.files.create(file=(f"{n}.jsonl", TRAIN), purpose="fine-tune").id for n in range(3)]
    # Iterating a page follows `after` from page to page, as for OpenAI.
    assert [f.id for f in sdk.files.list(limit=1, order="asc")] == ids
    assert [f.id for f in sdk.files.list(limit=2)] == ids[::-1]
    page = sdk.files.list(limit=2, order="desc", purpose="fine-tune")
    assert [f.id for f in page.data] == [ids[2], ids[1]] and page.has_more is True
    assert list(sdk.files.list(purpose="batch")) == []


def test_jobs_list_filters_by_metadata(make_client: MakeClient, caller: Caller) -> None:
    sdk = make_client(caller)
    uploaded = sdk.files.create(file=("train.jsonl", TRAIN), purpose="fine-tune")

    def create(metadata: dict[str, str]) -> str:
        job = sdk.fine_tuning.jobs.create(
            model=BASE_MODEL, training_file=uploaded.id, metadata=metadata
        )
        assert job.metadata == metadata
        return job.id

    red = create({"team": "red", "stage": "prod"})
    blue = create({"team": "blue", "stage": "prod"})
    red_dev = create({"team": "red", "stage": "dev"})
    # The client sends the dict as metadata[team]=red&metadata[stage]=prod.
    assert [j.id for j in sdk.fine_tuning.jobs.list(metadata={"team": "red"})] == [red_dev, red]
    both = sdk.fine_tuning.jobs.list(metadata={"team": "red", "stage": "prod"})
    assert [j.id for j in both] == [red]
    # Auto-paging keeps the filter on every page.
    assert [j.id for j in sdk.fine_tuning.jobs.list(metadata={"stage": "prod"}, limit=1)] == [
        blue,
        red,
    ]
    assert list(sdk.fine_tuning.jobs.list(metadata={"team": "green"})) == []


def test_typed_errors(make_client: MakeClient, caller: Caller) -> None:
    sdk = make_client(caller)
    api_checks.check_typed_errors(sdk)  # the checks run against the real deployments too
    with pytest.raises(openai.BadRequestError) as bad_file:
        sdk.files.create(file=("bad.jsonl", TRAIN + b"not json\n"), purpose="fine-tune")
    assert "line 4" in bad_file.value.message
    with pytest.raises(openai.BadRequestError) as bad_job:
        sdk.fine_tuning.jobs.create(model=BASE_MODEL, training_file="file-missing")
    assert bad_job.value.param == "training_file"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(
            api_key="sp-wrong",
            base_url="http://testserver/v1",
            http_client=sdk._client,
            max_retries=0,
        ).files.list()


def test_another_tenant_sees_none_of_the_objects(
    make_client: MakeClient, caller: Caller, session: Session
) -> None:
    mine = make_client(caller)
    uploaded = mine.files.create(file=("train.jsonl", TRAIN), purpose="fine-tune")
    job = mine.fine_tuning.jobs.create(model=BASE_MODEL, training_file=uploaded.id)

    theirs = make_client(create_caller(session))
    made = api_checks.Objects(files=[uploaded.id], jobs=[job.id], models=[])
    api_checks.check_other_tenant_sees_nothing(theirs, made, base_model=BASE_MODEL)
    assert mine.files.retrieve(uploaded.id).id == uploaded.id  # still there for its owner
    assert [j.id for j in mine.fine_tuning.jobs.list()] == [job.id]


def test_method_checkpoints_and_models_through_the_client(
    make_client: MakeClient, caller: Caller
) -> None:
    sdk = make_client(caller)
    uploaded = sdk.files.create(file=("train.jsonl", TRAIN), purpose="fine-tune")
    job = sdk.fine_tuning.jobs.create(
        model=BASE_MODEL,
        training_file=uploaded.id,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}},
    )
    assert job.hyperparameters.n_epochs == 2 and job.result_files == []
    assert job.method is not None and job.method.type == "supervised"
    assert list(sdk.fine_tuning.jobs.checkpoints.list(job.id)) == []
    with pytest.raises(openai.BadRequestError) as dpo:
        sdk.fine_tuning.jobs.create(
            model=BASE_MODEL, training_file=uploaded.id, method={"type": "dpo"}
        )
    assert dpo.value.param == "method.type"

    assert [m.id for m in sdk.models.list()] == [BASE_MODEL]
    assert sdk.models.retrieve(BASE_MODEL).owned_by == "safepatch"
    with pytest.raises(openai.NotFoundError):
        sdk.models.retrieve("ft:missing")
