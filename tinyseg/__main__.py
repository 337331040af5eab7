"""``python -m tinyseg``: which commands there are (each has its own ``--help``)."""
import sys

COMMANDS = [
    ("tinyseg.cutout", "remove the background of photos: python -m tinyseg.cutout photo.jpg"),
    ("tinyseg.train", "train a model: python -m tinyseg.train --small (needs the data)"),
    ("tinyseg.evaluate", "score a model on a data split, with its worst images"),
    ("tinyseg.ensemble", "join trained networks into one file that averages them"),
    ("tinyseg.data", "inspect, show, download or time the COCO person data"),
    ("tinyseg.memory", "the peak memory of a network's training step"),
]


def main() -> int:
    print("tinyseg: a from-scratch NumPy/numba Tiramisu that keeps the person in a photo.\n")
    print("Commands (python -m <command> --help for each):")
    width = max(len(name) for name, _ in COMMANDS)
    for name, what in COMMANDS:
        print(f"  {name:<{width}}  {what}")
    print("\nREADME.md: install, data, figures; lessons/: how every piece works.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
