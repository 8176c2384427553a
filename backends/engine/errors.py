"""The engine's error for a model source that cannot be resolved or loaded.

Raised by loader.py (and re-exported there: `loader.ModelLoadError`) and by model_store.py, which
loader.py uses: a leaf module, so that the two do not import each other. The CLI prints the
message as one line (cli/errors.py recognises it by name).
"""

from __future__ import annotations


class ModelLoadError(Exception):
    """A model source could not be resolved or loaded; str(e) is one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
