"""The one freeze rule of every model built on a frozen backbone (pretraining, fine-tuning, probing).

A frozen part gets no gradients and stays in eval mode — no dropout — through every `model.train()`:
the loop calls `train()` at each step, and a frozen part must compute the same function each time
(unlike the original, whose frozen adapters kept dropout on during fine-tuning: docs/differences.md).
"""

from __future__ import annotations

from torch import nn


class FreezableModule(nn.Module):
    """An `nn.Module` that can freeze its submodules by name and keeps them frozen through `train()`."""

    def __init__(self) -> None:
        super().__init__()
        self._frozen: set[str] = set()

    def freeze(self, path: str, eval_mode: bool = True) -> None:
        """No gradients for the submodule at `path` (`backbone`, `adapters.fac`), and — unless not
        `eval_mode` — eval mode now and after every `train()`."""
        module = self.get_submodule(path)
        module.requires_grad_(False)
        if eval_mode:
            module.eval()
            self._frozen.add(path)

    def is_frozen(self, path: str) -> bool:
        """Whether the submodule at `path` is frozen in eval mode."""
        return path in self._frozen

    def train(self, mode: bool = True) -> "FreezableModule":
        super().train(mode)
        for path in self._frozen:
            try:
                module = self.get_submodule(path)
            except AttributeError:  # removed since (a backbone replaced by its cached states)
                continue
            module.eval()
        return self
