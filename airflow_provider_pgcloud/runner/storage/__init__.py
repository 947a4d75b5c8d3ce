"""Object stores behind one protocol (base.py), one module per backend, one registry of them."""

from __future__ import annotations

from .base import Capabilities, MultipartUpload, ObjectStore, StoreConfig, Upload
from .registry import BACKENDS, PROVIDERS, backend, open_store

__all__ = [
    "BACKENDS",
    "PROVIDERS",
    "Capabilities",
    "MultipartUpload",
    "ObjectStore",
    "StoreConfig",
    "Upload",
    "backend",
    "open_store",
]
