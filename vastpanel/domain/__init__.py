"""The domain: power, sessions, activity, idle time, costs and caps for the one instance.

Each part is an object built with what it uses named in its constructor; `create_app` wires
them once and keeps them together in a `Panel`, which the web layer, the CLI and the watchdog
reach through `app.extensions["vastpanel"]`. Only these parts talk to vast.ai and the store.
"""

from __future__ import annotations

from dataclasses import dataclass

import requests

from ..clock import Clock
from ..config import Config
from ..instance_http import InstanceHttp
from ..storage.database import Store
from ..vast.client import VastClient
from .agent_link import AgentLink
from .audit import Audit
from .budget import Budget
from .caps import Caps
from .contract import Contract
from .costs import CostBook
from .idle import IdleRule
from .instance import InstanceReader
from .lease_holder import LeaseHolder
from .llm_load import LlmLoad
from .lockout import KeyGuard
from .move import Mover
from .notify import Notifier
from .power import Power
from .recipe import RecipeBook
from .schedule import ScheduleBook
from .schedule_start import ScheduledStart
from .signins import SignIns
from .status import StatusReader
from .wake import Wake

__all__ = [
    "AgentLink",
    "Audit",
    "Budget",
    "Caps",
    "Contract",
    "CostBook",
    "IdleRule",
    "InstanceReader",
    "KeyGuard",
    "LeaseHolder",
    "LlmLoad",
    "Mover",
    "Notifier",
    "Panel",
    "Power",
    "RecipeBook",
    "ScheduleBook",
    "ScheduledStart",
    "SignIns",
    "StatusReader",
    "Wake",
]


@dataclass(frozen=True, repr=False)
class Panel:
    """The parts of the domain for one app, as create_app wired them."""

    config: Config
    clock: Clock
    store: Store
    http: requests.Session  # to vast.ai and the webhooks
    instance_http: InstanceHttp  # to the instance: pinned, bounded
    client: VastClient | None
    leases: LeaseHolder
    audit: Audit
    costs: CostBook
    agent: AgentLink
    contract: Contract
    instance: InstanceReader
    budget: Budget
    recipes: RecipeBook
    mover: Mover
    power: Power
    caps: Caps
    llm: LlmLoad
    idle: IdleRule
    wake: Wake
    notifier: Notifier
    signins: SignIns
    keys: KeyGuard
    status: StatusReader
    schedule: ScheduleBook  # the schedule of warm hours in force
    scheduled_start: ScheduledStart  # the start before each window (the watchdog's leader)
