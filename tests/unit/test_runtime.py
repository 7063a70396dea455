"""Process settings: the thread count honours BACKDOOR_ARENA_THREADS and rejects nonsense in one line."""

import pytest
import torch

from backdoor_arena.errors import ConfigError
from backdoor_arena.runtime import available_cores, set_threads


def test_thread_count_from_environment(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("BACKDOOR_ARENA_THREADS", "1")
        assert set_threads() == 1 and torch.get_num_threads() == 1
        assert set_threads(2) == 2  # an explicit argument wins
        monkeypatch.delenv("BACKDOOR_ARENA_THREADS")
        assert set_threads() == available_cores()
        for bad in ("0", "two", "-3"):
            monkeypatch.setenv("BACKDOOR_ARENA_THREADS", bad)
            with pytest.raises(ConfigError, match="BACKDOOR_ARENA_THREADS must be a positive integer"):
                set_threads()
    finally:
        torch.set_num_threads(before)
