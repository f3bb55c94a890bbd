"""The model file: network weights plus everything fusion needs, saved atomically, loaded safely.

Layout (one ``torch.save`` of plain containers, no pickled classes):
    {"meta_json": str,                      # JSON: format, format_version, network config, roles, ...
     "arrays": {name: float32 tensor},      # normalisation and PCA
     "state_dict": {name: tensor}}          # FusionNetwork weights
Loading uses ``torch.load(weights_only=True)``, which refuses anything but tensors and plain
containers, so a model file can never run code.
"""

from __future__ import annotations

import json
import os
import tempfile

FORMAT = "sts-fusion-model"
FORMAT_VERSION = 1


class ModelError(ValueError):
    """A model file that cannot be used; the message says what is wrong and what to do."""


def save_model(path: str, meta: dict, arrays: dict, state_dict: dict) -> None:
    """Writes the model under a temporary name in the destination folder, then renames it."""
    import numpy as np
    import torch

    meta = dict(meta, format=FORMAT, format_version=FORMAT_VERSION)
    payload = {
        "meta_json": json.dumps(meta),
        "arrays": {
            k: torch.from_numpy(np.ascontiguousarray(np.asarray(v, dtype=np.float32))) for k, v in arrays.items()
        },
        "state_dict": {k: v.detach().cpu().clone() for k, v in state_dict.items()},
    }
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".stsfusion-model-", suffix=".part", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_model(path: str) -> tuple[dict, dict, dict]:
    """-> (meta dict, arrays {name: numpy}, state_dict {name: tensor}); ModelError if unusable."""
    import torch

    if not os.path.isfile(path):
        raise ModelError(f"Model file {path} does not exist: train one with 'Train fusion model'.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt zip, truncated stream, a pickle with code in it, ...
        raise ModelError(
            f"{path} is not a readable STS Fusion model file (corrupt, truncated or another "
            f"program's file: {type(e).__name__}). Train the model again with "
            "'Train fusion model'."
        ) from None
    if not isinstance(payload, dict) or not isinstance(payload.get("meta_json"), str):
        raise ModelError(f"{path} is not an STS Fusion model file: choose a file written by 'Train fusion model'.")
    try:
        meta = json.loads(payload["meta_json"])
    except ValueError:
        raise ModelError(f"{path}: its metadata is not valid JSON (corrupt file); train the model again.") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelError(f"{path} is not an STS Fusion model file: choose a file written by 'Train fusion model'.")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelError(
            f"{path} has model format version {meta.get('format_version')}; this plugin "
            f"reads version {FORMAT_VERSION}: train the model again with this version."
        )
    arrays, state = payload.get("arrays"), payload.get("state_dict")
    if not isinstance(arrays, dict) or not isinstance(state, dict):
        raise ModelError(f"{path} lacks its weights or arrays (corrupt file): train the model again.")
    return meta, {k: v.numpy() for k, v in arrays.items()}, state
