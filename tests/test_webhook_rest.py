"""The webhook management endpoints as a REST client sees them through the real Envoy (SPEC §7
JSON shapes, §10 error envelope), with production settings: HTTPS-only public URLs."""

from __future__ import annotations

import httpx
import pytest

TEST_PEPPER = "test-pepper-not-secret-0123456789"


@pytest.fixture(scope="module")
def zimsend_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    from _processes import zimsend_env as make_env

    return make_env(tmp_path_factory.mktemp("zimsend-data"), TEST_PEPPER)


def test_configure_list_test_logs_delete(http: httpx.Client) -> None:
    created = http.post(
        "/v1/webhooks/configure",
        json={
            "url": "https://hooks.example.com/zimsend",
            "events": ["sms.sent", "sms.delivered"],
            "secret": None,
        },
    )
    assert created.status_code == 200, created.text
    body = created.json()
    assert body["success"] is True
    assert body["status"] == "active"
    assert body["secret"].startswith("whsec_")
    assert body["webhook_id"].startswith("wh_")
    assert body["events"] == ["sms.sent", "sms.delivered"]
    webhook_id = body["webhook_id"]

    listed = http.get("/v1/webhooks").json()
    assert listed["success"] is True
    assert [w["webhook_id"] for w in listed["webhooks"]] == [webhook_id]
    assert "secret" not in listed["webhooks"][0]
    assert body["secret"] not in str(listed)

    tested = http.post(f"/v1/webhooks/{webhook_id}/test", json={}).json()
    assert tested["success"] is True
    assert tested["event_id"].startswith("evt_")

    logs = http.get("/v1/webhooks/logs", params={"page": 1, "limit": 10}).json()
    assert logs["success"] is True
    assert logs["pagination"]["current_page"] == 1
    assert logs["pagination"]["per_page"] == 10

    deleted = http.delete(f"/v1/webhooks/{webhook_id}").json()
    assert deleted == {"success": True, "webhook_id": webhook_id}
    gone = http.delete(f"/v1/webhooks/{webhook_id}")
    assert gone.status_code == 404
    assert gone.json()["error"]["code"] == "WEBHOOK_NOT_FOUND"


@pytest.mark.parametrize(
    "url", ["http://hooks.example.com/", "https://127.0.0.1/", "https://2130706433/"]
)
def test_a_refused_url_is_400_invalid_webhook_url(http: httpx.Client, url: str) -> None:
    response = http.post("/v1/webhooks/configure", json={"url": url, "events": ["sms.sent"]})
    assert response.status_code == 400
    body = response.json()
    assert body["success"] is False
    assert body["error"]["code"] == "INVALID_WEBHOOK_URL"
    assert body["code"] == 3
    assert "url" in body["error"]["message"]


@pytest.mark.parametrize(
    ("param", "range_text"),
    [("page", "must be 1 or more (got 0)"), ("limit", "must be 1-100 (got 0)")],
)
def test_logs_paging_zero_is_400_naming_the_parameter(
    http: httpx.Client, param: str, range_text: str
) -> None:
    """Issue 12 item 11: `page=0`/`limit=0` were taken for the defaults (history refuses them)."""
    response = http.get("/v1/webhooks/logs", params={param: 0})
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"]["code"] == "INVALID_REQUEST"
    assert body["error"]["message"] == f"{param}: {range_text}"
    assert http.get("/v1/webhooks/logs").json()["pagination"]["per_page"] == 50


@pytest.mark.parametrize(
    "url",
    ["https://10.1.2.3/hook", "https://169.254.169.254:8443/latest/", "https://localhost:9000/"],
)
def test_a_message_webhook_url_is_checked_like_configure(http: httpx.Client, url: str) -> None:
    """Issue 12 item 11: a message's own webhook_url was accepted at send and refused only at
    delivery; now the send is refused as configure would refuse the same URL."""
    configured = http.post("/v1/webhooks/configure", json={"url": url, "events": ["sms.sent"]})
    sent = http.post(
        "/v1/sms/send", json={"to": "+33612345678", "message": "hi", "webhook_url": url}
    )
    for response in (configured, sent):
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "INVALID_WEBHOOK_URL"
    assert (
        "public HTTPS address" in sent.json()["error"]["message"]
        or "this machine" in (sent.json()["error"]["message"])
    )
    assert sent.json()["error"]["message"].startswith("webhook_url: ")
