"""Neurons from token counts (their price: :func:`tollway.core.money.price_micros`).

Neurons are kept in milli-neurons (integers) so small requests are not
rounded up to whole neurons; money is rounded up once, to the micro-USD.
"""

from __future__ import annotations

from tollway.inference.config import ModelConfig


def milli_neurons(model: ModelConfig, input_tokens: int, output_tokens: int = 0) -> int:
    per_m = input_tokens * model.neurons_per_m_input + output_tokens * model.neurons_per_m_output
    return -(-per_m // 1_000)  # per million tokens → milli-neurons, rounded up


def neurons(mneurons: int) -> float:
    """For display only; money never passes through this."""
    return mneurons / 1000
