"""Cases found by mutation testing (docs/MUTATION.md) for fusion and heads: the messages a user
reads, and head outputs checked by hand."""

from __future__ import annotations

import pytest
import torch

from kadapter_cli.errors import BadInput
from kadapter_cli.fusion import make_fusion

# ---------------------------------------------------------------- fusion


def test_unknown_fusion_names_the_known_ones():
    with pytest.raises(BadInput) as caught:
        make_fusion("mean", 8, ["fac"])
    assert str(caught.value) == "unknown fusion 'mean' (known: concat, add, gated)"


def test_fusion_without_adapters_says_so():
    with pytest.raises(BadInput) as caught:
        make_fusion("concat", 8, [])
    assert str(caught.value) == "fusion needs at least one adapter"
