"""The pytest fixtures every test folder shares (plain helpers live in ``fixtures.py``): ``sde``, parametrized
over ``fixtures.ALL_SDES`` (a list of ``(id, factory)``; factories, not instances, keep tests from sharing
mutable state), so a test that takes ``sde`` runs once per SDE; ``tiny_restore_model``, a tiny exported
restoration model."""
from __future__ import annotations

import pytest
import torch

from fixtures import ALL_SDES, SDE_IDS
from revsde.apps.restore.model import export_weights
from revsde.nets.irsde_unet import ConditionalUNet
from revsde.sde import MRSDE

# The tests' tensors are small: intra-op threads only add synchronisation, and on a loaded 2-core
# machine (CI, parallel jobs) they make tiny einsums and softmaxes 10-1000x slower.
torch.set_num_threads(1)


@pytest.fixture(params=[factory for _, factory in ALL_SDES], ids=SDE_IDS)
def sde(request):
    return request.param()


@pytest.fixture(scope="module")
def tiny_restore_model(tmp_path_factory):
    """A ConditionalUNet(nf 8, depth 2) with seeded random weights, exported as revsde would."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = ConditionalUNet(in_nc=3, out_nc=3, nf=8, depth=2)
    config = {"format": "revsde.restore/1", "task": "denoise", "loss": "matching", "arch": "ConditionalUNet",
              "nf": 8, "depth": 2, "sde": MRSDE().config()}
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    export_weights({"config": config, "step": 3, "elapsed_s": 1.0, "ema": net.state_dict()}, path)
    return path
