"""A ZimSend API wrapper in the style of the one ZimSend documents for Python (requests-based,
one method per endpoint, optional fields sent as JSON null). Issue 5 requires that such
existing client code works against us by changing only its base URL: this file stands in for
that code, so it must not be "fixed" to suit our server — it sends what the docs show."""

from __future__ import annotations

from typing import Any

import requests


class ZimSendClient:
    def __init__(
        self,
        api_key: str,
        client_id: str,
        base_url: str = "https://api.zimsend.com/v1",
        device_id: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()
        self.session.headers.update(
            {"X-API-Key": api_key, "X-Client-ID": client_id, "Content-Type": "application/json"}
        )
        if device_id:
            self.session.headers["X-Device-ID"] = device_id

    def _handle(self, response: requests.Response) -> dict[str, Any]:
        data: dict[str, Any] = response.json()
        if not data.get("success"):
            error = data.get("error", {})
            raise ZimSendError(error.get("code"), error.get("message"), response.status_code)
        return data

    def send_sms(
        self,
        to: str,
        message: str,
        priority: int = 3,
        webhook_url: str | None = None,
        metadata: dict[str, Any] | None = None,
        scheduled_at: str | None = None,
    ) -> dict[str, Any]:
        payload = {
            "to": to,
            "message": message,
            "priority": priority,
            "webhook_url": webhook_url,
            "metadata": metadata,
            "scheduled_at": scheduled_at,
        }
        return self._handle(self.session.post(f"{self.base_url}/sms/send", json=payload))

    def send_bulk_sms(
        self,
        recipients: list[str],
        message: str,
        priority: int = 3,
        metadata: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        payload = {
            "recipients": recipients,
            "message": message,
            "priority": priority,
            "metadata": metadata,
        }
        return self._handle(self.session.post(f"{self.base_url}/sms/send-bulk", json=payload))

    def get_status(self, message_id: str) -> dict[str, Any]:
        return self._handle(self.session.get(f"{self.base_url}/sms/status/{message_id}"))

    def cancel_message(self, message_id: str) -> dict[str, Any]:
        return self._handle(self.session.delete(f"{self.base_url}/sms/{message_id}"))

    def get_history(self, page: int = 1, limit: int = 50, **filters: Any) -> dict[str, Any]:
        params = {"page": page, "limit": limit, **filters}
        return self._handle(self.session.get(f"{self.base_url}/sms/history", params=params))

    def get_stats(self, **filters: Any) -> dict[str, Any]:
        return self._handle(self.session.get(f"{self.base_url}/sms/stats", params=filters))

    def test_connection(self) -> dict[str, Any]:
        return self._handle(self.session.get(f"{self.base_url}/auth/test"))


class ZimSendError(Exception):
    def __init__(self, code: str | None, message: str | None, status: int) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.status = code, message, status
