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


def test_the_document_describes_the_errors_the_api_really_sends(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    error = {"$ref": "#/components/schemas/ErrorResponse"}
    assert "HTTPValidationError" not in document["components"]["schemas"]
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            # Validation errors are 400s in OpenAI's body (app.core.errors), never 422s.
            assert "422" not in responses, (method, path)
            if operation.get("parameters") or "requestBody" in operation:
                assert "400" in responses, (method, path)
            if path.startswith("/v1/"):  # /readyz's 503 is its readiness report
                for status, response in responses.items():
                    if int(status) >= 400:
                        assert response["content"]["application/json"]["schema"] == error
                assert {"401", "503"} <= set(responses), (method, path)
                assert operation["security"] == [{"APIKey": []}]
    assert document["components"]["securitySchemes"]["APIKey"]["scheme"] == "bearer"
    jobs = document["paths"]["/v1/fine_tuning/jobs"]["post"]["responses"]
    assert "Retry-After" in jobs["429"]["headers"]
    content = document["paths"]["/v1/files/{file_id}/content"]["get"]["responses"]["200"]
    assert list(content["content"]) == ["application/jsonl"]
