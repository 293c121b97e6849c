"""Writes scikit-learn's handwritten digits (1797 images, 8x8, 16 grey levels)
as {"images": float32 [N, 1, 8, 8] in [0, 1], "labels": int64 [N]} for the C++
demo (a plain dict written by torch.save, which LibTorch reads).

usage: python examples/python/export_digits.py <out.pt>
"""

import os
import sys

import torch
from sklearn.datasets import load_digits


def main(path: str) -> None:
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target, dtype=torch.int64)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    torch.save({"images": images, "labels": labels}, tmp)
    os.replace(tmp, path)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: export_digits.py <out.pt>")
    main(sys.argv[1])
