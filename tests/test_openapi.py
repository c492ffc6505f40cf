from __future__ import annotations

from fastapi.testclient import TestClient


def test_openapi_documents_every_endpoint(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert set(schema["paths"]) == {
        "/healthz",
        "/readyz",
        "/v1/audit",
        "/v1/audit/verify",
        "/v1/files",
        "/v1/files/{file_id}",
        "/v1/files/{file_id}/content",
        "/v1/fine_tuning/jobs",
        "/v1/fine_tuning/jobs/{fine_tuning_job_id}",
        "/v1/fine_tuning/jobs/{fine_tuning_job_id}/cancel",
        "/v1/fine_tuning/jobs/{fine_tuning_job_id}/events",
        "/v1/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints",
        "/v1/models",
        "/v1/models/{model}",
        "/v1/models/{model}/files",
        "/v1/models/{model}/files/{filename}",
    }
    assert "JobCreate" in schema["components"]["schemas"]
    assert client.get("/docs").status_code == 200
