"""The ClientApp: SuperNode "partition-id" k is MNIST writer k (of 539); local SGD is backdoor-arena's
(`sgd_local`, seeded per client and round as in the built-in simulator), one torch thread per client."""

from __future__ import annotations

from backdoor_arena.federated.engines import LocalTraining
from backdoor_arena.federated.flower import WriterClients, client_app

# The data is loaded once per process, on the first message (the loader pickles without it).
app = client_app(WriterClients("badnet-mnist", "mnist"), LocalTraining(epochs=1, batch_size=20, lr=0.1), threads=1)
