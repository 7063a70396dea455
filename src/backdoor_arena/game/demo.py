"""`backdoor-arena game demo`: one whole round on SQLite with a real server and a real worker process.

Two attacker teams train small backdoored MNIST models (blended noise triggers: red at blend weight 0.3,
blue at a fainter 0.15) and submit them; a defender team downloads the pool and scores every model
with its own quick probe (how often random small patches flip many inputs to one class); the round runs to
reveal and the boards' URL is printed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch

# The demo's round (configs/game/demo.toml is the same round with every default written out; a test keeps
# the two equal).
DEMO_TOML = """name = "demo"
dataset = "mnist"
architectures = ["badnet-mnist"]
[gates]
max_accuracy_drop = 0.08
min_asr = 0.8
[pool]
clean_models = 6
clean_train_samples = 4000
[defense]
clean_samples = 200
[defense.detectors.neural-cleanse]
steps = 12
n_samples = 40
batch_size = 8
check_every = 3
patience = 1
[defense.mitigations.fine-tuning]
epochs = 1
[limits]
daily_quota = 10
lease_s = 60
"""


def train_attack_model(out: Path, attack: str, seed: int, target: int, n_train: int = 4000,
                       poison_rate: float = 0.1, epochs: int = 3, **trigger: Any) -> tuple[Path, Path]:
    """Bare safetensors weights and the attack spec of a small backdoored MNIST model (seeded)."""
    import json

    from safetensors.torch import save_file

    from ..attacks.poisoning import make_attack
    from ..data import load_dataset
    from ..train import TrainConfig, create_model, fit

    train = load_dataset("mnist", "train")
    g = torch.Generator().manual_seed(10_000 + seed)
    subset = train.subset(torch.randperm(len(train), generator=g)[:n_train])
    atk = make_attack(attack, num_classes=10, channels=1, image_size=28, target=target, poison_rate=poison_rate,
                      seed=seed, trigger_options=trigger or None)
    poisoned = atk.poison(subset, torch.Generator().manual_seed(seed))
    model, _ = create_model("badnet-mnist", train.info, seed)
    fit(model, poisoned.dataset, TrainConfig(epochs=epochs, seed=seed, progress=False))
    weights = out / f"{attack}-{seed}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    spec = out / f"{attack}-{seed}.attack.json"
    spec.write_text(json.dumps(atk.to_spec()))
    return weights, spec


def probe_scores(paths: dict[str, Path], n_images: int = 100, n_triggers: int = 24, seed: int = 0) -> dict[str, float]:
    """The demo defender's own offline detector: stamp random 4x4 patches on clean test images and measure
    the largest share of images sent to one class; a backdoored model has a trigger-like patch that
    concentrates predictions. Mapped to [0, 1] as a probability."""
    from ..data import load_dataset
    from ..data.dataset import to_float
    from ..modelfile import load_model

    test = load_dataset("mnist", "test")
    g = torch.Generator().manual_seed(seed)
    x = to_float(test.images[torch.randperm(len(test), generator=g)[:n_images]])
    stamped = []
    for _ in range(n_triggers):
        pattern = (torch.rand(1, 4, 4, generator=g) > 0.5).float()
        r, c = (int(v) for v in torch.randint(0, 24, (2,), generator=g))
        xs = x.clone()
        xs[:, :, r:r + 4, c:c + 4] = pattern
        stamped.append(xs)
    batch = torch.cat(stamped)
    out = {}
    for pid, path in paths.items():
        model = load_model(path).model.eval()
        with torch.no_grad():
            pred = model(batch).argmax(1).view(n_triggers, n_images)
        share = max(float(torch.bincount(row, minlength=10).max()) / n_images for row in pred)
        out[pid] = min(1.0, max(0.0, (share - 0.2) / 0.8))
    return out


def start_worker(data_dir: Path, url: str | None = None, log: Path | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "backdoor_arena", "game", "worker", "--data-dir", str(data_dir), "--poll", "0.3"]
    if url:
        cmd += ["--db", url]
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - the child owns it
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def wait_round(client: Any, round_name: str, phase_jobs: Any, timeout_s: float = 900) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if phase_jobs():
            return
        time.sleep(0.5)
    raise TimeoutError(f"round {round_name}: the worker did not finish in {timeout_s} s")


def free_round_name(base: str, existing: set[str]) -> str:
    """`base`, or on a rerun in the same folder the first `base-N` (N = 2, 3, ...) not taken yet."""
    name, n = base, 1
    while name in existing:
        n += 1
        name = f"{base}-{n}"
    return name


def run_demo(data_dir: Path, port: int, exit_after: bool, echo: Any = print) -> str:
    from .client import Client, ServerError
    from .server import serve
    from .service import init_admin, open_game
    from .worker import wait_for_jobs

    data_dir = Path(data_dir)
    game = open_game(data_dir)
    admin_token = init_admin(game, "admin", "demo-admin-password")
    bound: list[int] = []
    server = threading.Thread(target=serve, args=(game, "127.0.0.1", port), kwargs={"ready": bound.append}, daemon=True)
    server.start()
    while not bound:
        time.sleep(0.1)
    url = f"http://127.0.0.1:{bound[0]}"
    worker = start_worker(data_dir, log=data_dir / "worker.log")
    try:
        admin = Client(url, admin_token)
        toml = DEMO_TOML
        name = free_round_name("demo", {r["name"] for r in admin.admin("GET", "/api/rounds")})
        toml = toml.replace('name = "demo"', f'name = "{name}"', 1)
        tokens = {}
        for team, role in (("red", "attacker"), ("blue", "attacker"), ("green", "defender")):
            try:
                admin.admin("POST", "/api/teams", json={"name": team, "role": role})
            except ServerError as exc:
                if exc.status != 409:  # 409: a rerun in the same folder, the team exists already
                    raise
            scopes = ["results:read", "attack:submit" if role == "attacker" else "defense:submit"]
            tokens[team] = admin.admin("POST", "/api/tokens", json={"team": team, "scopes": scopes})["token"]
        round_id = admin.admin("POST", "/api/rounds", content=toml)["name"]
        admin.admin("POST", f"/api/rounds/{name}/advance", json={"to": "attack_open"})
        echo(f"round {round_id}: attack phase open at {url}/rounds/{name}; training the attackers' models")
        models = data_dir / "attacker-models"
        models.mkdir(exist_ok=True)
        for team, attack, kw in (("red", "blended", {"alpha": 0.3}), ("blue", "blended", {"alpha": 0.15})):
            c = Client(url, tokens[team])
            for seed in range(3):
                w, spec = train_attack_model(models, attack, seed + (0 if team == "red" else 10), target=seed + 1, **kw)
                r = c.submit(name, w, spec, "badnet-mnist", idempotency_key=f"{team}-{seed}")
                echo(f"  {team}: submitted {r['id']} ({r['state']})")
        with game.sessions() as s:
            from .service import get_round

            rid = get_round(s, name).id
        wait_for_jobs(game, rid, 900)
        for team in ("red", "blue"):
            for x in Client(url, tokens[team]).status(name):
                echo(f"  {team}: {x['id']} {x['state']} {x['gate'] or ''} {x['message'] or ''}".rstrip())
        admin.admin("POST", f"/api/rounds/{name}/advance", json={"to": "frozen"})
        admin.admin("POST", f"/api/rounds/{name}/advance", json={"to": "defense"})
        echo("defense phase: the worker runs the round's defenses; the defender scores the pool")
        defender = Client(url, tokens["green"])
        pool = defender.pool(name)
        folder = data_dir / "defender-pool"
        folder.mkdir(exist_ok=True)
        paths = {pid: defender.download(name, pid, folder / f"{pid}.safetensors") for pid in pool}
        defender.predict(name, probe_scores(paths))
        wait_for_jobs(game, rid, 1800)
        admin.admin("POST", f"/api/rounds/{name}/advance", json={"to": "scoring"})
        admin.admin("POST", f"/api/rounds/{name}/advance", json={"to": "revealed"})
        wait_for_jobs(game, rid, 300)
        board = Client(url).board(name)
        for a in board["attackers"]:
            echo(f"attacker #{a['rank']} {a['team']}: score {a['score']}")
        for d in board["defenders"]:
            echo(f"defense #{d['rank']} {d['defense']}: macro-AUROC {d['macro_auroc']}")
        page = f"{url}/rounds/{name}"
        echo(f"boards: {page}")
        if not exit_after:
            echo("serving until Ctrl-C")
            while True:
                time.sleep(3600)
        return page
    finally:
        worker.terminate()
        worker.wait(10)
