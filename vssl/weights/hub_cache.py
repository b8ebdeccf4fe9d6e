"""Where torch hub keeps downloaded weight files, and the message when one is not there."""

from __future__ import annotations

from pathlib import Path

import torch

from vssl.errors import MissingInputError


def cached(url: str) -> Path:
    """The file ``torch.hub.load_state_dict_from_url(url)`` writes (nothing is downloaded)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name


def require(url: str, name: str, library: str, how: str) -> Path:
    """The cached file of ``url``; a clear error saying how to fetch it when it is absent."""
    path = cached(url)
    if not path.is_file():
        raise MissingInputError(
            f"{name}: {library}'s weights are not on disk at {path}; vssl does not download. "
            f"Fetch them once where there is internet ({how}) or give the file's path"
        )
    return path
