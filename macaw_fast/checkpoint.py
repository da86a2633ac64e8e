"""Checkpoints of ``macaw-fast train``: reading and verifying them (writing lives in ``train.loop``).

A checkpoint is a ``torch.save`` of a dict with ``format`` = ``"macaw-fast/checkpoint"``, the
step, the learner's ``state_dict``, the run's configuration, RNG states, provenance and (from
version 2) ``sha256``: a SHA-256 of all the rest of its content (:func:`state_digest`), so a
flipped bit in any tensor is detected on load instead of silently trained or evaluated on.
"""

from __future__ import annotations

import hashlib
import os

import torch

CHECKPOINT_FORMAT = "macaw-fast/checkpoint"


def state_digest(obj) -> str:
    """SHA-256 of a checkpoint's content: every tensor's dtype, shape and bytes and every plain value,
    walked in a fixed order (dict keys sorted). Independent of the file's byte layout, so it is the
    same before ``torch.save`` and after ``torch.load``."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def _feed(h, x) -> None:
    if isinstance(x, dict):
        h.update(b"{%d" % len(x))
        for k in sorted(x, key=repr):
            h.update(repr(k).encode())
            _feed(h, x[k])
    elif isinstance(x, (list, tuple)):
        h.update(b"[%d" % len(x))
        for v in x:
            _feed(h, v)
    elif isinstance(x, torch.Tensor):
        t = x.detach().to("cpu").contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    else:
        h.update(f"{type(x).__name__}:{x!r}".encode())


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, not ours, or corrupt (checksum mismatch)."""


def unreadable(path: str, e: BaseException) -> CheckpointError:
    """The one-line error for a file ``torch.load(..., weights_only=True)`` failed on."""
    text = str(e).strip()
    if "Weights only load failed" in text:
        # torch's own message is a paragraph that suggests weights_only=False; for a file that is not
        # a checkpoint that advice is wrong, and for an untrusted one it is unsafe
        why = "not a PyTorch checkpoint, or one holding Python objects that the safe loader refuses"
    elif isinstance(e, EOFError) or not text:
        why = "the file is empty or truncated"
    else:
        why = f"{type(e).__name__}: {text.splitlines()[0][:200]}; the file is truncated or corrupt"
    return CheckpointError(f"{path}: could not be read as a checkpoint ({why})")


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """Read and verify a checkpoint written by :func:`save_checkpoint` (safe loader: tensors and plain
    types only). Raises :class:`CheckpointError` naming the file when it is unreadable, not a
    macaw-fast checkpoint, or corrupt (its content does not match the SHA-256 written with it)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        st = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise unreadable(path, e) from None
    return verify_checkpoint(st, path)


def verify_checkpoint(st, path: str) -> dict:
    """``st`` (what the safe loader read from ``path``) if it is an intact macaw-fast checkpoint;
    otherwise the :class:`CheckpointError` of :func:`load_checkpoint`."""
    if not isinstance(st, dict) or st.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a macaw-fast checkpoint (no 'format': '{CHECKPOINT_FORMAT}')")
    if st.get("version", 1) >= 2:
        want = st.pop("sha256", None)
        if want is None or state_digest(st) != want:
            raise CheckpointError(f"{path}: checksum mismatch: the checkpoint's content is corrupt "
                                  f"(its SHA-256 does not match the one written with it)")
        st["sha256"] = want
    missing = [k for k in ("step", "learner", "macaw", "train") if k not in st]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks the key(s) {missing}")
    return st


def intact_checkpoints(ckpt_dir: str) -> list[tuple[int, str]]:
    """(step, path) of every checkpoint in ``ckpt_dir`` that loads and verifies, newest step first."""
    out = []
    if not os.path.isdir(ckpt_dir):
        return out
    for name in os.listdir(ckpt_dir):
        if name == "latest.pt" or (name.startswith("step_") and name.endswith(".pt")):
            p = os.path.join(ckpt_dir, name)
            try:
                out.append((int(load_checkpoint(p)["step"]), p))
            except (CheckpointError, FileNotFoundError):
                continue
    out.sort(key=lambda sp: (-sp[0], not sp[1].endswith("latest.pt")))
    return out


__all__ = ["CHECKPOINT_FORMAT", "CheckpointError", "state_digest", "load_checkpoint", "verify_checkpoint",
           "intact_checkpoints"]
