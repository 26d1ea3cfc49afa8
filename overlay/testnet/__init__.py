"""Local testnets that show capability discovery and routing at work, break them on purpose,
measure and draw them (``overlay testnet``), and write node homes and a Docker Compose file for
running the same testnet beyond one machine (``overlay testnet init``).

The package sits between the CLI and the node: it runs :class:`~overlay.node.Node` objects in
this process (over ``overlay.testing``'s memory network, or loopback TCP through a relay that
can cut, delay and partition links) or ``overlay start`` processes. See
``docs/testnet-guide.md``.
"""

from overlay.testnet._homes import init_testnet, write_home
from overlay.testnet._manifest import (
    Criteria,
    Manifest,
    Mode,
    NodeSpec,
    Perturbation,
    PerturbationKind,
    Workload,
    load_manifest,
    manifest_from_flags,
    parse_manifest,
)
from overlay.testnet._plot import plot_run, plot_simulation
from overlay.testnet._relay import node_host
from overlay.testnet._report import RunResult, build_report, dumps, render_summary
from overlay.testnet._runner import run_manifest
from overlay.testnet._view import view_for

__all__ = [
    "Criteria",
    "Manifest",
    "Mode",
    "NodeSpec",
    "Perturbation",
    "PerturbationKind",
    "RunResult",
    "Workload",
    "build_report",
    "dumps",
    "init_testnet",
    "load_manifest",
    "manifest_from_flags",
    "node_host",
    "parse_manifest",
    "plot_run",
    "plot_simulation",
    "render_summary",
    "run_manifest",
    "view_for",
    "write_home",
]
