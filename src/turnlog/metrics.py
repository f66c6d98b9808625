"""Prometheus metrics, one registry per server runtime (``prometheus_client``).

A registry per :class:`Metrics` rather than the library's global one: two apps in one
process (tests, or a host embedding turnlog) never collide or share counts.

Everything an operator asked for, by name (``_total``/``_seconds`` suffixes as Prometheus
writes them):

    turnlog_generations_started_total{provider,model}
    turnlog_generations_ended_total{provider,model,status}
    turnlog_tokens_total{provider,model,direction="in"|"out"}
    turnlog_time_to_first_token_seconds{provider,model}          histogram
    turnlog_generation_duration_seconds{provider,model,status}   histogram
    turnlog_checkpoint_write_seconds                             histogram
    turnlog_oldest_unstored_delta_seconds                        gauge
    turnlog_provider_errors_total{provider,kind="retryable"|"fatal"}
    turnlog_provider_retries_total{provider}
    turnlog_generations_running, turnlog_streams_open, turnlog_stream_subscribers,
    turnlog_feeds_open                                           gauges
    turnlog_db_pool_connections_in_use, turnlog_db_pool_requests_waiting   gauges
    turnlog_http_requests_total{method,route,status}             route = path template
    turnlog_http_request_duration_seconds{method,route}          histogram
    turnlog_feedback_total{provider,model,rating="up"|"down"|"cleared"}
    turnlog_titles_total{outcome="written"|"failed"|"skipped"}
    turnlog_cache_hits_total{provider,model}, turnlog_cache_misses_total{provider,model}
    turnlog_cache_tokens_saved_total{provider,model}             output tokens not generated
    turnlog_tool_calls_total{tool}, turnlog_tool_errors_total{tool}
    turnlog_tool_duration_seconds{tool}                          histogram

A generation here is one assistant row (one step of a turn).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Prometheus' text format; litestar appends "; charset=utf-8" to every text/ media type.
MEDIA_TYPE = "text/plain; version=0.0.4"

F = TypeVar("F", Counter, Gauge, Histogram)

# Latency buckets (seconds) for model answers: first tokens come in tens of milliseconds to
# seconds, whole answers in seconds to minutes.
_ANSWER_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_FAST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


def provider_and_model(model: str) -> tuple[str, str]:
    """``provider:name`` split for labels (a bare name is the demo provider's)."""
    provider, sep, name = model.partition(":")
    return (provider, name) if sep else ("demo", model)


class Metrics:
    """The metric families of one runtime, registered in its own registry."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        pm = ["provider", "model"]
        self.generations_started = Counter(
            "turnlog_generations_started", "Generations (assistant rows) started.", pm, registry=r
        )
        self.generations_ended = Counter(
            "turnlog_generations_ended",
            "Generations ended, by final status.",
            [*pm, "status"],
            registry=r,
        )
        self.tokens = Counter(
            "turnlog_tokens",
            "Tokens the providers reported, in (prompt) and out (answer).",
            [*pm, "direction"],
            registry=r,
        )
        self.time_to_first_token = Histogram(
            "turnlog_time_to_first_token_seconds",
            "From a generation's start to its first stream event.",
            pm,
            buckets=_ANSWER_BUCKETS,
            registry=r,
        )
        self.generation_duration = Histogram(
            "turnlog_generation_duration_seconds",
            "From a generation's start to its end.",
            [*pm, "status"],
            buckets=_ANSWER_BUCKETS,
            registry=r,
        )
        self.checkpoint_write = Histogram(
            "turnlog_checkpoint_write_seconds",
            "Latency of one checkpoint write to the store.",
            buckets=_FAST_BUCKETS,
            registry=r,
        )
        self.checkpoint_misses = Counter(
            "turnlog_checkpoint_deadline_misses",
            "Checkpoints and step ends stored later than TURNLOG_CHECKPOINT_S + 0.25 s after "
            "their oldest event was published (a crash then would have lost more than "
            "promised).",
            registry=r,
        )
        self.provider_errors = Counter(
            "turnlog_provider_errors",
            "Provider errors, by kind (retryable before output, or fatal).",
            ["provider", "kind"],
            registry=r,
        )
        self.provider_retries = Counter(
            "turnlog_provider_retries", "Provider calls retried.", ["provider"], registry=r
        )
        self.http_requests = Counter(
            "turnlog_http_requests",
            "HTTP requests, by route template and status.",
            ["method", "route", "status"],
            registry=r,
        )
        self.http_duration = Histogram(
            "turnlog_http_request_duration_seconds",
            "HTTP request latency (a stream's until it ends).",
            ["method", "route"],
            buckets=_FAST_BUCKETS,
            registry=r,
        )
        # What a chat product keeps around the answers (turnlog.product).
        self.feedback = Counter(
            "turnlog_feedback",
            "Feedback given on answers, by the answer's model and the rating.",
            [*pm, "rating"],
            registry=r,
        )
        self.titles = Counter(
            "turnlog_titles",
            "Automatic titles: written, failed (logged; left untitled) or skipped (a title "
            "was set meanwhile).",
            ["outcome"],
            registry=r,
        )
        self.cache_hits = Counter(
            "turnlog_cache_hits", "Answers served from the response cache.", pm, registry=r
        )
        self.cache_misses = Counter(
            "turnlog_cache_misses",
            "Cacheable requests the response cache did not hold (the model answered).",
            pm,
            registry=r,
        )
        self.cache_tokens_saved = Counter(
            "turnlog_cache_tokens_saved",
            "Output tokens the response cache answered instead of the model.",
            pm,
            registry=r,
        )
        # Tools: every server tool call, by tool name.
        self.tool_calls = Counter(
            "turnlog_tool_calls", "Server tool calls run, by tool.", ["tool"], registry=r
        )
        self.tool_errors = Counter(
            "turnlog_tool_errors",
            "Server tool calls whose result is an error (raised, timed out, server gone, bad"
            " arguments, isError), by tool.",
            ["tool"],
            registry=r,
        )
        self.tool_duration = Histogram(
            "turnlog_tool_duration_seconds",
            "How long server tool calls took, by tool.",
            ["tool"],
            buckets=_ANSWER_BUCKETS,
            registry=r,
        )
        self.recoveries = Counter(
            "turnlog_recoveries",
            "Generating rows whose process died: continued here (started), continued to a "
            "completed end (succeeded), or not continued (given_up, by reason).",
            ["outcome", "reason"],
            registry=r,
        )
        self.recovery_first_delta = Histogram(
            "turnlog_recovery_first_delta_seconds",
            "From a continued row's last stored write (the latest its process can have died)"
            " to its first continued stream event.",
            buckets=_ANSWER_BUCKETS,
            registry=r,
        )
        self._gauges: dict[str, Gauge] = {}
        # Labelled children by family and label values: ``labels()`` validates the values and
        # takes a lock on every call, and every request and generation counts several.
        self._children: dict[tuple[object, ...], Any] = {}

    def gauge(self, name: str, doc: str, read: Callable[[], float]) -> None:
        """A gauge read at scrape time from ``read`` (a count held elsewhere)."""
        gauge = self._gauges.get(name)
        if gauge is None:
            gauge = self._gauges[name] = Gauge(name, doc, registry=self.registry)
        gauge.set_function(read)

    def child(self, family: F, *labels: str) -> F:
        """``family.labels(*labels)``, looked up once per distinct label values."""
        key = (family, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = family.labels(*labels)
        return cast(F, child)

    def http_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.child(self.http_requests, method, route, str(status)).inc()
        self.child(self.http_duration, method, route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
