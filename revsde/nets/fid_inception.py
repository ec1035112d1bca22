"""The FID Inception-v3 of pytorch-fid, module for module, so its weights file loads strictly.

FID is defined by one network: the TensorFlow ``inception-2015-12-05`` graph, whose 2048-d ``pool_3``
activations TTUR's ``fid.py`` compares. pytorch-fid ported it to PyTorch as torchvision's Inception-v3
with four blocks patched to follow the TF graph (the source of the differences is the graph, not a
choice): the average pools of the A, C and first E blocks do not count the zero padding
(``count_include_pad=False``), the last E block pools with a *max* pool, and the classifier has the
graph's 1008 classes. The module tree below (attribute names, registration order, bias flags, shapes)
is that of ``pytorch_fid.inception.fid_inception_v3()``, so ``pt_inception-2015-12-05-6726825d.pth``
loads with ``strict=True`` and gives pytorch-fid's features.

torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth`` is the same file byte for byte (both
are published with the SHA-256 in ``OFFICIAL_SHA256``), and its keys are these names without the
``num_batches_tracked`` buffers, which the loader accepts as absent.

Preprocessing is pytorch-fid's: images in [0, 1] of shape (B, 3, H, W), bilinear resize to 299×299
(``align_corners=False``), then scaled to [−1, 1].
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoints import mismatch

ENV_VAR = "REVSDE_INCEPTION_WEIGHTS"
WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{WEIGHTS_NAME}"
OFFICIAL_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"  # 95,628,359 bytes
FEATURES = 2048
SIZE = 299


class BasicConv2d(nn.Module):
    """Convolution without bias, batch norm (ε = 1e-3, the TF graph's), ReLU."""

    def __init__(self, cin: int, cout: int, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _tf_avg_pool(x):
    """TF's 3×3 same-padded average pool: the mean over the window's pixels inside the image."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionA(nn.Module):
    """35×35 block: 1×1, 5×5, double 3×3 and pooled branches (TF average pool)."""

    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def forward(self, x):
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_tf_avg_pool(x))], 1)


class InceptionB(nn.Module):
    """Reduction 35 → 17: strided 3×3, strided double 3×3 and a max pool."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class FIDInceptionC(nn.Module):
    """17×17 block with factorised 7×7 convolutions (1×7 then 7×1) and a TF average pool."""

    def __init__(self, cin: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        b7dbl = x
        for conv in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                     self.branch7x7dbl_4, self.branch7x7dbl_5):
            b7dbl = conv(b7dbl)
        return torch.cat([self.branch1x1(x), b7, b7dbl, self.branch_pool(_tf_avg_pool(x))], 1)


class InceptionD(nn.Module):
    """Reduction 17 → 8: strided 3×3 after 1×1, strided 3×3 after a 7×7 stack, and a max pool."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class FIDInceptionE_1(nn.Module):
    """8×8 block whose 3×3 branches split into parallel 1×3 and 3×1 convolutions; TF average pool."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def pool(self, x):
        return _tf_avg_pool(x)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        b3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        return torch.cat([self.branch1x1(x),
                          self.branch3x3_2a(b3), self.branch3x3_2b(b3),
                          self.branch3x3dbl_3a(b3dbl), self.branch3x3dbl_3b(b3dbl),
                          self.branch_pool(self.pool(x))], 1)


class FIDInceptionE_2(FIDInceptionE_1):
    """The last block: as E_1, but the TF graph pools this one with a 3×3 max pool."""

    def pool(self, x):
        return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)


class FIDInceptionV3(nn.Module):
    """Images in [0, 1], ``(B, 3, H, W)`` → the 2048-d ``pool_3`` features ``(B, 2048)`` FID compares.

    Built with random weights; ``load_fid_inception`` gives it the official ones. ``label`` is the name
    of the Fréchet distance in its feature space: ``"FID"`` only when the weights loaded are the
    official file (checked by its SHA-256), else ``"FD-<name>"``.
    """

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.maxpool1 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.maxpool2 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Mixed_5b = FIDInceptionA(192, pool_features=32)
        self.Mixed_5c = FIDInceptionA(256, pool_features=64)
        self.Mixed_5d = FIDInceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
        self.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = FIDInceptionE_1(1280)
        self.Mixed_7c = FIDInceptionE_2(2048)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(2048, 1008)  # the TF graph's classifier; unused for FID, kept so the file loads
        self.weights_sha256: str | None = None  # of the file loaded, set by load_fid_inception

    @property
    def name(self) -> str:
        if self.weights_sha256 is None:
            return "inception-v3-random-init"
        return "inception-v3" if self.weights_sha256 == OFFICIAL_SHA256 else f"inception-v3-{self.weights_sha256[:8]}"

    @property
    def label(self) -> str:
        return "FID" if self.weights_sha256 == OFFICIAL_SHA256 else f"FD-{self.name}"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"the FID Inception takes RGB images of shape (B, 3, H, W) in [0, 1] "
                             f"(got {tuple(images.shape)})")
        weight = self.Conv2d_1a_3x3.conv.weight
        x = images.to(device=weight.device, dtype=weight.dtype)
        x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        x = self.maxpool1(self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x))))
        x = self.maxpool2(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)))
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return self.avgpool(x).flatten(1)


# ---------------------------------------------------------------- weights


def weights_path(path=None) -> Path:
    """The weights file: ``path``, else ``$REVSDE_INCEPTION_WEIGHTS``; an error saying where to get it."""
    source = "given path"
    if path is None:
        path, source = os.environ.get(ENV_VAR) or None, f"${ENV_VAR}"
    hint = (f"FID needs the Inception weights of pytorch-fid, {WEIGHTS_NAME} (95.6 MB; torch-fidelity's "
            f"weights-inception-2015-12-05-6726825d.pth is the same file), from {WEIGHTS_URL}; download it "
            f"on a machine with internet access and pass its path (--inception-weights PATH or ${ENV_VAR})")
    if path is None:
        raise FileNotFoundError(f"no Inception weights file given. {hint}")
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"Inception weights {str(path)!r} ({source}) is not a file. {hint}")
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_fid_inception(path=None, *, map_location="cpu") -> FIDInceptionV3:
    """The FID Inception with the weights of ``path`` (or ``$REVSDE_INCEPTION_WEIGHTS``), in eval mode.

    The file is a plain state dict saved with ``torch.save`` (read with ``weights_only=True``), loaded
    strictly: any missing, unexpected or mis-shaped key is an error naming them. The BatchNorm
    ``num_batches_tracked`` counters may be absent (torch-fidelity's key set); they do not enter the
    forward pass. Its SHA-256 decides the label: ``"FID"`` for the official file only.
    """
    from .model_files import ModelFileError, torch_load

    path = weights_path(path)
    try:
        state = torch_load(path, map_location, what="Inception weights")
    except ModelFileError as error:
        raise ValueError(f"{path}: not a PyTorch state dict file ({error.reason})") from None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"{path}: expected a plain state dict of tensors (got {type(state).__name__})")
    net = FIDInceptionV3()
    expected = net.state_dict()
    state = dict(state)
    for key, value in expected.items():
        if key.endswith(".num_batches_tracked") and key not in state:
            state[key] = value
    problems = mismatch(expected, state)
    if problems:
        raise ValueError("\n".join([f"{path} is not a weights file of the FID Inception ({WEIGHTS_NAME}):",
                                    *problems]))
    net.load_state_dict(state, strict=True)
    net.weights_sha256 = _sha256(path)
    return net.to(map_location).eval().requires_grad_(False)
