"""What the `openai` runner watches beside its requests: the server's `/metrics` and the client's
token times, turned into the run's timeline, the server's totals and the token cross-check.

`ServerWatch.prepare(settings)` picks the metrics URL (runners/server_metrics.py) and checks it once,
before any request: an explicit URL that does not answer Prometheus text is `BadInput`; the
default one that does not turns scraping off with a note. Each run takes a `fresh()` copy and calls, on its client
loop, `begin()` (a baseline scrape, then the background scraper; returns the run's start on the
client clock), `note_tokens` from each streamed chunk, and after the last request `finish()`: the
scraper stops, one last scrape is taken (repeated for up to `SETTLE_S` while the server's
generation counter still trails the client's count: a server may count a step's tokens just after
it streamed them), and `result(samples)` builds the windows (runners/client_timeline.py) and the
telemetry: `server_metrics` (URL, kind, scrape counts, first error, counter names, the cross-check)
and `server.`-prefixed totals for `pie compare`; `warnings` lists what the CLI should say.

Left out: sending requests (runners/openai_runner.py).
"""
from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from results.record import RequestSample
from results.server_series import comparable_totals, describe_mismatch, find_series, server_kind, token_check
from runners.client_timeline import client_windows, grid_boundaries, server_totals
from runners.server_metrics import MetricsScraper, Scrape, check_metrics_url, metrics_url

SETTLE_S = 2.0
SETTLE_STEP_S = 0.1


@dataclass
class ServerWatch:
    interval_s: float
    url: str | None = None
    kind: str | None = None
    note: str | None = None  # why scraping is off, when it is off by default
    scraper: MetricsScraper | None = None
    baseline: Scrape | None = None
    final: Scrape | None = None
    start: float = 0.0
    end: float = 0.0
    token_times: list[float] = field(default_factory=list)
    first_token_at: dict[str, float] = field(default_factory=dict)

    @classmethod
    def prepare(cls, settings: Any) -> "ServerWatch":
        url, explicit = metrics_url(settings.base_url, settings.server_metrics)
        watch = cls(settings.scrape_interval_s)
        if url is None:
            return watch
        exposition, watch.note = check_metrics_url(url, explicit, settings.headers())
        if exposition is not None:
            watch.url, watch.kind = url, server_kind(exposition.values)
            watch.scraper = MetricsScraper(url, settings.scrape_interval_s, settings.headers())
        return watch

    def fresh(self) -> "ServerWatch":
        """The checked URL with nothing watched yet: one per run of a prepared run."""
        scraper = None if self.scraper is None else MetricsScraper(self.scraper.url, self.interval_s, self.scraper.headers)
        return ServerWatch(self.interval_s, self.url, self.kind, self.note, scraper)

    def config(self) -> dict[str, Any]:
        return {"server_metrics": self.url or "off", "server_kind": self.kind,
                **({"server_metrics_note": self.note} if self.note else {})}

    def note_tokens(self, request_id: str, times: Sequence[float]) -> None:
        """Called on the client loop for each chunk's new token times."""
        if times:
            self.first_token_at.setdefault(request_id, times[0])
            self.token_times.extend(times)

    async def begin(self, clock: Any) -> float:
        if self.scraper is not None:
            self.baseline = await self.scraper.scrape_once()
        self.start = clock()
        if self.scraper is not None:
            self.scraper.start(self.start)
        return self.start

    async def finish(self, clock: Any, client_output_tokens: int) -> None:
        self.end = clock()
        if self.scraper is None:
            return
        await self.scraper.stop()
        final = await self.scraper.scrape_once()
        deadline = clock() + SETTLE_S
        while self._trails(final, client_output_tokens) and clock() < deadline:
            await asyncio.sleep(SETTLE_STEP_S)
            final = await self.scraper.scrape_once()
        self.final = final
        await self.scraper.close()

    async def abandon(self) -> None:
        """The run stopped early: stop scraping and close the scraper's connection."""
        if self.scraper is not None:
            await self.scraper.stop()
            await self.scraper.close()

    def _trails(self, final: Scrape, client_output_tokens: int) -> bool:
        if final.exposition is None or self.baseline is None or self.baseline.exposition is None:
            return final.exposition is None
        name = find_series(final.exposition.counters, "generation_tokens")
        if name is None or name not in self.baseline.exposition.values:
            return False
        return final.exposition.values[name] - self.baseline.exposition.values[name] < client_output_tokens

    def result(self, samples: Sequence[RequestSample]) -> tuple[tuple[dict[str, Any], ...], dict[str, Any]]:
        """(the timeline, the telemetry to add) once the run is over."""
        times = sorted(self.token_times)
        firsts = [(self.first_token_at[s.request_id], s.ttft_s) for s in samples
                  if s.success and s.ttft_s is not None and s.request_id in self.first_token_at]
        if self.scraper is None:
            end = max([self.end] + times[-1:]) if times else self.end
            boundaries = grid_boundaries(self.start, max(end, self.start + 1e-6), self.interval_s)
            timeline = client_windows(self.start, boundaries, times, firsts)
            return tuple(timeline), ({"server_metrics": {"url": None, "note": self.note}} if self.note else {})
        scrapes = list(self.scraper.scrapes) + ([self.final] if self.final is not None else [])
        timeline = client_windows(self.start, scrapes, times, firsts, self.baseline)
        failed = [s for s in [self.baseline, *scrapes] if s is not None and s.exposition is None]
        totals = server_totals(self.baseline, scrapes)
        ok = [s for s in samples if s.success]
        check = None
        warnings = []
        if totals is not None and self.final is not None and self.final.exposition is not None:
            check = token_check(totals, sum(s.prompt_len for s in ok), sum(s.output_len for s in ok))
            if check is not None and check["mismatch"]:
                warnings.append(describe_mismatch(check))
        elif totals is not None:
            warnings.append("server metrics: the scrape after the run failed, so the token cross-check was skipped")
        if failed:
            first = failed[0]
            warnings.append(f"server metrics: {len(failed)} of {len(scrapes) + 1} scrapes of {self.url} failed "
                            f"(first at {first.at - self.start:.1f} s: {first.error}); the server series have gaps there")
        names = self.final.exposition.values if self.final is not None and self.final.exposition is not None else {}
        telemetry: dict[str, Any] = {"server_metrics": {
            "url": self.url, "kind": server_kind(names) if names else self.kind, "interval_s": self.interval_s,
            "num_scrapes": len(scrapes) + 1, "num_failed_scrapes": len(failed),
            "first_error": failed[0].error if failed else None,
            "counters": sorted(self.final.exposition.counters) if names else None,
            "token_check": check, "totals": totals}}
        telemetry.update(comparable_totals(totals or {}))
        if warnings:
            telemetry["warnings"] = warnings
        return tuple(timeline), telemetry
