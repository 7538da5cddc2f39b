"""NAT lab: real kernel NAT topologies in Linux network namespaces.

Declarative spec (:mod:`.spec`, :mod:`.nat`, :mod:`.catalogue`) -> pure compiler
(:mod:`.topology`, :mod:`.nft`, :mod:`.compiler`) -> runner (:mod:`.runner`).
"""

from stunturn_diag.sansio.lab.catalogue import CATALOGUE
from stunturn_diag.sansio.lab.compiler import LabPlan, Step, compile_lab
from stunturn_diag.sansio.lab.nat import NatSpec
from .runner import Lab, check_prerequisites, down, down_all
from stunturn_diag.sansio.lab.spec import LabSpec, SiteSpec

__all__ = ["CATALOGUE", "Lab", "LabPlan", "LabSpec", "NatSpec", "SiteSpec", "Step",
           "check_prerequisites", "compile_lab", "down", "down_all"]
