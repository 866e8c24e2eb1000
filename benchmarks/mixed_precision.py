"""What bf16 autocast would do to CLIP's difference quotients, and what lipreg's float32 pair maths gives instead.

    python benchmarks/mixed_precision.py --data-dir ../shared/datasets

On the 784-64-64-10 sigmoid MLP of ``configs/mnist_clip.yaml`` (at initialisation, and after
``--train-steps`` SGD steps of plain training), with ``--pairs`` held-out-style pairs (MNIST
training images and noisy copies, σ = 0.1): the quotients ``‖f(u) − f(v)‖ / ‖u − v‖`` from logits
computed under bf16 autocast against float32 (median relative error), and the accept decisions of
one adaptive ascent step (``q(trial) >= q(current)``, the trial point one step of size 0.1 along
the float32 gradient) that flip. The last row is ``lipreg.functional.pair_quotients`` called under
the same autocast: its quotients, now computed in float32, against float32.
"""

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from lipreg.data import MNISTDataModule
from lipreg.functional import ascend_pairs, noisy_pairs, pair_quotients
from lipreg.functional.quotients import sample_norm
from lipreg.nets import MLP


def quotients_of(net: torch.nn.Module, pairs: torch.Tensor, autocast: bool) -> torch.Tensor:
    """Quotients from logits computed with or without bf16 autocast (the maths before lipreg kept it float32)."""
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        outputs = net(pairs.flatten(0, 1)).float()
    count = pairs.shape[1]
    return sample_norm(outputs[:count] - outputs[count:]) / sample_norm(pairs[0] - pairs[1])


def measure(net: torch.nn.Module, pairs: torch.Tensor) -> dict[str, float]:
    exact = quotients_of(net, pairs, autocast=False)
    rounded = quotients_of(net, pairs, autocast=True)
    trial = ascend_pairs(net, pairs, 0.1, steps=1, box=(0.0, 1.0)).pairs  # one plain step, in float32
    accept_exact = quotients_of(net, trial, autocast=False) >= exact
    accept_rounded = quotients_of(net, trial, autocast=True) >= rounded
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        kept = pair_quotients(net, pairs)
    return {
        "bf16 median error %": 100 * float(((rounded - exact).abs() / exact).median()),
        "accepts flipped %": 100 * float((accept_exact != accept_rounded).float().mean()),
        "lipreg under autocast, max error %": 100 * float(((kept - exact).abs() / exact).max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--train-steps", type=int, default=400)
    options = parser.parse_args()
    torch.manual_seed(0)
    data = MNISTDataModule(data_dir=str(options.data_dir), val_size=0, lipschitz_size=options.pairs)
    splits = data.load_splits()
    pairs = noisy_pairs(splits.lipschitz, 0.1, box=(0.0, 1.0), generator=torch.Generator().manual_seed(0))
    net = MLP([784, 64, 64, 10], "sigmoid")
    rows = [("at initialisation", measure(net, pairs))]
    optimiser = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    images, labels = splits.train
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    for step in range(options.train_steps):
        index = order[(step * 128) % len(order):][:128]
        optimiser.zero_grad()
        F.cross_entropy(net(images[index]), labels[index]).backward()
        optimiser.step()
    rows.append((f"after {options.train_steps} steps", measure(net, pairs)))
    names = list(rows[0][1])
    print(f"{'':22s}" + "".join(f"{name:>36s}" for name in names))
    for label, values in rows:
        print(f"{label:22s}" + "".join(f"{values[name]:36.2f}" for name in names))


if __name__ == "__main__":
    main()
