"""NAT lab: real kernel NAT topologies in Linux network namespaces.

Declarative spec (:mod:`.spec`, :mod:`.nat`, :mod:`.catalogue`) -> pure compiler
(:mod:`.topology`, :mod:`.nft`, :mod:`.compiler`) -> runner (:mod:`.runner`).
"""

from .catalogue import CATALOGUE
from .compiler import LabPlan, Step, compile_lab
from .nat import NatSpec
from .runner import Lab, check_prerequisites, down, down_all
from .spec import LabSpec, SiteSpec

__all__ = ["CATALOGUE", "Lab", "LabPlan", "LabSpec", "NatSpec", "SiteSpec", "Step",
           "check_prerequisites", "compile_lab", "down", "down_all"]
