"""The recipe of the instance: what a new one on another machine needs, and what makes an offer
equivalent (vast-api.md, "Moving to another machine").

It is captured once from vast.ai's answer about the first instance (`show instance` gives the
image, its arguments and runtype, the environment with its port entries, onstart, the disk, the
label and the template; never a private registry's login) and kept in SQLite, where the admin
can edit it. Environment values whose names look secret (tokens, keys, passwords) and the
registry login are stored, since a create needs them, but never shown, logged or audited.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ..clock import Clock
from ..config import Config
from ..errors import InvalidRequest, NotConfigured, UpstreamFailed, VastError, VastErrorKind
from ..logs import install_redaction
from ..storage import recipes as recipe_rows
from ..storage.database import Store
from ..vast.client import VastClient
from .audit import Audit

HIDDEN = "***"
# Names of environment variables whose values are secrets: never shown, logged or audited.
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSW|API_?KEY|_KEY$|^KEY$|AUTH|CREDENTIAL|PRIVATE", re.I)
PORT_ENTRY = re.compile(r"^-p\s")
# Registries an image name needs no login for unless the admin says otherwise (Docker Hub).
PUBLIC_REGISTRIES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
MIN_DISK_GB = 8.0  # vast.ai refuses a create with less (create_instance.yaml)
RUNTYPES = ("ssh", "jupyter", "args", "ssh_proxy", "ssh_direct", "jupyter_proxy", "jupyter_direct")
COUNTRY = re.compile(r"[A-Z]{2}")


@dataclass(frozen=True)
class Recipe:
    """What a new instance is created with, and what an offer must give to be equivalent."""

    source_instance_id: int
    captured_at: float
    image: str
    disk_gb: float
    gpu_name: str
    num_gpus: int
    min_gpu_ram_mb: float
    max_dph: float
    min_reliability: float
    verified_only: bool = True
    regions: tuple[str, ...] = ()  # two-letter country codes; empty: anywhere
    template_hash_id: str | None = None
    args: tuple[str, ...] | None = None
    runtype: str | None = None
    env: tuple[tuple[str, str], ...] = ()  # as vast.ai lists it, port entries included
    onstart: str | None = None
    label: str | None = None
    copy_paths: tuple[str, ...] = ()  # brought from the old disk by vast.ai's copy
    private_image: bool = False  # the image's registry needs a login
    image_login: str | None = field(default=None, repr=False)  # "-u user -p token registry"

    @property
    def registry(self) -> str | None:
        """Return the registry host the image names, or None for Docker Hub's short names."""
        first, _, rest = self.image.partition("/")
        if rest and ("." in first or ":" in first or first == "localhost"):
            return first
        return None

    def rebuild_problem(self) -> str | None:
        """Say why no instance can be created from this recipe, or None when one can."""
        if self.private_image and not self.image_login:
            host = self.registry or "its registry"
            return (
                f"the image {self.image} is private ({host}) and vast.ai does not return its "
                "registry login: set image_login in the recipe (PUT /infra/vast/recipe) to move"
            )
        return None

    def create_request(self, label: str, extra_env: dict[str, str]) -> dict[str, Any]:
        """Return the body of PUT /api/v0/asks/{offer}/ for this recipe (holds secrets);
        extra_env (the dead-man switch's secret) goes into the new instance's environment."""
        request: dict[str, Any] = {
            "image": self.image,
            "disk": self.disk_gb,
            "env": {**dict(self.env), **extra_env},
            "label": label,
            "cancel_unavail": True,
            "target_state": "running",
        }
        optional = {
            "template_hash_id": self.template_hash_id,
            "runtype": self.runtype,
            "onstart": self.onstart,
            "args": list(self.args) if self.args is not None else None,
            "image_login": self.image_login,
        }
        request.update({k: v for k, v in optional.items() if v is not None})
        return request

    def offer_query(self, exclude_machine: int | None) -> dict[str, Any]:
        """Return the search for equivalent offers on other machines, cheapest first."""
        query: dict[str, Any] = {
            "gpu_name": {"eq": self.gpu_name},
            "num_gpus": {"eq": self.num_gpus},
            "gpu_ram": {"gte": self.min_gpu_ram_mb},
            "dph_total": {"lte": self.max_dph},
            "reliability2": {"gte": self.min_reliability},
            "rentable": {"eq": True},
            "rented": {"eq": False},
            "external": {"eq": False},
            "order": [["dph_total", "asc"]],
            "type": "on-demand",
            "allocated_storage": self.disk_gb,
        }
        if self.verified_only:
            query["verified"] = {"eq": True}
        if exclude_machine is not None:
            query["machine_id"] = {"neq": exclude_machine}
        if self.regions:
            query["geolocation"] = {"in": list(self.regions)}
        return query

    def public(self) -> dict[str, Any]:
        """Return the recipe as it may be shown: secret values as ***."""
        shown = asdict(self)
        shown["env"] = [[k, HIDDEN if secret_name(k) else v] for k, v in self.env]
        shown["image_login"] = HIDDEN if self.image_login else None
        shown["args"] = list(self.args) if self.args is not None else None
        shown["regions"] = list(self.regions)
        shown["copy_paths"] = list(self.copy_paths)
        shown["rebuild_problem"] = self.rebuild_problem()
        return shown

    @property
    def secrets(self) -> list[str]:
        """List the values that must never be shown or logged."""
        values = [v for k, v in self.env if secret_name(k) and v]
        return values + ([self.image_login] if self.image_login else [])


def secret_name(name: str) -> bool:
    """Tell whether an environment variable's name says its value is a secret."""
    return not PORT_ENTRY.match(name) and bool(SECRET_NAME.search(name))


def recipe_from_instance(payload: dict[str, Any], config: Config, now: float) -> Recipe:
    """Build the recipe from vast.ai's full answer about an instance."""
    image = _text(payload.get("image_uuid")) or ""
    if not image:
        raise InvalidRequest("vast.ai's answer names no image (image_uuid): no recipe")
    dph = _float(payload.get("dph_total")) or 0.0
    env = payload.get("extra_env")
    pairs = tuple(
        (str(item[0]), str(item[1]))
        for item in (env if isinstance(env, list) else [])
        if isinstance(item, list | tuple) and len(item) == 2
    )
    args = payload.get("image_args")
    recipe = Recipe(
        source_instance_id=int(payload.get("id") or config.vast_instance_id or 0),
        captured_at=now,
        image=image,
        disk_gb=max(MIN_DISK_GB, _float(payload.get("disk_space")) or MIN_DISK_GB),
        gpu_name=_text(payload.get("gpu_name")) or "",
        num_gpus=int(_float(payload.get("num_gpus")) or 1),
        min_gpu_ram_mb=_float(payload.get("gpu_ram")) or 0.0,
        max_dph=config.move_max_dph if config.move_max_dph is not None else round(1.25 * dph, 4),
        min_reliability=config.move_min_reliability,
        regions=config.move_regions,
        template_hash_id=_text(payload.get("template_hash_id")),
        args=tuple(str(a) for a in args) if isinstance(args, list) else None,
        runtype=_text(payload.get("image_runtype")),
        env=pairs,
        onstart=_text(payload.get("onstart")),
        label=_text(payload.get("label")),
        copy_paths=config.move_copy_paths,
    )
    registry = recipe.registry
    return replace(recipe, private_image=registry is not None and registry not in PUBLIC_REGISTRIES)


def recipe_from_row(stored: dict[str, Any]) -> Recipe:
    """Rebuild a recipe from its stored JSON (lists back to tuples)."""
    values = dict(stored)
    values["env"] = tuple((str(k), str(v)) for k, v in values.get("env") or ())
    for name in ("regions", "copy_paths"):
        values[name] = tuple(values.get(name) or ())
    if values.get("args") is not None:
        values["args"] = tuple(values["args"])
    return Recipe(**values)


# What PUT /infra/vast/recipe may change, and how each value is checked.
EDITABLE = (
    "image",
    "template_hash_id",
    "args",
    "runtype",
    "env",
    "onstart",
    "disk_gb",
    "label",
    "image_login",
    "private_image",
    "gpu_name",
    "num_gpus",
    "min_gpu_ram_mb",
    "max_dph",
    "min_reliability",
    "verified_only",
    "regions",
    "copy_paths",
)


def edited(recipe: Recipe, changes: dict[str, Any]) -> tuple[Recipe, list[str]]:
    """Apply an admin's changes; return the new recipe and the names of the changed fields.

    Raises InvalidRequest naming the field for a value that cannot be used; a secret sent back
    as *** keeps the stored value.
    """
    unknown = sorted(set(changes) - set(EDITABLE))
    if unknown:
        raise InvalidRequest(f"{unknown[0]}: not a field of the recipe")
    values: dict[str, Any] = {}
    for name, value in changes.items():
        values[name] = _checked(recipe, name, value)
    new = replace(recipe, **values)
    changed = sorted(n for n in values if getattr(new, n) != getattr(recipe, n))
    return new, changed


def _checked(recipe: Recipe, name: str, value: Any) -> Any:
    """Return a field's new value, or raise InvalidRequest naming it."""
    if name in ("image", "gpu_name"):
        return _required_text(name, value, 1024)
    if name in ("template_hash_id", "onstart", "label", "runtype"):
        text = _optional_text(name, value, 4096)
        if name == "runtype" and text is not None and text not in RUNTYPES:
            raise InvalidRequest(f"runtype: one of {', '.join(RUNTYPES)}")
        return text
    if name == "image_login":
        if value == HIDDEN:
            return recipe.image_login
        return _optional_text(name, value, 1024)
    if name in ("private_image", "verified_only"):
        if not isinstance(value, bool):
            raise InvalidRequest(f"{name}: true or false")
        return value
    if name == "num_gpus":
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 16:
            raise InvalidRequest("num_gpus: a whole number from 1 to 16")
        return value
    if name in ("disk_gb", "min_gpu_ram_mb", "max_dph", "min_reliability"):
        low, high = {"disk_gb": (MIN_DISK_GB, 100_000), "min_reliability": (0, 1)}.get(
            name, (0, 1_000_000)
        )
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidRequest(f"{name}: a number from {low:g} to {high:g}")
        if not math.isfinite(value) or not low <= value <= high:
            raise InvalidRequest(f"{name}: a number from {low:g} to {high:g}")
        return float(value)
    if name == "args":
        if value is None:
            return None
        return tuple(_text_list(name, value))
    if name == "regions":
        codes = tuple(c.upper() for c in _text_list(name, value))
        if not all(COUNTRY.fullmatch(c) for c in codes):
            raise InvalidRequest("regions: two-letter country codes such as DE or US")
        return codes
    if name == "copy_paths":
        paths = tuple(_text_list(name, value))
        if not all(p.startswith("/") and p.rstrip("/") not in ("", "/root") for p in paths):
            raise InvalidRequest("copy_paths: absolute paths, never / or /root")
        return paths
    return _env(recipe, value)


def _env(recipe: Recipe, value: Any) -> tuple[tuple[str, str], ...]:
    """Read the environment as a list of [name, value] pairs or an object; *** keeps a secret."""
    items = list(value.items()) if isinstance(value, dict) else value
    if not isinstance(items, list):
        raise InvalidRequest("env: a list of [name, value] pairs, or an object")
    stored = dict(recipe.env)
    pairs = []
    for item in items:
        if not isinstance(item, list | tuple) or len(item) != 2:
            raise InvalidRequest("env: each entry is [name, value]")
        name, text = item
        if not isinstance(name, str) or not name.strip() or not isinstance(text, str):
            raise InvalidRequest("env: names and values are strings, names not empty")
        if text == HIDDEN:
            if name not in stored:
                raise InvalidRequest(f"env: {name} has no stored value to keep")
            text = stored[name]
        pairs.append((name, text))
    return tuple(pairs)


def _required_text(name: str, value: Any, limit: int) -> str:
    text = _optional_text(name, value, limit)
    if text is None:
        raise InvalidRequest(f"{name}: required, a string")
    return text


def _optional_text(name: str, value: Any, limit: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise InvalidRequest(f"{name}: a string of at most {limit} characters")
    return value.strip() or None


def _text_list(name: str, value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise InvalidRequest(f"{name}: a list of strings")
    return [v.strip() for v in value]


def _text(value: Any) -> str | None:
    return value.strip() or None if isinstance(value, str) else None


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        return None
    return float(value)


class RecipeBook:
    """Keeps the recipe: captured from vast.ai once, edited by the admin."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        config: Config,
        client: VastClient | None,
        audit: Audit,
    ):
        self.store = store
        self.clock = clock
        self.config = config
        self.client = client
        self.audit = audit

    def current(self) -> Recipe | None:
        """Return the stored recipe, or None before it is captured."""
        stored = recipe_rows.read_recipe(self.store.db)
        if stored is None:
            return None
        recipe = recipe_from_row(stored)
        install_redaction(recipe.secrets)  # its tokens never reach a log line
        return recipe

    def get(self) -> Recipe:
        """Return the recipe, capturing it from vast.ai's answer about the first instance first.

        Raises NotConfigured/UpstreamFailed when vast.ai cannot be asked.
        """
        recipe = self.current()
        if recipe is not None:
            return recipe
        if self.client is None or self.config.vast_instance_id is None:
            missing = " and ".join(self.config.missing_vast_settings)
            raise NotConfigured(f"{missing} not configured: no instance to take a recipe from")
        try:
            payload = self.client.fetch_instance(self.config.vast_instance_id)
        except VastError as exc:
            raise UpstreamFailed(exc.message, exc.kind) from None
        if payload is None:
            raise UpstreamFailed(
                f"vast.ai does not know instance {self.config.vast_instance_id}: no recipe",
                VastErrorKind.NOT_FOUND,
            )
        return self.capture(payload)

    def capture_from_answer(self, payload: dict[str, Any] | None) -> None:
        """Take the recipe from a read of the first instance when none is stored yet: the reads
        the panel makes anyway serve, so a move needs no read of its own."""
        if payload is None or payload.get("id") != self.config.vast_instance_id:
            return
        if recipe_rows.read_recipe(self.store.db) is None and payload.get("image_uuid"):
            self.capture(payload)

    def capture(self, payload: dict[str, Any]) -> Recipe:
        """Store the recipe of vast.ai's full answer about the first instance; audited.

        Raises UpstreamFailed when the answer names no image (vast.ai's fault, not a request's).
        """
        try:
            recipe = recipe_from_instance(payload, self.config, self.clock.now())
        except InvalidRequest as exc:
            raise UpstreamFailed(exc.message, VastErrorKind.BAD_ANSWER) from None
        install_redaction(recipe.secrets)
        recipe_rows.save_recipe(self.store.db, asdict(recipe), self.clock.now())
        self.audit.record(
            "recipe_captured",
            "system",
            instance_id=recipe.source_instance_id,
            image=recipe.image,
            gpu_name=recipe.gpu_name,
            max_dph=recipe.max_dph,
        )
        return recipe

    def edit(self, actor: str, changes: dict[str, Any]) -> Recipe:
        """Apply an admin's changes (validated first: nothing changes on a bad value); audited
        with the names of the changed fields, never their values."""
        recipe, changed = edited(self.get(), changes)
        if changed:
            install_redaction(recipe.secrets)
            recipe_rows.save_recipe(self.store.db, asdict(recipe), self.clock.now())
            self.audit.record("recipe_edited", actor, fields=",".join(changed))
        return recipe
