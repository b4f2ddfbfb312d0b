"""The rule probe: does the context identify the rule that generated a task?

Task retrieval (`etrm.eval.diagnostics`) asks whether contexts tell tasks apart; this asks
whether they carry the task's *rule*. Synthetic tasks know theirs (`Task.rule`). A linear
classifier (L2-penalised logistic regression on standardised context features, a scikit-learn
Pipeline) is cross-validated (stratified folds) to predict two labels of each task from its
context:

- family: the rule's family, a composition labelled by its families joined ("dihedral+border");
- parameter: the first step's family and parameter value ("colour_map=3"); no label when that
  step has no parameter (crop_object).

Classes with fewer than `min_per_class` tasks are left out (and counted), since no fold split
could hold them out fairly. The honest chance level of a classifier is the majority-class rate
of the tasks kept, not 1 / classes. Tasks without a rule (ARC files) are skipped.

`etrm analyze RUN_DIR [--probe-sources SOURCES]` runs it on a run's held-out tasks (or on
SOURCES) and writes RUN_DIR/rule_probe.json; `etrm report` shows it beside task retrieval.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from etrm.data.synth import rule_atoms
from etrm.data.tasks import Task
from etrm.models.decoder import ContextSource

PROBE_FILE = "rule_probe.json"
PROBES = ("family", "parameter")
PROBE_BATCH = 64  # tasks encoded per forward pass


def rule_labels(tasks: Sequence[Task]) -> tuple[list[str | None], list[str | None]]:
    """Per task, (family labels, parameter labels); None where a task has no rule (or, for the
    parameter, where the rule's first step has no parameter value). A value made of several
    atoms (a colour permutation, unique per task) is labelled by its first atom, the image of
    colour 1 (`colour_permutation=1->4`): nine balanced classes instead of one per task; only
    where colour 1 appears in a demo input, since elsewhere no encoder could know its image."""
    families: list[str | None] = []
    parameters: list[str | None] = []
    for task in tasks:
        if not task.rule:
            families.append(None)
            parameters.append(None)
            continue
        families.append("+".join(family for family, _ in task.rule))
        family, value = task.rule[0]
        atoms = rule_atoms(task.rule[:1])
        if value is None or (len(atoms) > 1 and not any((grid_in == 1).any() for grid_in, _ in task.demos)):
            parameters.append(None)
            continue
        first = atoms[0].removeprefix(f"{family}(").removesuffix(")") if len(atoms) > 1 else value
        parameters.append(f"{family}={first}")
    return families, parameters


def rule_probe(contexts: np.ndarray, labels: Sequence[str | None], folds: int = 5, min_per_class: int = 5,
               seed: int = 0) -> dict[str, Any]:
    """Cross-validated accuracy of a linear classifier predicting `labels` from `contexts` (N, D).

    Unlabelled rows (None) and classes with fewer than `min_per_class` rows are left out. Returns
    accuracy (mean over `folds` stratified folds) and its spread over folds, chance (the
    majority-class rate of the kept rows), the numbers of classes and rows kept and dropped, and
    the folds used. When fewer than 2 classes remain, accuracy, its spread and chance are None and
    `note` says why.
    """
    from sklearn.decomposition import PCA
    from sklearn.dummy import DummyClassifier
    from sklearn.feature_selection import VarianceThreshold
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    if len(contexts) != len(labels):
        raise ValueError(f"{len(contexts)} contexts but {len(labels)} labels")
    if folds < 2 or min_per_class < 2:
        raise ValueError(f"folds ({folds}) and min_per_class ({min_per_class}) must be at least 2")
    counts = Counter(label for label in labels if label is not None)
    kept_classes = {label for label, count in counts.items() if count >= min_per_class}
    rows = [i for i, label in enumerate(labels) if label in kept_classes]
    result: dict[str, Any] = {
        "accuracy": None, "accuracy_std": None, "chance": None, "classes": len(kept_classes), "tasks": len(rows),
        "classes_dropped": len(counts) - len(kept_classes), "tasks_dropped": sum(counts.values()) - len(rows),
        "min_per_class": min_per_class, "folds": None, "note": "",
    }
    if len(kept_classes) < 2:
        result["note"] = (f"fewer than 2 classes with at least {min_per_class} tasks "
                          f"({len(counts)} classes among {sum(counts.values())} labelled tasks)")
        return result
    targets = np.array([labels[i] for i in rows])
    # A class of n rows can be held out of at most n folds.
    folds = min(folds, min(counts[label] for label in kept_classes))
    # PCA keeping every component only rotates the standardised training rows into their own span:
    # an L2-penalised logistic regression's weights lie in that span anyway, so its predictions are
    # the same, with min(N, D) features instead of D (2-3x faster when contexts outnumber tasks).
    # Constant features (a context position an encoder never uses) carry nothing and would make
    # PCA divide by a zero variance; contexts that are all equal (the zero context) leave only the
    # majority-class guess, which is scored the same way.
    features = np.asarray(contexts, dtype=np.float64)[rows]
    if np.ptp(features, axis=0).max(initial=0.0) == 0:
        classifier = DummyClassifier(strategy="most_frequent")
        result["note"] = "every context is the same: only the majority class can be guessed"
    else:
        classifier = make_pipeline(VarianceThreshold(), StandardScaler(), PCA(svd_solver="full"),
                                   LogisticRegression(max_iter=2000))
    # One BLAS thread: these matrices are small, and on a busy machine OpenBLAS threads spin-waiting
    # for cores made a probe of 200 tasks some 60x slower than one thread.
    with threadpool_limits(limits=1):
        scores = cross_val_score(classifier, features, targets,
                                 cv=StratifiedKFold(folds, shuffle=True, random_state=seed), scoring="accuracy")
    result.update(accuracy=float(scores.mean()), accuracy_std=float(scores.std()),
                  chance=max(Counter(targets.tolist()).values()) / len(rows), folds=folds)
    return result


def probe_rules(context_source: ContextSource, tasks: Sequence[Task], canvas_side: int, max_demos: int,
                device: torch.device, seed: int = 0, folds: int = 5,
                min_per_class: int = 5) -> dict[str, Any] | None:
    """Both rule probes ("family", "parameter": `rule_probe` results) on the contexts of the
    labelled `tasks` (every one must fit the canvas), plus how many tasks were given and labelled;
    None when no task has a rule.

    Each task's context is its demos' context under the identity augmentation (an augmentation
    would change the parameter values, e.g. recolour a border colour), flattened from (context_len,
    hidden) to one vector, not mean-pooled: the decoder reads the context positions as separate
    tokens, and for most encoders (learned queries cross-attending over the demos, the oracle's
    atoms in step order) each position has its own role, so a mean could blur a rule that the
    positions carry apart. A linear probe on the flattened vector can still learn a mean (it is
    one linear map of it), and the flattened vector is what task retrieval compares.
    """
    from etrm.eval.diagnostics import probe_contexts

    labelled = [task for task in tasks if task.rule]
    if not labelled:
        return None
    chunks = []
    for start in range(0, len(labelled), PROBE_BATCH):
        chunk = labelled[start:start + PROBE_BATCH]
        contexts = probe_contexts(context_source, chunk, 1, canvas_side, max_demos, device, seed)
        # Under the identity alone every task has its one augmentation, so none is left out.
        assert contexts.shape[0] == len(chunk), "probe_contexts left out a task under the identity"
        chunks.append(contexts[:, 0].numpy())
    contexts = np.concatenate(chunks)
    family, parameter = rule_labels(labelled)
    return {
        "tasks_given": len(tasks), "tasks_labelled": len(labelled), "features": int(contexts.shape[1]),
        "family": rule_probe(contexts, family, folds, min_per_class, seed),
        "parameter": rule_probe(contexts, parameter, folds, min_per_class, seed),
    }


@dataclass(frozen=True)
class RunProbe:
    """What `probe_run` found: the probes (None when the probe does not apply, `reason` says why)
    and the file they were written to."""

    probes: dict[str, Any] | None
    path: Path | None = None
    reason: str = ""

    def lines(self) -> list[str]:
        """What `etrm analyze` prints: one line per probe and the file, or why it does not apply."""
        if self.probes is None:
            return [f"rule probe: does not apply ({self.reason})"]
        return [*(f"rule probe ({name}): {describe(self.probes[name])}" for name in PROBES), f"wrote {self.path}"]


def describe(probe: dict[str, Any]) -> str:
    """One probe's result in words: accuracy, chance, classes and tasks (or why it was not measured)."""
    if probe["accuracy"] is None:
        return f"not measured: {probe['note']}"
    dropped = (f" ({probe['tasks_dropped']} tasks in {probe['classes_dropped']} classes of fewer than "
               f"{probe['min_per_class']} left out)" if probe["classes_dropped"] else "")
    return (f"accuracy {probe['accuracy']:.3f} (chance {probe['chance']:.3f}, the majority class), "
            f"{probe['classes']} classes, {probe['tasks']} tasks{dropped}, {probe['folds']}-fold")


def probe_run(run_dir: str | Path, sources: str | None = None) -> RunProbe:
    """The rule probes of a run's checkpoint on its held-out tasks (or on the tasks of `sources`,
    e.g. "synth:iid:test:1:300:8"; those that do not fit the run's canvas are dropped), loaded as
    `etrm eval` does; writes RUN_DIR/rule_probe.json unless the probe does not apply (no
    checkpoint, a TRM run, or no task with a rule label).
    """
    from etrm.core.checkpoint import CHECKPOINT_NAME
    from etrm.core.config import config_from_yaml
    from etrm.eval.evaluate import load_for_eval

    run_dir = Path(run_dir)
    if not (run_dir / CHECKPOINT_NAME).is_file():
        return RunProbe(None, reason=f"no {CHECKPOINT_NAME} in {run_dir}")
    if config_from_yaml(run_dir / "config.yaml").model_type == "trm":
        return RunProbe(None, reason="a TRM run: every held-out task reads the same blank embedding row")
    overrides = ["leak_policy=drop", "eval.split=test", "eval.num_augmentations=1"]
    if sources:
        overrides += [f"test_sources={sources}", "max_eval_groups=null"]
    config, model, augmented, _ = load_for_eval(run_dir, overrides)
    where = f"the tasks of {sources}" if sources else f"the held-out tasks ({config.test_sources})"
    probes = probe_rules(model.context_source, augmented.tasks, config.canvas_side, config.max_demos,
                         torch.device("cpu"), config.seed)
    if probes is None:
        return RunProbe(None, reason=f"none of {where}, {len(augmented.tasks)} fitting the canvas, has a rule label")
    probes = {"tasks_from": where, "canvas_side": config.canvas_side, **probes}
    path = run_dir / PROBE_FILE
    path.write_text(json.dumps(probes, indent=1))
    return RunProbe(probes, path)


def read_probe(run_dir: str | Path) -> dict[str, Any] | None:
    """RUN_DIR/rule_probe.json, or None when the run has none."""
    path = Path(run_dir) / PROBE_FILE
    return json.loads(path.read_text()) if path.is_file() else None
