"""Write tests/golden/synth_fingerprints.json: digests of the synthetic tasks that earlier results
were measured on (synth-cpu's training set and its three held-out sets, ladder level 3).

`tests/data/test_data_synth.py` regenerates them and compares, so a change to the generator
cannot silently change the data behind BENCHMARKS.md. Run from the repository root,
`python tests/golden/write_synth_fingerprints.py`, only for an intended change of the data,
and name in the test the commit it was run at.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
# (split, part, count, seed, max_side) of synth-cpu: train 2,000 tasks, 100 held-out per split.
SETS = [("iid", "train", 2000, 0, 8), ("iid", "test", 100, 0, 8), ("params", "test", 100, 0, 8),
        ("compose", "test", 100, 0, 8)]


def fingerprint(tasks: list) -> str:
    """sha256 over every task's id and the shapes and cells of its grids, in order."""
    digest = hashlib.sha256()
    for task in tasks:
        digest.update(task.id.encode())
        for grid in [g for pair in task.demos for g in pair] + [g for pair in task.tests for g in pair]:
            digest.update(bytes(grid.shape) + grid.astype("uint8").tobytes())
    return digest.hexdigest()


def main() -> None:
    from etrm.data.synth import synth_tasks

    digests = {":".join(map(str, spec)): fingerprint(synth_tasks(*spec[:3], seed=spec[3], max_side=spec[4]))
               for spec in SETS}
    (HERE / "synth_fingerprints.json").write_text(json.dumps(digests, indent=1) + "\n")
    print(json.dumps(digests, indent=1))


if __name__ == "__main__":
    main()
