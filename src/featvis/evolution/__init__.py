"""Feature evolution: the recorder (DGN-AM/PPGN from fixed starts on each snapshot of a network),
the callback that runs it while a LightningModule trains, and the report (strips, GIFs, index.html)."""

from featvis.evolution.callback import FeatureEvolution
from featvis.evolution.recorder import EvolutionRecorder

__all__ = ["EvolutionRecorder", "FeatureEvolution"]
