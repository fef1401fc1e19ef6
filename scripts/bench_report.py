"""The printed report of scripts/bench_fhir.py: each measurement, the medians of the rounds
as a table, the platform's ratios to the floors, the counts per interaction and the goals
of the hot path, each measured against its bound."""

import argparse
from typing import Any


def load_text(load: tuple[float, float, float]) -> str:
    return " / ".join(f"{value:.2f}" for value in load)


def measured_text(result: dict[str, float]) -> str:
    text = (
        f"{result['rps']:7.0f} req/s  p50 {result['p50_ms']:6.2f} ms  "
        f"p99 {result['p99_ms']:6.2f} ms  CPU {result['cpu_ms_per_request']:5.2f} ms/req  "
        f"{result['requests_per_cpu_second']:5.0f} req/CPU-s  "
        f"Redis {result['redis_commands_per_request']:4.2f}/req"
    )
    if result["non_2xx"] or result["socket_errors"]:
        text += f"  non-2xx {result['non_2xx']:.0f}, socket errors {result['socket_errors']:.0f}"
    return text


def _table(header: list[str], rows: list[list[str]]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def _ratios(medians: dict[str, dict[str, float]], labels: dict[str, str]) -> dict[str, float]:
    read, ratios = medians["read"], {}
    for key in ("bare", "minimal", "read_baseline"):
        if key in medians:
            other = medians[key]
            ratios[f"read_vs_{key}_p50"] = read["p50_ms"] / other["p50_ms"]
            ratios[f"read_vs_{key}_rps"] = read["rps"] / other["rps"]
            ratios[f"read_vs_{key}_cpu"] = read["cpu_ms_per_request"] / other["cpu_ms_per_request"]
            print(
                f"platform read / {labels[key]}: p50 x{ratios[f'read_vs_{key}_p50']:.2f}, "
                f"req/s x{ratios[f'read_vs_{key}_rps']:.2f}, "
                f"CPU per request x{ratios[f'read_vs_{key}_cpu']:.2f}"
            )
    refused = medians["refused"]["cpu_ms_per_request"] / read["cpu_ms_per_request"]
    ratios["refused_vs_read_cpu"] = refused
    print(f"refused read (429) / served read, server CPU per request: {refused:.2f}")
    return ratios


def _goals(
    medians: dict[str, dict[str, float]], counts: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """The hot path's goals, each with the measured value and whether it is met."""
    read = medians["read"]
    checks: list[tuple[str, float, float, bool]] = [
        # name, measured, target, lower is better
        ("read p50 / bare view p50", read["p50_ms"] / medians["bare"]["p50_ms"], 1.5, True),
        (
            "refused read / served read, server CPU",
            medians["refused"]["cpu_ms_per_request"] / read["cpu_ms_per_request"],
            0.2,
            True,
        ),
        ("reads per server CPU-second", read["requests_per_cpu_second"], 400, False),
    ]
    if counts:
        reads = counts["read"]["requests"]
        # The last read's release has no next request to ride on: it is sent alone, once
        # LIMITS_RELEASE_DELAY_MS have passed, and belongs to the run, not to a read.
        in_a_stream = (counts["read"]["redis_round_trips"] * reads - 1) / reads
        checks += [
            ("SQL statements per read", counts["read"]["sql_statements"], 1, True),
            ("Redis round trips per read, the run's last release apart", in_a_stream, 1, True),
            ("SQL statements per create", counts["create"]["sql_statements"], 6, True),
        ]
    results = {}
    print("goals:")
    for name, measured, target, lower in checks:
        met = measured <= target if lower else measured >= target
        results[name] = {"measured": measured, "target": target, "met": met}
        sign = "<=" if lower else ">="
        print(f"  {name}: {measured:.3g} ({sign} {target:g}: {'met' if met else 'not met'})")
    return results


def _per_request(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _counts_table(counts: dict[str, dict[str, Any]], show_sql: bool) -> None:
    rows = []
    for name, counted in counts.items():
        answers = ", ".join(f"{n} x {status}" for status, n in sorted(counted["statuses"].items()))
        by_name = ", ".join(
            f"{command} {_per_request(n)}" for command, n in counted["redis_by_name"].items()
        )
        numbers = ("sql_statements", "pg_round_trips", "redis_commands", "redis_round_trips")
        rows.append(
            [name, answers, *(_per_request(counted[key]) for key in numbers), by_name or "-"]
        )
    _table(
        [
            "interaction",
            "answers",
            "SQL statements",
            "PostgreSQL round trips",
            "Redis commands",
            "Redis round trips",
            "Redis commands by name",
        ],
        rows,
    )
    for name, counted in counts.items():
        # Opening a connection costs statements or commands of its own (counted above).
        for server, key in (
            ("PostgreSQL", "pg_connections_opened"),
            ("Redis", "redis_connections_opened"),
        ):
            if counted[key]:
                print(f"{name}: {counted[key]} {server} connection(s) opened")
        if counted["broker_commands"]:
            broker = _per_request(counted["broker_commands"])
            print(f"{name}: {broker} Celery broker commands per request")
        if counted["opaque_connections"]:
            print(f"{name}: {counted['opaque_connections']} connection(s) could not be parsed")
        if show_sql:
            print(f"{name}, one request:")
            for text in counted["first_request"]["sql"]:
                print(f"  SQL   {text}")
            for text in counted["first_request"]["redis"]:
                print(f"  Redis {text}")


def report(
    args: argparse.Namespace,
    medians: dict[str, dict[str, float]],
    labels: dict[str, str],
    counts: dict[str, dict[str, Any]],
    loads: tuple[tuple[float, float, float], tuple[float, float, float]],
) -> dict[str, Any]:
    print(f"\nmedians of {args.rounds} round(s)\n")
    _table(
        [
            "server / interaction",
            "req/s",
            "p50",
            "p99",
            "server CPU per request",
            "req per CPU-s",
            "Redis commands per request",
            "non-2xx",
        ],
        [
            [
                labels[key],
                f"{row['rps']:.0f}",
                f"{row['p50_ms']:.2f} ms",
                f"{row['p99_ms']:.2f} ms",
                f"{row['cpu_ms_per_request']:.2f} ms",
                f"{row['requests_per_cpu_second']:.0f}",
                f"{row['redis_commands_per_request']:.3f}",
                f"{row['non_2xx'] / max(row['requests'], 1):.1%}",
            ]
            for key, row in medians.items()
        ],
    )
    print(
        "\nRedis commands per request: what clients sent to the limiter's Redis server while "
        "wrk ran (Redis's INFO commandstats). A request's one round trip, its admission, "
        "carries the previous request's release; a release that no admission picks up within "
        "LIMITS_RELEASE_DELAY_MS is sent alone by the process's flusher.\n"
    )
    ratios = _ratios(medians, labels)
    print(f"load average (1/5/15 min): before {load_text(loads[0])}, after {load_text(loads[1])}")
    if counts:
        print(
            f"\nper request, counted on the wire: {args.count} of each, one at a time after a "
            "warm-up request, platform on 1 worker x 1 thread\n"
        )
        _counts_table(counts, args.sql)
        print(
            "(work a request leaves to a background thread is counted too, spread over the "
            "requests: refusals are written once a second per process)"
        )
    print()
    goals = _goals(medians, counts)
    return {
        "medians": medians,
        "ratios": ratios,
        "goals": goals,
        "counts": counts,
        "load_average": {"before": loads[0], "after": loads[1]},
        "options": {
            key: getattr(args, key)
            for key in ("connections", "workers", "threads", "seconds", "rounds", "log_level")
        },
    }
