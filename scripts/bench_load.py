"""Load for scripts/bench_fhir.py: wrk against one server, and that server's CPU time.

wrk runs a generated Lua script that picks a random patient per request (reads, searches
and creates alike) and reports its totals and latency percentiles from its `done` hook.
A `variant` is the search of `search` spelled anew each time: three of ten elements in
`_elements`, in random order (720 spellings of each search), which the response cache
answers only when that very spelling came before and the semantic cache answers always.
The server's CPU time is the user + system time of its gunicorn master and every
descendant (the workers), from /proc/<pid>/stat, read just before and after wrk runs.
"""

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from string import Template

from scripts.loopback import Server

WRK = "/usr/bin/wrk"

CREATE_BODY = (
    json.dumps(
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": "Patient/PATIENT"},
            "effectiveDateTime": "2024-05-01T10:00:00Z",
            "valueQuantity": {
                "value": 12345,
                "unit": "/min",
                "system": "http://unitsofmeasure.org",
                "code": "/min",
            },
        },
        separators=(",", ":"),
    )
    .replace("PATIENT", "%s")
    .replace("12345", "%d")
)
"""A create's body, with `%s` for the patient's id and `%d` for the value (Python's and
Lua's format alike)."""

# $-placeholders: Lua itself uses braces. Each wrk thread has its own Lua state, seeded
# apart through `setup`.
WRK_SCRIPT = Template(
    """
local kind, prefix = $kind, $prefix
local ids = {$ids}
local codes = {$codes}
local headers = {$headers}
local create_body = $create_body
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("seed", threads)
end

function init(args)
  math.randomseed(os.time() * 1000 + (seed or 0))
end

local function pick(list)
  return list[math.random(#list)]
end

local elements = {"status", "code", "subject", "effectiveDateTime", "valueQuantity",
  "category", "issued", "performer", "interpretation", "note"}

local function three_elements()
  local chosen, used = {}, {}
  while #chosen < 3 do
    local name = pick(elements)
    if not used[name] then
      used[name] = true
      table.insert(chosen, name)
    end
  end
  return table.concat(chosen, ",")
end

local function search_path()
  return prefix .. "/Observation?patient=" .. pick(ids)
    .. "&code=http%3A%2F%2Floinc.org%7C" .. pick(codes) .. "&date=ge2018-01-01"
end

function request()
  if kind == "read" then
    return wrk.format("GET", prefix .. "/Patient/" .. pick(ids), headers)
  elseif kind == "search" then
    return wrk.format("GET", search_path(), headers)
  elseif kind == "variant" then
    return wrk.format("GET", search_path() .. "&_elements=" .. three_elements(), headers)
  end
  local body = string.format(create_body, pick(ids), math.random(50, 110))
  return wrk.format("POST", prefix .. "/Observation", headers, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRK-RESULT %d %d %d %d %d %d %d %d %d\\n",
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    math.floor(latency:percentile(50)), math.floor(latency:percentile(99))))
end
"""
)


def lua_string(text: str) -> str:
    """`text` as a Lua string literal (printable ASCII only: ids, tokens, JSON)."""
    if not (text.isascii() and text.isprintable()):
        raise ValueError(f"not printable ASCII: {text!r}")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True)
class Load:
    """What wrk sends: `kind` (read, search, variant or create) under `prefix`, with
    `headers`."""

    kind: str
    prefix: str
    headers: dict[str, str]

    def script(self, ids: list[str], codes: list[str]) -> str:
        return WRK_SCRIPT.substitute(
            kind=lua_string(self.kind),
            prefix=lua_string(self.prefix),
            ids=", ".join(map(lua_string, ids)),
            codes=", ".join(map(lua_string, codes)),
            headers=", ".join(
                f"[{lua_string(name)}] = {lua_string(value)}"
                for name, value in self.headers.items()
            ),
            create_body=lua_string(CREATE_BODY),
        )


@dataclass(frozen=True)
class Bench:
    """How every measurement runs: wrk's duration and connections, the ids and codes its
    requests pick from, and a folder for the scripts."""

    seconds: int  # wrk takes whole seconds
    connections: int
    wrk_threads: int
    ids: list[str]
    codes: list[str]
    scratch: Path


def tree_cpu_seconds(root_pid: int, *, with_exited: bool = False) -> float:
    """User + system CPU time of a process and all its descendants; `with_exited`: also
    what the children they reaped used (cutime, cstime). PostgreSQL's backends come and go
    with their connections (a Celery task closes its own): a tree read without them misses
    the time of every backend that exited between two readings."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        # After the parenthesised command: state, ppid (field 4), ..., utime (14), stime (15),
        # cutime (16), cstime (17).
        fields = stat.rpartition(")")[2].split()
        pid = int(entry.name)
        parents[pid] = int(fields[1])
        ticks[pid] = sum(int(value) for value in fields[11 : 15 if with_exited else 13])
    tree, frontier = {root_pid}, [root_pid]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier.extend(children)
    return sum(ticks.get(pid, 0) for pid in tree) / os.sysconf("SC_CLK_TCK")


def measure(bench: Bench, server: Server, load: Load) -> dict[str, float]:
    """wrk against `server` for bench.seconds: throughput, latency and the server's CPU."""
    script = bench.scratch / f"{load.kind}.lua"
    script.write_text(load.script(bench.ids, bench.codes))
    command = [
        WRK,
        *("--threads", str(bench.wrk_threads), "--connections", str(bench.connections)),
        *("--duration", f"{bench.seconds}s", "--timeout", "10s", "--latency"),
        *("--script", str(script), server.url),
    ]
    cpu_before = tree_cpu_seconds(server.pid)
    finished = subprocess.run(
        command, capture_output=True, text=True, timeout=bench.seconds + 60, check=False
    )
    cpu = tree_cpu_seconds(server.pid) - cpu_before
    lines = [line for line in finished.stdout.splitlines() if line.startswith("WRK-RESULT")]
    if finished.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed: {finished.stdout}\n{finished.stderr}")
    count, duration_us, non_2xx, *socket_errors, p50_us, p99_us = map(int, lines[0].split()[1:])
    return {
        "requests": count,
        "rps": count / (duration_us / 1e6),
        "p50_ms": p50_us / 1000,
        "p99_ms": p99_us / 1000,
        # wrk counts every answer of 400 or more here.
        "non_2xx": non_2xx,
        "socket_errors": sum(socket_errors),
        "cpu_seconds": cpu,
        "cpu_ms_per_request": 1000 * cpu / max(count, 1),
        "requests_per_cpu_second": count / cpu if cpu else 0.0,
    }
