"""A class of the user's own that a checkpoint may hold, for the test of
``torch.serialization.add_safe_globals`` (tests/test_checkpoint.py)."""
from dataclasses import dataclass


@dataclass
class TrustedMeta:
    name: str
    epochs: int
