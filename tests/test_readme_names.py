"""Every dotted public name the README shows (`etrm.something.Name`) exists."""

import importlib
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _resolve(dotted: str) -> object:
    # The longest importable module prefix, then attributes.
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[cut:]:
            obj = getattr(obj, attribute)
        return obj
    raise ModuleNotFoundError(dotted)


def test_every_dotted_name_in_the_readme_resolves():
    names = sorted(set(re.findall(r"\b(etrm(?:\.[A-Za-z_]\w*)+)", README.read_text())))
    assert "etrm.data.Augmentation" in names  # the pattern finds what the README documents
    missing = []
    for name in names:
        try:
            _resolve(name)
        except (ModuleNotFoundError, AttributeError) as error:
            missing.append(f"{name} ({error})")
    assert not missing, missing
