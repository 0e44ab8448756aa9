"""The charge path every face uses: reserve a maximum, run, post the actual, void the rest."""

from tollway.charge.hold import Charger, Hold, Payer, Receipt, Source

__all__ = ["Charger", "Hold", "Payer", "Receipt", "Source"]
