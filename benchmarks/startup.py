"""How long ``lipreg --help`` and an argument error take, against the floor of ``import lightning``.

    python benchmarks/startup.py --repeats 5

Each command runs in a fresh interpreter, the commands taking turns for ``--repeats`` rounds; the
table shows the median wall time and its ratio to ``python -c "import lightning.pytorch"`` in the
same round (machines here are noisy, so only the ratio within a run is meaningful). lipreg's own
start-up is the part above that floor: its modules, the parser and its help.
"""

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "python -c 'import lightning.pytorch' (floor)": [sys.executable, "-c", "import lightning.pytorch"],
    "python -c 'import lipreg.cli'": [sys.executable, "-c", "import lipreg.cli"],
    "lipreg --help": [sys.executable, "-m", "lipreg", "--help"],
    "lipreg fit --trainer.max_epochz 1 (argument error)": [sys.executable, "-m", "lipreg", "fit",
                                                          "--trainer.max_epochz", "1"],
}


def wall_time(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, capture_output=True, check=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="rounds in which every command runs once")
    args = parser.parse_args()
    seconds: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.repeats):
        for name, command in COMMANDS.items():
            seconds[name].append(wall_time(command))
    floor = next(iter(seconds.values()))
    print(f"{'command':<52}{'s':>7}{'ratio':>8}   range  ({args.repeats} rounds)")
    for name, times in seconds.items():
        ratios = sorted(t / f for t, f in zip(times, floor, strict=True))
        print(f"{name:<52}{statistics.median(times):>7.2f}{statistics.median(ratios):>8.2f}"
              f"   {ratios[0]:.2f}–{ratios[-1]:.2f}")


if __name__ == "__main__":
    main()
