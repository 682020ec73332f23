"""timm networks by name; pretrained weights load when they can and fail fast when they cannot."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import timm
from huggingface_hub import constants
from torch import nn

from lightning_modules.small_cnn import small_cnn  # noqa: F401  (registers the name "small_cnn" with timm)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the Hugging Face Hub endpoint opens within ``timeout`` seconds."""
    host = urlparse(constants.ENDPOINT).hostname or ""
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


@contextlib.contextmanager
def hub_offline(offline: bool) -> Iterator[None]:
    """Set huggingface_hub's offline flag (HF_HUB_OFFLINE) for the duration of the block."""
    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = offline
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


def create_timm_model(model_name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """``timm.create_model`` that names a bad ``model_name`` and never hangs on weights.

    Without network (or with HF_HUB_OFFLINE=1) pretrained weights come from the local Hugging Face
    cache only; when they are not there, FileNotFoundError says so at once instead of retrying
    downloads for about a minute.
    """
    if not timm.is_model(model_name):
        raise ValueError(f"model_name={model_name!r} is not a timm model (see timm.list_models())")
    if not pretrained:
        return timm.create_model(model_name, pretrained=False, **kwargs)
    offline = constants.HF_HUB_OFFLINE or not hub_reachable()
    try:
        with hub_offline(offline):
            return timm.create_model(model_name, pretrained=True, **kwargs)
    except OSError as error:
        source = (
            f"the local cache {constants.HF_HUB_CACHE} (the Hub at {constants.ENDPOINT} is unreachable)"
            if offline
            else constants.ENDPOINT
        )
        raise FileNotFoundError(
            f"pretrained=True: weights of model_name={model_name!r} could not be loaded from {source}; "
            "pass pretrained=False or place the weights in the cache"
        ) from error
