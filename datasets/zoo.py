"""Built-in datasets. Importing this module registers them (the registry does it lazily)."""
from __future__ import annotations

from datasets import generic, synthderm  # noqa: F401
