"""macaw-fast: fast, exact MACAW (offline meta-RL with advantage weighting) for PyTorch."""

__version__ = "0.1.0"

from .config import MacawConfig  # noqa: E402
from .data.batch import Batch  # noqa: E402
from .macaw import Adapted, MetaLearner  # noqa: E402

__all__ = ["Adapted", "Batch", "MacawConfig", "MetaLearner", "__version__"]
