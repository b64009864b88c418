"""Scrape a server's Prometheus `/metrics` during a run, on the client's clock.

- `parse_exposition(text)`: Prometheus text -> `Exposition` (one value per series name, summed over
  label sets; `_perc`/`_percent`/`_ratio` gauges are averaged instead), parsed by prometheus-client's
  text parser. Gauges and counters are kept, histograms and summaries as their `_sum` and `_count`
  counters; `_created` stamps and `python_gc_*`/`python_info` are left out. Since label sets are
  summed, they, the buckets and the HELP lines are cut before the parser sees the text (a third of
  vLLM's lines remain, each short: the parse costs about half as much). Text that is not
  Prometheus exposition, or holds no sample, raises `MalformedExposition`.
- `metrics_url(base_url, option)`: the option `server_metrics` (a URL, `off`, or unset: `base_url`'s
  root + `/metrics`); `check_metrics_url` fetches it once before the run: an explicit URL that does
  not answer Prometheus text is `BadInput`, a default one that does not is off, with a note.
- `MetricsScraper`: a background task on the client's asyncio loop scrapes every `interval_s` on
  the client's clock (`time.perf_counter`), stamping each scrape at the midpoint of its request and
  response; a scrape that fails (no answer, an HTTP error, malformed text) is kept as a failure
  (the timeline's gap there) and never stops the run. `scrape_once` is the same fetch, awaited.

Left out: what the series mean (results/server_series.py) and building windows (runners/client_timeline.py).
"""
from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlparse

from pie_core.errors import BadInput

AVERAGED_SUFFIXES = ("_perc", "_percent", "_ratio")
_LEFT_OUT_PREFIXES = ("python_gc_", "python_info")
PROBE_TIMEOUT_S = 5.0


class MalformedExposition(ValueError):
    """The text is not Prometheus exposition (or holds no sample)."""


@dataclass(frozen=True)
class Exposition:
    values: dict[str, float]  # series name -> value (summed over label sets; see the module docstring)
    counters: frozenset[str]  # the names that are counters (their `_total`, or a histogram's `_sum`/`_count`)


@dataclass(frozen=True)
class Scrape:
    at: float  # client clock (perf_counter): midpoint of request and response
    exposition: Exposition | None  # None: the scrape failed
    error: str | None = None


def _unlabelled(text: str) -> str:
    """The text without HELP lines, label sets, `_bucket` and `_created` samples (what the parse would drop or sum
    anyway), so the parser reads about a third of vLLM's lines, each short."""
    kept = []
    for line in text.splitlines():
        if line.startswith("#"):
            if line.startswith("# TYPE"):
                kept.append(line)
            continue
        brace = line.find("{")
        if brace >= 0:
            close = line.rfind("}")
            if close < brace:
                raise MalformedExposition(f"not Prometheus text (an unclosed label set: {line[:60]!r})")
            name, rest = line[:brace], line[close + 1:]
        else:
            name, _, rest = line.partition(" ")
            rest = " " + rest
        if not name.endswith(("_bucket", "_created")):
            kept.append(name + rest)
    return "\n".join(kept)


def parse_exposition(text: str) -> Exposition:
    from prometheus_client.parser import text_string_to_metric_families

    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    counters: set[str] = set()
    try:
        for family in text_string_to_metric_families(_unlabelled(text)):
            if family.name.startswith(_LEFT_OUT_PREFIXES) or family.type in ("info", "stateset"):
                continue
            for sample in family.samples:
                name = sample.name
                if name.endswith(("_created", "_bucket", "_gcount", "_gsum")) or (
                        family.type == "summary" and name == family.name):  # quantiles do not add up
                    continue
                value = float(sample.value)
                sums[name] = sums.get(name, 0.0) + value
                counts[name] = counts.get(name, 0) + 1
                if (family.type in ("counter", "histogram", "summary") and name != family.name) or (
                        family.type == "untyped" and name.endswith("_total")):
                    counters.add(name)  # a counter's `_total`, a histogram's `_sum` and `_count`
    except (ValueError, IndexError, KeyError, TypeError) as err:
        raise MalformedExposition(f"not Prometheus text ({type(err).__name__}: {str(err)[:80] or 'unparsable line'})") from None
    if not sums:
        raise MalformedExposition("no metric sample in the text")
    values = {name: total / counts[name] if name.endswith(AVERAGED_SUFFIXES) and name not in counters else total
              for name, total in sums.items()}
    return Exposition(values, frozenset(counters))


def metrics_url(base_url: str, option: str | None) -> tuple[str | None, bool]:
    """(the URL to scrape or None when off, whether the user named it)."""
    if option is not None and option.strip().lower() in ("off", "none", "false", "no"):
        return None, True
    if option:
        parsed = urlparse(option)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise BadInput(f"openai server_metrics {option!r} is not an http(s) URL",
                           "give the metrics address, e.g. server_metrics=http://127.0.0.1:8000/metrics, or server_metrics=off")
        return option, True
    root = base_url.rstrip("/")
    root = root[: -len("/v1")] if root.endswith("/v1") else root
    return root + "/metrics", False


def fetch_text(url: str, headers: dict[str, str], timeout_s: float = PROBE_TIMEOUT_S) -> str:
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return response.read().decode("utf-8", errors="replace")


def check_metrics_url(url: str, explicit: bool, headers: dict[str, str]) -> tuple[Exposition | None, str | None]:
    """Fetch `url` once: (its exposition, None), or (None, a note saying why scraping is off).

    An explicit URL that does not answer Prometheus text is `BadInput` (before the run)."""
    try:
        exposition = parse_exposition(fetch_text(url, headers))
        return exposition, None
    except urllib.error.HTTPError as err:
        why = f"HTTP {err.code}"
    except (urllib.error.URLError, OSError) as err:
        why = f"no answer: {getattr(err, 'reason', err)}"
    except MalformedExposition as err:
        why = str(err)
    if explicit:
        raise BadInput(f"server_metrics {url} does not answer Prometheus text ({why})",
                       "give the server's /metrics URL, or -O server_metrics=off")
    return None, f"server metrics off: {url} did not answer Prometheus text ({why}); -O server_metrics=URL names another"


@dataclass
class MetricsScraper:
    """Scrape `url` every `interval_s` from `start` (client clock) until `stop()`; see the module docstring."""

    url: str
    interval_s: float
    headers: dict[str, str] = field(default_factory=dict)
    clock: Callable[[], float] = time.perf_counter
    scrapes: list[Scrape] = field(default_factory=list)
    _stopping: asyncio.Event | None = None
    _task: asyncio.Task | None = None
    _session: object | None = None

    async def scrape_once(self) -> Scrape:
        import aiohttp

        if self._session is None:  # its own connection: scrapes never queue behind the streams
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1),
                                                  timeout=aiohttp.ClientTimeout(total=max(1.0, 2 * self.interval_s)))
        sent = self.clock()
        try:
            async with self._session.get(self.url, headers=self.headers) as response:
                text = await response.text(errors="replace")
                status = response.status
            at = (sent + self.clock()) / 2
            if status != 200:
                return Scrape(at, None, f"HTTP {status}")
            return Scrape(at, parse_exposition(text))
        except MalformedExposition as err:
            return Scrape((sent + self.clock()) / 2, None, str(err))
        except (asyncio.TimeoutError, aiohttp.ClientError, OSError) as err:
            return Scrape((sent + self.clock()) / 2, None, f"{type(err).__name__}: {err}".rstrip(": "))

    def start(self, start: float) -> None:
        """Begin ticking on the running loop: scrapes due at start + k * interval_s, k = 1, 2, ..."""
        self._stopping = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._tick(start))

    async def _tick(self, start: float) -> None:
        assert self._stopping is not None
        tick = 1
        while not self._stopping.is_set():
            due = start + tick * self.interval_s
            try:
                await asyncio.wait_for(self._stopping.wait(), timeout=max(0.0, due - self.clock()))
                return
            except asyncio.TimeoutError:
                pass
            self.scrapes.append(await self.scrape_once())
            tick = max(tick + 1, int((self.clock() - start) / self.interval_s) + 1)  # a slow scrape skips ticks

    async def stop(self) -> None:
        if self._stopping is not None and self._task is not None:
            self._stopping.set()
            await self._task

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
