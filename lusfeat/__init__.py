"""lusfeat: lung-ultrasound severity scoring from cached frozen ImageNet CNN features.

Pipeline, one module per arrow:
manifest -> frames -> backbones (+ augment) -> store (HDF5) -> head -> metrics -> report.
"""

from lusfeat.errors import LusfeatError

__version__ = "0.1.0"
__all__ = ["LusfeatError", "__version__"]
