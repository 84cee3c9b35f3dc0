"""Run a command as if only keras-mixer's base install and some extras were installed.

The test environment has every extra. :func:`environment` computes the distributions
that ``pip install "keras-mixer[EXTRAS]"`` would install (keras-mixer's requirements
from this checkout's ``setup.cfg``, theirs from the installed metadata, recursively),
and returns an environment whose ``sitecustomize``
(on ``PYTHONPATH``, so that every child process has it too) makes the import of any
other installed distribution's modules fail with ``ModuleNotFoundError``, as it would
where that distribution is not installed.
"""

import configparser
import importlib.metadata as metadata
import os
import re

from packaging.requirements import Requirement

BLOCKED_VARIABLE = "KERAS_MIXER_TEST_BLOCKED_MODULES"

SITECUSTOMIZE = '''
import importlib.abc, os, sys

_BLOCKED = frozenset(os.environ.get("%s", "").split(","))


class _NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in _BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (not in this install)", name=name)
        return None


sys.meta_path.insert(0, _NotInstalled())
''' % BLOCKED_VARIABLE


def _key(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def own_requirements(setup_cfg, extras=()):
    """keras-mixer's requirements (``install_requires`` plus ``extras``) from ``setup.cfg``."""
    config = configparser.ConfigParser()
    config.read(setup_cfg)
    lines = config["options"]["install_requires"].splitlines()
    for extra in extras:
        lines += config["options.extras_require"][extra].splitlines()
    return [Requirement(line) for line in lines if line.strip() and not line.strip().startswith("#")]


def installed_closure(requirements):
    """Normalised names of the distributions that ``requirements`` need, recursively."""
    wanted = set()
    todo = [(r.name, tuple(sorted(r.extras))) for r in requirements]
    while todo:
        name, with_extras = todo.pop()
        key = _key(name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional requirement that is not installed here either
        if (key, with_extras) in wanted:
            continue
        wanted.add((key, with_extras))
        for text in dist.requires or ():
            requirement = Requirement(text)
            markers = [{"extra": extra} for extra in with_extras or ("",)]
            if requirement.marker and not any(requirement.marker.evaluate(m) for m in markers):
                continue
            todo.append((requirement.name, tuple(sorted(requirement.extras))))
    return {key for key, _ in wanted}


def top_level_modules(dist):
    """The importable top-level names a distribution provides."""
    text = dist.read_text("top_level.txt")
    if text:
        return {line.strip() for line in text.splitlines() if line.strip()}
    names = set()
    for file in dist.files or ():
        parts = file.parts
        if not parts or parts[0].endswith((".dist-info", ".data")) or parts[0] == "..":
            continue
        first = parts[0]
        if first.endswith(".py"):
            names.add(first[:-3])
        elif len(parts) > 1 and not first.endswith(".pth"):
            names.add(first)
        elif first.endswith(".so"):
            names.add(first.split(".")[0])
    return names


def blocked_modules(setup_cfg, extras):
    """Top-level module names of every installed distribution not in ``keras-mixer[extras]``."""
    allowed = installed_closure(own_requirements(setup_cfg, extras))
    allowed_modules, other_modules = set(), set()
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if not name:
            continue
        modules = top_level_modules(dist)
        (allowed_modules if _key(name) in allowed else other_modules).update(modules)
    return sorted(other_modules - allowed_modules - {"keras_mixer", "_distutils_hack", "pip",
                                                    "setuptools", "pkg_resources"})


def environment(setup_cfg, extras, directory, base=None):
    """``os.environ`` (or ``base``) for a process that sees only ``keras-mixer[extras]``."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "sitecustomize.py"), "w", encoding="utf-8") as f:
        f.write(SITECUSTOMIZE)
    env = dict(base or os.environ)
    env[BLOCKED_VARIABLE] = ",".join(blocked_modules(setup_cfg, extras))
    env["PYTHONPATH"] = os.pathsep.join(
        [directory] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env
