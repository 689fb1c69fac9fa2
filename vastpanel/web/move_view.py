"""What the page shows about moving to another machine: the stuck banner with its offers and the
move's progress (both in the status card), the Instances widget and the Recipe widget; and how
the Recipe widget's form is read."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..domain import Panel
from ..domain.move import MoveRow, Offer, Stuck
from ..errors import PanelError
from .answers import INSTANCE_STATES, MOVE_STEPS, recipe_json
from .inputs import InvalidInput

OFFERS_SHOWN = 5  # the banner lists the best few; GET /infra/vast/offers has them all
# A finished move stays on the card this long, so an admin who comes back the next morning
# sees what happened overnight (the audit log keeps it for good).
MOVE_SHOWN_FOR_S = 12 * 3600
DESTROYABLE = frozenset({"kept", "stopped"})
LIST_SEPARATORS = re.compile(r"[\s,]+")


@dataclass(frozen=True)
class MoveBanner:
    """The status card's word on a stuck start: the offers, or why there is no move."""

    mode: str  # ask or auto (off shows no banner)
    stuck: Stuck
    offers: list[Offer]
    more_offers: int  # offers beyond those shown
    cheapest: float | None
    problem: str | None  # why no move can be made (offers unreadable, the recipe unusable)
    copy_paths: tuple[str, ...]
    old_kept: bool  # VAST_MOVE_OLD=keep

    @property
    def can_move(self) -> bool:
        return self.mode == "ask" and self.problem is None and bool(self.offers)


def move_banner(panel: Panel, moving: bool) -> MoveBanner | None:
    """Say whether a start is stuck, with the offers a move could go to; None when not stuck,
    while a move runs, or with VAST_MOVE=off."""
    mode = panel.config.move
    if mode == "off" or moving:
        return None
    stuck = panel.mover.stuck()
    if stuck is None:
        return None
    offers: list[Offer] = []
    problem, copy_paths = None, ()
    try:
        recipe = panel.recipes.get()
        copy_paths = recipe.copy_paths
        problem = recipe.rebuild_problem()
        offers = panel.mover.offers()
    except PanelError as exc:
        problem = problem or exc.message
    if problem is None and not offers:
        problem = (
            f"no equivalent offer on another machine ({recipe.num_gpus}x {recipe.gpu_name}, at "
            f"most ${recipe.max_dph:g}/h, reliability {recipe.min_reliability:g} or more): "
            "widen the recipe below"
        )
    return MoveBanner(
        mode=mode,
        stuck=stuck,
        offers=offers[:OFFERS_SHOWN],
        more_offers=max(0, len(offers) - OFFERS_SHOWN),
        cheapest=min((o.dph_total for o in offers), default=None),
        problem=problem,
        copy_paths=copy_paths,
        old_kept=panel.config.move_old == "keep",
    )


def shown_move(panel: Panel) -> MoveRow | None:
    """Return the move the card shows: the one under way, or one that ended lately."""
    move = panel.mover.latest()
    if move is None or move.active:
        return move
    ended = move.finished_at if move.finished_at is not None else move.step_since
    return move if panel.clock.now() - ended < MOVE_SHOWN_FOR_S else None


def move_context(panel: Panel) -> dict[str, Any]:
    """Gather what the status card shows about moving: the move, or a stuck start's banner."""
    move = shown_move(panel)
    moving = move is not None and move.active
    return {
        "move": move,
        "moving": moving,
        "move_step": MOVE_STEPS.get(move.state, move.state) if move else None,
        "move_banner": move_banner(panel, moving),
        "move_mode": panel.config.move,
        "move_after_minutes": panel.config.move_after_minutes,
        "move_old_kept": panel.config.move_old == "keep",
    }


def instances_context(
    panel: Panel, notice: str | None = None, notice_is_error: bool = False
) -> dict[str, Any]:
    """Gather what `_instances.html` shows: every instance the panel knows, with its state."""
    error = None
    try:
        known = panel.mover.known_instances()
    except PanelError as exc:
        known, error = [], exc.message
    move = panel.mover.latest()
    busy = {move.old_id, move.new_id} if move is not None and move.active else set()
    return {
        "known_instances": known,
        "instance_states": INSTANCE_STATES,
        "destroyable": {k.id for k in known if k.state in DESTROYABLE and k.id not in busy},
        "current_instance": panel.instance.current_id(),
        "instances_error": error,
        "instances_notice": notice,
        "instances_notice_is_error": notice_is_error,
    }


def recipe_context(
    panel: Panel,
    notice: str | None = None,
    notice_is_error: bool = False,
    typed: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Gather what `_recipe.html` shows: the stored recipe (secrets as ***), never reading
    vast.ai to show the page; typed: what the admin sent, shown again after a refused edit."""
    recipe = panel.recipes.current()
    shown = recipe_json(recipe) if recipe is not None else None
    return {
        "recipe": shown,
        "recipe_form": typed if typed is not None else (form_values(shown) if shown else {}),
        "recipe_source": panel.config.vast_instance_id,
        "recipe_notice": notice,
        "recipe_notice_is_error": notice_is_error,
        "moving_off": panel.config.move == "off",
    }


# --- the Recipe widget's form ---------------------------------------------------------------------

# The fields the page edits; the API's PUT /infra/vast/recipe edits every field.
FORM_TEXT = ("image", "gpu_name")
FORM_NUMBERS = ("max_dph", "min_reliability", "disk_gb")
FORM_CHECKBOXES = ("private_image", "verified_only")
FORM_LISTS = ("regions", "copy_paths")
FORM_FIELDS = (*FORM_TEXT, "image_login", *FORM_NUMBERS, *FORM_CHECKBOXES, *FORM_LISTS)


def form_values(shown: dict[str, Any]) -> dict[str, str]:
    """Write the recipe's editable fields as the form's inputs hold them."""
    values = {name: shown[name] for name in FORM_TEXT}
    values.update({name: number_text(shown[name]) for name in FORM_NUMBERS})
    values["image_login"] = shown["image_login"] or ""  # *** keeps the stored login
    values.update({name: "on" if shown[name] else "" for name in FORM_CHECKBOXES})
    values.update({name: " ".join(shown[name]) for name in FORM_LISTS})
    return values


def number_text(value: float) -> str:
    """Write a number short (48, not 48.0) but exact: saved unedited, it stays the same."""
    short = f"{value:g}"
    return short if float(short) == value else repr(value)


def typed_values(form: Any) -> dict[str, str]:
    """Return what the form sent, field by field (an unticked box sends nothing)."""
    return {name: form.get(name, "") for name in FORM_FIELDS}


def recipe_changes(form: Any) -> dict[str, Any]:
    """Read the form into the changes PUT /infra/vast/recipe takes; InvalidInput names a field."""
    changes: dict[str, Any] = {name: form.get(name, "") for name in FORM_TEXT}
    login = form.get("image_login", "").strip()
    changes["image_login"] = login or None  # emptied: the stored login goes
    for name in FORM_NUMBERS:
        raw = form.get(name, "").strip()
        try:
            changes[name] = float(raw)
        except ValueError:
            raise InvalidInput(f"{name}: a number") from None
    for name in FORM_CHECKBOXES:
        changes[name] = bool(form.get(name))  # a ticked box sends "on", an unticked nothing
    for name in FORM_LISTS:
        changes[name] = [p for p in LIST_SEPARATORS.split(form.get(name, "")) if p]
    return changes
