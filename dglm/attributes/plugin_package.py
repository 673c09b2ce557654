"""Turn a trained probe into a pip-installable plugin package (`dglm plugin new`)."""

from __future__ import annotations

import re
from pathlib import Path

from dglm.attributes.probes import check_new_attribute_name, load_probe
from dglm.errors import DglmError

PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "{dist}"
version = "0.1.0"
description = "dglm attribute plugin: {name} ({labels})"
requires-python = ">=3.11"
dependencies = ["dglm"]

[project.entry-points.dglm]
{name} = "{module}"

[tool.setuptools]
packages = ["{module}"]

[tool.setuptools.package-data]
{module} = ["*.json", "*.safetensors"]
"""

MODULE = '''\
"""dglm plugin registering the `{name}` attribute ({labels})."""

from pathlib import Path

import dglm


@dglm.hookimpl
def register_attributes(register):
    register(Path(__file__).parent / "{name}.json")
'''


def new_plugin(card_path: Path | str, out_dir: Path | str) -> Path:
    """Write a plugin package for the probe at `card_path` into `out_dir/dglm-NAME`; return its folder."""
    probe = load_probe(card_path)
    check_new_attribute_name(probe.name)
    if not re.fullmatch(r"[a-z][a-z0-9_]*", probe.name):
        raise DglmError(f"attribute name {probe.name!r} must be lowercase letters, digits and _ to name a package")
    dist, module = f"dglm-{probe.name.replace('_', '-')}", f"dglm_{probe.name}"
    root = Path(out_dir) / dist
    if root.exists():
        raise DglmError(f"{root} already exists; choose another --out folder or remove it")
    package = root / module
    package.mkdir(parents=True)
    fields = dict(dist=dist, module=module, name=probe.name, labels=", ".join(probe.labels))
    (root / "pyproject.toml").write_text(PYPROJECT.format(**fields))
    (package / "__init__.py").write_text(MODULE.format(**fields))
    probe.save(package)
    (root / "README.md").write_text(
        f"# {dist}\n\nAdds the `{probe.name}` attribute ({fields['labels']}) to dglm. "
        f"Held-out accuracy {probe.card.get('held_out_accuracy')}, encoder `{probe.card['encoder']}`.\n\n"
        f"    pip install ./{dist}\n    dglm generate \"PREFIX\" --attr {probe.name}={probe.labels[0]}\n"
    )
    return root
