"""Every worker's /metrics as one host's: what `/metrics/host` serves under `--workers N`.

Each worker reports its Prometheus text to the supervisor every few seconds; a scrape of
`/metrics/host` reaches one worker (the kernel picks it), which asks the supervisor for the sum. Samples
with the same name and labels are added (counters, gauges, the process's CPU seconds and memory alike);
a start time is the earliest; `trio_sfu_worker` becomes the number of workers that reported.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

EARLIEST = ("process_start_time_seconds",)  # samples whose sum means nothing: the earliest is kept
WORKER_FAMILY = "trio_sfu_worker"


def sum_expositions(texts: Iterable[str]) -> str:
    """The sum of Prometheus text expositions (families in the order first seen)."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    workers = 0
    for text in texts:
        workers += 1
        for family in text_string_to_metric_families(text):
            if family.name == WORKER_FAMILY:
                continue
            if family.name not in families:
                families[family.name] = Metric(family.name, family.documentation, family.type)
                values[family.name] = {}
            summed = values[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if key not in summed:
                    summed[key] = sample.value
                elif sample.name in EARLIEST or sample.name.endswith("_created"):
                    summed[key] = min(summed[key], sample.value)
                else:
                    summed[key] += sample.value
    worker = Metric(WORKER_FAMILY, "Workers whose figures this sum holds", "gauge")
    worker.add_sample(WORKER_FAMILY, {}, float(workers))
    out = [worker]
    for name, family in families.items():
        for (sample_name, labels), value in values[name].items():
            family.add_sample(sample_name, dict(labels), value)
        out.append(family)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(out))
    return generate_latest(registry).decode()


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)
