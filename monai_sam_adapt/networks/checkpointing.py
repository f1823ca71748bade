"""Checkpoints that hold only what was trained, and name the frozen backbone they were trained on."""

from __future__ import annotations

from typing import Any

from ..errors import CheckpointError

__all__ = ["TrainedPartsCheckpoint"]


class TrainedPartsCheckpoint:
    """Mixin for networks holding a frozen :class:`FrozenSAM` as ``self.sam``.

    ``state_dict()`` keeps every tensor outside ``sam.`` and, inside it, only parameters that train (S-SAM's A, B, norms
    and positional embedding); the frozen weights and tensors derived from them (SVD factors) come from the backbone's
    own checkpoint. ``_extra_state`` records :meth:`checkpoint_fingerprint`; loading weights whose fingerprint differs
    in any of ``fingerprint_keys`` raises :class:`CheckpointError` saying what differs. Keys renamed since weights were
    committed (``legacy_prefixes``) are translated on loading.
    """

    fingerprint_keys: tuple[str, ...] = ("backbone", "sha256", "arch")
    #: ``{old prefix: new prefix}`` of state-dict keys renamed since weights were committed; loading translates them.
    legacy_prefixes: dict[str, str] = {}

    def checkpoint_fingerprint(self) -> dict[str, Any]:
        return {"method": type(self).__name__, **self.sam.fingerprint}

    def trainable_parameters(self) -> int:
        """Parameters that train (what ``state_dict`` keeps besides the fingerprint)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def state_dict(self, *args, destination=None, prefix: str = "", keep_vars: bool = False):
        sd = super().state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)
        trained = {prefix + "sam." + n for n, p in self.sam.named_parameters() if p.requires_grad}
        for k in [k for k in sd if k.startswith(prefix + "sam.") and k not in trained]:
            del sd[k]
        return sd

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        for old, new in self.legacy_prefixes.items():
            for k in [k for k in state_dict if k.startswith(prefix + old)]:
                state_dict[prefix + new + k[len(prefix + old) :]] = state_dict.pop(k)
        for k, v in self.sam.state_dict(prefix=prefix + "sam.", keep_vars=False).items():
            state_dict.setdefault(k, v)  # frozen parts come from the backbone's own checkpoint
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def get_extra_state(self) -> dict:
        return self.checkpoint_fingerprint()

    def set_extra_state(self, state: dict) -> None:
        mine = self.checkpoint_fingerprint()
        diff = [k for k in ("method", *self.fingerprint_keys) if state.get(k) != mine.get(k)]
        if diff:

            def show(d: dict) -> str:
                return ", ".join(f"{k}={d.get(k)!r}" for k in diff if k != "arch") or "architecture"

            raise CheckpointError(
                f"these {state.get('method')} weights were trained on backbone {state.get('backbone')!r} "
                f"(checkpoint SHA-256 {state.get('sha256')}); this model is {mine['method']} on {mine['backbone']!r} "
                f"(SHA-256 {mine['sha256']}). Differs: {', '.join(diff)} ({show(state)} vs {show(mine)}). "
                "Load them with the backbone and settings they were trained with."
            )
