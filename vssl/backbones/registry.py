"""Name -> builder registry, so configs pick a backbone by name and users can add their own.

Video backbones (``(B, 3, T, H, W)`` clips) and audio backbones (``(B, C, F, T)`` spectrograms,
`vssl.backbones.audio`) are kept in two registries: `register` / `build` / `available` and
`register_audio` / `build_audio` / `available_audio`.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vssl.backbones.base import Backbone

Builder = Callable[..., Backbone]


@dataclass(frozen=True)
class BackboneInfo:
    """What is known about a registered backbone before building it.

    ``input_size`` is ``(frames, pixels)``: the clip length and square crop the architecture was
    designed and published for (any size its strides allow works).
    """

    name: str
    input_size: tuple[int, int]
    source: str
    description: str


class UnknownBackboneError(KeyError, ValueError):
    """Raised for a name that is not registered; catchable as KeyError or ValueError."""

    def __str__(self) -> str:
        return str(self.args[0])


_REGISTRY: dict[str, tuple[BackboneInfo, Builder]] = {}
_AUDIO_REGISTRY: dict[str, tuple[BackboneInfo, Callable[..., Any]]] = {}


def register(
    name: str, *, input_size: tuple[int, int], source: str, description: str
) -> Callable[[Builder], Builder]:
    """Decorator that registers a builder ``(**kwargs) -> Backbone`` under ``name``.

    Works from user code too: ``@register("my_net", input_size=(16, 112), source="mine",
    description="...")`` on a function makes ``build("my_net")`` and configs find it.
    """
    return _register(_REGISTRY, name, input_size, source, description)


def register_audio(
    name: str, *, input_size: tuple[int, int], source: str, description: str
) -> Callable[[Builder], Builder]:
    """`register` for audio backbones (``build_audio(name)``); ``input_size`` is
    ``(frequency bins, spectrogram frames)`` of the published input."""
    return _register(_AUDIO_REGISTRY, name, input_size, source, description)


def _audio_registry() -> dict[str, tuple[BackboneInfo, Callable[..., Any]]]:
    importlib.import_module("vssl.backbones.audio")  # registers vssl's own on first use
    return _AUDIO_REGISTRY


def available_audio() -> list[str]:
    """Return the registered audio backbone names, sorted."""
    return sorted(_audio_registry())


def build_audio(name: str, **kwargs: Any) -> Any:
    """Construct audio backbone ``name`` (a `vssl.backbones.audio.AudioBackbone`)."""
    registry = _audio_registry()
    if name not in registry:
        close = difflib.get_close_matches(str(name), registry, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownBackboneError(
            f"unknown audio backbone {name!r}.{hint} Available: {', '.join(sorted(registry))}"
        )
    builder = registry[name][1]
    try:
        inspect.signature(builder).bind(**kwargs)
    except TypeError as err:
        raise TypeError(
            f"audio backbone {name!r}: {err}; it accepts {inspect.signature(builder)}"
        ) from None
    return builder(**kwargs)


def _register(
    registry: dict[str, tuple[BackboneInfo, Any]],
    name: str,
    input_size: tuple[int, int],
    source: str,
    description: str,
) -> Callable[[Builder], Builder]:
    if not isinstance(name, str) or not name:
        raise ValueError(f"backbone name must be a non-empty string, got {name!r}")
    if len(input_size) != 2 or not all(isinstance(v, int) and v > 0 for v in input_size):
        raise ValueError(
            f"backbone {name!r}: input_size must be (frames, pixels), two positive ints, "
            f"got {input_size!r}"
        )
    entry = BackboneInfo(name, (input_size[0], input_size[1]), source, description)

    def decorator(builder: Builder) -> Builder:
        if name in registry:
            raise ValueError(f"backbone {name!r} is already registered")
        registry[name] = (entry, builder)
        return builder

    return decorator


def available() -> list[str]:
    """Return the registered backbone names, sorted."""
    return sorted(_REGISTRY)


def _lookup(name: str) -> tuple[BackboneInfo, Builder]:
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), _REGISTRY, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownBackboneError(
            f"unknown backbone {name!r}.{hint} Available: {', '.join(available())}"
        ) from None


def info(name: str) -> BackboneInfo:
    """Return the registered description of backbone ``name``."""
    return _lookup(name)[0]


def build(name: str, **kwargs: Any) -> Backbone:
    """Construct backbone ``name`` with builder keyword arguments ``kwargs``."""
    _, builder = _lookup(name)
    signature = inspect.signature(builder)
    try:
        signature.bind(**kwargs)
    except TypeError as err:
        raise TypeError(f"backbone {name!r}: {err}; it accepts {signature}") from None
    model = builder(**kwargs)
    if not isinstance(model, Backbone):
        raise TypeError(
            f"backbone {name!r}: its builder returned {type(model).__name__}, not a Backbone"
        )
    return model
