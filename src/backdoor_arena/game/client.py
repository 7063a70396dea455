"""The HTTP client behind `backdoor-arena game submit|predict|status|board` (httpx). Errors from the server
become one-line ArenaErrors with the server's message."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ArenaError, ConfigError
from ..safeio import read_bytes


class ServerError(ArenaError):
    exit_code = 6

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"server said {status}: {detail}" if status else detail)
        self.status = status


class Client:
    def __init__(self, server: str, token: str | None = None, timeout: float = 120.0) -> None:
        try:
            import httpx
        except ImportError:
            raise ConfigError("the game client needs httpx: pip install 'backdoor-arena[game]'") from None

        if not server.startswith(("http://", "https://")):
            raise ConfigError(f"--server {server!r} must be a URL like http://localhost:8000")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=server.rstrip("/"), headers=headers, timeout=timeout)

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        import httpx

        try:
            r = self.http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise ServerError(0, f"cannot reach {self.http.base_url} ({type(exc).__name__}: {exc})") from None
        return self._check(r)

    def _check(self, r: Any) -> Any:
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail", r.text)
            except ValueError:
                detail = r.text
            raise ServerError(r.status_code, str(detail)[:500])
        return r.json() if r.headers.get("content-type", "").startswith("application/json") else r.content

    def submit(self, round_name: str, model: str | Path, spec: str | Path, architecture: str,
               idempotency_key: str | None = None) -> dict[str, Any]:
        model_bytes = read_bytes(model, "model file", ConfigError, 1 << 30)
        spec_bytes = read_bytes(spec, "attack spec", ConfigError, 16 << 20)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._call(
            "POST", f"/api/rounds/{round_name}/submissions", data={"architecture": architecture}, headers=headers,
            files={"model": (Path(model).name, model_bytes, "application/octet-stream"),
                   "spec": ("spec.json", spec_bytes, "application/json")})

    def predict(self, round_name: str, scores: dict[str, float]) -> dict[str, Any]:
        return self._call("POST", f"/api/rounds/{round_name}/predictions", content=json.dumps({"scores": scores}))

    def pool(self, round_name: str) -> list[str]:
        return self._call("GET", f"/api/rounds/{round_name}/pool")

    def download(self, round_name: str, pool_id: str, out: Path) -> Path:
        out.write_bytes(self._call("GET", f"/api/rounds/{round_name}/pool/{pool_id}"))
        return out

    def status(self, round_name: str) -> list[dict[str, Any]]:
        return self._call("GET", f"/api/rounds/{round_name}/submissions")

    def board(self, round_name: str) -> dict[str, Any]:
        return self._call("GET", f"/api/rounds/{round_name}/board")

    def round(self, round_name: str) -> dict[str, Any]:
        return self._call("GET", f"/api/rounds/{round_name}")

    def admin(self, method: str, path: str, **kw: Any) -> Any:
        return self._call(method, path, **kw)
