"""DVC stage `report`: regenerate reports/report.md, its PNG plots and the DVC plot data from the metrics.

The changes listed are against the metrics committed at git HEAD (the previous commit, while the new results are not
yet committed), read as the regression gate reads them; latency changes within the timing noise, by the gate's rule
and `gate` params, are counted instead of listed. See lprnet/pipeline/report.py.
"""

from __future__ import annotations

from lprnet.pipeline.gate import GateParams
from lprnet.pipeline.report import write_report
from lprnet.pipeline.stage import parse_args, read_section, run


def main() -> None:
    args = parse_args(__doc__, reads=["metrics"], writes=["pareto_csv", "sizes_csv"], into=["out"])
    noise = read_section(args.params, "gate", GateParams)
    write_report(args.metrics, args.out, args.pareto_csv, args.sizes_csv, noise, against="HEAD")


if __name__ == "__main__":
    run(main)
