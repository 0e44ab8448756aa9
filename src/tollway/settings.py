"""The whole ``tollway.toml``: core's sections and each face's own, assembled.

Each face defines its section in its ``config`` module (``tollway.billing.config``,
``tollway.x402.config``, ...) and reads the configuration through a small
Protocol there naming the sections it needs, so no face imports this module;
only the top (``runtime``, ``api``, ``cli``) does. The checks that span
faces (a downgrade or an agent naming a registry model) live here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from pydantic import Field, field_validator, model_validator

from tollway.agents.config import AgentsConfig
from tollway.billing.config import BillingConfig
from tollway.console.config import ConsoleConfig
from tollway.core.config import CoreSettings, load_config
from tollway.evals.config import EvalsConfig
from tollway.gateway.config import GatewayConfig
from tollway.inference.config import InferenceConfig, ModelConfig, check_registry, default_models
from tollway.observe.alerts import AlertsConfig
from tollway.observe.config import TelemetryConfig
from tollway.provision.config import ProvisionConfig
from tollway.schedules.config import SchedulesConfig
from tollway.vectors.config import VectorsConfig
from tollway.wallets.config import WalletsConfig
from tollway.x402.config import X402Config


class Settings(CoreSettings):
    inference: InferenceConfig = InferenceConfig()
    gateway: GatewayConfig = GatewayConfig()
    x402: X402Config = X402Config()
    billing: BillingConfig = BillingConfig()
    wallets: WalletsConfig = WalletsConfig()
    vectors: VectorsConfig = VectorsConfig()
    provision: ProvisionConfig = ProvisionConfig()
    schedules: SchedulesConfig = SchedulesConfig()
    agents: AgentsConfig = AgentsConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    console: ConsoleConfig = ConsoleConfig()
    alerts: AlertsConfig = AlertsConfig()
    evals: EvalsConfig = EvalsConfig()
    models: list[ModelConfig] = Field(default_factory=default_models)

    @field_validator("models")
    @classmethod
    def _unique_names(cls, v: list[ModelConfig]) -> list[ModelConfig]:
        return check_registry(v)

    @model_validator(mode="after")
    def _downgrades(self) -> Settings:
        names = {m.name for m in self.models}
        for lim in (self.gateway.key_limits, self.gateway.customer_limits):
            if lim.on_budget == "downgrade" and lim.downgrade_model not in names:
                raise ValueError(f"downgrade_model {lim.downgrade_model!r} is not in the model registry")
        for a in self.agents.definitions:
            if a.model not in names:
                raise ValueError(f"agent {a.name!r}: model {a.model!r} is not in the model registry")
        return self


def load_settings(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """``tollway.toml`` and the ``TOLLWAY_*`` overrides (see :func:`tollway.core.config.load_config`)."""
    return load_config(Settings, path, env)
