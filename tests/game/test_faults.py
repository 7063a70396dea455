"""Load and fault tests on loopback, bounded in count and time: concurrent uploads, hostile files and
tokens, a worker killed mid-job, a server restarted mid-round."""

from __future__ import annotations

import io
import json
import os
import signal
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.game.conftest import Server, round_toml, start_worker


def _game(data_dir: Path):
    from backdoor_arena.game.service import open_game

    return open_game(data_dir, os.environ.get("BACKDOOR_ARENA_GAME_DB"))


def _setup(server, admin_token: str, round_name: str, teams: dict[str, str], **toml) -> dict[str, str]:
    admin = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {admin_token}"}, timeout=60)
    tokens = {}
    for team, role in teams.items():
        if admin.post("/api/teams", json={"name": team, "role": role}).status_code not in (201, 409):
            raise AssertionError(team)
        scopes = ["results:read", "attack:submit" if role == "attacker" else "defense:submit"]
        tokens[team] = admin.post("/api/tokens", json={"team": team, "scopes": scopes}).json()["token"]
    assert admin.post("/api/rounds", content=round_toml(round_name, **toml)).status_code == 201
    assert admin.post(f"/api/rounds/{round_name}/advance", json={"to": "attack_open"}).status_code == 200
    tokens["admin"] = admin_token
    return tokens


def _upload(url: str, token: str, round_name: str, data: bytes, spec: bytes, filename: str = "model.safetensors",
            key: str | None = None, architecture: str = "badnet-mnist") -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if key:
        headers["Idempotency-Key"] = key
    return httpx.post(f"{url}/api/rounds/{round_name}/submissions", headers=headers, timeout=120,
                      data={"architecture": architecture},
                      files={"model": (filename, data, "application/octet-stream"), "spec": ("s.json", spec)})


def _counts(data_dir: Path, round_name: str) -> tuple[int, int, list[str]]:
    from backdoor_arena.game.db import Job, Submission
    from backdoor_arena.game.service import get_round

    game = _game(data_dir)
    with game.sessions() as s:
        rid = get_round(s, round_name).id
        subs = s.query(Submission).filter(Submission.round_id == rid).count()
        jobs = s.query(Job).filter(Job.round_id == rid, Job.kind == "gate").count()
    files = sorted(p.name for p in (data_dir / "submissions").glob("*")) + \
        sorted(p.name for p in (data_dir / "incoming").glob("*"))
    return subs, jobs, files


def test_hostile_uploads_and_tokens_are_refused_and_nothing_is_written(server, game_dir, attack_models):
    data_dir, admin_token = game_dir
    tokens = _setup(server, admin_token, "faults", {"red-f": "attacker", "blue-f": "attacker", "def-f": "defender"})
    weights, spec_path = attack_models["red"][0]
    good, spec = weights.read_bytes(), spec_path.read_bytes()
    tensors = load_file(str(weights))
    before = _counts(data_dir, "faults")

    buf = io.BytesIO()
    torch.save(tensors, buf)  # a pickle (zip) file
    wrong = dict(tensors)
    first = sorted(wrong)[0]
    wrong[first] = torch.zeros(*[d + 1 for d in wrong[first].shape])
    wrong_path = weights.with_name("wrong.safetensors")
    save_file(wrong, str(wrong_path))
    huge_header = struct.pack("<Q", 10 << 20) + b"{" + b" " * 100
    cases = {
        "pickle": (buf.getvalue(), "model.safetensors", 422, "format"),
        "truncated": (good[: len(good) // 2], "model.safetensors", 422, "format"),
        "oversized header": (huge_header, "model.safetensors", 422, "format"),
        "wrong shapes": (wrong_path.read_bytes(), "model.safetensors", 422, "architecture"),
        "path in name": (good, "../../etc/model.safetensors", 422, "filename"),
        "oversized body": (good + b"\0" * (5 << 20), "model.safetensors", 413, "size"),
    }
    for name, (data, filename, status, gate) in cases.items():
        r = _upload(server.url, tokens["red-f"], "faults", data, spec, filename)
        assert r.status_code == status, (name, r.text)
        assert r.json().get("gate") == gate, (name, r.text)
        assert str(data_dir) not in r.text  # no server paths in messages
    assert _upload(server.url, tokens["red-f"], "faults", good, b"{not json").json()["gate"] == "spec"

    def chunks():  # 5 MiB streamed without a Content-Length: the cap applies while it arrives
        yield (b'--b\r\nContent-Disposition: form-data; name="model"; filename="m.safetensors"\r\n'
               b"Content-Type: application/octet-stream\r\n\r\n")
        for _ in range(80):
            yield b"\0" * 65536

    r = httpx.post(f"{server.url}/api/rounds/faults/submissions", content=chunks(), timeout=60,
                   headers={"Authorization": f"Bearer {tokens['red-f']}",
                            "Content-Type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413 and r.json()["gate"] == "size"

    # tokens: none, garbage, expired, a defender's (no attack scope), another team's submission
    assert _upload(server.url, "", "faults", good, spec).status_code == 401
    assert _upload(server.url, "bag_garbage", "faults", good, spec).status_code == 401
    admin = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {admin_token}"})
    expired = admin.post("/api/tokens", json={"team": "red-f", "scopes": ["attack:submit"], "ttl_s": -1}).json()
    r = _upload(server.url, expired["token"], "faults", good, spec)
    assert r.status_code == 401 and "expired" in r.json()["detail"]
    assert _upload(server.url, tokens["def-f"], "faults", good, spec).status_code == 403
    assert _counts(data_dir, "faults") == before  # nothing written by any refusal

    ok = _upload(server.url, tokens["red-f"], "faults", good, spec)
    assert ok.status_code == 201, ok.text
    mine = ok.json()["id"]
    theirs = httpx.get(f"{server.url}/api/submissions/{mine}", headers={"Authorization": f"Bearer {tokens['blue-f']}"})
    assert theirs.status_code == 403
    own = httpx.get(f"{server.url}/api/submissions/{mine}", headers={"Authorization": f"Bearer {tokens['red-f']}"})
    assert own.status_code == 200 and own.json()["state"] == "queued"
    # the stored spec is sealed, never plain text
    from backdoor_arena.game.db import Submission

    with _game(data_dir).sessions() as s:
        row = s.query(Submission).filter(Submission.opaque_id == mine).one()
        assert b'"target"' not in row.spec_sealed and row.spec_commitment.startswith("sha256:")
    # the pool stays closed to defenders before the defense phase
    assert httpx.get(f"{server.url}/api/rounds/faults/pool",
                     headers={"Authorization": f"Bearer {tokens['def-f']}"}).status_code == 409


def test_100_concurrent_uploads_nothing_lost_or_duplicated(server, game_dir, attack_models):
    data_dir, admin_token = game_dir
    tokens = _setup(server, admin_token, "load", {"red-l": "attacker"}, quota=1000)
    weights, spec_path = attack_models["blue"][0]
    good, spec = weights.read_bytes(), spec_path.read_bytes()
    keys = [f"k{i}" for i in range(100)]
    # every key once, and 20 of them again at the same time (a client retrying)
    sends = keys + keys[:20]
    started = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda k: (k, _upload(server.url, tokens["red-l"], "load", good, spec, key=k)), sends))
    elapsed = time.perf_counter() - started
    assert all(r.status_code == 201 for _, r in responses), [r.text for _, r in responses if r.status_code != 201][:3]
    by_key: dict[str, set[str]] = {}
    for k, r in responses:
        by_key.setdefault(k, set()).add(r.json()["id"])
    assert all(len(ids) == 1 for ids in by_key.values())  # a retried key names the same submission
    subs, jobs, files = _counts(data_dir, "load")
    assert subs == 100 and jobs == 100
    assert len({f for f in files if f.endswith(".safetensors")} & {f"{i}.safetensors" for ids in by_key.values()
                                                                   for i in ids}) == 100
    print(f"100 uploads (+20 retries) in {elapsed:.1f} s: {120 / elapsed:.1f} uploads/s")


def test_killed_worker_job_is_finished_by_another(server, game_dir, tmp_path):
    from backdoor_arena.game.db import Job, PoolModel
    from backdoor_arena.game.service import get_round

    data_dir, admin_token = game_dir
    # one slow clean-model job and a 3 s lease: the kill lands mid-job, the lease runs out soon after
    _setup(server, admin_token, "kill", {}, clean_models=2, clean_train_samples=6000, lease_s=3)
    game = _game(data_dir)
    with game.sessions() as s:
        rid = get_round(s, "kill").id
    first = start_worker(data_dir, tmp_path / "a.log", "kill")
    deadline = time.monotonic() + 60
    claimed = None
    while time.monotonic() < deadline and claimed is None:
        with game.sessions() as s:
            claimed = s.query(Job).filter(Job.round_id == rid, Job.state == "running").first()
        time.sleep(0.05)
    assert claimed is not None, "the worker claimed nothing"
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    with game.sessions() as s:
        job = s.get(Job, claimed.id)
        assert job.state == "running" and job.attempts == 1  # left behind, leased to the dead worker
    second = start_worker(data_dir, tmp_path / "b.log", "kill")
    try:
        from backdoor_arena.game.worker import wait_for_jobs

        wait_for_jobs(game, rid, 120)
    finally:
        second.terminate()
        second.wait(20)
    with game.sessions() as s:
        job = s.get(Job, claimed.id)
        assert job.state == "done" and job.attempts == 2 and job.worker_id != claimed.worker_id
        assert s.query(PoolModel).filter(PoolModel.round_id == rid).count() == 2  # no duplicate model
        assert s.query(Job).filter(Job.round_id == rid, Job.state != "done").count() == 0


def test_server_restart_mid_round_loses_nothing(game_dir, attack_models):
    data_dir, admin_token = game_dir
    first = Server(data_dir)
    try:
        tokens = _setup(first, admin_token, "restart", {"red-r": "attacker"})
        weights, spec = attack_models["red"][0]
        sub = _upload(first.url, tokens["red-r"], "restart", weights.read_bytes(), spec.read_bytes(), key="once")
        assert sub.status_code == 201
    finally:
        first.stop(kill=True)  # no clean shutdown
    second = Server(data_dir)
    try:
        auth = {"Authorization": f"Bearer {tokens['red-r']}"}
        r = httpx.get(f"{second.url}/api/rounds/restart").json()
        assert r["phase"] == "attack_open"
        mine = httpx.get(f"{second.url}/api/rounds/restart/submissions", headers=auth).json()
        assert [x["id"] for x in mine] == [sub.json()["id"]]
        again = _upload(second.url, tokens["red-r"], "restart", weights.read_bytes(), spec.read_bytes(), key="once")
        assert again.json()["id"] == sub.json()["id"]  # the idempotency key survived the restart
    finally:
        second.stop()


def test_round_config_names_registered_defenses_only():
    from backdoor_arena.errors import ConfigError
    from backdoor_arena.game.config import loads_round_config

    cfg = loads_round_config(round_toml("ok"))
    assert set(cfg.defense.detectors) == {"neural-cleanse"} and set(cfg.defense.mitigations) == {"fine-tuning"}
    with pytest.raises(ConfigError, match="unknown 'nope'"):
        loads_round_config(round_toml("bad").replace("neural-cleanse]", "nope]"))
    with pytest.raises(ConfigError, match="steps"):
        loads_round_config(round_toml("bad").replace("steps = 6", "steps = -1"))
    with pytest.raises(ConfigError, match="surprise: Extra inputs are not permitted"):
        loads_round_config(round_toml("bad") + "\nsurprise = 1\n")
    with pytest.raises(ConfigError, match="name"):
        loads_round_config(round_toml("../x"))
    assert json.loads(cfg.model_dump_json())["gates"]["min_asr"] == 0.7


def test_admin_pages_need_login_and_csrf_and_users_log_in(server, game_dir):
    data_dir, admin_token = game_dir
    web = httpx.Client(base_url=server.url, timeout=60)
    assert web.get("/admin").status_code == 303  # not logged in: to /login
    bad = web.post("/login", data={"username": "admin", "password": "wrong-password"})
    assert "wrong user name or password" in bad.text and "ba_session" not in web.cookies
    assert web.post("/login", data={"username": "admin", "password": "admin-password-1"}).status_code == 303
    page = web.get("/admin").text
    csrf = page.split('name="csrf" value="')[1].split('"')[0]
    assert web.post("/admin/teams", data={"name": "web-team", "role": "attacker", "csrf": "forged"}).status_code == 403
    assert web.post("/admin/teams", data={"name": "web-team", "role": "attacker", "csrf": csrf}).status_code == 303
    assert "web-team" in web.get("/admin").text
    # a student account: password login gives a scoped token of the student's team
    admin = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {admin_token}"})
    assert admin.post("/api/users", json={"username": "student1", "password": "student-pass",
                                          "team": "web-team"}).status_code == 201
    assert httpx.post(f"{server.url}/api/login", json={"username": "student1", "password": "nope-nope"}).status_code == 401
    token = httpx.post(f"{server.url}/api/login", json={"username": "student1", "password": "student-pass"}).json()
    assert set(token["scopes"]) == {"results:read", "attack:submit"}
    # the student's token cannot do admin work
    r = httpx.post(f"{server.url}/api/teams", json={"name": "x", "role": "attacker"},
                   headers={"Authorization": f"Bearer {token['token']}"})
    assert r.status_code == 403
    from backdoor_arena.game.db import AuditEvent

    with _game(data_dir).sessions() as s:
        actions = {a.action for a in s.query(AuditEvent)}
    assert {"login", "team.create", "user.create", "token.issue"} <= actions
