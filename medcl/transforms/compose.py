"""``Compose`` that lets medcl's own errors through.

MONAI's ``Compose`` wraps every exception raised inside a transform in
``RuntimeError("applying transform ...")`` (once per nesting level). A ``DataError`` or
``ReaderError`` saying which file is wrong and how to fix it would then reach the user as a
MONAI traceback; :class:`MedclCompose` re-raises the first :class:`~medcl.errors.MedclError`
found in the exception chain instead. Everything else is MONAI's ``Compose`` unchanged (the
datasets' caching relies on its ``start``/``end`` arguments).
"""

from __future__ import annotations

import threading
from typing import Any

import torch
from monai.transforms import Compose, Transform

from medcl.errors import MedclError

_lock = threading.Lock()
_inside = 0  # PlainCompose calls running now, in all threads
_restore = True  # MONAI's track_meta before the first of them


def _medcl_cause(exc: BaseException) -> MedclError | None:
    """The first :class:`~medcl.errors.MedclError` in the cause/context chain of ``exc``, if any."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, MedclError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


class MedclCompose(Compose):
    """MONAI ``Compose`` that re-raises a wrapped :class:`~medcl.errors.MedclError` as itself."""

    def __call__(self, input_: Any, *args: Any, **kwargs: Any) -> Any:
        """Apply the transforms like MONAI's ``Compose``; a MedclError inside is raised as itself.

        Raises:
            MedclError: the first one in the chain of MONAI's ``RuntimeError``, with its own traceback.
        """
        try:
            return super().__call__(input_, *args, **kwargs)
        except RuntimeError as e:
            err = _medcl_cause(e)
            if err is None:
                raise
            raise err.with_traceback(err.__traceback__) from None


class PlainCompose(MedclCompose):
    """:class:`MedclCompose` that runs its transforms on plain tensors (MONAI's ``track_meta`` off).

    For the random augmentations of training views, whose output keeps no metadata anyway: MONAI
    otherwise wraps every intermediate result in a ``MetaTensor`` and records each operation, which
    on 64×64 images costs as much as the augmentation itself: measured per sample (2 views), OCT
    4.5 → 2.5 ms and fundus 6 → 3.5 ms; the input-pipeline benchmark went from 306 to 439 (OCT) and
    308 to 544 (fundus) samples/s with 2 workers. The outputs are the same (tested for every preset).

    MONAI's switch is process-wide: it is turned off while any thread is inside a ``PlainCompose`` and
    restored when the last one leaves, so transforms outside (loading, spacing, orientation, which need
    the affine) keep their metadata. Loader workers are processes; the only threads that run transforms
    are those filling a memory cache (the deterministic part, a :class:`PlainChain` for 1D/2D presets),
    which finish before training starts.

    A dict input goes through the transforms in a plain loop (:meth:`_direct`), not MONAI's per-transform dispatch.
    A dict input is never changed: its tensors are cloned (as plain tensors) before the first transform, so
    a memory cache in front of it needs no deep copy per access (``copy_inputs=False`` when the caller has
    already copied, as :class:`~medcl.transforms.views.MultiViewd` does).

    Args:
        *args: MONAI ``Compose`` arguments (the transforms first).
        copy_inputs: clone the tensors of a dict input before the first transform.
        **kwargs: MONAI ``Compose`` keyword arguments.
    """

    def __init__(self, *args: Any, copy_inputs: bool = True, **kwargs: Any) -> None:
        """Build the ``Compose``; see the class docstring."""
        super().__init__(*args, **kwargs)
        self.copy_inputs = bool(copy_inputs)

    def __call__(self, input_: Any, *args: Any, **kwargs: Any) -> Any:
        """Apply the transforms with MONAI's ``track_meta`` off, restoring it afterwards."""
        from monai.data import MetaTensor, get_track_meta, set_track_meta

        if self.copy_inputs and isinstance(input_, dict):
            input_ = {k: (v.as_tensor() if isinstance(v, MetaTensor) else v).clone() if isinstance(v, torch.Tensor)
                      else v for k, v in input_.items()}
        global _inside, _restore  # noqa: PLW0603 - MONAI's switch is process-wide, so is the count of its users
        with _lock:  # threads filling a memory cache: the first in turns metadata off, the last out restores it
            if _inside == 0:
                _restore = get_track_meta()
                set_track_meta(False)
            _inside += 1
        try:
            if args or kwargs or self.lazy or not isinstance(input_, dict):
                return super().__call__(input_, *args, **kwargs)
            return self._direct(input_)
        finally:
            with _lock:
                _inside -= 1
                if _inside == 0:
                    set_track_meta(_restore)

    def _direct(self, data: dict) -> Any:
        """Call the transforms in turn on a dict, as MONAI's ``Compose`` would with metadata off and nothing lazy.

        MONAI's per-transform dispatch (``apply_transform``: item mapping, lazy-resampling checks, pending-operation
        queries) cost ~10 µs per transform call, about a fifth of a 64×64 OCT view's augmentation. A transform that
        returns several samples (a list) hands the rest of the chain back to MONAI, which maps over them.
        """
        for i, t in enumerate(self.transforms):
            try:
                data = t(data)
            except MedclError:
                raise
            except Exception as e:  # noqa: BLE001 - re-raised as MONAI does, naming the transform
                raise RuntimeError(f"applying transform {t}") from e
            if not isinstance(data, dict):
                return super().__call__(data, start=i + 1)
        return data


class PlainChain(Transform):
    """Deterministic transforms run as one *deterministic* step on plain tensors (a :class:`PlainCompose` inside).

    MONAI's ``Compose`` is ``Randomizable``, and its caching datasets (``CacheDataset``,
    ``PersistentDataset``) cache only up to the first randomizable transform: a ``PlainCompose`` holding the
    deterministic part (FOV crop, resize, scaling) made them cache the loaded file alone and redo that part on
    every access, every epoch. This wrapper is a plain ``Transform``, so the cache holds its output.

    Args:
        transforms: deterministic MONAI transforms (none of them randomizable).

    Raises:
        TypeError: a randomizable transform among ``transforms`` (it would be cached, i.e. drawn once).
    """

    def __init__(self, transforms: list) -> None:
        """Wrap ``transforms``; see the class docstring."""
        from monai.transforms import RandomizableTrait

        random = [type(t).__name__ for t in transforms if isinstance(t, RandomizableTrait)]
        if random:
            raise TypeError(f"PlainChain holds deterministic transforms only, got {random}")
        self.chain = PlainCompose(transforms)
        # a Compose draws its own random state; this one is never used (nothing inside is random) and a fixed one
        # keeps the chain's pickle, which keys the disk cache (monai's hash_transform), the same in every process
        self.chain.set_random_state(seed=0)

    @property
    def transforms(self) -> tuple:
        """The wrapped transforms, in order."""
        return tuple(self.chain.transforms)

    def __call__(self, data: Any) -> Any:
        """Apply the transforms on plain tensors (``track_meta`` off); ``data`` itself is not changed."""
        return self.chain(data)
