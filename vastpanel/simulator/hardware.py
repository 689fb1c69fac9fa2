"""The static facts vast.ai reports about a rented machine and the instance on it."""

from __future__ import annotations

from dataclasses import dataclass

DAY_S = 86400.0


@dataclass
class Hardware:
    """The machine an instance runs on, its prices and its contract."""

    gpu_name: str = "RTX 3090"
    num_gpus: int = 1
    gpu_ram: int = 24576  # MB per GPU, as vast.ai counts it
    dph_base: float = 0.25  # GPU $/hour
    storage_cost: float = 0.15  # $/GB/month while running
    # vast.ai prices storage "typically higher for stopped instances" (vast-ai/docs
    # documentation/instances/pricing.mdx); 1.0 bills stopped storage at the running rate.
    stopped_storage_factor: float = 1.5
    disk_space: float = 48.0  # GB
    inet_up_cost: float = 0.01  # $/GB out of the instance
    inet_down_cost: float = 0.005  # $/GB into the instance
    machine_id: int = 13542
    host_id: int = 4242
    geolocation: str = "Warsaw, PL"
    reliability: float = 0.995
    verified: bool = True
    label: str | None = "vastpanel-sim"
    image: str = "vllm/vllm-openai:latest"
    age_seconds: float = 3 * DAY_S  # start_date is this long before the simulator started
    contract_days: float = 28.0  # end_date is this long after the simulator started

    def __post_init__(self):
        if self.stopped_storage_factor < 1.0:
            raise ValueError("stopped_storage_factor must be >= 1.0 (1.0: the running rate)")
        if self.age_seconds < 0 or self.contract_days <= 0:
            raise ValueError("age_seconds must be >= 0 and contract_days > 0")
