"""The security game: a self-hosted attacker-vs-defender server (issue 15).

Attackers upload weight-only safetensors models with a secret attack spec; the server gates them (size,
format, architecture, clean accuracy, ASR under the server-applied trigger), canonicalises the accepted ones
into a pool with fresh clean models, and a worker runs the round's defenses (any registered model detector
or mitigation) on the pool; boards rank both sides. Pieces:

    config.py   round configuration from TOML (pydantic), naming registered defenses
    crypto.py   passwords (argon2), API tokens (hashed), specs sealed to the evaluator's key, commitments
    db.py       SQLAlchemy 2 models, engine setup and Alembic migrations (alembic/)
    gates.py    the upload gates and canonicalisation
    service.py  what the server does (rounds, phases, submissions, jobs), independent of HTTP
    worker.py   the job loop: lease, retry, run gates and defenses, write results in one transaction
    scoring.py  attacker and defender boards (pure functions)
    server.py   FastAPI app: JSON API and Jinja2 pages
    client.py   the HTTP client behind `backdoor-arena game submit|status|board`
    demo.py     `backdoor-arena game demo`

Nothing here is imported by the base CLI: the game extra (FastAPI, SQLAlchemy, Alembic, argon2) is loaded
only when a `game` command runs.
"""
