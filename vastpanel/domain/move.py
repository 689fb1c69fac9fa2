"""Moving to another machine when the instance's own GPU is taken (vast-api.md, "Moving to
another machine").

A stopped vast.ai instance keeps its claim on its own machine only: when someone else rents that
GPU, a start waits in "scheduling" for as long as they keep it. A start is stuck when vast.ai
queued it (resources_unavailable) or it has been scheduling for VAST_MOVE_AFTER_MINUTES. Then
(VAST_MOVE=ask: the admin's click; auto: by itself) the panel stops the old start, searches the
offers equivalent to the recipe, creates the recipe on the best one (the next on no_such_ask, a
bounded number of times), follows the new instance to health (copying VAST_MOVE_COPY_PATHS from
the old disk on the way), stops the old one again if vast.ai was slow to, and only then switches
the instance it controls. The old one is kept (stopped, storage still billed) or destroyed
(VAST_MOVE_OLD).

Every step is stored before it acts (table moves), and the watchdog's leader takes one step per
look of the move job: a process killed at any step leaves a move the next look finishes or
undoes. A create whose answer was lost is found again by its label. Nothing is destroyed
without VAST_MOVE_OLD=destroy or an admin's click.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from ..clock import Clock
from ..config import Config
from ..errors import InvalidRequest, PanelError, UpstreamFailed, VastError, VastErrorKind
from ..instance_http import InstanceHttp
from ..storage import moves, sessions, values
from ..storage.database import Store
from ..storage.moves import KnownInstance, MoveRow
from ..vast.client import VastClient
from ..vast.instance import GPU_BILLED, endpoint_base_url
from .audit import Audit
from .budget import Budget
from .costs import CostBook
from .instance import SCHEDULING_SINCE_KEY, START_QUEUED_KEY, InstanceReader
from .recipe import Recipe, RecipeBook

log = logging.getLogger("vastpanel.move")

MAX_CREATE_TRIES = 5  # offers tried in one move before it gives up
OFFERS_FRESH_S = 30.0  # a search is reused this long (vast.ai allows about 10 a minute)
OFFERS_KEY, OFFERS_AT_KEY = "offers", "offers_read_at"
OFFERS_ERROR_KEY = "offers_error"  # why the last search failed: kept as long as a search
# vast.ai shows a copy's progress in the status bar about 30 s late: a copy not seen under way
# by then counts as done once its instance's status stops mentioning it.
COPY_SEEN_WITHIN_S = 30.0
LABEL_PREFIX = "vastpanel-move-"
# One run of the move job takes the steps that can go at once back to back, and follows a new
# instance's boot for up to this long before handing over to the next run.
RUN_S = 20.0
BOOT_POLL_S = 2.0  # vast.ai's list of instances, at its 2 s between reads
HEALTH_POLL_S = 1.0  # the new instance's health URL, once it runs
TRANSIENT = (VastErrorKind.UNREACHABLE, VastErrorKind.RATE_LIMITED, VastErrorKind.BAD_ANSWER)


class MoveRefused(PanelError):
    """A move cannot be asked for now; the message says why."""


@dataclass(frozen=True)
class Offer:
    """An offer on another machine, as the page and the API show it."""

    id: int
    machine_id: int | None
    gpu_name: str | None
    num_gpus: int | None
    gpu_ram_mb: float | None
    dph_total: float
    reliability: float | None
    location: str | None
    verified: bool

    @classmethod
    def from_vast(cls, offer: dict[str, Any]) -> Offer | None:
        """Read one of vast.ai's offers; None when it lacks an id or a price."""
        offer_id, dph = offer.get("id"), offer.get("dph_total")
        if not _number(offer_id) or not _number(dph):
            return None
        reliability = offer.get("reliability2", offer.get("reliability"))
        return cls(
            id=int(offer_id),
            machine_id=int(offer["machine_id"]) if _number(offer.get("machine_id")) else None,
            gpu_name=offer.get("gpu_name") if isinstance(offer.get("gpu_name"), str) else None,
            num_gpus=int(offer["num_gpus"]) if _number(offer.get("num_gpus")) else None,
            gpu_ram_mb=float(offer["gpu_ram"]) if _number(offer.get("gpu_ram")) else None,
            dph_total=float(dph),
            reliability=float(reliability) if _number(reliability) else None,
            location=offer.get("geolocation")
            if isinstance(offer.get("geolocation"), str)
            else None,
            verified=offer.get("verification") == "verified" or offer.get("verified") is True,
        )


@dataclass(frozen=True)
class Stuck:
    """A start that waits for a GPU someone else has."""

    machine_id: int | None
    since: float | None
    queued: bool  # vast.ai said resources_unavailable


def rank(offers: list[Offer], recipe: Recipe, exclude_machine: int | None) -> list[Offer]:
    """Keep the offers equivalent to the recipe, cheapest first, then the most reliable."""
    fit = [
        o
        for o in offers
        if o.dph_total <= recipe.max_dph
        and (o.reliability or 0.0) >= recipe.min_reliability
        and (o.verified or not recipe.verified_only)
        and (o.gpu_name is None or o.gpu_name == recipe.gpu_name)
        and (o.num_gpus is None or o.num_gpus == recipe.num_gpus)
        and (o.gpu_ram_mb is None or o.gpu_ram_mb >= recipe.min_gpu_ram_mb)
        and (exclude_machine is None or o.machine_id != exclude_machine)
        and (not recipe.regions or (o.location or "")[-2:] in recipe.regions)
    ]
    return sorted(fit, key=lambda o: (o.dph_total, -(o.reliability or 0.0), o.id))


class Mover:
    """Moves the instance to an equivalent offer on another machine, one stored step a look."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        config: Config,
        client: VastClient | None,
        instance_http: InstanceHttp,
        audit: Audit,
        instance: InstanceReader,
        budget: Budget,
        costs: CostBook,
        recipes: RecipeBook,
    ):
        self.store = store
        self.clock = clock
        self.config = config
        self.client = client
        self.instance_http = instance_http
        self.audit = audit
        self.instance = instance
        self.budget = budget
        self.costs = costs
        self.recipes = recipes

    # --- what the page and the API read ------------------------------------------------------

    def stuck(self) -> Stuck | None:
        """Tell whether a start waits for a GPU someone else has (from the shared answer)."""
        cached = self.instance.cached_state()
        if cached is None or cached.status != "scheduling":
            return None
        db = self.store.db
        queued = values.get_value(db, START_QUEUED_KEY) is not None
        since = values.get_value(db, SCHEDULING_SINCE_KEY)
        long = since is not None and self.clock.now() - since >= self.config.move_after_minutes * 60
        if not (queued or long):
            return None
        return Stuck(self._machine_of_current(), since, queued)

    def latest(self) -> MoveRow | None:
        """Return the move under way, or the last one."""
        return moves.latest_move(self.store.db)

    def known_instances(self) -> list[KnownInstance]:
        """Return every instance the panel knows, with its state."""
        self._remember_first()
        return moves.list_instances(self.store.db)

    def offers(self, *, fresh: bool = False) -> list[Offer]:
        """Return the offers equivalent to the recipe on other machines, best first.

        A search, or its failure, is reused for OFFERS_FRESH_S: vast.ai allows about 10 searches
        a minute, and a page polls while a start is stuck. Raises UpstreamFailed when vast.ai
        could not be searched.
        """
        db = self.store.db
        read_at = values.get_value(db, OFFERS_AT_KEY)
        if not fresh and read_at is not None and 0 <= self.clock.now() - read_at < OFFERS_FRESH_S:
            error = values.get_note(db, OFFERS_ERROR_KEY)
            if error is not None:
                raise UpstreamFailed(error, VastErrorKind.UNREACHABLE)
            return [Offer(**o) for o in json.loads(values.get_note(db, OFFERS_KEY) or "[]")]
        recipe = self.recipes.get()
        machine = self._machine_of_current()
        values.set_value(db, OFFERS_AT_KEY, self.clock.now())
        try:
            found = self._client().search_offers(recipe.offer_query(machine))
        except VastError as exc:
            error = f"vast.ai's offers could not be read: {exc.message}"
            values.set_note(db, OFFERS_ERROR_KEY, error)
            raise UpstreamFailed(error, exc.kind) from None
        offers = rank([o for o in map(Offer.from_vast, found) if o], recipe, machine)
        values.set_note(db, OFFERS_KEY, json.dumps([o.__dict__ for o in offers]))
        values.set_note(db, OFFERS_ERROR_KEY, None)
        return offers

    # --- asking for a move --------------------------------------------------------------------

    def request(
        self, actor: str, offer_id: int | None = None, go_on_without_copy: bool = False
    ) -> MoveRow:
        """Ask for a move (the watchdog's leader carries it out); refuse with the reason when
        one cannot be made now. Nothing happens to any instance here."""
        if self.config.move == "off":
            raise MoveRefused("Moving is off (VAST_MOVE=off).")
        self.instance.require_configured()
        problem = self.recipes.get().rebuild_problem()
        if problem is not None:
            raise MoveRefused(f"The instance cannot be moved: {problem}.")
        status = self.budget.status()
        if status is not None and status.blocks:
            raise MoveRefused(f"No move: {status.reason}")
        state = self.instance.state()
        if state.status == "running":
            raise MoveRefused("The instance runs on its own machine: there is nothing to move.")
        if offer_id is not None and offer_id not in {o.id for o in self.offers()}:
            # A move to it would cancel the start, then fail.
            raise MoveRefused(f"Offer {offer_id} is no longer among the offers: choose another.")
        old_id = self.instance.current_id()
        move = moves.add_move(
            self.store.db, self.clock.now(), actor, old_id, offer_id, go_on_without_copy
        )
        if move is None:
            raise MoveRefused("A move is already under way.")
        self.audit.record(
            "move_started",
            actor,
            instance_id=old_id,
            machine_id=self._machine_of_current(),
            offer_id=offer_id,
            copy_paths=",".join(self.recipes.get().copy_paths) or None,
        )
        return move

    def move_if_stuck(self) -> MoveRow | None:
        """With VAST_MOVE=auto, ask for a move when a start is stuck (the watchdog's look)."""
        if self.config.move != "auto" or not self.config.vast_configured:
            return None
        latest = self.latest()
        if latest is not None and latest.active:
            return None
        if self.stuck() is None:
            return None
        try:
            return self.request("system")
        except PanelError as exc:
            log.warning("move: a stuck start cannot be moved: %s", exc.message)
            return None

    def cancel(self, actor: str, reason: str) -> MoveRow | None:
        """Give up the move under way (a stop asked meanwhile); a new instance is stopped."""
        move = self.latest()
        if move is None or not move.active:
            return None
        return self._fail(move, f"{reason} ({actor})")

    def destroy(self, actor: str, instance_id: int) -> KnownInstance:
        """Destroy an instance the panel keeps from a move (never the current one); audited."""
        known = moves.read_instance(self.store.db, instance_id)
        if known is None or known.state == "destroyed":
            raise InvalidRequest(f"instance {instance_id} is not one the panel keeps")
        if instance_id == self.instance.current_id():
            raise InvalidRequest("the instance the panel controls cannot be destroyed here")
        move = self.latest()
        if move is not None and move.active and instance_id in (move.old_id, move.new_id):
            raise InvalidRequest("a move under way still uses this instance")
        try:
            self._client().destroy_instance(instance_id)
        except VastError as exc:
            if exc.kind is not VastErrorKind.NOT_FOUND:
                self.audit.record(
                    "instance_destroy_failed", actor, instance_id=instance_id, error=exc.message
                )
                raise MoveRefused(f"vast.ai did not destroy it: {exc.message}") from None
        return self._destroyed(known, actor)

    # --- carrying it out: one step per call ---------------------------------------------------

    def advance(self) -> MoveRow | None:
        """Take the steps of the move under way that can go now (the watchdog's leader),
        back to back while each one moves it on; return the move."""
        move = self.latest()
        give_up = self.clock.now() + RUN_S
        while move is not None and move.active:
            before = (move.state, move.tries, move.note)
            step: Callable[[MoveRow], None] = getattr(self, f"_{move.state}")
            try:
                step(move)
            except VastError as exc:
                if exc.kind in TRANSIENT:  # tried again at the next run
                    log.warning("move %d: %s: %s", move.id, move.state, exc.message)
                    return moves.read_move(self.store.db, move.id)
                self._fail(move, f"vast.ai refused ({move.state}): {exc.message}")
            except PanelError as exc:
                self._fail(move, exc.message)
            move = moves.read_move(self.store.db, move.id)
            if (move.state, move.tries, move.note) == before or self.clock.now() >= give_up:
                break  # waiting for something: the next run goes on
        return move

    def _requested(self, move: MoveRow) -> None:
        """Cancel the old instance's start, unless it got its GPU meanwhile."""
        state = self.instance.state(fresh=True)
        if state.status == "running":
            self._fail(move, "the instance started on its own machine meanwhile")
            return
        self._remember_first()
        if state.intended_status == "running":
            self._client().stop_instance(move.old_id)  # a queued start would bill twice later
            self.audit.record("move_old_stopped", "system", instance_id=move.old_id)
        self._update(move, "searching", old_machine=self._machine_of_current())

    def _searching(self, move: MoveRow) -> None:
        """Find the offers to try, best first (or the one the admin chose)."""
        offers = self.offers(fresh=True)
        if move.chosen_offer is not None:
            offers = [o for o in offers if o.id == move.chosen_offer]
            if not offers:
                self._fail(move, f"offer {move.chosen_offer} is no longer among the offers")
                return
        if not offers:
            recipe = self.recipes.get()
            self._fail(
                move,
                f"no equivalent offer ({recipe.num_gpus}x {recipe.gpu_name}, at most "
                f"${recipe.max_dph:g}/h, reliability {recipe.min_reliability:g} or more)",
            )
            return
        self._update(move, "creating", candidates=[o.__dict__ for o in offers])

    def _creating(self, move: MoveRow) -> None:
        """Create the recipe on the next offer; on no_such_ask, the next one next time."""
        if move.creating_offer is not None:
            found = self._created_by(move)  # a create whose answer was lost: did it happen?
            if found is not None:
                self._created(move, found, move.creating_offer)
                return
        if not move.candidates or move.tries >= MAX_CREATE_TRIES:
            self._fail(move, f"no offer could be rented ({move.tries} tried)")
            return
        offer = Offer(**move.candidates[0])
        rest = move.candidates[1:]
        recipe = self.recipes.get()
        self._update(move, "creating", creating_offer=offer.id, tries=move.tries + 1)
        try:
            request = recipe.create_request(_label(move), self._agent_env())
            created = self._client().create_instance(offer.id, request)
        except VastError as exc:
            if exc.kind is VastErrorKind.OFFER_GONE or exc.kind not in TRANSIENT:
                self.audit.record(
                    "move_offer_failed",
                    "system",
                    offer_id=offer.id,
                    machine_id=offer.machine_id,
                    error=exc.message,
                )
                self._update(move, "creating", candidates=rest, creating_offer=None)
                return
            raise  # unknown outcome: the next step looks for it by its label
        self._created(move, created.instance_id, offer.id)

    def _created(self, move: MoveRow, new_id: int, offer_id: int) -> None:
        offer = next((Offer(**o) for o in move.candidates if o["id"] == offer_id), None)
        now = self.clock.now()
        moves.save_instance(
            self.store.db,
            KnownInstance(
                new_id, "created", "booting", now, now, offer.machine_id if offer else None,
                offer.dph_total if offer else None, _label(move), move.id, None,
            ),
        )  # fmt: skip
        self.audit.record(
            "move_created",
            "system",
            instance_id=new_id,
            offer_id=offer_id,
            machine_id=offer.machine_id if offer else None,
            dph_total=offer.dph_total if offer else None,
        )
        self._update(
            move,
            "booting",
            step_since=now,
            creating_offer=None,
            new_id=new_id,
            new_machine=offer.machine_id if offer else None,
            new_dph=offer.dph_total if offer else None,
        )

    def _booting(self, move: MoveRow) -> None:
        """Follow the new instance to running, then to healthy, for up to RUN_S in this run;
        keep the old one stopped."""
        give_up = self.clock.now() + RUN_S
        while True:
            old, payload = self._both(move)
            if payload is None:
                self._fail(move, f"vast.ai no longer knows the new instance {move.new_id}")
                return
            self._book_new(move, payload)
            self._keep_old_stopped(move, old)
            if self.clock.now() - move.step_since > self.config.wait_timeout_s:
                waited = self.config.wait_timeout_s
                self._fail(move, f"the new instance was not healthy within {waited:g} s")
                return
            running = payload.get("actual_status") == "running"
            if self._healthy_within(payload, BOOT_POLL_S if running else 0.0):
                break
            if self.clock.now() >= give_up:
                return  # the next run goes on
            if not running:
                self.clock.sleep(BOOT_POLL_S)
        if self.recipes.get().copy_paths:
            self._update(move, "copying", step_since=self.clock.now(), note=None)
            return
        self._switch(move)

    def _copying(self, move: MoveRow) -> None:
        """Copy the recipe's paths from the stopped old disk; switch once the copy is done."""
        recipe = self.recipes.get()
        now = self.clock.now()
        if move.note is None:
            try:
                for path in recipe.copy_paths:
                    self._client().copy_direct(move.old_id, move.new_id, path, path)
            except VastError as exc:
                if exc.kind in TRANSIENT:
                    raise
                if not move.go_on_without_copy:
                    self._fail(
                        move, f"the copy of {', '.join(recipe.copy_paths)} failed: {exc.message}"
                    )
                    return
                self.audit.record(
                    "move_copy_failed", "system", instance_id=move.new_id, error=exc.message
                )
                self._switch(move, note=f"copy failed, went on: {exc.message}")
                return
            self._update(move, "copying", note="copy started")
            return
        _, payload = self._both(move)
        self._book_new(move, payload)
        status_msg = str((payload or {}).get("status_msg") or "")
        copying = "copy" in status_msg.lower()
        if copying and move.note == "copy started":
            self._update(move, "copying", note="copy under way")
            return
        waited = now - move.step_since
        if copying or (move.note == "copy started" and waited < COPY_SEEN_WITHIN_S):
            if waited > self.config.wait_timeout_s:
                self._fail(move, "the copy did not end in time")
            return
        self.audit.record(
            "move_copied", "system", instance_id=move.new_id, paths=",".join(recipe.copy_paths)
        )
        self._switch(move, note=f"copied {', '.join(recipe.copy_paths)}")

    def _switch(self, move: MoveRow, note: str | None = None) -> None:
        """Stop the old instance again if vast.ai was slow to, then switch to the new one."""
        old, _ = self._both(move)
        stopped_again = self._keep_old_stopped(move, old)
        now = self.clock.now()
        session = sessions.current_session(self.store.db)
        healthy = session.id if session is not None and session.instance_id == move.new_id else None
        self.instance.switch_to(move.new_id, now, healthy)
        self._set_instance(move.new_id, "current")
        old_state = "kept"
        if self.config.move_old == "destroy":
            try:
                self._client().destroy_instance(move.old_id)
                old_state = "destroyed"
            except VastError as exc:
                log.warning("move %d: the old instance stays: %s", move.id, exc.message)
        self._set_instance(move.old_id, old_state)
        # The old one keeps its own line in the ledger: storage as vast.ai prices it stopped,
        # nothing once destroyed.
        if old_state == "destroyed":
            self.costs.book(None, now, instance_id=move.old_id)
            self.audit.record("instance_destroyed", "system", instance_id=move.old_id)
        elif old is None:
            self.costs.book(None, now, instance_id=move.old_id)  # vast.ai no longer knows it
        elif stopped_again:
            self.costs.book_stopped(move.old_id, now)
        else:
            self.costs.book(old, now, instance_id=move.old_id)
        self.audit.record(
            "move_completed",
            move.actor,
            old_instance_id=move.old_id,
            new_instance_id=move.new_id,
            old_machine_id=move.old_machine,
            new_machine_id=move.new_machine,
            dph_total=move.new_dph,
            minutes=(now - move.requested_at) / 60,
            old_instance=old_state,
        )
        self._update(move, "done", finished_at=now, note=note)

    def _fail(self, move: MoveRow, reason: str) -> MoveRow | None:
        """End the move: a new instance is stopped (and kept, listed: never destroyed here)."""
        if move.new_id is not None:
            try:
                self._client().stop_instance(move.new_id)
            except VastError as exc:
                log.warning(
                    "move %d: the new instance could not be stopped: %s", move.id, exc.message
                )
            self._set_instance(move.new_id, "stopped", note=f"move {move.id} failed")
            self.costs.book_stopped(move.new_id, self.clock.now())
        self.audit.record(
            "move_failed",
            move.actor,
            instance_id=move.old_id,
            new_instance_id=move.new_id,
            error=reason,
        )
        self._update(move, "failed", finished_at=self.clock.now(), error=reason)
        return moves.read_move(self.store.db, move.id)

    # --- helpers ------------------------------------------------------------------------------

    def _client(self) -> VastClient:
        self.instance.require_configured()
        assert self.client is not None
        return self.client

    def _update(self, move: MoveRow, state: str, **changes: Any) -> None:
        if state != move.state and "step_since" not in changes:
            changes["step_since"] = self.clock.now()
        moves.update_move(self.store.db, move.id, state, **changes)

    def _machine_of_current(self) -> int | None:
        cached = self.instance.cached()
        machine = (cached.payload or {}).get("machine_id") if cached else None
        return int(machine) if _number(machine) else None

    def _created_by(self, move: MoveRow) -> int | None:
        """Find the instance a create of this move made, by its label, or None."""
        label = _label(move)
        for found in self._client().list_instances():
            if found.get("label") == label and _number(found.get("id")):
                return int(found["id"])
        return None

    def _healthy_within(self, payload: dict[str, Any], seconds: float) -> bool:
        """Tell whether the new instance runs and its health URL answers 200, probing it every
        HEALTH_POLL_S for up to `seconds`."""
        running = payload.get("actual_status") == "running"
        base = (
            endpoint_base_url(payload, self.config.health_port, self.instance.reach)
            if running
            else None
        )
        if base is None:
            return False
        until = self.clock.now() + seconds
        while not self.instance_http.healthy(base + self.config.health_path):
            if self.clock.now() >= until:
                return False
            self.clock.sleep(HEALTH_POLL_S)
        return True

    def _book_new(self, move: MoveRow, payload: dict[str, Any] | None) -> None:
        """Book the new instance's GPU time from its first second: its own session."""
        if payload is None:
            return
        db = self.store.db
        now = self.clock.now()
        self.costs.book(payload, now, instance_id=move.new_id)  # its own line in the ledger
        if payload.get("actual_status") in GPU_BILLED:
            sessions.open_session(
                db, now, _float(payload.get("dph_total")), "move", now, instance_id=move.new_id
            )
        elif payload.get("actual_status") == "stopped":
            sessions.close_session(db, now, "observed", instance_id=move.new_id)

    def _agent_env(self) -> dict[str, str]:
        """The dead-man switch follows the move: the new instance's agent gets the same secret
        (deploy/instance/vastpanel_agent.py reads VAST_AGENT_SECRET from its environment)."""
        secret = self.config.agent_secret
        return {"VAST_AGENT_SECRET": secret} if secret else {}

    def _both(self, move: MoveRow) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """Return vast.ai's answers about the old and the new instance (None: gone), read in
        one call of the account's list: the single-instance endpoint's 2 s between calls is
        the current instance's reads'."""
        found = {i.get("id"): i for i in self._client().list_instances()}
        return found.get(move.old_id), found.get(move.new_id)

    def _keep_old_stopped(self, move: MoveRow, old: dict[str, Any] | None) -> bool:
        """Stop the old instance again if it came up after all (vast.ai slow to take the stop);
        tell whether it was."""
        if old is None:
            return False
        if old.get("intended_status") == "running" or old.get("actual_status") in GPU_BILLED:
            self._client().stop_instance(move.old_id)
            self.audit.record("move_old_stopped", "system", instance_id=move.old_id, again=True)
            return True
        return False

    def _remember_first(self) -> None:
        """Make sure the first instance is listed among those the panel knows."""
        first = self.config.vast_instance_id
        if first is None or moves.read_instance(self.store.db, first) is not None:
            return
        now = self.clock.now()
        moves.save_instance(
            self.store.db,
            KnownInstance(first, "first", "current", now, now, self._machine_of_current(), None, None, None, None),
        )  # fmt: skip

    def _set_instance(self, instance_id: int, state: str, note: str | None = None) -> None:
        known = moves.read_instance(self.store.db, instance_id)
        if known is None:
            return
        moves.save_instance(
            self.store.db,
            replace(known, state=state, updated_at=self.clock.now(), note=note or known.note),
        )

    def _destroyed(self, known: KnownInstance, actor: str) -> KnownInstance:
        self.costs.book(None, self.clock.now(), instance_id=known.id)  # nothing billed from now
        self._set_instance(known.id, "destroyed")
        self.audit.record("instance_destroyed", actor, instance_id=known.id)
        return moves.read_instance(self.store.db, known.id)


def _label(move: MoveRow) -> str:
    """The label a move's create gives the new instance, to find it again after a crash."""
    return f"{LABEL_PREFIX}{move.id}"


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value


def _float(value: Any) -> float | None:
    return float(value) if _number(value) else None
