"""Scoring videos: decoding, backends, the local engine and the Ray engine.

``r21d.infer.score_dataset`` (a Ray Dataset of score records, :mod:`r21d.infer.ray_engine`)
and ``r21d.infer.RayOptions`` are loaded on first use, so importing the package imports
neither the engines nor Ray.
"""

from __future__ import annotations

__all__ = ["RayOptions", "score_dataset"]


def __getattr__(name: str):
    if name in __all__:
        from r21d.infer import ray_engine

        return getattr(ray_engine, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
