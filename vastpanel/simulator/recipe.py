"""What an instance runs (its recipe), read from a create request as vast.ai reads it.

Sources: vast-ai/docs ``api-reference/openapi/yaml/create_instance.yaml`` (fields, limits in
``x-input-validation``, template precedence: scalars from the request win, ``env`` merges by
key with the request winning) and vast-ai/vast-cli ``vastai/api/instances.py`` (the official
client sends ``env`` as a dict such as ``{"KEY": "v", "-p 8000:8000": "1"}``; the reference
also allows Docker flags in one string, ``"-e KEY=v -p 8000:8000"``). ``show instance`` gives
the recipe back as ``image_uuid``, ``image_args``, ``image_runtype``, ``extra_env`` (a list of
``[key, value]`` pairs), ``onstart``, ``template_hash_id`` and ``volume_info``; never the
registry login (``image_login``), which a recipe rebuilt from show instance therefore lacks.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

RUNTYPES = ("ssh", "jupyter", "args", "ssh_proxy", "ssh_direct", "jupyter_proxy", "jupyter_direct")
TARGET_STATES = ("running", "stopped")
MIN_DISK_GB = 8.0
DEFAULT_DISK_GB = 10.0  # what the official client asks when no disk is given
MAX_IMAGE = 1024
MAX_LABEL = 256
MAX_ARGS = 4096  # args, args_str and onstart together
MAX_ENV_ENTRY = 256
MAX_ENV_TOTAL = 32768
PORT_KEY = re.compile(r"-p\s+(?:\d+:)?(\d+)(?:/tcp)?$")
# A template a create request may name (template_hash_id); the hash is the simulator's own.
DEFAULT_TEMPLATES = {
    "5ee0c7a1f0a84c1b9f0d6d27a6a0e6b1": {
        "image": "vllm/vllm-openai:latest",
        "runtype": "args",
        "args": ["--model", "sim-model", "--port", "8000"],
        "env": {"-p 8000:8000": "1", "-p 8001:8001": "1"},
        "disk": 48,
    }
}


class BadRecipe(ValueError):
    """A create request vast.ai would refuse with 400 invalid_args."""


@dataclass
class Recipe:
    """The image, arguments and environment an instance was created with."""

    image: str
    runtype: str = "args"
    args: list[str] | None = None
    env: dict[str, str] = field(default_factory=dict)
    onstart: str | None = None
    template_hash_id: str | None = None
    volume_info: dict | None = None
    image_login: str | None = field(default=None, repr=False)  # never shown back

    def ports(self) -> list[int]:
        """Return the container ports the environment's ``-p`` entries expose, in order."""
        found = (PORT_KEY.fullmatch(key.strip()) for key in self.env)
        return list(dict.fromkeys(int(m.group(1)) for m in found if m))

    def extra_env(self) -> list[list[str]]:
        """Return the environment as show instance gives it: ``[[key, value], ...]``."""
        return [[key, value] for key, value in self.env.items()]


def default_recipe(image: str) -> Recipe:
    """Return the recipe of the simulator's first instance: vLLM with two ports mapped."""
    return Recipe(
        image=image,
        runtype="args",
        args=["--model", "sim-model", "--port", "8000"],
        env={"-p 8000:8000": "1", "-p 8001:8001": "1"},
    )


def parse_env(raw: object) -> dict[str, str]:
    """Read ``env`` as a dict of strings or as Docker flags (``-e K=V -p 8000:8000``)."""
    if raw is None:
        return {}
    if isinstance(raw, dict):
        env = {}
        for key, value in raw.items():
            if not isinstance(value, str | int | float) or isinstance(value, bool):
                raise BadRecipe(f"env value of {key!r} must be a string")
            env[str(key)] = str(value)
        return env
    if not isinstance(raw, str):
        raise BadRecipe("env must be an object or a string of Docker flags")
    try:
        words = shlex.split(raw)
    except ValueError as error:
        raise BadRecipe(f"env: {error}") from None
    env: dict[str, str] = {}
    for flag, value in zip(words[::2], words[1::2], strict=False):
        if flag == "-e" and "=" in value:
            key, _, val = value.partition("=")
            env[key] = val
        elif flag == "-p":
            env[f"-p {value}"] = "1"
        else:
            raise BadRecipe(f"env: cannot read {flag} {value}")
    if len(words) % 2:
        raise BadRecipe(f"env: {words[-1]} has no value")
    return env


def recipe_from_request(body: dict, templates: dict[str, dict]) -> tuple[Recipe, float, str]:
    """Return the recipe, the disk in GB and the target state a create request asks for."""
    template_hash = _optional_str(body, "template_hash_id")
    base: dict = {}
    if template_hash is not None:
        if template_hash not in templates:
            raise BadRecipe(f"Template {template_hash} not found.")
        base = templates[template_hash]
    image = _optional_str(body, "image") or base.get("image")
    if not image:
        raise BadRecipe("'image' is required (or a template_hash_id that gives one).")
    args = body.get("args", base.get("args"))
    if args is not None and (
        not isinstance(args, list) or not all(isinstance(a, str) for a in args)
    ):
        raise BadRecipe("args must be a list of strings")
    args_str = _optional_str(body, "args_str")
    if args is None and args_str:
        args = shlex.split(args_str)
    onstart = _optional_str(body, "onstart") or base.get("onstart")
    runtype = body.get("runtype") or base.get("runtype") or ("args" if args else "ssh")
    if runtype not in RUNTYPES:
        raise BadRecipe(f"runtype must be one of {', '.join(RUNTYPES)}")
    env = {**parse_env(base.get("env")), **parse_env(body.get("env"))}
    disk = body.get("disk")
    disk = base.get("disk", DEFAULT_DISK_GB) if disk is None else disk
    if not isinstance(disk, int | float) or isinstance(disk, bool) or disk < MIN_DISK_GB:
        raise BadRecipe(f"disk must be a number of GB, at least {MIN_DISK_GB:g}")
    target = body.get("target_state") or "running"
    if target not in TARGET_STATES:
        raise BadRecipe("target_state must be running or stopped")
    volume_info = body.get("volume_info")
    if volume_info is not None and not isinstance(volume_info, dict):
        raise BadRecipe("volume_info must be an object")
    recipe = Recipe(
        image=image,
        runtype=runtype,
        args=args,
        env=env,
        onstart=onstart,
        template_hash_id=template_hash,
        volume_info=volume_info,
        image_login=_optional_str(body, "image_login"),
    )
    _check_limits(recipe, _optional_str(body, "label"), args_str)
    return recipe, float(disk), target


def _optional_str(body: dict, name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise BadRecipe(f"{name} must be a string")
    return value


def _check_limits(recipe: Recipe, label: str | None, args_str: str | None) -> None:
    """Apply create_instance.yaml's x-input-validation limits."""
    if len(recipe.image) > MAX_IMAGE:
        raise BadRecipe(f"image is longer than {MAX_IMAGE} characters")
    if label is not None and len(label) > MAX_LABEL:
        raise BadRecipe(f"label is longer than {MAX_LABEL} characters")
    args_length = len(" ".join(recipe.args or [])) + len(args_str or "")
    if args_length + len(recipe.onstart or "") > MAX_ARGS:
        raise BadRecipe(f"args, args_str and onstart together exceed {MAX_ARGS} characters")
    entries = [f"{key}={value}" for key, value in recipe.env.items()]
    if any(len(entry) > MAX_ENV_ENTRY for entry in entries):
        raise BadRecipe(f"an env entry is longer than {MAX_ENV_ENTRY} characters")
    if sum(len(entry) for entry in entries) > MAX_ENV_TOTAL:
        raise BadRecipe(f"env is longer than {MAX_ENV_TOTAL} characters in all")
